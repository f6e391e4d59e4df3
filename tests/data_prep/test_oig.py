"""subsample_openchatkit on the bundled real OIG file (Rosey: bot tag), sampling and options."""

import json
import subprocess
import sys

from common.chat_format import join_pairs
from data_prep.pipeline import subsample_openchatkit
from tests.conftest import OIG_DIR, OIG_JOKES, ROOT


def _lines(path):
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def test_directory_run_parses_rosey_and_samples_truly(tmp_path, capsys):
    out = tmp_path / "ock.jsonl"
    result = subsample_openchatkit(out, str(OIG_DIR), sample_size=100, seed=1)
    assert "24 of 25 OIG files missing" in capsys.readouterr().err
    s = result.report.sources["unified_joke_explanations"]
    assert s.read == 356 and s.written == 100 and s.filtered["not sampled"] == 256 and s.balanced()
    lines = _lines(out)
    assert len(lines) == 100
    texts = [join_pairs(p) for p in lines]
    assert all(t.startswith("<human>: ") and "\n<bot>: " in t and "Rosey:" not in t for t in texts)
    ids = sorted(int(p[0]["id"].rsplit("-", 1)[1]) for p in lines)
    assert len(set(ids)) == 100 and all(1 <= i <= 356 for i in ids)  # without replacement
    # uniform over the file: each quarter of the 356 lines holds about 25 of the 100 (head- or tail-only fail)
    quarters = [sum(lo < i <= lo + 89 for i in ids) for lo in (0, 89, 178, 267)]
    assert all(12 <= q <= 40 for q in quarters), quarters
    again = subsample_openchatkit(tmp_path / "again.jsonl", str(OIG_DIR), sample_size=100, seed=1)
    other = subsample_openchatkit(tmp_path / "other.jsonl", str(OIG_DIR), sample_size=100, seed=2)
    assert again.report.sources["unified_joke_explanations"].written == 100 and other
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()  # seeded
    assert (tmp_path / "other.jsonl").read_bytes() != out.read_bytes()
    assert [int(p[0]["id"].rsplit("-", 1)[1]) for p in lines] != ids  # final shuffle


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
    result = subsample_openchatkit(out, str(src), sample_size=1000, upweight_basic=True, files=("unified_basic.jsonl",))
    s = result.report.sources["unified_basic"]
    assert s.filtered["prosocial source"] == 10 and s.written == 20 and s.balanced()
    assert len(out.read_text().splitlines()) == 20 * 1001


def test_bloomchat_format_and_strict_missing_files(tmp_path):
    out = tmp_path / "b.jsonl"
    subsample_openchatkit(out, str(OIG_JOKES), fmt="bloomchat", sample_size=5)
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["prompt"] == "" and rec["completion"].startswith("<human>: ") and rec["completion"].endswith("\n")
    proc = subprocess.run(
        [
            sys.executable,
            "data_prep/subsample_openchatkit.py",
            "--oig",
            str(OIG_DIR),
            "--strict",
            "--output",
            str(tmp_path / "s.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "24 of 25 OIG files missing" in proc.stderr and "Traceback" not in proc.stderr
