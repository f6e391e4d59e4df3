"""The data report: a metrics table (printed and saved), the realized source mix (table and mix.png), the dropped
and truncated articles with their input lines, and PNG histograms of article lengths and fill."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from common.files import atomic_write
from common.plots import pyplot, save_png
from tokenization_prep.data_card import report_lines as card_report_lines


def metrics_table(splits: dict) -> list[str]:
    """Markdown table rows: sequences, articles, tokens by type, padding %, tokens dropped by reason."""
    names = list(splits)
    rows = [
        ("lines", lambda m: m.lines),
        ("skipped lines", lambda m: m.skipped_lines),
        ("articles", lambda m: m.articles),
        ("sequences", lambda m: m.sequences),
    ]
    for kind in ("prompt", "completion", "end_of_article", "padding"):
        rows.append((f"{kind} tokens", lambda m, k=kind: m.tokens[k]))
    rows.append(("padding %", lambda m: f"{100 * m.tokens['padding'] / max(1, sum(m.tokens.values())):.2f}"))
    reasons = sorted({r for m in splits.values() for r in m.dropped})
    for reason in reasons:
        rows.append((f"dropped: {reason}", lambda m, r=reason: m.dropped[r]))
    out = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, fn in rows:
        cells = [fn(splits[n]) for n in names]
        out.append(f"| {label} | " + " | ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in cells) + " |")
    return out


def source_table(splits: dict) -> list[str]:
    out = ["| split | source | prompt | completion | end_of_article |", "|---|---|---:|---:|---:|"]
    for name, m in splits.items():
        for src, c in sorted(m.by_source.items()):
            out.append(f"| {name} | {src} | {c['prompt']:,} | {c['completion']:,} | {c['end_of_article']:,} |")
    return out


def mix_table(splits: dict) -> list[str]:
    """Per split and source: requested and realized shares of the supervised tokens, tokens, articles, repeats."""
    out = [
        "| split | source | requested | realized | supervised tokens | articles | repeats |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in splits.items():
        for src, r in sorted((m.mix or {}).items()):
            req = "-" if r["requested"] is None else f"{100 * r['requested']:.2f}%"
            out.append(
                f"| {name} | {src} | {req} | {100 * r['realized']:.2f}% | {r['supervised_tokens']:,} | "
                f"{r['articles']:,} | {r['repeats']:g} |"
            )
    return out


def lost_table(splits: dict, limit: int = 10) -> list[str]:
    """Dropped and truncated articles with their input lines (the first ``limit`` a split; all in the JSON)."""
    out = ["| split | status | origin | source | id | tokens | kept | reason |", "|---|---|---|---|---|---:|---:|---|"]
    more = []
    for name, m in splits.items():
        for r in m.lost[:limit]:
            out.append(
                f"| {name} | {r['status']} | {r['file']}:{r['line']} | {r['source'] or '-'} | {r['id'] or '-'} "
                f"| {r['tokens']:,} | {r['tokens_kept']:,} | {r['reason']} |"
            )
        if len(m.lost) > limit:
            more.append(f"{name}: {len(m.lost) - limit:,} more")
    if more:
        out.append(f"\n({'; '.join(more)}: all under splits.*.lost_articles in data_report.json)")
    return out if len(out) > 2 else ["no article lost tokens"]


def leakage_lines(leakage: dict | None, limit: int = 10) -> list[str]:
    """``--dev_leakage``: the counts and the first ``limit`` leaks with the train line each matched (all in the
    JSON); nothing when the check is off."""
    if leakage is None:
        return []
    if not leakage["checked"]:  # no dev or test split: nothing to check
        return ["", f"Dev-split leakage ({leakage['mode']}): no dev or test lines to check."]
    verb = "moved" if leakage["mode"] == "move" else "dropped"
    out = [
        "",
        f"Dev-split leakage ({leakage['mode']}: estimated Jaccard >= {leakage['threshold']} on "
        f"{leakage['shingle_words']}-word shingles, against {leakage['train_lines_indexed']:,} train lines):",
        f"| split | lines checked | {verb} |",
        "|---|---:|---:|",
    ]
    out += [f"| {s} | {n:,} | {leakage[verb][s]:,} |" for s, n in leakage["checked"].items()]
    if leakage["lines"]:
        out += ["", f"| split | {verb} line | near-duplicate of train line | estimated Jaccard |", "|---|---|---|---:|"]
        out += [
            f"| {k['split']} | {k['file']}:{k['line']} | {k['train_file']}:{k['train_line']} | {k['jaccard']:.3f} |"
            for k in leakage["lines"][:limit]
        ]
        if len(leakage["lines"]) > limit:
            out.append(f"\n({len(leakage['lines']) - limit:,} more under leakage.lines in data_report.json)")
    return out


def plot_mix(splits: dict, out_dir: Path) -> Path:
    """mix.png: requested vs realized share of supervised tokens per source of the training split."""
    plt = pyplot()
    mix = (splits.get("train") or next(iter(splits.values()))).mix or {}
    names = sorted(mix)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 4))
    x = np.arange(len(names))
    if any(mix[n]["requested"] is not None for n in names):
        ax.bar(x - 0.2, [100 * (mix[n]["requested"] or 0) for n in names], 0.4, label="requested")
    ax.bar(x + 0.2, [100 * mix[n]["realized"] for n in names], 0.4, label="realized")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("% of supervised tokens (train)")
    ax.legend()
    return save_png(fig, out_dir / "mix.png")


def plot_histograms(splits: dict, max_len: int, out_dir: Path) -> list[Path]:
    """article_lengths.png and sequence_fill.png (written atomically)."""
    plt = pyplot()
    paths = []
    for fname, attr, xlabel in (
        ("article_lengths.png", "article_lengths", "tokens per article"),
        ("sequence_fill.png", "fill", "non-padding fraction of a sequence"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, m in splits.items():
            values = np.asarray(getattr(m, attr))  # buffer view: no Python objects per value
            if len(values):
                ax.hist(values, bins=50, alpha=0.6, label=f"{name} ({len(values):,})")
        if attr == "article_lengths":
            ax.axvline(max_len, color="k", linestyle="--", label=f"max_seq_length {max_len}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        ax.legend()
        paths.append(save_png(fig, out_dir / fname))
    return paths


def write_report(splits: dict, max_len: int, out_dir: Path, extra: dict) -> list[str]:
    """Write data_report.md / .json and the PNGs; return the lines to print."""
    lines = (
        metrics_table(splits)
        + [""]
        + source_table(splits)
        + ["", "Source mix (shares of supervised tokens):"]
        + mix_table(splits)
        + ["", "Dropped and truncated articles:"]
        + lost_table(splits)
        + leakage_lines(extra.get("leakage"))
        + card_report_lines(extra.get("data_card"))
    )
    with atomic_write(out_dir / "data_report.md", "w") as fh:
        fh.write("# Data report\n\n" + "\n".join(lines) + "\n")
    data = {
        "splits": {n: m.as_dict() for n, m in splits.items()},
        "mix": (splits.get("train") or next(iter(splits.values()))).mix,
        **extra,
    }
    with atomic_write(out_dir / "data_report.json") as fh:
        fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    plot_histograms(splits, max_len, out_dir)
    plot_mix(splits, out_dir)
    return lines
