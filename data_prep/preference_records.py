"""Preference records users already hold -> the common preference form (one pair per line, as OASST pairs).

A record is a preference record iff it has both ``chosen`` and ``rejected``. The forms read (TRL's and
UltraFeedback's)::

    {"prompt": "text", "chosen": "reply", "rejected": "reply"}                       # standard
    {"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}   # conversational
    {"prompt": "text", "chosen": [user msg, assistant msg], "rejected": [...]}       # UltraFeedback (repeats prompt)
    {"messages": [messages], "chosen": ..., "rejected": ...}                         # the prompt under 'messages'
    {"chosen": [user, assistant], "rejected": [user, assistant]}                     # TRL's implicit prompt

Messages are OpenAI ``role``/``content`` (text parts too) or ShareGPT ``from``/``value``, read by
``data_prep.chat_records``. When a chosen/rejected list repeats the prompt messages, what follows them is the reply;
the reply is the final assistant message(s) (several are joined by a blank line); with no prompt given, the prompt
is the messages chosen and rejected share, up to their last user message. The prompt alternates user/assistant,
starting and ending with user; system messages are refused (the chat format has none). Texts are role-tag escaped.
Provenance fields already in a record (``tree_id``, ``prompt_id``, ranks, ``lang``, ``license``) are kept, so this
command's own output reads back unchanged.
"""

from __future__ import annotations

from typing import Iterator

from common.chat_format import BOT, HUMAN, Turn, validate_turns
from data_prep.accounting import Report
from data_prep.chat_records import ROLES, SYSTEM_ROLES, read_message
from data_prep.preferences import OPENAI_ROLES, escaped, pair_record
from data_prep.readers import iter_source

SIDES = ("chosen", "rejected")
STR_FIELDS = ("prompt_id", "chosen_id", "rejected_id", "lang", "license")
INT_FIELDS = ("chosen_rank", "rejected_rank")


def _turns(items, what: str) -> tuple[list[Turn] | None, str | None]:
    """Messages -> turns, or the reason they are not chat messages."""
    if not isinstance(items, list):
        return None, f"'{what}' is a {type(items).__name__}, not a string or a list of messages"
    turns = []
    for i, item in enumerate(items):
        role, text, reason = read_message(item, i)
        if reason:
            return None, f"'{what}' {reason}"
        if role in SYSTEM_ROLES:
            return None, f"'{what}' message {i + 1}: system message (the chat format has no system role)"
        turns.append(Turn(ROLES[role], text))
    return turns, None


def _same(a: Turn, b: Turn) -> bool:
    return a.role == b.role and a.text.strip() == b.text.strip()


def _implicit_prompt(obj: dict) -> tuple[list[Turn] | None, str | None]:
    """TRL's implicit prompt: the messages chosen and rejected share, up to their last user message."""
    chosen, reason = _turns(obj["chosen"], "chosen")
    rejected, reason = (None, reason) if reason else _turns(obj["rejected"], "rejected")
    if reason:
        return None, f"no 'prompt' or 'messages' ({reason})"
    shared = 0
    while shared < min(len(chosen), len(rejected)) and _same(chosen[shared], rejected[shared]):
        shared += 1
    while shared and chosen[shared - 1].role != HUMAN:
        shared -= 1
    if not shared:
        return None, "no 'prompt' or 'messages', and 'chosen' and 'rejected' share no user message"
    return chosen[:shared], None


def _prompt(obj: dict) -> tuple[list[Turn] | None, str | None]:
    if "prompt" in obj:
        value, what = obj["prompt"], "prompt"
    elif "messages" in obj:
        value, what = obj["messages"], "messages"
    else:
        return _implicit_prompt(obj)
    if isinstance(value, str):
        return [Turn(HUMAN, value)], None
    return _turns(value, what)


def _reply(value, side: str, prompt: list[Turn]) -> tuple[str | None, str | None]:
    """A reply text: the string, or the assistant message(s) after the repeated prompt in a message list."""
    if isinstance(value, str):
        return value, None
    turns, reason = _turns(value, side)
    if reason:
        return None, reason
    if len(turns) > len(prompt) and all(_same(t, p) for t, p in zip(turns, prompt)):
        turns = turns[len(prompt) :]
    elif turns and turns[0].role == HUMAN:
        return None, f"'{side}' starts with a user message that is not the prompt's"
    if not turns:
        return None, f"'{side}' holds no assistant message"
    if any(t.role != BOT for t in turns):
        return None, f"'{side}' has a user message after the prompt (a reply is assistant messages only)"
    return "\n\n".join(t.text for t in turns), None


def preference_record(obj: dict, source: str, n: int, report: Report) -> tuple[dict | None, str | None]:
    """One record in the output form, or (None, why it is refused). ``n``: the record's 1-based number."""
    if not all(side in obj for side in SIDES):
        return None, "not a preference record: needs both 'chosen' and 'rejected'"
    prompt, reason = _prompt(obj)
    if reason:
        return None, reason
    if not prompt:
        return None, "empty prompt"
    if prompt[-1].role != HUMAN:
        return None, "prompt does not end with a user message"
    reason = validate_turns(prompt + [Turn(BOT, "reply")])
    if reason:
        return None, f"prompt: {reason}"
    replies = {}
    for side in SIDES:
        text, reason = _reply(obj[side], side, prompt)
        if reason:
            return None, reason
        if not text.strip():
            return None, f"empty or blank '{side}'"
        replies[side] = text
    if replies["chosen"].strip() == replies["rejected"].strip():
        return None, "chosen equals rejected"
    stats = report.source(source)
    record_id = obj.get("id")
    record_id = str(record_id) if isinstance(record_id, (str, int)) and str(record_id) else f"{source}-{n}"
    tree_id = obj.get("tree_id")
    meta = {k: obj[k] for k in STR_FIELDS if isinstance(obj.get(k), str)}
    meta.update({k: obj[k] for k in INT_FIELDS if isinstance(obj.get(k), int) and not isinstance(obj[k], bool)})
    return pair_record(
        source,
        str(tree_id) if isinstance(tree_id, (str, int)) and str(tree_id) else record_id,
        record_id,
        [{"role": OPENAI_ROLES[t.role], "content": escaped(t.text, stats)} for t in prompt],
        escaped(replies["chosen"], stats),
        escaped(replies["rejected"], stats),
        **meta,
    ), None


def preference_records(spec: str, report: Report, source: str, split: str = "train") -> Iterator[dict]:
    """Stream output records from a file, directory or hub id of preference records, counting every record."""
    stats = report.source(source)
    for rec in iter_source(spec, split=split):
        stats.read += 1
        if rec.error:
            report.reject(source, rec.file, rec.line, rec.error)
            continue
        record, reason = preference_record(rec.obj, source, stats.read, report)
        if reason:
            report.reject(source, rec.file, rec.line, reason)
            continue
        yield record
