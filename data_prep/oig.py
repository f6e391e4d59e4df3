"""LAION OIG converter: ``{"text": "<human>: ...\\n<bot>: ...", "metadata": {"source": ...}}`` lines -> conversations.

Per file, a seeded reservoir sample of N valid lines (a true uniform sample in one streaming pass,
memory bounded by N, not the head of the file), the ``prosocial`` source filter, and BLOOMChat's
file list. The caller shuffles the union with a seed (and may upweight ``unified_basic``).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Iterator

from common.chat_format import HUMAN, Conversation, parse_text, validate_turns
from common.errors import DataError
from common.files import looks_like_hub_id
from data_prep.accounting import Report
from data_prep.readers import RawRecord, iter_file, iter_hub

OIG_HUB_ID = "laion/OIG"
DEFAULT_SAMPLE = 100_000
BASIC_FILE = "unified_basic.jsonl"
BASIC_UPWEIGHT = 1001  # BLOOMChat appends each unified_basic line 1 + 1000 times
# BLOOMChat's 25 files, with the real spelling of unified_unnatural_instructions.jsonl.
BLOOMCHAT_OIG_FILES = (
    "unified_multi_news.jsonl",
    "unified_openai_summarize_tldr.jsonl",
    "unified_scitldr.jsonl",
    "unified_oa_v3_fixed_plus_safety_fixed.jsonl",
    "unified_soda_dialog.jsonl",
    "unified_unifiedskg_instructions_v2.jsonl",
    "unified_cot_instructions.jsonl",
    "unified_unnatural_instructions.jsonl",
    "unified_squad_v2.jsonl",
    "unified_conv_finqa.jsonl",
    "unified_nq.jsonl",
    "unified_plot_screenplay_books_dialog.jsonl",
    "unified_oscar_en_sample_dialog.jsonl",
    "unified_ul2_plus_oscar_en_sample_dialog.jsonl",
    "unified_essays.jsonl",
    "unified_merged_code_xp3.jsonl",
    "unified_grade_school_math_instructions.jsonl",
    "unified_poetry_instructions.jsonl",
    "unified_chip2.jsonl",
    "unified_joke_explanations.jsonl",
    "unified_cuad.jsonl",
    "unified_p3.jsonl.gz",
    "unified_ni.jsonl.gz",
    "unified_flan.jsonl.gz",
    BASIC_FILE,
)


def oig_source_name(file_name: str) -> str:
    """``unified_p3.jsonl.gz`` -> ``unified_p3``: the per-file source name in reports and metadata."""
    return file_name.split(".")[0]


def resolve_oig_inputs(
    spec: str, names: tuple[str, ...] = BLOOMCHAT_OIG_FILES, strict: bool = False
) -> list[tuple[str, Iterator[RawRecord]]]:
    """(file name, record stream) for a hub id, a single file, or a directory of OIG files.

    Missing files of ``names`` are listed in one warning, or raise with ``strict``.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return [(path.name, iter_file(path))]
    if path.is_dir():
        found, missing = [], []
        for name in names:
            candidates = [path / name, path / (name + ".gz"), path / name.removesuffix(".gz")]
            hit = next((c for c in candidates if c.is_file()), None)
            (found if hit else missing).append((name, hit))
        if missing:
            msg = f"{spec}: {len(missing)} of {len(names)} OIG files missing: " + ", ".join(n for n, _ in missing)
            if strict:
                raise DataError(msg + " (add them, or run without --strict to skip them)")
            print(f"warning: {msg}", file=sys.stderr)
        if not found:
            raise DataError(f"{spec}: none of the {len(names)} OIG files is in this directory")
        return [(name, iter_file(hit)) for name, hit in found]
    if looks_like_hub_id(spec):
        return [(name, iter_hub(spec, data_files=name)) for name in names]
    raise DataError(f"{spec}: no such file or directory (and not a hub id of the form owner/name)")


def oig_conversation(obj: dict, conv_id: str, source: str) -> tuple[Conversation | None, str | None]:
    """Parse one OIG line into a conversation (trailing unanswered human turn dropped), or say why not."""
    text = obj.get("text")
    if not isinstance(text, str):
        return None, "missing field 'text'" if text is None else "field 'text' is not a string"
    if not text.strip():
        return None, "empty or blank text"
    turns, reason = parse_text(text)
    if reason:
        return None, reason
    if turns and turns[-1].role == HUMAN and len(turns) > 1:
        turns = turns[:-1]
    reason = validate_turns(turns)
    if reason:
        return None, reason
    return Conversation(turns, source=source, id=conv_id), None


def meta_source(obj: dict) -> str | None:
    """OIG's own source tag: ``metadata.source`` (``meta.source`` in some dumps)."""
    for key in ("metadata", "meta"):
        meta = obj.get(key)
        if isinstance(meta, dict) and isinstance(meta.get("source"), str):
            return meta["source"]
    return None


def sample_oig_file(
    name: str, records: Iterator[RawRecord], report: Report, n: int, seed: int, drop_prosocial: bool = True
) -> list[Conversation]:
    """Reservoir-sample ``n`` valid conversations of one file, returned in file order."""
    source = oig_source_name(name)
    stats = report.source(source)
    rng = random.Random(f"{seed}:{name}")
    reservoir: list[tuple[int, Conversation]] = []
    seen = 0
    try:
        for rec in records:
            stats.read += 1
            if rec.error:
                report.reject(source, rec.file, rec.line, rec.error)
                continue
            if drop_prosocial and meta_source(rec.obj) == "prosocial":
                stats.filtered["prosocial source"] += 1
                continue
            conv, reason = oig_conversation(rec.obj, f"{source}-{rec.line}", source)
            if reason:
                report.reject(source, rec.file, rec.line, reason)
                continue
            if seen < n:
                reservoir.append((seen, conv))
            else:
                j = rng.randrange(seen + 1)
                if j < n:
                    reservoir[j] = (seen, conv)
                stats.filtered["not sampled"] += 1
            seen += 1
    except DataError as exc:
        if report.strict:
            raise
        print(f"warning: skipping {name}: {exc}", file=sys.stderr)
        stats.notes["file unavailable"] += 1
    reservoir.sort(key=lambda item: item[0])
    return [conv for _, conv in reservoir]
