"""The data_prep jobs: BLOOMChat's Dolly+OASST (stage 2 data) and OIG subsample (stage 1 data), and any
chat data users hold (OpenAI ``messages`` / ShareGPT records).

Each writes its JSONL atomically, quarantines rejects in ``<output>.rejects.jsonl`` and writes
``<output>.summary.json`` (counts per source, settings, line count).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from common.errors import DataError
from common.files import atomic_write
from data_prep.accounting import Report
from data_prep.chat_records import chat_record_conversations
from data_prep.dolly import dolly_conversations
from data_prep.oasst import OasstConverter, OasstFilters
from data_prep.oig import (
    BASIC_FILE,
    BASIC_UPWEIGHT,
    BLOOMCHAT_OIG_FILES,
    DEFAULT_SAMPLE,
    resolve_oig_inputs,
    sample_oig_file,
)
from data_prep.writer import ConversationWriter


@dataclass
class RunResult:
    """What a job wrote and how every input record ended."""

    output: Path
    lines: int
    report: Report
    settings: dict = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        lines = self.report.summary_lines()
        lines.append(f"wrote {self.lines:,} lines to {self.output}")
        if self.report.rejects:
            lines.append(f"quarantined {len(self.report.rejects):,} rejects in {rejects_path(self.output)}")
        return lines


def rejects_path(output: Path) -> Path:
    return output.with_name(output.name + ".rejects.jsonl")


def summary_path(output: Path) -> Path:
    return output.with_name(output.name + ".summary.json")


def _finish(result: RunResult) -> RunResult:
    """Write the rejects file and the JSON summary; fail loudly if any count does not add up."""
    result.report.write_rejects(rejects_path(result.output))
    summary = {
        "output": str(result.output),
        "lines": result.lines,
        "settings": result.settings,
        "sources": result.report.as_dict(),
    }
    with atomic_write(summary_path(result.output)) as fh:
        fh.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    bad = [name for name, s in result.report.sources.items() if not s.balanced()]
    if bad:
        raise RuntimeError(f"record accounting does not add up for {', '.join(bad)}: this is a bug, please report it")
    return result


def prepare_oa_dolly(
    output: str | Path,
    dolly: str | None,
    oasst: str | None,
    fmt: str = "pairs",
    strict: bool = False,
    dedup: bool = False,
    oasst_mode: str = "best",
    oasst_filters: OasstFilters | None = None,
    oasst_split: str = "train",
) -> RunResult:
    """OASST conversations first (input order of their roots), then Dolly records in input order."""
    if not dolly and not oasst:
        raise DataError("nothing to do: give --dolly and/or --oasst")
    output = Path(output)
    report = Report(strict=strict)
    converter = OasstConverter(report, mode=oasst_mode, filters=oasst_filters, keep_trailing_human=(fmt == "bloomchat"))
    if oasst:
        converter.load(oasst, split=oasst_split)
    with ConversationWriter(output, fmt, report, dedup=dedup) as writer:
        if oasst:
            for conv in converter.conversations():
                if writer.prepare(conv):
                    writer.write(conv)
        if dolly:
            for conv in dolly_conversations(dolly, report):
                if writer.prepare(conv):
                    writer.write(conv)
    settings = {
        "dolly": dolly,
        "oasst": oasst,
        "format": fmt,
        "dedup": dedup,
        "oasst_mode": oasst_mode,
        "oasst_filters": vars(oasst_filters or OasstFilters()),
        "oasst_split": oasst_split,
    }
    return _finish(RunResult(output, writer.lines, report, settings))


def subsample_openchatkit(
    output: str | Path,
    oig: str,
    fmt: str = "pairs",
    seed: int = 42,
    sample_size: int = DEFAULT_SAMPLE,
    strict: bool = False,
    dedup: bool = False,
    upweight_basic: bool = False,
    drop_prosocial: bool = True,
    files: tuple[str, ...] = BLOOMCHAT_OIG_FILES,
) -> RunResult:
    """Sample each OIG file, optionally upweight unified_basic, shuffle everything with ``seed``, write."""
    output = Path(output)
    report = Report(strict=strict)
    chosen: list[tuple[object, int]] = []
    with ConversationWriter(output, fmt, report, dedup=dedup, bloomchat_newline=True) as writer:
        for name, records in resolve_oig_inputs(oig, files, strict=strict):
            copies = BASIC_UPWEIGHT if (upweight_basic and name == BASIC_FILE) else 1
            for conv in sample_oig_file(name, records, report, sample_size, seed, drop_prosocial):
                if writer.prepare(conv):
                    chosen.append((conv, copies))
                    if copies > 1:
                        report.source(conv.source).notes[f"upweighted x{copies} (extra lines)"] += copies - 1
        order = [i for i, (_, copies) in enumerate(chosen) for _ in range(copies)]
        random.Random(seed).shuffle(order)
        for i in order:
            writer.write(chosen[i][0])
    settings = {
        "oig": oig,
        "format": fmt,
        "seed": seed,
        "sample_size": sample_size,
        "dedup": dedup,
        "upweight_basic": upweight_basic,
        "drop_prosocial": drop_prosocial,
    }
    return _finish(RunResult(output, writer.lines, report, settings))


def source_name(spec: str) -> str:
    """A summary name for an input: the file name without data suffixes, or a hub id's name."""
    name = Path(spec.rstrip("/")).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name or "chat"


def prepare_chat(
    output: str | Path,
    inputs: list[str],
    system: str = "reject",
    fmt: str = "pairs",
    strict: bool = False,
    dedup: bool = False,
    split: str = "train",
) -> RunResult:
    """Chat records (OpenAI ``messages`` or ShareGPT ``conversations``) from each input, in order, to one JSONL.

    Each input is counted as its own source (named after the file, or ``name=spec`` to choose)."""
    if not inputs:
        raise DataError("nothing to do: give at least one --input")
    output = Path(output)
    report = Report(strict=strict)
    named = []
    for spec in inputs:
        name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        named.append((name or source_name(path), path))
    with ConversationWriter(output, fmt, report, dedup=dedup) as writer:
        for name, path in named:
            for conv in chat_record_conversations(path, report, name, system, split):
                if writer.prepare(conv):
                    writer.write(conv)
    settings = {
        "inputs": [f"{n}={p}" for n, p in named],
        "system": system,
        "format": fmt,
        "dedup": dedup,
        "split": split,
    }
    return _finish(RunResult(output, writer.lines, report, settings))
