"""The pipeline command on real data_prep output: bad input and bad settings refused in one line, determinism and
crash safety (slow), and bfd's packing target (slow)."""

import json
import math
import signal
import subprocess
import sys
import time

import h5py
import pytest

from common.errors import DataError
from data_prep.jobs import prepare_oa_dolly
from tests.conftest import DOLLY, OASST_ROWS, PYTHIA_TOKENIZER, ROOT
from tests.tokenization_prep.conftest import cli, pipe_args, run
from tokenization_prep.pipeline import run_pipeline
from tokenization_prep.provenance import row_pieces
from tokenization_prep.schema import load_tokenized_dir
from tokenization_prep.settings import PipelineConfig


@pytest.fixture(scope="module")
def bad_jsonl(tmp_path_factory, chat_jsonl):
    """50 good lines with a line that is not JSON (11) and one without a completion (12)."""
    bad = tmp_path_factory.mktemp("bad") / "bad.jsonl"
    lines = chat_jsonl.read_text().splitlines()[:50]
    bad.write_text("\n".join(lines[:10] + ["{not json", '{"prompt": "no completion"}'] + lines[10:]) + "\n")
    return bad


def test_a_bad_line_is_one_line_naming_file_and_line(tmp_path, bad_jsonl):
    r = run(*pipe_args(bad_jsonl, tmp_path / "o"))
    assert r.returncode == 2 and f"{bad_jsonl}:11: not JSON" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_a_user_error_is_one_line_from_a_fresh_interpreter(tmp_path, bad_jsonl):
    r = cli(*pipe_args(bad_jsonl, tmp_path / "o", "--input_packing_config", "greedy"))  # as a user runs it
    assert r.returncode == 2 and "greedy::drop" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_ignore_input_format_error_logs_the_skipped_lines(tmp_path, bad_jsonl):
    r = run(*pipe_args(bad_jsonl, tmp_path / "o", "--ignore_input_format_error"))
    assert r.returncode == 0, r.stderr
    skipped = [json.loads(x) for x in (tmp_path / "o" / "skipped_lines.jsonl").read_text().splitlines()]
    assert [s["line"] for s in skipped] == [11, 12] and "completion keyword" in skipped[1]["reason"]


