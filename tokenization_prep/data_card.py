"""Carry data_prep's data cards through tokenization, so the tokenized data (and the model trained on it) knows its
licenses: each input's ``<input>.data_card.json`` is read and checked, and the output dir gets ``data_card.json``
(the input cards combined: licenses, share-alike, sources) and ``DATA_CARD.md``; ``metadata.yaml`` gets
``data_licenses`` (the SPDX ids; null when no input has a card).

An input without a card counts as ``NOASSERTION`` (terms unknown) once another input has one. Records' own
``license`` keys are not collected: the card is the record of the run (counts, attribution, obligations), and reading
every record again only for its license key would cost a pass over the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from common.data_card import CARD_VERSION, data_card_paths, render_markdown, share_alike_paragraph
from common.errors import DataError, UserError, first_line
from common.files import atomic_write
from common.licenses import lookup

CARD_JSON, CARD_MD = "data_card.json", "DATA_CARD.md"


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")  # a later data_prep may add facts


class CardLicense(_Model):
    id: str
    name: str
    url: str
    commercial: bool
    share_alike: bool
    attribution: bool


class CardSource(_Model):
    license: CardLicense
    attribution: str
    in_output: bool
    counts: dict[str, Any]
    steps: list[dict[str, Any]]
    languages: dict[str, int]
    pii: dict[str, int]


class InputCard(_Model):
    """The shape of data_prep's ``<output>.data_card.json`` (``common/data_card.py``)."""

    card_version: int
    output: str
    lines: int
    licenses: list[str]
    commercial_use_ok: bool
    share_alike: bool
    share_alike_obligation: str | None
    sources: dict[str, CardSource]


class SourceRef(_Model):
    input: str
    source: str
    license: str
    attribution: str
    written: int | None


class OutputCard(_Model):
    """The shape of a tokenized dir's ``data_card.json`` (what training copies into lineage.json)."""

    card_version: int
    licenses: list[str]
    commercial_use_ok: bool
    share_alike: bool
    share_alike_obligation: str | None
    inputs: list[dict[str, Any]]
    inputs_without_card: list[str]
    sources: list[SourceRef]


def _load(path: Path, model: type[_Model], fix: str) -> dict:
    """The JSON at ``path`` checked against ``model`` (and its license ids against the registry), or one DataError."""
    try:
        card = orjson.loads(path.read_bytes())
        model.model_validate(card)
    except (OSError, orjson.JSONDecodeError, ValidationError) as exc:
        raise DataError(f"{path}: not a data card ({first_line(exc)}); {fix}") from None
    if card["card_version"] > CARD_VERSION:
        raise DataError(f"{path}: card_version {card['card_version']} is newer than this code reads; update it")
    listed = card["sources"]  # data_prep's: name -> entry; the combined card's: a list naming the license id
    ids = {s["license"]["id"] for s in listed.values()} if isinstance(listed, dict) else {s["license"] for s in listed}
    try:
        for spdx in sorted(ids | set(card["licenses"])):
            lookup(spdx, "license")
    except UserError as exc:
        raise DataError(f"{path}: {exc}; {fix}") from None
    return card


def read_input_card(input_file: Path) -> dict | None:
    """data_prep's card for one input file (``<input>.data_card.json``), checked; None when it has none."""
    path = data_card_paths(input_file)[0]
    if not path.is_file():
        return None
    return _load(path, InputCard, "re-run data_prep to rewrite it, or delete it to tokenize without a card")


def combine_cards(files: list[Path]) -> dict | None:
    """The output dir's card: every input's card, the licenses' union (NOASSERTION for an input without a card),
    commercial use, share-alike and its obligation; None when no input has a card."""
    cards = [(f, read_input_card(f)) for f in files]
    if all(card is None for _, card in cards):
        return None
    missing = [f.name for f, card in cards if card is None]
    licenses = {spdx for _, card in cards if card for spdx in card["licenses"]}
    licenses |= {"NOASSERTION"} if missing else set()
    sources, holders = [], []
    for f, card in cards:
        for name, s in (card or {}).get("sources", {}).items():
            sources.append(
                {
                    "input": f.name,
                    "source": name,
                    "license": s["license"]["id"],
                    "attribution": s["attribution"],
                    "written": s["counts"].get("written"),
                }
            )
            if s["in_output"] and s["license"]["share_alike"]:
                holders.append((f"{name} in {f.name}", lookup(s["license"]["id"])))
    return {
        "card_version": CARD_VERSION,
        "licenses": sorted(licenses),
        "commercial_use_ok": not missing and all(card["commercial_use_ok"] for _, card in cards),
        "share_alike": bool(holders),
        "share_alike_obligation": share_alike_paragraph(holders),
        "inputs": [{"file": f.name, "card": card} for f, card in cards if card is not None],
        "inputs_without_card": missing,
        "sources": sources,
    }


