"""The pipeline on real data_prep output: files, metadata, determinism, crash safety, bad input."""

import json
import math
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import yaml

from data_prep.pipeline import prepare_oa_dolly
from tests.conftest import DOLLY, OASST_ROWS, PYTHIA_TOKENIZER, ROOT
from tests.tokenization_prep.conftest import cli, pipe_args
from tokenization_prep.metadata import verify
from tokenization_prep.pipeline import PipelineConfig, run_pipeline, verify_manifest
from tokenization_prep.provenance import row_pieces
from tokenization_prep.tokenizer_io import load_tokenizer


def test_outputs_metadata_and_manifest(tmp_path, chat_jsonl):
    out = tmp_path / "out"
    res = run_pipeline(
        PipelineConfig(
            input_path=str(chat_jsonl),
            output_path=str(out),
            pretrained_tokenizer=str(PYTHIA_TOKENIZER),
            max_seq_length=512,
            input_packing_config="greedy::drop",
            shuffle="on_RAM",
            num_training_splits=3,
            num_dev_splits=1,
            num_test_splits=0,
        )
    )
    sizes = []
    for i in range(1, 4):
        with h5py.File(out / f"train_{i}_of_3.hdf5") as f:
            assert f["input_ids"].dtype == np.int32 and f["token_type_ids"].dtype == np.int32
            assert f["input_ids"].shape[1] == 512 and f["input_ids"].shape == f["token_type_ids"].shape
            t = f["token_type_ids"][:]
            assert set(np.unique(t)) <= {0, 1, 2, 3} and (t == 1).any()
            assert (f["input_ids"][:][t == 2] == 0).all()  # no pad token in this tokenizer: eos pads, as gdp
            sizes.append(len(t))
    assert max(sizes) - min(sizes) <= 1
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    # gdp's meanings: vocab_size is tokenizer.vocab_size (added tokens left out); len(tokenizer) is ours
    assert meta["max_seq_length"] == 512 and meta["vocab_size"] == 50254 and meta["token_type_ids"] is True
    assert meta["total_vocab_size"] == 50277 and meta["pad_token_id"] == 0
    assert meta["number_of_training_files"] == 3 and meta["number_of_dev_files"] == 1
    assert meta["max_batch_size_train"] == min(sizes) and meta["train_sequences"] == sum(sizes)
    assert meta["train_articles"] + meta["dev_articles"] == len(chat_jsonl.read_text().splitlines())
    assert verify_manifest(out) == [] and verify(out, 512) == []
    assert verify(out, 1024) == ["max_seq_length is 512, expected 1024"]
    (out / "train_2_of_3.hdf5").write_bytes(b"corrupt")
    assert verify_manifest(out) == ["train_2_of_3.hdf5"]
    (out / "extra.bin").write_bytes(b"x")
    problems = verify(out)
    assert "train_2_of_3.hdf5: changed since it was written (sha256 differs)" in problems
    assert "extra.bin: not listed in sha256/files_metadata.json" in problems
    for name in ("data_report.md", "data_report.json", "article_lengths.png", "sequence_fill.png"):
        assert (out / name).stat().st_size > 0
    assert "| padding % |" in (out / "data_report.md").read_text()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok.chat_template and tok.eos_token_id == 0
    assert res["splits"]["train"].by_source["dolly"]["completion"] > 0


@pytest.mark.slow
def test_same_bytes_whatever_num_workers_and_after_kill(tmp_path, chat_jsonl):
    ref, other, killed = tmp_path / "ref", tmp_path / "w2", tmp_path / "killed"
    t0 = time.time()
    assert cli(*pipe_args(chat_jsonl, ref, "--num_workers", "1")).returncode == 0
    elapsed = time.time() - t0
    assert cli(*pipe_args(chat_jsonl, other, "--num_workers", "2")).returncode == 0
    assert (ref / "manifest.sha256").read_text() == (other / "manifest.sha256").read_text()
    interrupted = 0
    for frac in (0.3, 0.6, 0.9):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenization_prep", *pipe_args(chat_jsonl, killed)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(elapsed * frac)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (killed / "manifest.sha256").exists():
            # an interrupted output never looks complete, and a plain rerun finishes it
            assert verify_manifest(killed) == ["manifest.sha256 missing"]
            interrupted += 1
        else:
            assert cli(*pipe_args(chat_jsonl, killed)).returncode == 2  # finished: needs --overwrite
            continue
        assert cli(*pipe_args(chat_jsonl, killed)).returncode == 0
        assert (killed / "manifest.sha256").read_text() == (ref / "manifest.sha256").read_text()
    assert interrupted >= 1  # at least one kill landed mid-run