BAD_SETTINGS = {  # name -> (how the pipe_args change, what the one line says)
    "no tokenizer": (lambda a, tmp: a[:5] + ["--pretrained_tokenizer", str(tmp)], "no tokenizer"),
    "too many splits": (lambda a, tmp: a + ["--num_training_splits", "500"], "cannot fill 500 training"),
    "unwritable output": (lambda a, tmp: a + ["--output_path", "/proc/forbidden/out"], "cannot write"),
    "bare greedy": (lambda a, tmp: a + ["--input_packing_config", "greedy"], "greedy::drop"),
    "ratio with counts": (lambda a, tmp: a + ["--dev_ratio", "0.1"], "--dev_ratio cannot be combined"),
    "two counts of three": (lambda a, tmp: a[:-6] + ["--num_dev_splits", "1"], "need all three"),
    "bad special tokens": (lambda a, tmp: a + ["--special_tokens_dict", "{pad: <x>"], "--special_tokens_dict"),
    "no categories file": (lambda a, tmp: a + ["--categories_path", str(tmp / "nope.json")], "--categories_path"),
    "zero splits": (lambda a, tmp: a[:-6] + ["--num_training_splits", "0"], "must be at least 1"),
    "log path a dir": (lambda a, tmp: a + ["--log_file_path", str(tmp)], "--log_file_path"),
    "bad choice in YAML": (lambda a, tmp: a + ["--config", str(tmp / "bad.yaml")], "--packing_boundary: choose one"),
    "unknown setting in YAML": (lambda a, tmp: a + ["--config", str(tmp / "typo.yaml")], "--max_seq_len: Extra"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_are_one_line(tmp_path, bad_jsonl, case):
    (tmp_path / "bad.yaml").write_text("packing_boundary: sometimes\n")
    (tmp_path / "typo.yaml").write_text("max_seq_len: 512\n")
    change, needle = BAD_SETTINGS[case]
    r = run(*change(pipe_args(bad_jsonl, tmp_path / "o"), tmp_path))
    assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o" / "manifest.sha256").exists()


def test_a_finished_output_is_kept_without_overwrite(tokenized, chat_jsonl):
    before = (tokenized / "manifest.sha256").read_bytes()
    r = run(*pipe_args(chat_jsonl, tokenized))
    assert r.returncode == 2 and "already holds a finished output" in r.stderr and r.stderr.count("\n") == 1
    assert (tokenized / "manifest.sha256").read_bytes() == before


def test_mask_audit_rejects_a_split_without_completions(tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text("\n".join(json.dumps({"prompt": f"question {i}", "completion": ""}) for i in range(20)) + "\n")
    r = run(
        *("pipeline", "--input_path", src, "--output_path", tmp_path / "o"),
        *("--pretrained_tokenizer", PYTHIA_TOKENIZER, "--max_seq_length", "64"),
        *("--keep_prompt_only_sequences", "--num_training_splits", "1"),
    )
    assert r.returncode == 2 and "no completion tokens" in r.stderr


@pytest.mark.slow
def test_same_bytes_whatever_num_workers_and_after_kill(tmp_path, chat_jsonl):
    ref, other, killed = tmp_path / "ref", tmp_path / "w2", tmp_path / "killed"
    t0 = time.time()
    assert cli(*pipe_args(chat_jsonl, ref)).returncode == 0  # as the killed runs below: every core
    elapsed = time.time() - t0
    for n in (1, 2, 4):  # worker processes: the same bytes
        assert run(*pipe_args(chat_jsonl, other, "--num_workers", n, "--overwrite_output_path")).returncode == 0
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
            with pytest.raises(DataError, match="unfinished|no such directory"):
                load_tokenized_dir(killed)
            interrupted += 1
        else:
            assert cli(*pipe_args(chat_jsonl, killed)).returncode == 2  # finished: needs --overwrite
            continue
        assert cli(*pipe_args(chat_jsonl, killed)).returncode == 0
        assert (killed / "manifest.sha256").read_text() == (ref / "manifest.sha256").read_text()
    assert interrupted >= 1  # at least one kill landed mid-run


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


def categories_of(chat_jsonl) -> list[str]:
    return sorted({p.get("category") for line in chat_jsonl.open() for p in json.loads(line) if p.get("category")})


def test_category_ids_follow_each_record(tmp_path, chat_jsonl):
    cats = categories_of(chat_jsonl)
    cat_file = tmp_path / "cats.json"
    cat_file.write_text(json.dumps(cats))
    out = tmp_path / "o"
    assert run(*pipe_args(chat_jsonl, out, "--categories_path", cat_file)).returncode == 0
    assert json.loads((out / "category_to_id.json").read_text()) == {c: i for i, c in enumerate(cats)}
    with h5py.File(out / "train_1_of_3.hdf5") as f:
        c, t = f["category_ids"][:], f["token_type_ids"][:]
        assert c.shape == t.shape and (c[t == 2] == -1).all()
        seen = set()  # every token carries its own record's category
        for row in range(len(c)):
            for p in row_pieces(f, row):
                want = cats.index(p.category) if p.category else -1
                got = c[row, p.row_position : p.row_position + p.token_end - p.token_start]
                assert (got == want).all(), (row, p.origin, p.category)
                seen.add(want)
    assert len(seen) > 5 and -1 in seen  # Dolly categories and OASST (none)


def test_a_category_missing_from_the_list_is_one_line(tmp_path, chat_jsonl):
    cat_file = tmp_path / "cats.json"
    cat_file.write_text(json.dumps(categories_of(chat_jsonl)[:1]))
    r = run(*pipe_args(chat_jsonl, tmp_path / "o", "--categories_path", cat_file))
    assert r.returncode == 2 and "not in --categories_path" in r.stderr and r.stderr.count("\n") == 1
