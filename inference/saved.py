"""Conversations the chat's ``/save`` appends to a JSONL file (data_prep's pairs form), read back for ``/load``.

Each line is one conversation: a list of ``{"prompt", "completion", "source", "id"}`` pairs. Ids are ``chat-N``,
the next free N in the file, so conversations saved by different sessions into one file never share an id.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from common.chat_format import BOT_TAG, HUMAN_TAG
from common.errors import UserError
from inference.generate import Exchange, Reply

_ID_RE = re.compile(rb'"id":\s*"chat-(\d+)"')


class SavedChatError(UserError):
    """Why a saved conversation cannot be loaded, in one line."""


def next_id(path: Path) -> str:
    """``chat-N`` with N one more than the largest in ``path`` (``chat-1`` for a new file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "chat-1"
    return f"chat-{max((int(m) for m in _ID_RE.findall(data)), default=0) + 1}"


def read_saved(name: str, conv_id: str | None = None) -> tuple[str, list[Exchange]]:
    """(id, exchanges) of the conversation ``conv_id`` in the file ``name``, or of its last one."""
    path = Path(name).expanduser()
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise SavedChatError(f"cannot read {name}: {exc.strerror or exc}") from None
    found = None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            pairs = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise SavedChatError(f"{name} line {n} is not JSON; give a file /save wrote") from None
        if not _is_pairs(pairs):
            raise SavedChatError(f"{name} line {n} is not a saved conversation (a list of prompt/completion pairs)")
        if conv_id is None or pairs[0].get("id") == conv_id:
            found = (n, pairs)
    if found is None:
        raise SavedChatError(f"no conversation with id {conv_id} in {name}" if conv_id else f"{name} is empty")
    n, pairs = found
    return str(pairs[0].get("id") or f"line {n}"), [_exchange(p, i == 0) for i, p in enumerate(pairs)]


def _is_pairs(pairs) -> bool:
    return (
        isinstance(pairs, list)
        and bool(pairs)
        and all(
            isinstance(p, dict) and isinstance(p.get("prompt"), str) and isinstance(p.get("completion"), str)
            for p in pairs
        )
    )


def _exchange(pair: dict, first: bool) -> Exchange:
    """The exchange of one pair: ``[\\n]<human>: TEXT\\n<bot>:`` and the completion."""
    prompt = pair["prompt"]
    if not first:
        prompt = prompt.removeprefix("\n")
    user = prompt.removeprefix(HUMAN_TAG).removesuffix(BOT_TAG)
    user = user[1:] if user.startswith(" ") else user
    user = user[:-1] if user.endswith("\n") else user
    text = pair["completion"]
    return Exchange(user, Reply(text, 0, "eos", None, None))