def test_bad_input_is_one_clear_line(tmp_path, chat_jsonl):
    bad = tmp_path / "bad.jsonl"
    lines = chat_jsonl.read_text().splitlines()[:50]
    bad.write_text("\n".join(lines[:10] + ["{not json", '{"prompt": "no completion"}'] + lines[10:]) + "\n")
    r = cli(*pipe_args(bad, tmp_path / "o1"))
    assert r.returncode == 2 and f"{bad}:11: not JSON" in r.stderr and "Traceback" not in r.stderr
    r = cli(*pipe_args(bad, tmp_path / "o2", "--ignore_input_format_error"))
    assert r.returncode == 0
    skipped = [json.loads(x) for x in (tmp_path / "o2" / "skipped_lines.jsonl").read_text().splitlines()]
    assert [s["line"] for s in skipped] == [11, 12] and "completion keyword" in skipped[1]["reason"]
    cases = [
        (pipe_args(chat_jsonl, tmp_path / "o3")[:5] + ["--pretrained_tokenizer", str(tmp_path)], "no tokenizer"),
        (pipe_args(bad, tmp_path / "o2"), "already holds a finished output"),
        (pipe_args(bad, tmp_path / "o4") + ["--num_training_splits", "500"], "cannot fill 500 training"),
        (pipe_args(bad, "/proc/forbidden/out"), "cannot write"),
        (pipe_args(bad, tmp_path / "o5", "--input_packing_config", "greedy"), "greedy::drop"),
        (pipe_args(bad, tmp_path / "o6", "--dev_ratio", "0.1"), "--dev_ratio cannot be combined"),
        (pipe_args(bad, tmp_path / "o7")[:-6] + ["--num_dev_splits", "1"], "need all three"),
        (pipe_args(bad, tmp_path / "o8", "--special_tokens_dict", "{pad: <x>"), "--special_tokens_dict"),
        (pipe_args(bad, tmp_path / "o9", "--categories_path", str(tmp_path / "nope.json")), "--categories_path"),
        (pipe_args(bad, tmp_path / "o10")[:-6] + ["--num_training_splits", "0"], "must be at least 1"),
        (pipe_args(bad, tmp_path / "o11", "--log_file_path", str(tmp_path)), "--log_file_path"),
    ]
    for args, needle in cases:
        r = cli(*args)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_mask_audit_rejects_a_split_without_completions(tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text("\n".join(json.dumps({"prompt": f"question {i}", "completion": ""}) for i in range(20)) + "\n")
    r = cli(
        "pipeline",
        "--input_path",
        str(src),
        "--output_path",
        str(tmp_path / "o"),
        "--pretrained_tokenizer",
        str(PYTHIA_TOKENIZER),
        "--max_seq_length",
        "64",
        "--keep_prompt_only_sequences",
        "--num_training_splits",
        "1",
    )
    assert r.returncode == 2 and "no completion tokens" in r.stderr


def test_decode_marks_types(tmp_path, chat_jsonl):
    out = tmp_path / "o"
    assert cli(*pipe_args(chat_jsonl, out)).returncode == 0
    r = cli("decode", str(out / "train_1_of_3.hdf5"), "--index", "0")
    assert r.returncode == 0
    assert "[PROMPT]<human>:" in r.stdout and "[COMPLETION]" in r.stdout and "<|SEP|>" in r.stdout
    with h5py.File(out / "train_1_of_3.hdf5") as f:
        ids, types = f["input_ids"][0], f["token_type_ids"][0]
    tok = load_tokenizer(str(PYTHIA_TOKENIZER))
    body = r.stdout.split("\n", 1)[1].rstrip("\n")
    pads = int((types == 2).sum())
    assert body.endswith(f"[PADDING x{pads}]") if pads else "[PADDING" not in body
    runs = [int(t) for k, t in enumerate(types) if k == 0 or t != types[k - 1]]
    assert body.count("[PROMPT]") == runs.count(0) and body.count("[COMPLETION]") == runs.count(1)
    text = re.sub(r"\[/?(PROMPT|COMPLETION)\]|\[PADDING x\d+\]", "", body).replace("<|SEP|>", tok.eos_token)
    assert text == tok.decode(ids[types != 2].tolist())  # every token, in order, nothing else


@pytest.mark.slow
def test_bfd_on_bundled_dolly_oasst_meets_the_packing_target(tmp_path):
    src = tmp_path / "oa.jsonl"
    prepare_oa_dolly(src, str(DOLLY), str(OASST_ROWS))
    res = run_pipeline(
        PipelineConfig(
            input_path=str(src),
            output_path=str(tmp_path / "bfd"),
            pretrained_tokenizer=str(PYTHIA_TOKENIZER),
            max_seq_length=2048,
            input_packing_config="bfd::drop",
            shuffle="on_RAM",
            num_training_splits=1,
        )
    )
    m = res["splits"]["train"]
    real = sum(v for k, v in m.tokens.items() if k != "padding")
    assert real / (real + m.tokens["padding"]) >= 0.995
    assert m.sequences <= 1.001 * math.ceil(real / 2048)


def test_bloomchat_script_runs_with_bundled_tokenizer(tmp_path):
    from data_prep.pipeline import subsample_openchatkit
    from tests.conftest import OIG_JOKES

    src = tmp_path / "ock.jsonl"
    subsample_openchatkit(src, str(OIG_JOKES), sample_size=200)
    out = tmp_path / "ock_out"
    r = subprocess.run(
        ["bash", "tokenization_prep/tokenization_openchatkit.sh", str(PYTHIA_TOKENIZER), str(src), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["number_of_training_files"] == 8 and meta["input_packing_config"] == "greedy::drop"
    assert meta["max_seq_length"] == 2048 and len(list(out.glob("train_*_of_8.hdf5"))) == 8


def test_category_ids_from_categories_path(tmp_path, chat_jsonl):
    cats = sorted({p.get("category") for line in chat_jsonl.open() for p in json.loads(line) if p.get("category")})
    cat_file = tmp_path / "cats.json"
    cat_file.write_text(json.dumps(cats))
    out = tmp_path / "o"
    assert cli(*pipe_args(chat_jsonl, out, "--categories_path", str(cat_file))).returncode == 0
    with h5py.File(out / "train_1_of_3.hdf5") as f:
        c, t = f["category_ids"][:], f["token_type_ids"][:]
    assert c.shape == t.shape and (c[t == 2] == -1).all()
    with h5py.File(out / "train_1_of_3.hdf5") as f:  # every token carries its own record's category
        seen = set()
        for row in range(len(c)):
            for p in row_pieces(f, row):
                want = cats.index(p.category) if p.category else -1
                got = c[row, p.row_position : p.row_position + p.token_end - p.token_start]
                assert (got == want).all(), (row, p.origin, p.category)
                seen.add(want)
    assert len(seen) > 5 and -1 in seen  # Dolly categories and OASST (none)
    r = cli(*pipe_args(chat_jsonl, tmp_path / "o2", "--categories_path", str(tmp_path / "cats_short.json")))
    assert r.returncode == 2 and "cats_short.json" in r.stderr
    cat_file.write_text(json.dumps(cats[:1]))
    r = cli(*pipe_args(chat_jsonl, tmp_path / "o3", "--categories_path", str(cat_file)))
    assert r.returncode == 2 and "not in --categories_path" in r.stderr


def test_data_prep_command_on_text_lines(tmp_path):
    src = tmp_path / "plain.txt"
    src.write_text("The first line of plain text.\nA second, longer line of plain text here.\n")
    out = tmp_path / "plain.hdf5"
    r = cli(
        "data_prep",
        "--input_path",
        str(src),
        "--output_path",
        str(out),
        "--pretrained_tokenizer",
        str(PYTHIA_TOKENIZER),
        "--max_seq_length",
        "16",
        "--input_packing_config",
        "single::truncate_right",
    )
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        t = f["token_type_ids"][:]
    assert t.shape == (2, 16) and (t[:, 0] == 1).all() and (t == 3).sum() == 2  # all completion, one SEP each
    assert (
        cli(
            "data_prep",
            "--input_path",
            str(src),
            "--output_path",
            str(out),
            "--pretrained_tokenizer",
            str(PYTHIA_TOKENIZER),
        ).returncode
        == 2
    )  # exists: needs --overwrite_output_path
