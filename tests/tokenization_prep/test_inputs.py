"""The line index: numpy finds the lines and blank ones as splitting on newlines and ``strip()`` do, whatever the
block size, with a BOM, CRLF, a missing last newline, and whitespace-only lines."""

import random

import pytest

from common.files import clean_line
from tests.conftest import DOLLY
from tokenization_prep import inputs
from tokenization_prep.inputs import LineIndex


def reference(files):
    """What a Python loop over the lines gives: (file, offset, line number, number among all lines) of non-blank."""
    out, k = [], 0
    for i, path in enumerate(files):
        pos, parts = 0, path.read_bytes().split(b"\n")
        lines = [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        for lineno, raw in enumerate(lines, start=1):
            if clean_line(raw, pos == 0).strip():
                out.append((i, pos, lineno, k))
            pos += len(raw)
            k += 1
    return out, k


@pytest.mark.parametrize("block", [1, 7, 1 << 22])
def test_lines_and_blank_lines_as_a_loop_finds_them(tmp_path, block, monkeypatch):
    monkeypatch.setattr(inputs, "BLOCK", block)
    rng = random.Random(block)
    pieces = [b"", b" ", b"\t", b"\r", b"\x0c", b"{}", b"\xef\xbb\xbf", b"x", b"\xc3\xa9", b"\n", b"\n", b"\n"]
    cases = [b"", b"\n", b"a", b"\n\n", b"\xef\xbb\xbf\nx\n", b"\xef\xbb\xbf  \r\n x", b" \t\r\n\n  y  \n"]
    cases += [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(200)]
    files = []
    for j, case in enumerate(cases):
        files.append(tmp_path / f"{j:03d}.jsonl")
        files[-1].write_bytes(case)
    index = LineIndex(files)
    got = list(zip(*(a.tolist() for a in (index.file_index, index.offsets, index.line_numbers, index.global_numbers))))
    assert (got, index.total) == reference(files)


def test_real_lines(tmp_path):
    import gzip

    src = tmp_path / "dolly.jsonl"
    src.write_bytes(gzip.decompress(DOLLY.read_bytes())[:2_000_000] + b"\n\n   \n")
    index = LineIndex([src])
    lines, total = reference([src])
    assert index.total == total == len(lines) + 2 and index.offsets.tolist() == [r[1] for r in lines]
