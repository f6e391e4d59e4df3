"""Writing conversations as JSONL (pairs or BLOOMChat records), with role-tag escaping and dedup.

The writer is the single place where a conversation becomes "written": it escapes role tags, runs the quality pass
(``data_prep/quality.py``), drops exact duplicates (normalized text hash, within and across sources) and counts turns.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from common.chat_format import Conversation, Turn, escape_role_tags, render_text, to_bloomchat, to_pairs
from common.files import atomic_write
from data_prep.accounting import Report
from data_prep.quality import Analysis, QualityPass
from data_prep.workers import ChunkRunner

FORMATS = ("pairs", "bloomchat")


def dedup_key(conv: Conversation) -> bytes:
    """Hash of the rendered text, case-folded with whitespace runs collapsed."""
    norm = " ".join(render_text(conv.turns).casefold().split())
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()


def _payload(chunk: list[Conversation]) -> list[tuple[list[str], list[str]]]:
    """What the analyzer gets of each conversation: its texts and roles."""
    return [([t.text for t in c.turns], [t.role for t in c.turns]) for c in chunk]


def encode(conv: Conversation, fmt: str, trailing_newline: bool = False) -> bytes:
    """One JSONL line (without newline). BLOOMChat records use json.dumps defaults, byte for byte."""
    if fmt == "bloomchat":
        return json.dumps(to_bloomchat(conv, trailing_newline)).encode("ascii")
    return orjson.dumps(to_pairs(conv))


class ConversationWriter:
    """Atomically writes one JSONL file; use as a context manager."""

    def __init__(
        self,
        path: str | Path,
        fmt: str,
        report: Report,
        dedup: bool = False,
        bloomchat_newline: bool = False,
        quality: QualityPass | None = None,
        workers: int = 1,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.path, self.fmt, self.report = Path(path), fmt, report
        self.seen: set[bytes] | None = set() if dedup else None
        self.lines = 0
        self.bloomchat_newline = bloomchat_newline
        self.quality, self.workers = quality, workers
        self._ctx = atomic_write(self.path)

    def __enter__(self) -> "ConversationWriter":
        self._fh = self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._ctx.__exit__(*exc)

    def escape(self, conv: Conversation) -> Conversation | None:
        """Escape role tags; None (counted) for a conversation without a bot reply in pairs form."""
        stats = self.report.source(conv.source)
        turns, escaped = [], 0
        for t in conv.turns:
            text, n = escape_role_tags(t.text)
            escaped += bool(n)
            turns.append(Turn(t.role, text) if n else t)
        if escaped:
            stats.notes["texts with a role tag (escaped)"] += escaped
            conv.turns = turns
        if self.fmt == "pairs" and len(conv.turns) < 2:
            stats.filtered["no bot reply"] += conv.records
            return None
        return conv

    def prepare(self, convs: Iterable[Conversation]) -> Iterator[Conversation]:
        """The conversations to write, in input order: escaped, through the quality pass (its pure half in
        ``workers`` processes, ``data_prep/workers.py``) and the dedups; every other one is counted (and, for the
        quality pass, quarantined)."""
        ready = (c for c in map(self.escape, convs) if c is not None)
        if self.quality is None:
            yield from filter(self.keep, ready)
            return
        runner = ChunkRunner(self.quality.analyzer, self.workers)
        try:
            for chunk, analyses in runner.run(ready, _payload):  # chunks read ahead while the workers analyze
                for conv, found in zip(chunk, analyses):
                    conv = self.quality.decide(conv, found)
                    if conv is not None and self.keep(conv, found):
                        yield conv
        finally:
            runner.close()

    def keep(self, conv: Conversation, found: Analysis | None = None) -> bool:
        """Exact and near-duplicate checks, then count the conversation as written."""
        stats = self.report.source(conv.source)
        if self.seen is not None:
            key = dedup_key(conv)
            if key in self.seen:
                stats.filtered["duplicate"] += conv.records
                return False
            self.seen.add(key)
        if self.quality is not None:
            if not self.quality.dedup(conv, found):
                return False
            self.quality.written(conv)
        stats.written += conv.records
        stats.conversations += 1
        stats.turns += len(conv.turns)
        return True

    def write(self, conv: Conversation, copies: int = 1) -> None:
        line = encode(conv, self.fmt, self.bloomchat_newline) + b"\n"
        for _ in range(copies):
            self._fh.write(line)
        self.lines += copies
