"""Preference pairs through ``python -m tokenization_prep pipeline``, on pairs ``python -m data_prep
prepare_preferences`` builds from the bundled OASST1 validation file: the row layout, tokens equal to SFT's, the
overflow rule and its report, the tree-wise split (stage 2's dev trees, or the seeded rule), reruns, bad input."""

import contextlib
import hashlib
import io
import json
import shutil

import h5py
import numpy as np
import pytest
import yaml

from common.chat_format import BOT, HUMAN, Turn, prompt_for_next_bot_turn
from common.cli import dispatch
from common.settings import parse_settings
from data_prep.__main__ import COMMANDS as DATA_PREP
from tests.conftest import OASST_ROWS, PYTHIA_TOKENIZER, tokenize
from tests.tokenization_prep.conftest import run
from tokenization_prep.metadata import write_manifest
from tokenization_prep.pipeline import make_parser
from tokenization_prep.provenance import GROUP, row_pieces
from tokenization_prep.schema import CHOSEN, PADDING, PROMPT, REJECTED, load_tokenized_dir
from tokenization_prep.settings import PipelineConfig
from tokenization_prep.tokenizer_io import load_tokenizer

PAIRS = 60  # the first pairs of the real output: a handful of trees, some long enough to overflow
SEQ = 512


def pref(src, out, *extra):
    args = ["pipeline", "--input_path", src, "--output_path", out, "--pretrained_tokenizer", PYTHIA_TOKENIZER]
    return run(*args, "--max_seq_length", SEQ, *extra)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The first ``PAIRS`` lines of ``python -m data_prep prepare_preferences`` on the bundled OASST rows."""
    d = tmp_path_factory.mktemp("pairs")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        args = ["prepare_preferences", "--oasst", str(OASST_ROWS), "--output_path", str(d / "all.jsonl")]
        rc = dispatch("data_prep", DATA_PREP, args)
    assert rc == 0
    lines = (d / "all.jsonl").read_bytes().splitlines()[:PAIRS]
    (d / "pairs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return d / "pairs.jsonl"


@pytest.fixture(scope="module")
def records(pairs):
    return {r["id"]: r for r in map(json.loads, pairs.read_text().splitlines())}


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """Stage 2's tokenized dir with provenance: prepare_oa_dolly on the same OASST file, 2 train + 1 dev files."""
    from data_prep.jobs import prepare_oa_dolly

    d = tmp_path_factory.mktemp("stage2")
    prepare_oa_dolly(d / "chat.jsonl", None, str(OASST_ROWS))
    tokenize(d / "chat.jsonl", d / "out", 2048, "greedy::drop")
    return d / "out"


@pytest.fixture(scope="module")
def out(tmp_path_factory, pairs, stage2):
    o = tmp_path_factory.mktemp("pref") / "o"
    r = pref(pairs, o, "--dev_trees_from", stage2)
    assert r.returncode == 0, r.stderr
    return o


def rows(out):
    """(split, ids row, types row, record id) of every row of a preference dir."""
    for path in sorted(out.glob("*.hdf5")):
        with h5py.File(path) as f:
            ids, types = f["input_ids"][:], f["token_type_ids"][:]
            for r in range(len(ids)):
                (piece,) = row_pieces(f, r)
                yield path.name.split("_")[0], ids[r], types[r], piece.record_id


def segments(ids, types):
    return {k: ids[types == k] for k in (PROMPT, CHOSEN, REJECTED, PADDING)}


def split_trees(out, records) -> dict[str, set]:
    trees = {"train": set(), "dev": set()}
    for split, _, _, rid in rows(out):
        trees[split].add(records[rid]["tree_id"])
    return trees


def test_metadata_says_preference_and_the_dir_verifies(out):
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["kind"] == "preference" and meta["provenance"] and meta["number_of_test_files"] == 0
    assert load_tokenized_dir(out, full=True).meta.kind == "preference"
    assert run("verify", out).returncode == 0


def test_decode_marks_the_chosen_and_the_rejected_reply(out):
    text = run("decode", out / "train_1_of_1.hdf5", "--index", "0").stdout
    assert text.index("[PROMPT]") < text.index("[CHOSEN]") < text.index("[REJECTED]") < text.index("[PADDING")
    assert "[COMPLETION]" not in text and "[TYPE 4]" not in text


