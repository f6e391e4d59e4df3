"""``--dev_leakage`` on real Dolly records with planted near-copies of training lines in the dev and test splits:
moved to the matched line's training file (default) or dropped, counted in data_report.md/.json and logs.log;
``off`` leaves the split as it was; a clean input is left alone."""

import gzip
import itertools
import json

import orjson
import pytest

from tests.conftest import DOLLY, GPT2_TOKENIZER
from tests.tokenization_prep.conftest import run

# --shuffle False: line k goes to split k % 5: train files 1-3 (k % 5 in 0, 1, 2), test file (3), dev file (4)
SPLITS = ["--num_training_splits", "3", "--num_test_splits", "1", "--num_dev_splits", "1", "--shuffle", "False"]
PLANTED = {4: 0, 9: 6, 13: 2}  # 0-based line -> the training line it nearly copies: dev, dev, test


def near_copy(line: dict) -> dict:
    """The same pair with other case, spacing and punctuation, and one word changed."""
    words = line["completion"].upper().split()
    words[len(words) // 2] = "CHANGED"
    return {"prompt": "  " + line["prompt"].upper() + "  ", "completion": " " + " ;  ".join(words)}


@pytest.fixture(scope="module")
def clean_lines() -> list[dict]:
    """120 Dolly records with at least 80 words of response, as prompt/completion lines."""
    with gzip.open(DOLLY, "rb") as fh:
        recs = (orjson.loads(x) for x in fh)
        long = (r for r in recs if len(r["response"].split()) >= 80)
        return [
            {"prompt": f"<human>: {r['instruction']}\n{r['context']}\n<bot>:", "completion": f" {r['response']}"}
            for r in itertools.islice(long, 120)
        ]


def write_jsonl(path, lines):
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory, clean_lines):
    lines = list(clean_lines)
    for at, source in PLANTED.items():
        lines[at] = near_copy(lines[source])
    return write_jsonl(tmp_path_factory.mktemp("leak") / "planted.jsonl", lines)


def pipeline(src, out, *extra):
    args = ["pipeline", "--input_path", src, "--output_path", out, "--pretrained_tokenizer", GPT2_TOKENIZER]
    r = run(*args, "--max_seq_length", "1024", "--input_packing_config", "greedy::drop", *SPLITS, *extra)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "data_report.json").read_text()), r


def split_lines(out, name):
    return (out / "splits" / f"{name}.jsonl").read_text().splitlines()


@pytest.mark.parametrize("mode", ["move", "drop"])
def test_planted_near_copies_leave_dev_and_test(tmp_path, planted, mode):
    report, r = pipeline(planted, tmp_path / "o", "--keep_split_jsonls", *(["--dev_leakage", mode] * (mode != "move")))
    leak = report["leakage"]
    verb = "moved" if mode == "move" else "dropped"
    got = [(k["split"], k["line"], k["train_line"]) for k in leak["lines"]]
    assert got == [("dev", 5, 1), ("dev", 10, 7), ("test", 14, 3)]  # 1-based lines; dev first, then test
    assert leak["checked"] == {"dev": 24, "test": 24} and leak[verb] == {"dev": 2, "test": 1}
    assert leak["train_lines_indexed"] == 72 and all(k["jaccard"] >= 0.8 for k in leak["lines"])
    assert report["splits"]["dev"]["lines"] == 22
    assert report["splits"]["train"]["lines"] == 72 + (3 if mode == "move" else 0)
    out, src = tmp_path / "o", planted.read_text().splitlines()
    assert (
        src[4] not in split_lines(out, "dev_1_of_1")
        and src[13] not in (out / "test_files/test_1_of_1.jsonl").read_text()
    )
    if mode == "move":  # appended to the training file holding the matched line (lines 1, 7, 3: files 1, 2, 3)
        assert [split_lines(out, f"train_{i}_of_3")[-1] for i in (1, 2, 3)] == [src[4], src[9], src[13]]
    md, log = (out / "data_report.md").read_text(), (out / "logs.log").read_text()
    assert f"Dev-split leakage ({mode}" in md and f"| dev | {planted}:5 | {planted}:1 |" in md
    assert f"{verb} dev line {planted}:10 (near-duplicate of train line {planted}:7" in log
    assert f"dev leakage ({mode}): 2 of 24 dev, 1 of 24 test lines" in log and "dev leakage" in r.stderr


def test_off_keeps_the_split_and_writes_no_leakage(tmp_path, planted):
    report, r = pipeline(planted, tmp_path / "o", "--dev_leakage", "off", "--keep_split_jsonls")
    assert "leakage" not in report and report["splits"]["dev"]["lines"] == 24 and "leakage" not in r.stderr
    assert planted.read_text().splitlines()[4] in split_lines(tmp_path / "o", "dev_1_of_1")
    assert "leakage" not in (tmp_path / "o" / "data_report.md").read_text().lower()
    assert "leakage" not in (tmp_path / "o" / "logs.log").read_text().replace("dev_leakage: off", "")


def test_a_clean_input_gives_the_same_rows_as_off(tmp_path, clean_lines):
    src = write_jsonl(tmp_path / "clean.jsonl", clean_lines)
    moved, r = pipeline(src, tmp_path / "move")
    off, _ = pipeline(src, tmp_path / "off", "--dev_leakage", "off")
    assert moved["leakage"]["lines"] == [] and "leakage" not in r.stderr
    assert {k: v for k, v in moved.items() if k != "leakage"} == off
    for name in ("train_1_of_3.hdf5", "train_3_of_3.hdf5", "dev_1_of_1.hdf5", "test_files/test_1_of_1.jsonl"):
        assert (tmp_path / "move" / name).read_bytes() == (tmp_path / "off" / name).read_bytes(), name


def test_a_dev_file_left_empty_is_one_line(tmp_path, clean_lines):
    lines = [clean_lines[k - 4] if k % 5 == 4 else x for k, x in enumerate(clean_lines)]  # every dev line a copy
    src = write_jsonl(tmp_path / "copies.jsonl", lines)
    r = run(
        *["pipeline", "--input_path", src, "--output_path", tmp_path / "o", "--pretrained_tokenizer", GPT2_TOKENIZER],
        *SPLITS,
    )
    assert r.returncode == 2 and "--dev_leakage move: every line of dev file 1" in r.stderr
    assert r.stderr.count("\n") == 1 and "--dev_leakage off" in r.stderr


def test_the_check_is_the_same_for_any_number_of_workers(tmp_path, chat_jsonl):
    """The lines are sketched by worker processes (in chunks of at least 256 lines), the index is built in order:
    a doubled input, whose dev and test lines all have a copy in train, gives the same moves with 1 and 3 workers."""
    from tokenization_prep.engine import LocalEngine
    from tokenization_prep.inputs import LineIndex
    from tokenization_prep.leakage import remove_leaks
    from tokenization_prep.settings import ArticleSettings
    from tokenization_prep.splits import SplitCounts, assign_lines, split_names

    src = tmp_path / "twice.jsonl"
    src.write_text(chat_jsonl.read_text() * 2)
    lines, counts = LineIndex([src]), SplitCounts(3, 1, 1, [])
    parts = assign_lines(lines.global_numbers, counts, "on_RAM", 0)
    got = []
    for workers in (1, 3):
        engine = LocalEngine(workers)
        try:
            moved, leakage = remove_leaks(lines, parts, split_names(counts), "move", ArticleSettings(), engine)
        finally:
            engine.close()
        got.append(([p.tolist() for p in moved], leakage.as_dict()))
    assert got[0] == got[1]
    assert sum(got[0][1]["moved"].values()) > 500  # most dev and test lines have their copy in train
