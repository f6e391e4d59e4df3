"""The data card of a data_prep output: what went in, under which license, and what each filter removed, so a user
knows whether they may ship a model trained on it. Written beside the output as ``<output>.data_card.json`` (for
tokenization_prep and training to carry on) and ``<output>.DATA_CARD.md`` (for people), from the job's summary.

Per source: its license (id, name, url, commercial use, share-alike, attribution), the attribution text, the record
count after each step (read -> each rejected reason -> each filtered reason -> written), the language mix and the
PII found. Overall: the licenses of the data written, whether all allow commercial use, and the share-alike
obligation paragraph when a share-alike license (CC BY-SA's) is among them.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from common.files import atomic_write
from common.licenses import SOURCE_LICENSES, License, attribution, bundled_source, lookup

CARD_VERSION = 1


def data_card_paths(output: str | Path) -> tuple[Path, Path]:
    """``(<output>.data_card.json, <output>.DATA_CARD.md)``."""
    output = Path(output)
    return output.with_name(output.name + ".data_card.json"), output.with_name(output.name + ".DATA_CARD.md")


def count_steps(stats: dict) -> list[dict]:
    """Records left after each step: read, each rejected reason, each filtered reason (summary order), written.

    >>> count_steps({"read": 10, "written": 7, "rejected": {"bad json": 1}, "filtered": {"pii": 2}})[-2:]
    [{'step': 'filtered: pii', 'removed': 2, 'records': 7}, {'step': 'written', 'records': 7}]
    """
    left = stats["read"]
    steps = [{"step": "read", "records": left}]
    for kind in ("rejected", "filtered"):
        for reason, n in stats.get(kind, {}).items():
            left -= n
            steps.append({"step": f"{kind}: {reason}", "removed": n, "records": left})
    steps.append({"step": "written", "records": stats["written"]})
    return steps


def share_alike_paragraph(holders: list[tuple[str, License]]) -> str | None:
    """The obligation share-alike licenses put on whoever distributes the data (None when no source has one)."""
    if not holders:
        return None
    which = ", ".join(f"{source} ({lic.spdx})" for source, lic in holders)
    ids = ", ".join(sorted({lic.spdx for _, lic in holders}))
    return (
        f"This data includes share-alike material: {which}. If you distribute it, or material adapted from it (this "
        f"file, its tokenized form, any mix containing it), you must share that under the same license ({ids}, or one "
        "its terms name as compatible), give the attribution below and say what you changed. Whether a model "
        "trained on it is adapted material is a legal question this card does not settle."
    )


def source_entry(name: str, stats: dict, lic: License) -> dict:
    """One source's card section from its summary counts."""
    steps = count_steps(stats)
    entry = {
        "license": lic.as_dict(),
        "attribution": attribution(name, lic),
        "in_output": stats["written"] > 0,
        "counts": {
            "read": stats["read"],
            "rejected": stats.get("rejected", {}),
            "filtered": stats.get("filtered", {}),
            "written": stats["written"],
            "conversations": stats.get("conversations", 0),
            "turns": stats.get("turns", 0),
        },
        "steps": steps,
        "balanced": steps[-2]["records"] == stats["written"],
        "languages": dict(sorted(stats.get("languages", {}).items(), key=lambda kv: (-kv[1], kv[0]))),
        "pii": dict(sorted(stats.get("pii", {}).items())),
    }
    if "near_dup_clusters" in stats:
        entry["near_dup_clusters"] = stats["near_dup_clusters"]
    return entry