def test_rows_are_prompt_chosen_rejected_padding(out):
    tok = load_tokenizer(str(PYTHIA_TOKENIZER))
    n = 0
    for _, ids, types, _ in rows(out):
        p, c, r = (int((types == k).sum()) for k in (PROMPT, CHOSEN, REJECTED))
        assert min(p, c, r) >= 1
        want = [PROMPT] * p + [CHOSEN] * c + [REJECTED] * r + [PADDING] * (SEQ - p - c - r)
        assert types.tolist() == want
        s = segments(ids, types)
        assert s[CHOSEN][-1] == s[REJECTED][-1] == tok.eos_token_id  # each reply closed by its scored EOS
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        assert (s[PADDING] == pad).all()
        n += 1
    assert n > 20


def test_prompt_and_each_reply_decode_to_the_sft_text(out, records):
    """prompt + chosen (and prompt + rejected) decode to what stage 2's chat format renders for that conversation:
    earlier replies each closed by EOS, the final reply after one space and closed by EOS. Truncated rows hold
    the end of that text."""
    tok = load_tokenizer(str(PYTHIA_TOKENIZER))
    eos = tok.eos_token
    checked = truncated = 0
    for _, ids, types, rid in rows(out):
        rec = records[rid]
        turns = [Turn(HUMAN if m["role"] == "user" else BOT, m["content"]) for m in rec["prompt"]]
        head = prompt_for_next_bot_turn(turns[:-1], turns[-1].text, eos)
        s = segments(ids, types)
        for reply, key in ((s[CHOSEN], "chosen"), (s[REJECTED], "rejected")):
            got = tok.decode(np.concatenate([s[PROMPT], reply]).tolist(), clean_up_tokenization_spaces=False)
            want = head + " " + rec[key].lstrip(" ") + eos
            if got != want:
                assert want.endswith(got) and tok.decode(reply.tolist()) == " " + rec[key].lstrip(" ") + eos
                truncated += key == "chosen"
            checked += 1
    assert checked > 40 and truncated


def test_overflow_truncates_the_prompt_start_or_drops_and_the_report_lists_it(tmp_path, pairs, out, records):
    wide = tmp_path / "wide"
    assert pref(pairs, wide, "--max_seq_length", 4096).returncode == 0
    full = {rid: segments(ids, types) for _, ids, types, rid in rows(wide)}
    assert len(full) == PAIRS  # nothing lost at 4096
    report = json.loads((out / "data_report.json").read_text())["splits"]
    lost = {r["id"]: r["status"] for s in report.values() for r in s["lost_pairs"]}
    held = {rid: segments(ids, types) for _, ids, types, rid in rows(out)}
    assert set(held) | {k for k, v in lost.items() if v == "dropped"} == set(full)
    assert {k for k, v in lost.items() if v == "dropped"}.isdisjoint(held)
    too_long = {rid for rid, s in full.items() if sum(len(s[k]) for k in (PROMPT, CHOSEN, REJECTED)) > SEQ}
    assert set(lost) == too_long and "truncated" in lost.values() and "dropped" in lost.values()
    for rid, s in held.items():
        f = full[rid]
        assert np.array_equal(s[CHOSEN], f[CHOSEN]) and np.array_equal(s[REJECTED], f[REJECTED])
        assert np.array_equal(s[PROMPT], f[PROMPT][len(f[PROMPT]) - len(s[PROMPT]) :])  # the prompt's end kept
        assert (lost.get(rid) == "truncated") == (len(s[PROMPT]) < len(f[PROMPT]))
    for rid, status in lost.items():  # dropped: the replies alone leave no prompt token
        f = full[rid]
        assert (status == "dropped") == (len(f[CHOSEN]) + len(f[REJECTED]) >= SEQ)
    md = (out / "data_report.md").read_text()
    assert all(rid in md for rid in lost) and all(rid in (out / "logs.log").read_text() for rid in lost)
    dropped = tmp_path / "drop"
    assert pref(pairs, dropped, "--preference_overflow", "drop").returncode == 0
    report = json.loads((dropped / "data_report.json").read_text())["splits"]
    assert {r["id"] for s in report.values() for r in s["lost_pairs"] if r["status"] == "dropped"} == too_long
    assert {rid for *_, rid in rows(dropped)} == set(full) - too_long


def test_dev_trees_are_exactly_stage_2s(out, stage2, records):
    dev_ids = set()
    for path in sorted(stage2.glob("dev_*.hdf5")):
        with h5py.File(path) as f:
            dev_ids |= {x.decode() for x in f[GROUP]["record_id"][:]}
    trees = split_trees(out, records)
    ours = {r["tree_id"] for r in records.values()}
    assert trees["dev"] and trees["train"] and not trees["dev"] & trees["train"]
    report = json.loads((out / "data_report.json").read_text())["splits"]
    dropped = {records[r["id"]]["tree_id"] for r in report["dev"]["lost_pairs"] if r["status"] == "dropped"}
    assert trees["dev"] | dropped == ours & dev_ids  # every pair of a stage-2 dev tree, none other
    assert not trees["train"] & dev_ids


