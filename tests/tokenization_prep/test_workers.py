"""``--num_workers``: worker processes give the same bytes whatever their number and the shards' size; a malformed
line is named as the first in file order with the count of all; a worker killed mid-run stops the run in one line
and leaves no output, and the rerun gives the same bytes (slow)."""

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT
from tests.tokenization_prep.conftest import pipe_args, run
from tokenization_prep import shards


def manifest(out) -> str:
    return (out / "manifest.sha256").read_text()


def test_shards_of_any_size_over_any_workers_give_the_same_bytes(tmp_path, chat_jsonl, monkeypatch):
    """bfd over the whole split, a mix that repeats and samples, dev files and categories: the packing is planned
    from the joined shards, so 16-line shards over 3 workers equal one process reading it all."""
    cats = sorted({p["category"] for line in chat_jsonl.open() for p in json.loads(line) if p.get("category")})
    (tmp_path / "cats.json").write_text(json.dumps(cats))
    extra = ("--input_packing_config", "bfd::truncate_right", "--mix", "dolly=x1.5,oasst=x2")
    extra += ("--categories_path", tmp_path / "cats.json")
    assert run(*pipe_args(chat_jsonl, tmp_path / "one", *extra, "--num_workers", "1")).returncode == 0
    monkeypatch.setattr(shards, "MIN_SHARD_LINES", 16)  # ~100 shards; the forked workers inherit it
    r = run(*pipe_args(chat_jsonl, tmp_path / "three", *extra, "--num_workers", "3"))
    assert r.returncode == 0, r.stderr
    assert manifest(tmp_path / "one") == manifest(tmp_path / "three")
    timing = json.loads(next(x for x in r.stderr.splitlines() if x.startswith("timing: "))[8:])
    assert timing["workers"] == 3 and 0 < timing["serial_s"] < timing["total_s"]
    assert not (tmp_path / "three" / ".shards").exists()  # the shards' token files are gone


@pytest.fixture
def two_files_with_bad_lines(tmp_path, chat_jsonl):
    """A directory of two inputs: a.jsonl is bad at lines 40 and 300, b.jsonl at line 5 (read after a.jsonl)."""
    lines = chat_jsonl.read_text().splitlines()
    a, b = lines[:600], lines[600:900]
    a[39], a[299], b[4] = "{not json", '{"prompt": "no completion"}', "[]"
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text("\n".join(a) + "\n")
    (d / "b.jsonl").write_text("\n".join(b) + "\n")
    return d


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_first_malformed_line_in_file_order_and_the_count(tmp_path, two_files_with_bad_lines, workers):
    """Shuffled into splits, line 300 (train) and b.jsonl:5 are tokenized before line 40 (dev) would be; the error
    still names line 40, counts all three, and no output is left."""
    out = tmp_path / "o"
    r = run(*pipe_args(two_files_with_bad_lines, out, "--num_workers", workers))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {two_files_with_bad_lines / 'a.jsonl'}:40: not JSON"), r.stderr
    assert "3 malformed lines in all, this the first in file order" in r.stderr
    assert not out.exists()


def children_of(pid: int, timeout: float) -> list[psutil.Process]:
    end = time.time() + timeout
    while time.time() < end:
        kids = psutil.Process(pid).children()
        if kids:
            return kids
        time.sleep(0.05)
    return []


@pytest.mark.slow
def test_a_killed_worker_stops_the_run_and_the_rerun_gives_the_same_bytes(tmp_path, chat_jsonl):
    big = tmp_path / "big.jsonl"
    big.write_text(chat_jsonl.read_text() * 4)  # four copies: no leakage check (it would move every dev line)
    ref, out, flags = tmp_path / "ref", tmp_path / "o", ("--num_workers", "2", "--dev_leakage", "off")
    assert run(*pipe_args(big, ref, *flags)).returncode == 0
    args = [sys.executable, "-m", "tokenization_prep", *map(str, pipe_args(big, out, *flags))]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = children_of(proc.pid, timeout=60)
    assert workers, "no worker process started"
    workers[0].send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and stderr.count("\n") == 1, stderr
    assert "worker process died" in stderr and "Traceback" not in stderr
    assert not out.exists()  # nothing half-written
    assert run(*pipe_args(big, out, *flags)).returncode == 0
    assert manifest(out) == manifest(ref)


def test_engine_ray_without_ray_says_how_to_install_it(tmp_path, chat_jsonl, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    r = run(*pipe_args(chat_jsonl, tmp_path / "o", "--engine", "ray"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "Ray is not installed" in r.stderr and "scripts/install_ray.sh" in r.stderr
    assert not (tmp_path / "o").exists()


def test_ray_address_needs_engine_ray(tmp_path, chat_jsonl):
    r = run(*pipe_args(chat_jsonl, tmp_path / "o", "--ray_address", "127.0.0.1:6379"))
    assert r.returncode == 2 and "--ray_address is for --engine ray" in r.stderr
