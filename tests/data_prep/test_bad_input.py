"""The bad-input corpus: every bad record is a rejects entry with a reason, or one line under --strict."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import DataError
from data_prep.jobs import prepare_oa_dolly
from tests.conftest import OASST_ROWS, OASST_TREES, ROOT

BAD = Path(__file__).parent / "bad_input" / "dolly_bad.jsonl"
EXPECTED = {
    4: "not JSON",
    5: "JSON value is a list, not an object",
    6: "JSON value is a int, not an object",
    7: "field 'instruction' is a int, not a string",
    8: "missing field 'response'",
    9: "empty instruction",
    10: "empty response",
    11: "invalid UTF-8",
}


def test_every_bad_dolly_line_is_quarantined_with_reason(tmp_path):
    out = tmp_path / "out.jsonl"
    result = prepare_oa_dolly(out, str(BAD), None)
    rejects = [json.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").open()]
    assert {r["line"] for r in rejects} == set(EXPECTED)
    for r in rejects:
        assert r["reason"].startswith(EXPECTED[r["line"]]) and r["file"] == str(BAD)
    s = result.report.sources["dolly"]
    assert s.read == 12 and s.written == 4 and sum(s.rejected.values()) == 8 and s.balanced()
    first = json.loads(out.read_text().splitlines()[0])
    assert first[0]["prompt"].startswith("<human>: When did Virgin Australia")  # BOM + CRLF read fine
    assert not first[0]["completion"].endswith("\r")


def test_huge_line_is_rejected_without_reading_it_whole(tmp_path):
    big = tmp_path / "big.jsonl"
    good = BAD.read_bytes().split(b"\n")[2].rstrip(b"\r")
    with big.open("wb") as fh:
        fh.write(good + b"\n")
        fh.write(b'{"instruction": "' + b"x" * (50 * 1024 * 1024) + b'", "response": "y"}\n')
        fh.write(good + b"\n")
    result = prepare_oa_dolly(tmp_path / "o.jsonl", str(big), None, quality={"near_dup": False})  # the same line twice
    s = result.report.sources["dolly"]
    assert s.written == 2 and s.rejected == {"line longer than 8388608 bytes": 1}


def test_strict_stops_with_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"dolly_bad.jsonl:4: not JSON"):
        prepare_oa_dolly(tmp_path / "o.jsonl", str(BAD), None, strict=True)
    assert not (tmp_path / "o.jsonl").exists()  # nothing that looks complete is left behind


def test_strict_cli_prints_one_line_and_exits_nonzero(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep",
            "prepare_oa_dolly",
            "--dolly",
            str(BAD),
            "--oasst",
            "",
            "--strict",
            "--output_path",
            str(tmp_path / "o.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "dolly_bad.jsonl:4" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def bad_oasst(tmp_path_factory):
    """Real OASST rows plus a cycle, a same-role reply, a bot root, a duplicate id, a bad role, no text, not JSON."""
    tmp = tmp_path_factory.mktemp("bad_oasst")
    rows = [json.loads(line) for line in OASST_ROWS.open()][:40]
    by_id = {r["message_id"]: r for r in rows}
    child = next(r for r in rows if r["parent_id"] in by_id and by_id[r["parent_id"]]["parent_id"] is None)
    a, b = dict(rows[5], message_id="cyc-a", parent_id="cyc-b"), dict(rows[6], message_id="cyc-b", parent_id="cyc-a")
    same_role = dict(child, message_id="same-role", role=by_id[child["parent_id"]]["role"])
    bot_root = dict(rows[1], message_id="bot-root", parent_id=None, role="assistant")
    extra = [a, b, same_role, bot_root, dict(rows[3]), dict(rows[4], role="system"), dict(rows[7], text=None)]
    path = tmp / "oasst_bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows + extra) + "\nnot json\n")
    s = prepare_oa_dolly(tmp / "o.jsonl", None, str(path)).report.sources["oasst"]
    return s, rows


def test_bad_oasst_rows_are_all_counted(bad_oasst):
    s, _ = bad_oasst
    assert s.read == 48 and s.balanced()
    assert any(k.startswith("not JSON") for k in s.rejected)


@pytest.mark.parametrize(
    "reason,count",
    [
        ("cycle in parent links", 2),
        ("non-alternating roles", 1),
        ("root is not a prompter message", 1),
        ("field 'role' is 'system', not 'prompter' or 'assistant'", 1),
        ("missing field 'text'", 1),
    ],
)
def test_each_bad_oasst_row_is_rejected_with_its_reason(bad_oasst, reason, count):
    s, _ = bad_oasst
    assert s.rejected[reason] == count


def test_a_duplicate_oasst_id_is_rejected(bad_oasst):
    s, rows = bad_oasst
    assert s.rejected[f"duplicate message_id {rows[3]['message_id']}"] == 1


def test_an_existing_output_is_refused_unless_overwrite(tmp_path):
    """The project's rule for every stage: a finished output is never silently replaced. Run as ``python -m``."""
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, "-m", "data_prep", "prepare_oa_dolly", "--dolly", "", "--oasst", str(OASST_TREES)]
    first = subprocess.run([*cmd, "--output_path", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    again = subprocess.run([*cmd, "--output_path", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr and again.stderr.count("\n") == 1
    assert out.read_bytes() == before
    forced = subprocess.run(
        [*cmd, "--output_path", str(out), "--overwrite_output_path"], cwd=ROOT, capture_output=True, text=True
    )
    assert forced.returncode == 0 and out.read_bytes() == before  # same input, same bytes
