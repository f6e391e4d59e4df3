"""Record accounting: every input record ends as written, filtered (why) or rejected (why).

``SourceStats`` holds one source's counts and checks read = written + filtered + rejected;
``Report`` owns the per-source stats and the ``<output>.rejects.jsonl`` quarantine file.
"""

from __future__ import annotations

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
            "balanced": self.balanced(),
        }


class Report:
    """Per-source stats plus the rejects quarantine (or a DataError at the first bad record when strict)."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.sources: dict[str, SourceStats] = {}
        self.rejects: list[bytes] = []

    def source(self, name: str) -> SourceStats:
        return self.sources.setdefault(name, SourceStats(name))

    def reject(self, source: str, file: str, line: int | None, reason: str, count: int = 1) -> None:
        """Count ``count`` records of ``source`` as rejected and quarantine one entry for them."""
        if self.strict:
            where = f"{file}:{line}" if line is not None else file
            raise DataError(f"{where}: {reason} (fix or remove the record, or run without --strict to quarantine it)")
        self.source(source).rejected[reason] += count
        entry = {"source": source, "file": file, "line": line, "reason": reason}
        if count != 1:
            entry["records"] = count
        self.rejects.append(orjson.dumps(entry))

    def write_rejects(self, path: Path) -> None:
        with atomic_write(path) as fh:
            for row in self.rejects:
                fh.write(row + b"\n")

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
            verdict = "OK" if s.balanced() else "MISMATCH"
            lines.append(
                f"    check: read {s.read:,} = written {s.written:,} + filtered "
                f"{sum(s.filtered.values()):,} + rejected {sum(s.rejected.values()):,}  {verdict}"
            )
        return lines