def build_card(summary: dict, licenses: dict[str, str]) -> dict:
    """The card dict from a job summary (``<output>.summary.json``) and each source's SPDX id (a source missing
    there gets its bundled license, else NOASSERTION)."""
    sources, holders, used = {}, [], []
    for name, stats in summary["sources"].items():
        bundled = bundled_source(name)
        lic = lookup(licenses.get(name) or (SOURCE_LICENSES[bundled] if bundled else "NOASSERTION"), "--license")
        sources[name] = source_entry(name, stats, lic)
        if stats["written"] > 0:
            used.append(lic)
            if lic.share_alike:
                holders.append((name, lic))
    return {
        "card_version": CARD_VERSION,
        "output": summary["output"],
        "lines": summary["lines"],
        "licenses": sorted({lic.spdx for lic in used}),
        "commercial_use_ok": all(lic.commercial for lic in used),
        "share_alike": bool(holders),
        "share_alike_obligation": share_alike_paragraph(holders),
        "sources": sources,
        "settings": summary.get("settings", {}),
        "quality": summary.get("quality", {}),
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _mix(counts: dict, unit: str = "") -> str:
    return ", ".join(f"{k} {v:,}{unit}" for k, v in counts.items()) or "none"


def _step_row(step: dict) -> str:
    removed = f"{step['removed']:,}" if "removed" in step else ""
    return f"| {step['step']} | {removed} | {step['records']:,} |"


def render_markdown(card: dict, title: str | None = None) -> str:
    """``DATA_CARD.md``: the card for people (the JSON holds the same facts)."""
    out = [
        f"# {title or 'Data card: ' + Path(card['output']).name}",
        "",
        f"{card['lines']:,} lines written to `{card['output']}`.",
        "",
        f"- Licenses of the data written: {', '.join(card['licenses']) or 'none'}",
        f"- Commercial use allowed by every license: {_yes(card['commercial_use_ok'])}",
        f"- Share-alike: {_yes(card['share_alike'])}",
    ]
    if card["share_alike_obligation"]:
        out += ["", "## Share-alike obligation", "", card["share_alike_obligation"]]
    out += ["", "## Sources"]
    for name, s in card["sources"].items():
        lic = s["license"]
        out += [
            "",
            f"### {name}: {lic['id']}",
            "",
            f"License: [{lic['name']}]({lic['url']}); commercial use: {_yes(lic['commercial'])}; share-alike: "
            f"{_yes(lic['share_alike'])}; attribution required: {_yes(lic['attribution'])}"
            + (f"; {lic['note']}" if lic["note"] else ""),
            "",
            f"Attribution: {s['attribution']}",
            "",
            "| step | removed | records left |",
            "|---|---:|---:|",
        ]
        out += [_step_row(st) for st in s["steps"]]
        out += [
            "",
            f"Conversations {s['counts']['conversations']:,}, turns {s['counts']['turns']:,}. "
            f"Languages (conversations written): {_mix(s['languages'])}. PII found: {_mix(s['pii'])}."
            + (f" Near-duplicate clusters: {s['near_dup_clusters']:,}." if "near_dup_clusters" in s else ""),
        ]
    out += ["", "## Settings", "", "```json", json.dumps(card["settings"], indent=2, sort_keys=True), "```"]
    if card["quality"]:
        out += ["", "## Quality pass", "", "```json", json.dumps(card["quality"], indent=2, sort_keys=True), "```"]
    return "\n".join(out) + "\n"


def write_data_card(output: str | Path, summary: dict, licenses: dict[str, str]) -> dict:
    """Build the card, write ``<output>.data_card.json`` and ``<output>.DATA_CARD.md`` atomically; return the card."""
    data = orjson.dumps(build_card(summary, licenses), option=orjson.OPT_INDENT_2) + b"\n"
    card = orjson.loads(data)  # as the file holds it (tuples in settings become lists)
    json_path, md_path = data_card_paths(output)
    with atomic_write(json_path) as fh:
        fh.write(data)
    with atomic_write(md_path, "w") as fh:
        fh.write(render_markdown(card))
    return card


def card_lines(card: dict) -> list[str]:
    """A few lines for the CLI summary: licenses, commercial use, share-alike, where the card is."""
    json_path, md_path = data_card_paths(card["output"])
    per_source = "; ".join(
        f"{name} {s['license']['id']} ({s['counts']['written']:,} written)" for name, s in card["sources"].items()
    )
    lines = [
        f"licenses: {', '.join(card['licenses']) or 'none'} -- {per_source}",
        "commercial use: allowed by every license"
        if card["commercial_use_ok"]
        else "commercial use: NOT allowed by every license (see the card)",
    ]
    if card["share_alike"]:
        ids = sorted({s["license"]["id"] for s in card["sources"].values() if s["license"]["share_alike"]})
        lines.append(
            f"share-alike ({', '.join(ids)}): distribute this data and what is adapted from it under the same license"
        )
    lines.append(f"data card: {md_path} (and {json_path.name})")
    return lines
