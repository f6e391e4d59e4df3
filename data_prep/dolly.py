"""databricks-dolly-15k converter: one instruction/response record -> one two-turn conversation.

BLOOMChat's rule: a non-empty context goes on its own line after the instruction, inside the
human turn; the category is kept as metadata.
"""

from __future__ import annotations

from typing import Iterator

from common.chat_format import BOT, HUMAN, Conversation, Turn
from data_prep.accounting import Report
from data_prep.readers import iter_source

DOLLY_HUB_ID = "databricks/databricks-dolly-15k"


def _field(obj: dict, name: str, required: bool) -> tuple[str, str | None]:
    """A string field of a record: (value, None) or ("", reason)."""
    value = obj.get(name)
    if value is None:
        return "", (f"missing field '{name}'" if required else None)
    if not isinstance(value, str):
        return "", f"field '{name}' is a {type(value).__name__}, not a string"
    if required and not value.strip():
        return "", f"empty {name}"
    return value, None


def dolly_conversation(obj: dict, conv_id: str, source: str = "dolly") -> tuple[Conversation | None, str | None]:
    """Convert one dolly record, or return why it is rejected."""
    instruction, err1 = _field(obj, "instruction", True)
    response, err2 = _field(obj, "response", True)
    context, err3 = _field(obj, "context", False)
    category, err4 = _field(obj, "category", False)
    reason = err1 or err2 or err3 or err4
    if reason:
        return None, reason
    human = instruction if context == "" else f"{instruction}\n{context}"
    turns = [Turn(HUMAN, human), Turn(BOT, response)]
    return Conversation(turns, source=source, id=conv_id, category=category or None), None


def dolly_conversations(spec: str, report: Report, source: str = "dolly") -> Iterator[Conversation]:
    """Stream conversations from a dolly hub id, file or directory, counting every record."""
    stats = report.source(source)
    for rec in iter_source(spec):
        stats.read += 1
        if rec.error:
            report.reject(source, rec.file, rec.line, rec.error)
            continue
        conv, reason = dolly_conversation(rec.obj, f"{source}-{stats.read}", source)
        if reason:
            report.reject(source, rec.file, rec.line, reason)
            continue
        yield conv
