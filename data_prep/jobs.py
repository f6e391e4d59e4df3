"""The data_prep jobs, one function per command (callable from Python as well): BLOOMChat's Dolly+OASST (stage 2
data) and OIG subsample (stage 1 data), and any chat data users hold (OpenAI ``messages`` / ShareGPT records).

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
from common.settings import build
from data_prep.accounting import Report
from data_prep.chat_records import chat_record_conversations
from data_prep.dolly import dolly_conversations
from data_prep.oasst import OasstConverter
from data_prep.oig import BASIC_FILE, BASIC_UPWEIGHT, resolve_oig_inputs, sample_oig_file
from data_prep.settings import ChatRecordsSettings, OaDollySettings, OigSettings
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


def oa_dolly_job(s: OaDollySettings) -> RunResult:
    """OASST conversations first (input order of their roots), then Dolly records in input order."""
    dolly, oasst = s.dolly or None, s.oasst or None
    if not dolly and not oasst:
        raise DataError("nothing to do: give --dolly and/or --oasst")
    output = Path(s.output_path)
    report = Report(strict=s.strict)
    filters = s.oasst_filters()
    converter = OasstConverter(
        report, mode=s.oasst_mode, filters=filters, keep_trailing_human=(s.format == "bloomchat")
    )
    if oasst:
        converter.load(oasst, split=s.oasst_split)
    with ConversationWriter(output, s.format, report, dedup=s.dedup) as writer:
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
        "format": s.format,
        "dedup": s.dedup,
        "oasst_mode": s.oasst_mode,
        "oasst_filters": vars(filters),
        "oasst_split": s.oasst_split,
    }
    return _finish(RunResult(output, writer.lines, report, settings))


def oig_job(s: OigSettings) -> RunResult:
    """Sample each OIG file, optionally upweight unified_basic, shuffle everything with the seed, write."""
    output = Path(s.output_path)
    report = Report(strict=s.strict)
    chosen: list[tuple[object, int]] = []
    with ConversationWriter(output, s.format, report, dedup=s.dedup, bloomchat_newline=True) as writer:
        for name, records in resolve_oig_inputs(s.oig, tuple(s.files), strict=s.strict):
            copies = BASIC_UPWEIGHT if (s.upweight_basic and name == BASIC_FILE) else 1
            for conv in sample_oig_file(name, records, report, s.sample_size, s.seed, not s.keep_prosocial):
                if writer.prepare(conv):
                    chosen.append((conv, copies))
                    if copies > 1:
                        report.source(conv.source).notes[f"upweighted x{copies} (extra lines)"] += copies - 1
        order = [i for i, (_, copies) in enumerate(chosen) for _ in range(copies)]
        random.Random(s.seed).shuffle(order)
        for i in order:
            writer.write(chosen[i][0])
    settings = {
        "oig": s.oig,
        "format": s.format,
        "seed": s.seed,
        "sample_size": s.sample_size,
        "dedup": s.dedup,
        "upweight_basic": s.upweight_basic,
        "drop_prosocial": not s.keep_prosocial,
    }
    return _finish(RunResult(output, writer.lines, report, settings))


def source_name(spec: str) -> str:
    """A summary name for an input: the file name without data suffixes, or a hub id's name."""
    name = Path(spec.rstrip("/")).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name or "chat"


def chat_records_job(s: ChatRecordsSettings) -> RunResult:
    """Chat records (OpenAI ``messages`` or ShareGPT ``conversations``) from each input, in order, to one JSONL.

    Each input is counted as its own source (named after the file, or ``name=spec`` to choose)."""
    output = Path(s.output_path)
    report = Report(strict=s.strict)
    named = []
    for spec in s.input:
        name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        named.append((name or source_name(path), path))
    with ConversationWriter(output, s.format, report, dedup=s.dedup) as writer:
        for name, path in named:
            for conv in chat_record_conversations(path, report, name, s.system, s.split):
                if writer.prepare(conv):
                    writer.write(conv)
    settings = {
        "inputs": [f"{n}={p}" for n, p in named],
        "system": s.system,
        "format": s.format,
        "dedup": s.dedup,
        "split": s.split,
    }
    return _finish(RunResult(output, writer.lines, report, settings))


# Python shorthands: the output and the inputs by position, any other setting by its field name (``format="bloomchat"``,
# ``sample_size=200``), checked by the same settings models as the command line.


def prepare_oa_dolly(output: str | Path, dolly: str | None, oasst: str | None, **settings) -> RunResult:
    """``oa_dolly_job`` with ``OaDollySettings`` fields; ``None`` skips a source."""
    values = {"output_path": str(output), "dolly": dolly or "", "oasst": oasst or "", **settings}
    return oa_dolly_job(build(OaDollySettings, values))


def subsample_openchatkit(output: str | Path, oig: str, **settings) -> RunResult:
    """``oig_job`` with ``OigSettings`` fields."""
    return oig_job(build(OigSettings, {"output_path": str(output), "oig": oig, **settings}))


def prepare_chat(output: str | Path, inputs: list[str], **settings) -> RunResult:
    """``chat_records_job`` with ``ChatRecordsSettings`` fields."""
    return chat_records_job(build(ChatRecordsSettings, {"output_path": str(output), "input": inputs, **settings}))