def test_the_seeded_rule_splits_whole_trees_and_reruns_give_the_same_bytes(tmp_path, pairs, records):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for o, seed in ((a, 7), (b, 7), (c, 8)):
        assert pref(pairs, o, "--dev_ratio", "0.5", "--seed", seed, "--shuffle", "on_RAM").returncode == 0
    assert (a / "manifest.sha256").read_bytes() == (b / "manifest.sha256").read_bytes()
    assert (a / "manifest.sha256").read_bytes() != (c / "manifest.sha256").read_bytes()
    trees = split_trees(a, records)

    def dev(t):
        return int.from_bytes(hashlib.blake2b(f"7:{t}".encode(), digest_size=8).digest(), "big") / 2**64 < 0.5

    assert trees["dev"] and trees["train"] and not trees["dev"] & trees["train"]
    assert all(dev(t) for t in trees["dev"]) and not any(dev(t) for t in trees["train"])


def line_error(r) -> str:
    assert r.returncode != 0 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_bad_input_is_one_line_naming_file_and_line(tmp_path, pairs):
    lines = pairs.read_text().splitlines()
    same = json.loads(lines[1])
    same["rejected"] = same["chosen"]
    bad = tmp_path / "same.jsonl"
    bad.write_text("\n".join([lines[0], json.dumps(same)]) + "\n")
    assert f"{bad}:2: 'chosen' equals 'rejected'" in line_error(pref(bad, tmp_path / "o1"))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join([lines[0], json.dumps([{"prompt": "<human>: hi\n<bot>:", "completion": "yo"}])]))
    assert f"{mixed}:2: an SFT record among preference records" in line_error(pref(mixed, tmp_path / "o2"))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_dev_trees_from_needs_a_stage_2_dir_with_provenance_and_dev_rows(tmp_path, pairs, stage2):
    old = tmp_path / "old"
    shutil.copytree(stage2, old)
    for path in old.glob("*.hdf5"):
        with h5py.File(path, "r+") as f:
            del f[GROUP]
    meta = yaml.safe_load((old / "metadata.yaml").read_text())
    (old / "metadata.yaml").write_text(yaml.safe_dump({**meta, "provenance": False}))
    (old / "manifest.sha256").unlink()
    write_manifest(old)
    assert "has no row provenance" in line_error(pref(pairs, tmp_path / "o", "--dev_trees_from", old))
    assert "no such directory" in line_error(pref(pairs, tmp_path / "o", "--dev_trees_from", tmp_path / "none"))
    both = pref(pairs, tmp_path / "o", "--dev_trees_from", stage2, "--dev_ratio", "0.1")
    assert "--dev_trees_from and --dev_ratio" in line_error(both)


def test_sft_only_settings_are_refused_for_preference_input(tmp_path, pairs, stage2):
    packing = pref(pairs, tmp_path / "o", "--input_packing_config", "greedy::drop")
    assert "--input_packing_config greedy::drop: not for preference input" in line_error(packing)
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps([{"prompt": "<human>: hi\n<bot>:", "completion": "yo"}]) + "\n")
    assert "for preference input only" in line_error(pref(sft, tmp_path / "o", "--dev_trees_from", stage2))


def test_verify_refuses_a_row_that_is_not_prompt_chosen_rejected(tmp_path, out):
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    with h5py.File(bad / "train_1_of_1.hdf5", "r+") as f:
        types = f["token_type_ids"][3]
        types[types == REJECTED] = CHOSEN  # a row without rejected tokens
        f["token_type_ids"][3] = types
    (bad / "manifest.sha256").unlink()
    write_manifest(bad)  # checksums of the altered file: only the row rule can catch it
    assert "train_1_of_1.hdf5: row 3 is not a preference row" in line_error(run("verify", bad))


def test_the_preference_settings_come_from_flags_and_from_a_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preference_overflow: drop\ndev_trees_from: stage2_out\n")
    required = ["--input_path", "p.jsonl", "--output_path", "o", "--pretrained_tokenizer", "t"]
    cfg = parse_settings(make_parser(), PipelineConfig, ["--config", str(recipe), *required])
    assert (cfg.preference_overflow, cfg.dev_trees_from) == ("drop", "stage2_out")
    flags = parse_settings(make_parser(), PipelineConfig, [*required, "--preference_overflow", "drop"])
    assert flags.preference_overflow == "drop" and flags.dev_trees_from is None
