"""prepare_oa_dolly on the bundled real Dolly and OASST files, checked against BLOOMChat's rules."""

import gzip
import json

import pytest

from common.chat_format import join_pairs
from data_prep.oasst import OasstFilters
from data_prep.pipeline import prepare_oa_dolly
from tests.conftest import DOLLY, OASST_ROWS, OASST_TREES


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


def test_bloomchat_format_is_byte_identical_to_bloomchat(tmp_path, real_rows):
    out = tmp_path / "oasst1_dolly.jsonl"
    result = prepare_oa_dolly(out, str(DOLLY), str(OASST_ROWS), fmt="bloomchat")
    expected = bloomchat_reference(*real_rows)
    got = out.read_text(encoding="ascii").split("\n")
    assert got[-1] == "" and got[:-1] == expected
    assert len(expected) == 188 + 15_015
    oasst, dolly = result.report.sources["oasst"], result.report.sources["dolly"]
    assert dolly.read == dolly.written == 15_015
    assert oasst.read == 2_022 and sum(oasst.rejected.values()) == 3 and oasst.balanced()


def test_pairs_format_reads_as_bloomchat_text(tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = prepare_oa_dolly(out, str(DOLLY), str(OASST_ROWS), fmt="pairs")
    lines = [json.loads(line) for line in out.open(encoding="utf-8")]
    ref = prepare_oa_dolly(tmp_path / "ref.jsonl", str(DOLLY), str(OASST_ROWS), fmt="bloomchat")
    ref_texts = [json.loads(line)["completion"] for line in (tmp_path / "ref.jsonl").open()]
    # BLOOMChat keeps conversations that end with an unanswered prompt; pairs drop that last turn.
    pair_texts = [join_pairs(p) for p in lines]
    n_oasst = len(lines) - 15_015
    assert pair_texts[n_oasst:] == ref_texts[188:]
    answered = [t for t in ref_texts[:188] if "\n<bot>: " in t]
    assert len(answered) == n_oasst
    for text, ref_text in zip(pair_texts[:n_oasst], answered):
        assert ref_text == text or ref_text.startswith(text + "\n<human>: ")
    dolly_line = lines[-1][0]
    assert dolly_line["source"] == "dolly" and dolly_line["category"]
    assert dolly_line["prompt"].endswith("\n<bot>:")
    oasst = result.report.sources["oasst"]
    assert oasst.filtered["unanswered prompt (no reply)"] > 0 and oasst.balanced()
    assert ref.report.sources["oasst"].conversations == 188


def test_trees_export_and_modes(tmp_path):
    best = prepare_oa_dolly(tmp_path / "a.jsonl", None, str(OASST_TREES))
    s = best.report.sources["oasst"]
    assert s.read == 1_167 and s.balanced() and s.conversations == 100
    leaves = prepare_oa_dolly(tmp_path / "b.jsonl", None, str(OASST_TREES), oasst_mode="all-leaves")
    s2 = leaves.report.sources["oasst"]
    # every message lies on some root-to-leaf path: written unless it is an unanswered leaf prompt
    assert s2.written + s2.filtered["unanswered prompt (no reply)"] == 1_167
    assert s2.conversations > 100 and s2.balanced()
    ranked = prepare_oa_dolly(tmp_path / "c.jsonl", None, str(OASST_TREES), oasst_mode="rank")
    assert ranked.report.sources["oasst"].conversations == 100
    trees = [json.loads(line) for line in OASST_TREES.open()]
    first = trees[1]["prompt"]
    best_rank = min(first["replies"], key=lambda r: (r.get("rank") is None, r.get("rank") or 0))
    second_line = json.loads((tmp_path / "c.jsonl").read_text().split("\n")[1])
    assert second_line[0]["completion"] == best_rank["text"]


def test_filters_and_dedup(tmp_path):
    result = prepare_oa_dolly(tmp_path / "f.jsonl", None, str(OASST_ROWS), oasst_filters=OasstFilters(langs=("de",)))
    s = result.report.sources["oasst"]
    assert s.written == 0 and s.filtered["lang not in de"] == 188 and s.balanced()
    kept = prepare_oa_dolly(
        tmp_path / "g.jsonl", None, str(OASST_ROWS), oasst_filters=OasstFilters(drop_deleted=True)
    ).report.sources["oasst"]
    assert kept.filtered["deleted"] > 0 and kept.balanced()
    doubled = tmp_path / "doubled.jsonl"
    with gzip.open(DOLLY, "rb") as fh:
        head = [next(fh) for _ in range(100)]
    doubled.write_bytes(b"".join(head * 2))
    res = prepare_oa_dolly(tmp_path / "d.jsonl", str(doubled), None, dedup=True)
    d = res.report.sources["dolly"]
    assert d.read == 200 and d.written == 100 and d.filtered["duplicate"] == 100
