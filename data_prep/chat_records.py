"""Chat data users already hold: OpenAI-style ``messages`` and ShareGPT ``conversations`` records.

A record is ``{"messages": [{"role": ..., "content": ...}, ...]}`` (OpenAI; ``content`` may also be a list of
``{"type": "text", "text": ...}`` parts) or ``{"conversations": [{"from": ..., "value": ...}, ...]}``
(ShareGPT; role/content items are read there too; a record-level ``"system"`` string is a leading system
message). Roles map to the chat format's two: user/human -> human,
assistant/gpt/bot/chatgpt/model -> bot. System (and OpenAI ``developer``) messages follow one stated rule,
``common.chat_format.apply_system_rule``; tool, function and unknown roles, tool calls and non-text parts
reject the record with a reason. A trailing user message with no reply is left out and counted.
"""

from __future__ import annotations

from typing import Iterator

from common.chat_format import BOT, HUMAN, SYSTEM_RULES, Conversation, Turn, apply_system_rule, validate_turns
from data_prep.accounting import Report
from data_prep.readers import iter_source

ROLES = {"user": HUMAN, "human": HUMAN, "assistant": BOT, "gpt": BOT, "bot": BOT, "chatgpt": BOT, "model": BOT}
SYSTEM_ROLES = ("system", "developer")
LIST_KEYS = ("messages", "conversations")


def _text(content, where: str) -> tuple[str | None, str | None]:
    """A message's text: a string, or the joined text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content, None
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                return None, f"{where}: content part of type '{kind}' (only text parts are supported)"
            parts.append(part["text"])
        return "".join(parts), None
    if content is None:
        return None, f"{where}: no content"
    return None, f"{where}: content is a {type(content).__name__}, not a string"


def read_message(item, i: int) -> tuple[str | None, str | None, str | None]:
    """(role, text, None) of one message, or (None, None, reason)."""
    where = f"message {i + 1}"
    if not isinstance(item, dict):
        return None, None, f"{where} is a {type(item).__name__}, not an object"
    if "role" in item:
        role, content = item.get("role"), item.get("content")
    elif "from" in item:
        role, content = item.get("from"), item.get("value")
    else:
        return None, None, f"{where} has neither 'role' nor 'from'"
    if not isinstance(role, str):
        return None, None, f"{where}: role is a {type(role).__name__}, not a string"
    if item.get("tool_calls") or item.get("function_call"):
        return None, None, f"{where}: tool calls are not supported by the chat format"
    role = role.strip().lower()
    if role not in ROLES and role not in SYSTEM_ROLES:
        return None, None, f"{where}: unsupported role '{role}' (supported: user, assistant, system)"
    text, reason = _text(content, where)
    if reason:
        return None, None, reason
    return role, text, None


def chat_record_conversation(
    obj: dict, conv_id: str, source: str, system: str = "reject"
) -> tuple[Conversation | None, str | None, bool]:
    """Convert one record: (conversation, None, trailing_user_dropped) or (None, reason, False)."""
    key = next((k for k in LIST_KEYS if k in obj), None)
    if key is None:
        return None, "no 'messages' or 'conversations' list", False
    items = obj[key]
    if not isinstance(items, list):
        return None, f"'{key}' is a {type(items).__name__}, not a list", False
    system_texts: list[str] = []
    if "system" in obj:  # ShareGPT's record-level system prompt
        if not isinstance(obj["system"], str):
            return None, f"'system' is a {type(obj['system']).__name__}, not a string", False
        if obj["system"].strip():
            system_texts.append(obj["system"])
    turns: list[Turn] = []
    for i, item in enumerate(items):
        role, text, reason = read_message(item, i)
        if reason:
            return None, reason, False
        if role in SYSTEM_ROLES:
            if turns:
                return None, f"message {i + 1}: a system message after the conversation started", False
            system_texts.append(text)
            continue
        turns.append(Turn(ROLES[role], text))
    dropped = bool(turns) and turns[-1].role == HUMAN and len(turns) > 1
    if dropped:
        turns = turns[:-1]
    if system_texts:
        turns, reason = apply_system_rule("\n\n".join(t.strip() for t in system_texts), turns, system)
        if reason:
            return None, reason, False
    reason = validate_turns(turns)
    if reason:
        return None, reason, False
    category = obj.get("category") if isinstance(obj.get("category"), str) else None
    return Conversation(turns, source=source, id=str(obj.get("id") or conv_id), category=category), None, dropped


def chat_record_conversations(
    spec: str, report: Report, source: str, system: str = "reject", split: str = "train"
) -> Iterator[Conversation]:
    """Stream conversations from a file, directory or hub id of chat records, counting every record."""
    if system not in SYSTEM_RULES:
        raise ValueError(f"system rule must be one of {', '.join(SYSTEM_RULES)}")
    stats = report.source(source)
    for rec in iter_source(spec, split=split):
        stats.read += 1
        if rec.error:
            report.reject(source, rec.file, rec.line, rec.error)
            continue
        conv, reason, dropped = chat_record_conversation(rec.obj, f"{source}-{stats.read}", source, system)
        if reason:
            report.reject(source, rec.file, rec.line, reason)
            continue
        if dropped:
            stats.notes["trailing user message without a reply (left out)"] += 1
        yield conv
