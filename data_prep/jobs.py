"""The data_prep jobs, one function per command (callable from Python as well): BLOOMChat's Dolly+OASST (stage 2
data) and OIG subsample (stage 1 data), and any chat data users hold (OpenAI ``messages`` / ShareGPT records).

Each runs the quality pass (``data_prep/quality.py``) on every conversation, writes its JSONL atomically,
quarantines rejects and filtered records in ``<output>.rejects.jsonl``, and writes ``<output>.summary.json`` (counts
per source, settings, line count) and the data card (``<output>.data_card.json``, ``<output>.DATA_CARD.md``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from common.data_card import card_lines, write_data_card
from common.errors import ConfigError, DataError
from common.files import atomic_write
from common.licenses import SOURCE_LICENSES
from common.settings import build
from data_prep.accounting import Report
from data_prep.chat_records import chat_record_conversations
from data_prep.dolly import dolly_conversations
from data_prep.oasst import OasstConverter
from data_prep.oig import BASIC_FILE, BASIC_UPWEIGHT, resolve_oig_inputs, sample_oig_file
from data_prep.quality import QualityPass
from data_prep.settings import ChatRecordsSettings, OaDollySettings, OigSettings
from data_prep.workers import default_workers
from data_prep.writer import ConversationWriter


@dataclass
class RunResult:
    """What a job wrote and how every input record ended."""

    output: Path
    lines: int
    report: Report
    settings: dict = field(default_factory=dict)
    quality: QualityPass | None = None
    card: dict | None = None

    def summary_lines(self) -> list[str]:
        lines = self.report.summary_lines()
        lines.append(f"wrote {self.lines:,} lines to {self.output}")
        if self.report.quarantined:
            lines.append(
                f"quarantined {self.report.quarantined:,} rejected or filtered records in {rejects_path(self.output)}"
            )
        if self.card is not None:
            lines.extend(card_lines(self.card))
        return lines


def num_workers(s) -> int:
    """``--num_workers``, 0 meaning one per core this process may use."""
    return s.quality.num_workers or default_workers()


def rejects_path(output: Path) -> Path:
    return output.with_name(output.name + ".rejects.jsonl")


def summary_path(output: Path) -> Path:
    return output.with_name(output.name + ".summary.json")


def _finish(result: RunResult) -> RunResult:
    """Write the rejects file, the JSON summary and the data card; fail loudly if any count does not add up."""
    result.report.write_rejects(rejects_path(result.output))
    quality = result.quality.summary() if result.quality else {}
    summary = {
        "output": str(result.output),
        "lines": result.lines,
        "settings": {**result.settings, "quality": quality.get("settings")},
        "sources": result.report.as_dict(),
        "quality": {k: v for k, v in quality.items() if k != "settings"},
    }
    with atomic_write(summary_path(result.output)) as fh:
        fh.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    if result.quality is not None:
        result.card = write_data_card(result.output, summary, result.quality.licenses)
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
    licenses = {name: SOURCE_LICENSES[name] for name, spec in (("oasst", oasst), ("dolly", dolly)) if spec}
    quality = QualityPass.build(s.quality, report, licenses)
    filters = s.oasst_filters()
    converter = OasstConverter(
        report, mode=s.oasst_mode, filters=filters, keep_trailing_human=(s.format == "bloomchat")
    )
    if oasst:
        converter.load(oasst, split=s.oasst_split)
    with ConversationWriter(output, s.format, report, dedup=s.dedup, quality=quality, workers=num_workers(s)) as writer:
        if oasst:
            for conv in writer.prepare(converter.conversations()):
                writer.write(conv)
        if dolly:
            for conv in writer.prepare(dolly_conversations(dolly, report)):
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
    return _finish(RunResult(output, writer.lines, report, settings, quality))


def oig_job(s: OigSettings) -> RunResult:
    """Sample each OIG file, optionally upweight unified_basic, shuffle everything with the seed, write."""
    output = Path(s.output_path)
    report = Report(strict=s.strict)
    quality = QualityPass.build(s.quality, report, {}, default_license=SOURCE_LICENSES["oig"])
    chosen: list[tuple[object, int]] = []
    writer = ConversationWriter(
        output, s.format, report, dedup=s.dedup, bloomchat_newline=True, quality=quality, workers=num_workers(s)
    )
    with writer:
        for name, records in resolve_oig_inputs(s.oig, tuple(s.files), strict=s.strict):
            copies = BASIC_UPWEIGHT if (s.upweight_basic and name == BASIC_FILE) else 1
            sampled = sample_oig_file(name, records, report, s.sample_size, s.seed, not s.keep_prosocial)
            for conv in writer.prepare(sampled):
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
    return _finish(RunResult(output, writer.lines, report, settings, quality))


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
    licenses, default_license = input_licenses(s.license, [n for n, _ in named])
    quality = QualityPass.build(s.quality, report, licenses, default_license)
    with ConversationWriter(output, s.format, report, dedup=s.dedup, quality=quality, workers=num_workers(s)) as writer:
        for name, path in named:
            for conv in writer.prepare(chat_record_conversations(path, report, name, s.system, s.split)):
                writer.write(conv)
    settings = {
        "inputs": [f"{n}={p}" for n, p in named],
        "system": s.system,
        "format": s.format,
        "dedup": s.dedup,
        "split": s.split,
    }
    return _finish(RunResult(output, writer.lines, report, settings, quality))


def input_licenses(values: list[str], names: list[str]) -> tuple[dict[str, str], str]:
    """``--license``: a bare SPDX id for every input, ``NAME=SPDX`` for one; -> ({name: id}, the default id)."""
    default, given = "NOASSERTION", {}
    for value in values:
        name, sep, spdx = value.rpartition("=")
        if not sep:
            default = value
        elif name not in names:
            raise ConfigError(f"--license {value}: no input is named {name!r} (inputs: {', '.join(names)})")
        else:
            given[name] = spdx
    return {name: given.get(name, default) for name in names}, default


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
