"""Preference pairs from OASST1's ranked siblings (bundled real data) and from held records; bad input quarantined.

The OASST checks parse the raw file here, independently of data_prep.oasst, and hold every pair against it.
"""

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from common.chat_format import escape_role_tags
from common.errors import DataError
from data_prep.preferences import PAIR_MODES
from data_prep.prepare_preferences import prepare_preferences
from tests.conftest import OASST_ROWS, OASST_TREES, ROOT

HELD = Path(__file__).parent / "preferences" / "held.jsonl"
ROLES = {"prompter": "user", "assistant": "assistant"}


def rows(path: Path) -> list:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def raw_messages(path: Path) -> dict:
    """message_id -> message dict (with parent_id) from a flat export or a nested trees export."""
    out = {}
    for obj in rows(path):
        stack = [(obj["prompt"], None)] if "prompt" in obj else [(obj, obj["parent_id"])]
        while stack:
            m, parent = stack.pop()
            out[m["message_id"]] = {**m, "parent_id": parent}
            stack.extend((r, m["message_id"]) for r in reversed(m.get("replies", [])))
    return out


def expected_pairs(msgs: dict) -> dict:
    """mode -> [(prompt_id, chosen_id, rejected_id)] computed from the raw ranks: per reachable prompt with no
    deleted message on its path, the undeleted, untied ranked replies (a text equal to a better one's left out);
    in the output order (roots in input order, depth first with children in input order, then by ranks)."""
    kids = defaultdict(list)
    for m in msgs.values():
        kids[m["parent_id"]].append(m)
    out = {mode: [] for mode in PAIR_MODES}
    stack = [(r, False) for r in reversed(kids[None])]
    while stack:
        m, deleted_above = stack.pop()
        deleted = deleted_above or m["deleted"]
        stack.extend((k, deleted) for k in reversed(kids[m["message_id"]]))
        if m["role"] != "prompter" or deleted:
            continue
        ranks = defaultdict(list)
        for r in kids[m["message_id"]]:
            if r["role"] == "assistant" and not r["deleted"] and r.get("rank") is not None:
                ranks[r["rank"]].append(r)
        best = []
        for rank in sorted(ranks):
            if len(ranks[rank]) == 1 and all(ranks[rank][0]["text"].strip() != b["text"].strip() for b in best):
                best.append(ranks[rank][0])
        ids = [r["message_id"] for r in best]
        pid = m["message_id"]
        out["best-vs-rest"] += [(pid, ids[0], x) for x in ids[1:]]
        out["adjacent"] += [(pid, a, b) for a, b in zip(ids, ids[1:])]
        out["all"] += [(pid, a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
    return out


def pair_ids(pairs: list) -> list:
    return [(p["prompt_id"], p["chosen_id"], p["rejected_id"]) for p in pairs]


@pytest.fixture(scope="module")
def oasst_runs(tmp_path_factory):
    """mode -> (result, pairs) for the bundled flat export."""
    tmp = tmp_path_factory.mktemp("prefs")
    out = {}
    for mode in PAIR_MODES:
        path = tmp / f"{mode}.jsonl"
        result = prepare_preferences(path, str(OASST_ROWS), pairs=mode)
        out[mode] = (result, rows(path))
    return out


def test_oasst_ranks_are_zero_based_within_siblings():
    by_parent = defaultdict(list)
    for m in raw_messages(OASST_ROWS).values():
        if m["rank"] is not None:
            by_parent[m["parent_id"]].append(m["rank"])
    assert sum(map(len, by_parent.values())) == 1133
    assert all(len(set(ranks)) == len(ranks) for ranks in by_parent.values())  # no ties in the real data
    # 0-based: every sibling group starts at 0, but one whose ranked siblings are outside this English export
    assert [ranks for ranks in by_parent.values() if min(ranks) != 0] == [[2]]


@pytest.mark.parametrize("mode", PAIR_MODES)
def test_every_chosen_outranks_its_rejected_sibling(oasst_runs, mode):
    msgs = raw_messages(OASST_ROWS)
    _, pairs = oasst_runs[mode]
    assert pairs
    for p in pairs:
        c, r, prompt = msgs[p["chosen_id"]], msgs[p["rejected_id"]], msgs[p["prompt_id"]]
        assert c["parent_id"] == r["parent_id"] == prompt["message_id"]
        assert c["rank"] < r["rank"] and (p["chosen_rank"], p["rejected_rank"]) == (c["rank"], r["rank"])
        assert p["chosen"] == escape_role_tags(c["text"])[0] and p["rejected"] == escape_role_tags(r["text"])[0]
        path, m = [], prompt
        while m is not None:
            path.insert(0, {"role": ROLES[m["role"]], "content": escape_role_tags(m["text"])[0]})
            m = msgs.get(m["parent_id"]) if m["parent_id"] else None
        assert p["prompt"] == path and p["tree_id"] == prompt["message_tree_id"]
        assert p["id"] == f"{p['tree_id']}:{p['prompt_id']}:{p['chosen_id']}:{p['rejected_id']}"
        assert p["source"] == "oasst" and p["lang"] == "en" and p["license"] is None


def test_pairs_per_mode_match_an_independent_computation(oasst_runs):
    expected = expected_pairs(raw_messages(OASST_ROWS))
    for mode, (_, pairs) in oasst_runs.items():
        assert pair_ids(pairs) == expected[mode], mode
    got = {mode: len(pairs) for mode, (_, pairs) in oasst_runs.items()}
    assert got == {"best-vs-rest": 710, "all": 1020, "adjacent": 710}  # the bundled validation split
    for mode, (result, pairs) in oasst_runs.items():
        s = result.report.sources["oasst"]
        assert s.balanced() and result.pairs["oasst"] == len(pairs) == result.lines
        if mode == "best-vs-rest":  # the best reply is chosen in every pair
            assert all(p["chosen_rank"] == 0 for p in pairs)
        if mode == "adjacent":
            assert all(p["chosen_rank"] < p["rejected_rank"] for p in pairs)


def test_pairs_are_in_tree_order_and_deterministic(oasst_runs, tmp_path):
    _, pairs = oasst_runs["best-vs-rest"]
    roots = [m["message_id"] for m in rows(OASST_ROWS) if m["parent_id"] is None]
    seen = list(dict.fromkeys(p["tree_id"] for p in pairs))
    assert seen == [r for r in roots if r in set(seen)]
    again = tmp_path / "again.jsonl"
    prepare_preferences(again, str(OASST_ROWS))
    assert rows(again) == pairs


def nest(flat: Path, out: Path) -> Path:
    """A flat export rewritten as the nested ``*.trees.jsonl`` export (orphans, which have no tree, left out)."""
    msgs = rows(flat)
    kids = defaultdict(list)
    for m in msgs:
        kids[m["parent_id"]].append(m)

    def tree(m):
        return {**{k: v for k, v in m.items() if k != "parent_id"}, "replies": [tree(k) for k in kids[m["message_id"]]]}

    with out.open("w") as fh:
        for root in kids[None]:
            fh.write(json.dumps({"message_tree_id": root["message_id"], "prompt": tree(root)}) + "\n")
    return out


def flatten(trees: Path, out: Path) -> Path:
    with out.open("w") as fh:
        for obj in rows(trees):
            stack = [(obj["prompt"], None)]
            while stack:
                m, parent = stack.pop()
                fh.write(json.dumps({**{k: v for k, v in m.items() if k != "replies"}, "parent_id": parent}) + "\n")
                stack.extend((r, m["message_id"]) for r in reversed(m.get("replies", [])))
    return out


@pytest.mark.parametrize("mode", ["all"])
def test_both_export_shapes_give_the_same_pairs(oasst_runs, tmp_path, mode):
    nested = prepare_preferences(tmp_path / "n.jsonl", str(nest(OASST_ROWS, tmp_path / "v.trees.jsonl")), pairs=mode)
    assert rows(tmp_path / "n.jsonl") == oasst_runs[mode][1] and nested.lines == oasst_runs[mode][0].lines
    prepare_preferences(tmp_path / "t.jsonl", str(OASST_TREES), pairs=mode)
    prepare_preferences(tmp_path / "f.jsonl", str(flatten(OASST_TREES, tmp_path / "flat.jsonl")), pairs=mode)
    trees_pairs = rows(tmp_path / "t.jsonl")
    assert trees_pairs == rows(tmp_path / "f.jsonl")
    assert pair_ids(trees_pairs) == expected_pairs(raw_messages(OASST_TREES))["all"]


HELD_EXPECTED = [  # (prompt, chosen, rejected, id, tree_id) of lines 1-7
    ([("user", "What is the capital of France?")], "Paris.", "Lyon.", "held-1", "held-1"),
    ([("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Name a prime number.")], "7", "8", "conv-1",
     "conv-1"),
    ([("user", "Write a haiku about rain.")], "Soft rain on the roof", "Rain is wet.", "held-3", "held-3"),
    ([("user", "Say hi in French.")], "Bonjour", "Hola", "held-4", "held-4"),
    ([("user", "2+2?")], "4", "5", "held-5", "held-5"),
    ([("user", "Quote a chat line.")], "It said <bot> : hello", "No.", "held-6", "held-6"),
    ([("user", "Pick one.")], "A", "B", "t:p:c:r", "t"),
]  # fmt: skip
HELD_BAD = {  # line -> reason (start)
    8: "not JSON",
    9: "not a preference record: needs both 'chosen' and 'rejected'",
    10: "chosen equals rejected",
    11: "empty or blank 'rejected'",
    12: "'prompt' message 1: system message",
    13: "prompt does not end with a user message",
    14: "prompt: non-alternating roles",
    15: "'chosen' starts with a user message that is not the prompt's",
    16: "'chosen' has a user message after the prompt",
    17: "'chosen' is a dict, not a string or a list of messages",
    18: "no 'prompt' or 'messages', and 'chosen' and 'rejected' share no user message",
    19: "'prompt' is a int",
    20: "prompt: empty or blank text",
    21: "empty prompt",
}


def test_held_records_in_trl_and_ultrafeedback_forms_are_normalized(tmp_path):
    out = tmp_path / "held.jsonl"
    result = prepare_preferences(out, None, [f"held={HELD}"])
    got = rows(out)
    assert [
        ([(m["role"], m["content"]) for m in p["prompt"]], p["chosen"], p["rejected"], p["id"], p["tree_id"])
        for p in got
    ] == HELD_EXPECTED
    assert all(p["source"] == "held" for p in got)
    assert got[2]["prompt_id"] == "uf-abc" and got[2]["chosen_rank"] is None and got[0]["lang"] is None
    assert {k: got[6][k] for k in ("prompt_id", "chosen_rank", "rejected_rank", "lang")} == {
        "prompt_id": "p", "chosen_rank": 0, "rejected_rank": 2, "lang": "en"
    }  # fmt: skip
    s = result.report.sources["held"]
    assert s.read == 21 and s.written == 7 and s.balanced() and s.notes["texts with a role tag (escaped)"] == 1


def test_every_bad_held_record_is_quarantined_with_its_reason(tmp_path):
    out = tmp_path / "held.jsonl"
    prepare_preferences(out, None, [f"held={HELD}"])
    rejects = rows(tmp_path / "held.jsonl.rejects.jsonl")
    by_line = {r["line"]: r["reason"] for r in rejects}
    assert set(by_line) == set(HELD_BAD) and all(r["file"] == str(HELD) for r in rejects)
    for line, reason in by_line.items():
        assert reason.startswith(HELD_BAD[line]), (line, reason)


def test_own_output_reads_back_unchanged_and_duplicates_are_dropped(tmp_path):
    first = tmp_path / "oasst.jsonl"
    prepare_preferences(first, str(OASST_TREES))
    again = tmp_path / "again.jsonl"
    result = prepare_preferences(again, str(OASST_TREES), [f"back={first}"])
    original = rows(first)
    assert rows(again) == original  # every read-back pair is an exact duplicate of an OASST one
    s = result.report.sources["back"]
    assert s.read == len(original) and s.filtered == {"duplicate pair": len(original)} and s.balanced()
    back = tmp_path / "back.jsonl"
    prepare_preferences(back, None, [f"oasst={first}"])
    assert rows(back) == original


def oasst_row(mid, parent, role, text, rank=None, deleted=False):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank, "deleted": deleted,
            "lang": "en", "message_tree_id": "r"}  # fmt: skip


OASST_BAD = [  # (row or raw line, reason of its quarantine entry or None)
    (oasst_row("r", None, "prompter", "Root question?"), None),
    (oasst_row("a", "r", "assistant", "Best answer.", 0), None),
    (oasst_row("b", "r", "assistant", "Best answer.  ", 1), "chosen equals rejected (same text as the rank 0 sibling)"),
    (oasst_row("c", "r", "assistant", "Third.", 2), None),
    (oasst_row("d", "r", "assistant", "Deleted one.", 3, deleted=True), "deleted reply"),
    (oasst_row("e", "r", "assistant", "Not ranked."), "unranked reply"),
    (oasst_row("p2", "d", "prompter", "Follow-up under a deleted reply?"), "deleted message in the context"),
    (oasst_row("f", "p2", "assistant", "Reply one.", 0), "deleted message in the context"),
    (oasst_row("g", "p2", "assistant", "Reply two.", 1), "deleted message in the context"),
    (oasst_row("p3", "a", "prompter", "Tie question?"), None),
    (oasst_row("h", "p3", "assistant", "Tied one.", 0), "tie: rank 0 shared with a sibling"),
    (oasst_row("i", "p3", "assistant", "Tied two.", 0), "tie: rank 0 shared with a sibling"),
    (oasst_row("j", "p3", "assistant", "Alone after the tie.", 1), "single ranked reply"),
    ('{"message_id": "broken"', "not JSON"),
    (oasst_row("k", "gone", "assistant", "Orphan.", 0), "orphan: parent message missing"),
]  # fmt: skip


def test_oasst_bad_cases_are_quarantined_with_reasons(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x, _ in OASST_BAD))
    result = prepare_preferences(tmp_path / "out.jsonl", str(src), pairs="all")
    pairs = rows(tmp_path / "out.jsonl")
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("a", "c")]
    rejects = {r["line"]: r["reason"] for r in rows(tmp_path / "out.jsonl.rejects.jsonl")}
    expected = {i + 1: why for i, (_, why) in enumerate(OASST_BAD) if why}
    assert set(rejects) == set(expected)
    for line, reason in rejects.items():
        assert reason.startswith(expected[line]), (line, reason)
    s = result.report.sources["oasst"]
    assert s.balanced() and s.written == 3 and s.filtered == {"prompt with fewer than 2 usable ranked replies": 1}


def test_strict_stops_at_the_first_bad_record(tmp_path):
    with pytest.raises(DataError, match=rf"{HELD}:8: not JSON .*--strict"):
        prepare_preferences(tmp_path / "o.jsonl", None, [str(HELD)], strict=True)
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_writes_summary_and_refuses_an_existing_output(tmp_path):
    out = tmp_path / "p.jsonl"
    cmd = [sys.executable, "-m", "data_prep", "prepare_preferences", "--oasst", str(OASST_TREES)]
    cmd += ["--output_path", str(out), "--pairs", "adjacent"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pairs from" in done.stdout and "OK" in done.stdout
    summary = json.loads((tmp_path / "p.jsonl.summary.json").read_text())
    assert summary["sources"]["oasst"]["pairs"] == summary["lines"] == len(rows(out))
    assert summary["settings"]["pairs"] == "adjacent"
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--overwrite_output_path" in again.stderr
    none = subprocess.run(cmd[:5] + ["", "--output_path", str(tmp_path / "x.jsonl")], cwd=ROOT, capture_output=True)
    assert none.returncode == 2 and b"nothing to do" in none.stderr
