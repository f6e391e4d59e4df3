"""``--engine ray`` (the optional extra, in ``.venv/ray``: ``bash scripts/install_ray.sh``, which the test command
runs): a local Ray cluster started for the run writes the same bytes as ``--engine local``; a cluster address that
nothing answers at is one line, at once. Run as users run it, in a fresh interpreter with Ray on its path."""

import os
import socket

import pytest

from tests.conftest import ROOT
from tests.tokenization_prep.conftest import cli, pipe_args, run

RAY = ROOT / ".venv" / "ray"
pytestmark = pytest.mark.skipif(
    not (RAY / "ray").is_dir() and not os.environ.get("CI"),  # CI must run them: there a missing Ray fails
    reason="Ray is not installed (bash scripts/install_ray.sh)",
)


def with_ray(*args):
    return cli(*args, env={"PYTHONPATH": str(RAY)})


@pytest.mark.slow
def test_a_local_ray_cluster_writes_the_same_bytes_as_local_workers(tmp_path, chat_jsonl):
    src, local, ray = tmp_path / "in.jsonl", tmp_path / "local", tmp_path / "ray"
    src.write_text("".join(chat_jsonl.read_text().splitlines(keepends=True)[:600]))  # 600 lines: 3 shards
    assert run(*pipe_args(src, local, "--num_workers", "2")).returncode == 0
    r = with_ray(*pipe_args(src, ray, "--engine", "ray", "--num_workers", "2"))
    assert r.returncode == 0, r.stderr
    assert '"engine":"ray"' in r.stderr and "Traceback" not in r.stderr
    assert (ray / "manifest.sha256").read_text() == (local / "manifest.sha256").read_text()
    assert not (ray / ".shards").exists()


def test_an_address_nothing_answers_at_is_one_line(tmp_path, chat_jsonl):
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = with_ray(*pipe_args(chat_jsonl, tmp_path / "o", "--engine", "ray", "--ray_address", f"127.0.0.1:{port}"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"nothing answers at the Ray cluster at 127.0.0.1:{port}" in r.stderr and "ray start --head" in r.stderr
    assert not (tmp_path / "o").exists()