def render_output_markdown(card: dict) -> str:
    """``DATA_CARD.md`` of a tokenized dir: the combined facts, then each input's card one heading level down."""
    lines = [
        "# Data card (tokenized data)",
        "",
        f"- Licenses: {', '.join(card['licenses'])}",
        f"- Commercial use allowed by every license: {'yes' if card['commercial_use_ok'] else 'no'}",
        f"- Share-alike: {'yes' if card['share_alike'] else 'no'}",
    ]
    if card["inputs_without_card"]:
        lines.append(f"- Inputs without a data card (license unknown): {', '.join(card['inputs_without_card'])}")
    if card["share_alike_obligation"]:
        lines += ["", "## Share-alike obligation", "", card["share_alike_obligation"]]
    lines += ["", "## Sources", "", "| input | source | license | written |", "|---|---|---|---:|"]
    lines += [f"| {s['input']} | {s['source']} | {s['license']} | {s['written']:,} |" for s in card["sources"]]
    for entry in card["inputs"]:
        md = render_markdown(entry["card"], title=f"Input {entry['file']}")
        lines += [""] + ["#" + line if line.startswith("#") else line for line in md.splitlines()]
    return "\n".join(lines) + "\n"


def write_output_card(out: Path, files: list[Path]) -> list[str] | None:
    """Write ``data_card.json`` and ``DATA_CARD.md`` into the output dir from the inputs' cards (nothing when none
    has one); return the licenses for metadata.yaml's ``data_licenses`` (None without a card). Call it before
    ``write_manifest``, which then lists both files."""
    card = combine_cards(files)
    if card is None:
        return None
    with atomic_write(out / CARD_JSON) as fh:
        fh.write(orjson.dumps(card, option=orjson.OPT_INDENT_2) + b"\n")
    with atomic_write(out / CARD_MD, "w") as fh:
        fh.write(render_output_markdown(card))
    return card["licenses"]


def read_output_card(directory: Path) -> dict | None:
    """A tokenized dir's ``data_card.json``, checked; None when it has none."""
    path = Path(directory) / CARD_JSON
    if not path.is_file():
        return None
    return _load(path, OutputCard, "re-run tokenization_prep to rewrite it")


def report_summary(card: dict | None) -> dict | None:
    """What data_report.md/.json say of the card: the licenses, and per source its license, records written and
    language mix (BLOOMChat's data is multilingual: this is where a user sees it)."""
    if card is None:
        return None
    sources = []
    for entry in card["inputs"]:
        for name, s in entry["card"]["sources"].items():
            sources.append(
                {
                    "input": entry["file"],
                    "source": name,
                    "license": s["license"]["id"],
                    "written": s["counts"].get("written"),
                    "languages": s["languages"],
                }
            )
    return {"licenses": card["licenses"], "share_alike": card["share_alike"], "sources": sources}


def report_lines(summary: dict | None) -> list[str]:
    """data_report.md's section for ``report_summary``: one row per source, the top languages with their counts."""
    if summary is None:
        return []
    lines = ["", f"Data card (DATA_CARD.md): licenses {', '.join(summary['licenses'])}"]
    lines += ["| input | source | license | written | languages |", "|---|---|---|---:|---|"]
    for s in summary["sources"]:
        langs = sorted(s["languages"].items(), key=lambda kv: (-kv[1], kv[0]))
        mix = ", ".join(f"{code} {n:,}" for code, n in langs[:6])
        mix += f" (+{len(langs) - 6} more)" if len(langs) > 6 else ""
        lines.append(f"| {s['input']} | {s['source']} | {s['license']} | {s['written'] or 0:,} | {mix or '-'} |")
    return lines
