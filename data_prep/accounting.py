"""Record accounting: every input record ends as written, filtered (why) or rejected (why).

``SourceStats`` holds one source's counts and checks read = written + filtered + rejected;
``Report`` owns the per-source stats and the ``<output>.rejects.jsonl`` quarantine file.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from common.errors import DataError
from common.files import atomic_write


@dataclass
class SourceStats:
    """Counts for one source. ``read`` counts input records (OASST: messages)."""

    name: str
    read: int = 0
    written: int = 0
    filtered: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    conversations: int = 0
    turns: int = 0
    notes: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)  # written conversations by detected language
    pii: Counter = field(default_factory=Counter)  # PII items found (scrubbed or dropped) by type
    near_dup_clusters: int = 0  # kept conversations of this source that had at least one near-duplicate dropped

    def balanced(self) -> bool:
        return self.read == self.written + sum(self.filtered.values()) + sum(self.rejected.values())

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "written": self.written,
            "filtered": dict(sorted(self.filtered.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "conversations": self.conversations,
            "turns": self.turns,
            "notes": dict(sorted(self.notes.items())),
            "languages": dict(self.languages.most_common()),
            "pii": dict(sorted(self.pii.items())),
            "near_dup_clusters": self.near_dup_clusters,
            "balanced": self.balanced(),
        }


class Report:
    """Per-source stats plus the rejects quarantine (or a DataError at the first bad record when strict)."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.sources: dict[str, SourceStats] = {}
        self.quarantined = 0  # entries in the quarantine, spooled to disk past 8 MiB so memory stays flat
        self._spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)

    def source(self, name: str) -> SourceStats:
        stats = self.sources.get(name)  # not setdefault: a new SourceStats (five Counters) a call is 50 us a record
        if stats is None:
            stats = self.sources[name] = SourceStats(name)
        return stats

    def reject(self, source: str, file: str, line: int | None, reason: str, count: int = 1) -> None:
        """Count ``count`` records of ``source`` as rejected and quarantine one entry for them."""
        if self.strict:
            where = f"{file}:{line}" if line is not None else file
            raise DataError(f"{where}: {reason} (fix or remove the record, or run without --strict to quarantine it)")
        self.source(source).rejected[reason] += count
        entry = {"source": source, "file": file, "line": line, "reason": reason}
        if count != 1:
            entry["records"] = count
        self._add(entry)

    def quarantine(
        self,
        source: str,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        id: str | None = None,
        count: int = 1,
        **detail,
    ) -> None:
        """Count ``count`` records of ``source`` as filtered for ``reason`` (a short, fixed string: it is a summary
        key) and quarantine one entry with the specifics in ``detail`` (``near_duplicate_of=...``, ``eval_item=...``).
        Filters never stop a run, ``--strict`` or not: they are choices, not bad input."""
        self.source(source).filtered[reason] += count
        entry = {"source": source, "file": file, "line": line, "id": id, "reason": reason, "filtered": True, **detail}
        if count != 1:
            entry["records"] = count
        self._add({k: v for k, v in entry.items() if v is not None})

    def _add(self, entry: dict) -> None:
        self._spool.write(orjson.dumps(entry) + b"\n")
        self.quarantined += 1

    def write_rejects(self, path: Path) -> None:
        self._spool.seek(0)
        with atomic_write(path) as fh:
            shutil.copyfileobj(self._spool, fh)
        self._spool.seek(0, 2)

    def as_dict(self) -> dict:
        return {name: stats.as_dict() for name, stats in self.sources.items()}

    def summary_lines(self) -> list[str]:
        """Human-readable summary, one block per source, ending with the balance check."""
        lines = []
        for name, s in self.sources.items():
            lines.append(
                f"{name}: read {s.read:,}  written {s.written:,}  filtered {sum(s.filtered.values()):,}"
                f"  rejected {sum(s.rejected.values()):,}  -> {s.conversations:,} conversations, {s.turns:,} turns"
            )
            for kind in ("filtered", "rejected", "notes"):
                for reason, n in sorted(getattr(s, kind).items()):
                    lines.append(f"    {kind:<9} {n:>9,}  {reason}")
            if s.pii:
                lines.append("    pii       " + ", ".join(f"{k} {n:,}" for k, n in sorted(s.pii.items())))
            if s.near_dup_clusters:
                lines.append(f"    near-duplicate clusters kept from here: {s.near_dup_clusters:,}")
            if s.languages:
                top = ", ".join(f"{k} {n:,}" for k, n in s.languages.most_common(6))
                more = len(s.languages) - 6
                lines.append(f"    languages {top}" + (f" (+{more} more)" if more > 0 else ""))
            verdict = "OK" if s.balanced() else "MISMATCH"
            lines.append(
                f"    check: read {s.read:,} = written {s.written:,} + filtered "
                f"{sum(s.filtered.values()):,} + rejected {sum(s.rejected.values()):,}  {verdict}"
            )
        return lines
