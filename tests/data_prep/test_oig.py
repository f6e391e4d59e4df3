"""subsample_openchatkit on the bundled real OIG file (Rosey: bot tag), sampling and options."""

import json
import subprocess
import sys

import pytest

from common.chat_format import join_pairs
from data_prep.jobs import subsample_openchatkit
from tests.conftest import OIG_DIR, OIG_JOKES, ROOT


def _lines(path):
    return [json.loads(line) for line in path.open(encoding="utf-8")]


@pytest.fixture(scope="module")
def directory_run(tmp_path_factory):
    """The bundled OIG directory (1 of BLOOMChat's 25 files), 100 lines sampled with seed 1: (result, lines, ids)."""
    out = tmp_path_factory.mktemp("oig") / "ock.jsonl"
    result = subsample_openchatkit(out, str(OIG_DIR), sample_size=100, seed=1)
    lines = _lines(out)
    return result, lines, [int(p[0]["id"].rsplit("-", 1)[1]) for p in lines]


def test_missing_files_are_one_warning(tmp_path, capsys):
    subsample_openchatkit(tmp_path / "o.jsonl", str(OIG_DIR), sample_size=1)
    assert "24 of 25 OIG files missing" in capsys.readouterr().err


def test_every_line_is_counted(directory_run):
    result, lines, _ = directory_run
    s = result.report.sources["unified_joke_explanations"]
    assert s.read == 356 and s.written == 100 and s.filtered["not sampled"] == 256 and s.balanced()
    assert len(lines) == 100


def test_rosey_is_read_as_the_bot_tag(directory_run):
    _, lines, _ = directory_run
    texts = [join_pairs(p) for p in lines]
    assert all(t.startswith("<human>: ") and "\n<bot>: " in t and "Rosey:" not in t for t in texts)


def test_the_sample_is_uniform_without_replacement(directory_run):
    _, _, ids = directory_run
    ids = sorted(ids)
    assert len(set(ids)) == 100 and all(1 <= i <= 356 for i in ids)  # without replacement
    # uniform over the file: each quarter of the 356 lines holds about 25 of the 100 (head- or tail-only fail)
    quarters = [sum(lo < i <= lo + 89 for i in ids) for lo in (0, 89, 178, 267)]
    assert all(12 <= q <= 40 for q in quarters), quarters


def test_the_sample_is_shuffled(directory_run):
    _, _, ids = directory_run
    assert ids != sorted(ids)


def test_same_seed_same_bytes_other_seed_other_sample(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.jsonl", "b.jsonl", "c.jsonl"))
    subsample_openchatkit(a, str(OIG_JOKES), sample_size=50, seed=3)
    subsample_openchatkit(b, str(OIG_JOKES), sample_size=50, seed=3)
    subsample_openchatkit(c, str(OIG_JOKES), sample_size=50, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_prosocial_filter_and_basic_upweighting(tmp_path):
    rows = [json.loads(line) for line in OIG_JOKES.open()][:30]
    for r in rows[:10]:
        r["metadata"]["source"] = "prosocial"
    src = tmp_path / "oig"
    src.mkdir()
    (src / "unified_basic.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "o.jsonl"
    result = subsample_openchatkit(out, str(src), sample_size=1000, upweight_basic=True, files=["unified_basic.jsonl"])
    s = result.report.sources["unified_basic"]
    assert s.filtered["prosocial source"] == 10 and s.written == 20 and s.balanced()
    assert len(out.read_text().splitlines()) == 20 * 1001


def test_bloomchat_format_ends_with_a_newline_as_bloomchats_oig(tmp_path):
    out = tmp_path / "b.jsonl"
    subsample_openchatkit(out, str(OIG_JOKES), format="bloomchat", sample_size=5)
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["prompt"] == "" and rec["completion"].startswith("<human>: ") and rec["completion"].endswith("\n")


def test_strict_refuses_missing_files_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep",
            "subsample_openchatkit",
            "--oig",
            str(OIG_DIR),
            "--strict",
            "--output_path",
            str(tmp_path / "s.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "24 of 25 OIG files missing" in proc.stderr and "Traceback" not in proc.stderr
