"""prepare_oa_dolly on the bundled real Dolly and OASST files, checked against BLOOMChat's rules."""

import gzip
import json

import pytest

from common.chat_format import join_pairs
from data_prep.jobs import prepare_oa_dolly
from tests.conftest import DOLLY, OASST_ROWS, OASST_TREES

# BLOOMChat's choices: every OASST message kept whatever its labels, no PII scrub, no near-duplicate removal (the
# quality pass's defaults are tested in test_quality.py and test_oasst_labels.py)
BLOOMCHAT = {"oasst_keep_flagged": True, "quality": {"near_dup": False, "pii": "off"}}


def bloomchat_reference(oasst_rows, dolly_rows):
    """An independent re-statement of BLOOMChat's prepare_oa_dolly.py algorithm (orphans skipped)."""
    by_id = {r["message_id"]: dict(r, kids=[]) for r in oasst_rows}
    for r in by_id.values():
        if r["parent_id"] is not None and r["parent_id"] in by_id:
            by_id[r["parent_id"]]["kids"].append(r["message_id"])

    def score(r):
        e = r["emojis"]
        if e is None:
            return 0
        s = e["count"][e["name"].index("+1")] if "+1" in e["name"] else 0
        return s - (e["count"][e["name"].index("-1")] if "-1" in e["name"] else 0)

    texts = []
    for r in by_id.values():
        if r["parent_id"] is not None:
            continue
        path, node = [r], r
        while node["kids"]:
            node = max((by_id[k] for k in node["kids"]), key=score)
            path.append(node)
        tags = {"assistant": "<bot>", "prompter": "<human>"}
        texts.append("".join(f"\n{tags[m['role']]}: {m['text']}" for m in path).strip())
    for d in dolly_rows:
        ctx = "" if d["context"] == "" else "\n" + d["context"]
        texts.append(f"<human>: {d['instruction']}{ctx}\n<bot>: {d['response']}")
    return [json.dumps({"prompt": "", "completion": t}) for t in texts]


@pytest.fixture(scope="module")
def real_rows():
    oasst = [json.loads(line) for line in OASST_ROWS.open(encoding="utf-8")]
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        dolly = [json.loads(line) for line in fh]
    return oasst, dolly


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    """The real Dolly + OASST files in both formats: {format: (result, output path)}."""
    base = tmp_path_factory.mktemp("oa_dolly")
    return {
        fmt: (
            prepare_oa_dolly(base / f"{fmt}.jsonl", str(DOLLY), str(OASST_ROWS), format=fmt, **BLOOMCHAT),
            base / f"{fmt}.jsonl",
        )
        for fmt in ("bloomchat", "pairs")
    }


def test_bloomchat_format_is_byte_identical_to_bloomchat(both_formats, real_rows):
    _, out = both_formats["bloomchat"]
    expected = bloomchat_reference(*real_rows)
    got = out.read_text(encoding="ascii").split("\n")
    assert got[-1] == "" and got[:-1] == expected
    assert len(expected) == 188 + 15_015


def test_bloomchat_counts_every_record(both_formats):
    result, _ = both_formats["bloomchat"]
    oasst, dolly = result.report.sources["oasst"], result.report.sources["dolly"]
    assert dolly.read == dolly.written == 15_015
    assert oasst.read == 2_022 and sum(oasst.rejected.values()) == 3 and oasst.balanced()
    assert oasst.conversations == 188


@pytest.fixture(scope="module")
def pair_texts(both_formats):
    """(pairs lines, each read back as text, the bloomchat texts of the same input)."""
    pairs = [json.loads(line) for line in both_formats["pairs"][1].open(encoding="utf-8")]
    ref_texts = [json.loads(line)["completion"] for line in both_formats["bloomchat"][1].open()]
    return pairs, [join_pairs(p) for p in pairs], ref_texts


def test_pairs_dolly_lines_read_as_bloomchat_text(pair_texts):
    pairs, texts, ref_texts = pair_texts
    n_oasst = len(pairs) - 15_015
    assert texts[n_oasst:] == ref_texts[188:]


def test_pairs_drop_only_an_unanswered_last_prompt(pair_texts, both_formats):
    """BLOOMChat keeps conversations that end with an unanswered prompt; pairs drop that last turn."""
    pairs, texts, ref_texts = pair_texts
    n_oasst = len(pairs) - 15_015
    answered = [t for t in ref_texts[:188] if "\n<bot>: " in t]
    assert len(answered) == n_oasst
    for text, ref_text in zip(texts[:n_oasst], answered):
        assert ref_text == text or ref_text.startswith(text + "\n<human>: ")
    oasst = both_formats["pairs"][0].report.sources["oasst"]
    assert oasst.filtered["unanswered prompt (no reply)"] > 0 and oasst.balanced()


def test_pairs_carry_source_and_category(pair_texts):
    pairs, _, _ = pair_texts
    dolly_line = pairs[-1][0]
    assert dolly_line["source"] == "dolly" and dolly_line["category"]
    assert dolly_line["prompt"].endswith("\n<bot>:")


def test_trees_export_best_mode(tmp_path):
    s = prepare_oa_dolly(tmp_path / "a.jsonl", None, str(OASST_TREES), **BLOOMCHAT).report.sources["oasst"]
    assert s.read == 1_167 and s.balanced() and s.conversations == 100


def test_all_leaves_mode_writes_every_answered_path(tmp_path):
    s = prepare_oa_dolly(
        tmp_path / "b.jsonl", None, str(OASST_TREES), oasst_mode="all-leaves", **BLOOMCHAT
    ).report.sources["oasst"]
    # every message lies on some root-to-leaf path: written unless it is an unanswered leaf prompt
    assert s.written + s.filtered["unanswered prompt (no reply)"] == 1_167
    assert s.conversations > 100 and s.balanced()


def test_rank_mode_follows_the_best_rank(tmp_path):
    ranked = prepare_oa_dolly(tmp_path / "c.jsonl", None, str(OASST_TREES), oasst_mode="rank", **BLOOMCHAT)
    assert ranked.report.sources["oasst"].conversations == 100
    trees = [json.loads(line) for line in OASST_TREES.open()]
    first = trees[1]["prompt"]
    best_rank = min(first["replies"], key=lambda r: (r.get("rank") is None, r.get("rank") or 0))
    second_line = json.loads((tmp_path / "c.jsonl").read_text().split("\n")[1])
    assert second_line[0]["completion"] == best_rank["text"]


def test_lang_filter(tmp_path):
    result = prepare_oa_dolly(tmp_path / "f.jsonl", None, str(OASST_ROWS), oasst_lang=["de"])
    s = result.report.sources["oasst"]
    assert s.written == 0 and s.filtered["lang not in de"] == 188 and s.balanced()


def test_drop_deleted_filter(tmp_path):
    kept = prepare_oa_dolly(tmp_path / "g.jsonl", None, str(OASST_ROWS), oasst_drop_deleted=True)
    assert kept.report.sources["oasst"].filtered["deleted"] > 0 and kept.report.sources["oasst"].balanced()


def test_dedup_drops_exact_repeats(tmp_path):
    doubled = tmp_path / "doubled.jsonl"
    with gzip.open(DOLLY, "rb") as fh:
        head = [next(fh) for _ in range(100)]
    doubled.write_bytes(b"".join(head * 2))
    res = prepare_oa_dolly(tmp_path / "d.jsonl", str(doubled), None, dedup=True)
    d = res.report.sources["dolly"]
    assert d.read == 200 and d.written == 100 and d.filtered["duplicate"] == 100
