"""Preference pairs -> padded rows: the prompt once, then the chosen reply, then the rejected reply.

A preference record (``data_prep prepare_preferences``, docs/tokenization.md "Preference pairs") holds the
conversation up to a user turn (``prompt``, OpenAI roles) and two reply texts. Its tokens are exactly SFT's: the
conversation plus one reply is written as the chat format's pairs (``common.chat_format.to_pairs``) and tokenized by
the SFT article code (``articles.py``), once with the chosen reply and once with the rejected one. Everything
before the final completion is the prompt (equal in both; earlier replies each closed by EOS), what follows is
the reply with its closing EOS, so a stage-3 row holds what stage 2 trained on before and as that reply::

    prompt  <human>: Hi\\n<bot>: Hello EOS \\n<human>: Bye\\n<bot>:  | chosen ␣See you EOS | rejected ␣No EOS | pad
    types   0 ...                                             0  | 1 ...              1 | 4 ...           4 | 2 ...

The rejected tokens follow the chosen ones in the row, but the model sees them right after the prompt (training
restarts their positions at len(prompt)). A pair longer than the row loses tokens from the prompt's start
(``--preference_overflow truncate_prompt``, while at least one prompt token is left) or is dropped (``drop``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from common.chat_format import BOT, HUMAN, Conversation, Turn, to_pairs, validate_turns
from common.errors import DataError
from tokenization_prep.articles import ArticleTokenizer, InputFormatError, parse_line
from tokenization_prep.inputs import file_lines
from tokenization_prep.schema import CHOSEN, PROMPT, REJECTED

ROLES = {"user": HUMAN, "assistant": BOT}


def is_preference(obj) -> bool:
    """A preference record has both ``chosen`` and ``rejected`` keys (contract: anything else is SFT)."""
    return isinstance(obj, dict) and "chosen" in obj and "rejected" in obj


def line_kind(raw: bytes) -> str | None:
    """``preference`` or ``sft`` for a JSON line, None when it is not JSON (the reader says why later)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return "preference" if is_preference(obj) else "sft"


def input_kind(files: list[Path]) -> str:
    """``preference`` when the first record of the input is a preference record, else ``sft`` (a later record of
    the other kind is a one-line error naming its file:line, from either reader)."""
    if files[0].suffix != ".jsonl":
        return "sft"
    for _, _, raw in file_lines(files[0]):
        return line_kind(raw) or "sft"
    return "sft"


@dataclass
class PairRecord:
    """One checked preference record, and where it came from."""

    id: str
    tree_id: str
    source: str | None
    turns: list[Turn]  # the conversation up to and including the final user turn
    chosen: str
    rejected: str
    file: str = ""
    line: int = 0


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputFormatError(f"'{key}' must be a non-empty string")
    return value


def _name(value) -> str | None:
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "" else None


def parse_pair(raw: bytes) -> PairRecord:
    """Check one input line as a preference record (``InputFormatError`` says why it is not one)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputFormatError(f"not JSON ({str(exc).split(':')[0]})") from None
    if not is_preference(obj):
        raise InputFormatError(
            "an SFT record among preference records (no 'chosen' and 'rejected'); "
            "give preference and SFT records to separate runs"
        )
    chosen, rejected = _text(obj, "chosen"), _text(obj, "rejected")
    if chosen == rejected:
        raise InputFormatError("'chosen' equals 'rejected': the pair teaches nothing; fix or drop the record")
    messages = obj.get("prompt")
    if not isinstance(messages, list) or not messages:
        raise InputFormatError("'prompt' must be a non-empty list of {role, content} messages")
    turns = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputFormatError('each \'prompt\' message must be {"role": "user"|"assistant", "content": str}')
        turns.append(Turn(ROLES[m["role"]], m["content"]))
    why = validate_turns(turns + [Turn(BOT, chosen)])
    if why:
        raise InputFormatError(
            f"'prompt' + chosen is not a conversation ({why}); it must alternate user/assistant, "
            "starting and ending with user"
        )
    rid = _name(obj.get("id"))
    tree = _name(obj.get("tree_id")) or rid
    if rid is None or tree is None:
        raise InputFormatError("a preference record needs an 'id' (and its 'tree_id', for the split by tree)")
    return PairRecord(rid, tree, _name(obj.get("source")), turns, chosen, rejected)


def reply_line(rec: PairRecord, reply: str) -> bytes:
    """The SFT line stage 2 would hold for the conversation + ``reply``: the chat format's pairs."""
    conv = Conversation(rec.turns + [Turn(BOT, reply)], source=rec.source or "", id=rec.id)
    return orjson.dumps(to_pairs(conv))


@dataclass
class PairTokens:
    """The tokens of one pair: prompt, chosen and rejected (each reply with its closing EOS)."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def _split_final(article) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, final completion) of an SFT article: the prompt ends at its last prompt-type token."""
    prompt_at = np.flatnonzero(article.types == PROMPT)
    cut = int(prompt_at[-1]) + 1 if len(prompt_at) else 0
    return article.ids[:cut], article.ids[cut:]


def tokenize_pairs(records: list[PairRecord], atok: ArticleTokenizer) -> list[PairTokens]:
    """Tokenize records with the SFT article code, in one batch (two SFT lines a record)."""
    parts = []
    for rec in records:
        for reply in (rec.chosen, rec.rejected):
            parts.append(parse_line(reply_line(rec, reply), atok.settings))
    articles = atok.assemble(parts, atok.encode(parts))
    out = []
    for k, rec in enumerate(records):
        (a_c,), (a_r,) = articles[2 * k], articles[2 * k + 1]
        p_c, chosen = _split_final(a_c)
        p_r, rejected = _split_final(a_r)
        if not np.array_equal(p_c, p_r) or not len(chosen) or not len(rejected):
            raise DataError(
                f"{rec.file}:{rec.line}: the chosen and rejected conversations tokenize to different prompts "
                "(or a reply to no tokens); check the article settings"
            )
        out.append(PairTokens(p_c, chosen, rejected))
    return out


def layout(t: PairTokens, max_len: int, overflow: str) -> tuple[np.ndarray, np.ndarray, str | None] | None:
    """(ids, types, None | "truncated") of the pair's row (unpadded), or None when the pair is dropped.

    >>> t = PairTokens(np.arange(5), np.array([7, 0]), np.array([8, 9, 0]))
    >>> ids, types, status = layout(t, 8, "truncate_prompt")
    >>> ids.tolist(), types.tolist(), status
    ([2, 3, 4, 7, 0, 8, 9, 0], [0, 0, 0, 1, 1, 4, 4, 4], 'truncated')
    >>> layout(t, 8, "drop") is None, layout(t, 5, "truncate_prompt") is None
    (True, True)
    """
    prompt, status = t.prompt, None
    if t.length > max_len:
        keep = max_len - len(t.chosen) - len(t.rejected)
        if overflow == "drop" or keep < 1:
            return None
        prompt, status = prompt[len(prompt) - keep :], "truncated"
    ids = np.concatenate([prompt, t.chosen, t.rejected]).astype(np.int32)
    types = np.concatenate(
        [np.full(len(prompt), PROMPT), np.full(len(t.chosen), CHOSEN), np.full(len(t.rejected), REJECTED)]
    ).astype(np.int8)
    return ids, types, status
