"""OASST1 ranked sibling replies, and preference records users hold -> preference pairs JSONL (stage 3 data).

Usage (flat message exports and nested ``*.trees.jsonl`` both read; hub ids, files or directories):
    python -m data_prep prepare_preferences --oasst data/samples/oasst1/oasst1_validation_en.jsonl \\
        --output_path data_prep/oasst1_preferences.jsonl [--pairs best-vs-rest|all|adjacent]
    python -m data_prep prepare_preferences --oasst '' --input uf=ultrafeedback.jsonl --output_path pairs.jsonl

One pair per line: ``prompt`` (the conversation up to the prompter message, OpenAI roles), ``chosen``,
``rejected`` (reply texts) and provenance (``source``, ``id``, ``tree_id``, message ids, ranks, ``lang``).
OASST pairs come first (roots in input order, depth first), then each ``--input`` in order; exact duplicates of
(prompt, chosen, rejected) are dropped and counted. Quarantine: ``<output>.rejects.jsonl``; counts per source:
``<output>.summary.json``.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from common.cli import guard
from common.data_card import write_data_card
from common.errors import DataError
from common.files import atomic_write
from common.licenses import SOURCE_LICENSES, checked_licenses
from common.settings import build
from data_prep.accounting import Report
from data_prep.cli import parse_command, run_job
from data_prep.jobs import RunResult, input_licenses, rejects_path, source_name, summary_path
from data_prep.preference_records import preference_records
from data_prep.preferences import OasstPreferences
from data_prep.settings import PreferenceSettings

_HEADER_TAIL = re.compile(r"-> [\d,]+ conversations, [\d,]+ turns$")


@dataclass
class PreferenceResult(RunResult):
    """A ``RunResult`` with pairs written and prompts used per source."""

    pairs: Counter = field(default_factory=Counter)
    prompts: dict = field(default_factory=dict)  # source -> set of prompt keys

    def source_counts(self, name: str) -> dict:
        return {"pairs": self.pairs[name], "prompts": len(self.prompts.get(name, ()))}

    def summary_lines(self) -> list[str]:
        lines = []
        for line in super().summary_lines():
            name = line.split(":")[0]
            if name in self.report.sources and not line.startswith(" "):
                c = self.source_counts(name)
                line = _HEADER_TAIL.sub(f"-> {c['pairs']:,} pairs from {c['prompts']:,} prompts", line)
            lines.append(line)
        return lines


class PairWriter:
    """Writes pairs, dropping exact duplicates of (prompt, chosen, rejected) across all sources."""

    def __init__(self, fh, result: PreferenceResult):
        self.fh, self.result, self.seen = fh, result, set()

    def write(self, rec: dict) -> bool:
        key = hashlib.blake2b(orjson.dumps([rec["prompt"], rec["chosen"], rec["rejected"]]), digest_size=16).digest()
        if key in self.seen:
            return False
        self.seen.add(key)
        self.fh.write(orjson.dumps(rec) + b"\n")
        self.result.lines += 1
        self.result.pairs[rec["source"]] += 1
        prompt_key = hashlib.blake2b(orjson.dumps(rec["prompt"]), digest_size=16).digest()
        self.result.prompts.setdefault(rec["source"], set()).add(prompt_key)
        return True


def _oasst_pairs(s: PreferenceSettings, writer: PairWriter, report) -> None:
    """Every message ends written (prompt or reply of a written pair), filtered or rejected."""
    oasst = OasstPreferences(report, s.pairs)
    oasst.load(s.oasst, split=s.oasst_split)
    stats = oasst.stats
    for found in oasst.prompts():
        used: set[str] = set()
        for rec in found.pairs:
            if writer.write(rec):
                used.update((rec["chosen_id"], rec["rejected_id"]))
            else:
                stats.notes["duplicate pair (dropped)"] += 1
        for m in [found.prompt, *found.replies]:
            if used and (m is found.prompt or m.id in used):
                stats.written += 1
            else:
                stats.filtered["only in duplicate pairs"] += 1


def preferences_job(s: PreferenceSettings) -> PreferenceResult:
    """OASST pairs, then each ``--input``'s records, to one JSONL; rejects and the summary beside it."""
    if not s.oasst and not s.input:
        raise DataError("nothing to do: give --oasst and/or --input")
    output = Path(s.output_path)
    named = []
    for spec in s.input:
        name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        named.append((name or source_name(path), path))
    licenses, _ = input_licenses(s.license, [n for n, _ in named])
    oasst = {"oasst": SOURCE_LICENSES["oasst"]} if s.oasst else {}
    licenses = checked_licenses({**oasst, **licenses}, s.commercial_only)
    settings = {"oasst": s.oasst or None, "oasst_split": s.oasst_split, "pairs": s.pairs}
    settings.update({"inputs": [f"{n}={p}" for n, p in named], "input_split": s.input_split})
    result = PreferenceResult(output, 0, Report(strict=s.strict), settings)
    report = result.report
    with atomic_write(output) as fh:
        writer = PairWriter(fh, result)
        if s.oasst:
            _oasst_pairs(s, writer, report)
        for name, path in named:
            stats = report.source(name)
            for rec in preference_records(path, report, name, s.input_split):
                if writer.write(rec):
                    stats.written += 1
                else:
                    stats.filtered["duplicate pair"] += 1
    report.write_rejects(rejects_path(output))
    sources = {}
    for name, stats in report.sources.items():
        counts = {k: v for k, v in stats.as_dict().items() if k not in ("conversations", "turns")}
        sources[name] = {**result.source_counts(name), **counts}
    summary = {"output": str(output), "lines": result.lines, "settings": settings, "sources": sources}
    with atomic_write(summary_path(output)) as fh:
        fh.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    result.card = write_data_card(output, summary, licenses)
    bad = [name for name, stats in report.sources.items() if not stats.balanced()]
    if bad:
        raise RuntimeError(f"record accounting does not add up for {', '.join(bad)}: this is a bug, please report it")
    return result


def prepare_preferences(output: str | Path, oasst: str | None, inputs: list[str] = (), **settings) -> PreferenceResult:
    """``preferences_job`` with ``PreferenceSettings`` fields (``pairs="all"``); ``oasst=None`` skips OASST."""
    values = {"output_path": str(output), "oasst": oasst or "", "input": list(inputs), **settings}
    return preferences_job(build(PreferenceSettings, values))


def main(argv=None) -> int:
    return run_job(preferences_job, parse_command("prepare_preferences", __doc__, PreferenceSettings, argv))


if __name__ == "__main__":
    sys.exit(guard(main))
