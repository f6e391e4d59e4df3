"""Row provenance, --explain, the lost-article report and --mix, on real data_prep output."""

import json

import h5py
import numpy as np
import orjson
import pytest
import yaml

from tests.conftest import PYTHIA_TOKENIZER, ROOT
from tests.tokenization_prep.conftest import cli, pipe_args
from tokenization_prep.articles import COMPLETION, SEP, ArticleSettings, ArticleTokenizer, parse_line
from tokenization_prep.provenance import row_pieces
from tokenization_prep.tokenizer_io import load_tokenizer


def articles_of_line(atok, raw: bytes):
    parts = parse_line(raw, atok.settings)
    return parts, atok.assemble([parts], atok.encode([parts]))[0]


def test_every_piece_of_every_row_points_at_its_input_line(tmp_path, chat_jsonl):
    out = tmp_path / "o"
    r = cli(*pipe_args(chat_jsonl, out, "--input_packing_config", "greedy::truncate_right"))
    assert r.returncode == 0, r.stderr
    lines = chat_jsonl.read_bytes().splitlines()
    atok = ArticleTokenizer(load_tokenizer(str(PYTHIA_TOKENIZER)), ArticleSettings())
    seen, truncated = set(), 0
    for path in sorted(out.glob("*.hdf5")):
        with h5py.File(path) as f:
            ids = f["input_ids"][:]
            for row in range(len(ids)):
                pieces = row_pieces(f, row)
                assert pieces and pieces[0].row_position == 0
                for p in pieces:
                    assert p.file == str(chat_jsonl)
                    parts, arts = articles_of_line(atok, lines[p.line - 1])
                    record = orjson.loads(lines[p.line - 1])[0]
                    assert len(arts) == 1 and p.article_tokens == len(arts[0].ids)
                    got = ids[row, p.row_position : p.row_position + p.token_end - p.token_start]
                    assert np.array_equal(got, arts[0].ids[p.token_start : p.token_end]), (path.name, row, p.line)
                    assert (p.record_id, p.source, p.category) == (
                        record["id"],
                        record["source"],
                        record.get("category"),
                    )
                    assert p.truncated == (p.token_end - p.token_start < p.article_tokens)
                    truncated += p.truncated
                    seen.add(p.line)
    assert truncated and len(seen) > 1000
    report = json.loads((out / "data_report.json").read_text())
    lost = report["splits"]["train"]["lost_articles"] + report["splits"]["dev"]["lost_articles"]
    assert {r["line"] for r in lost if r["status"] == "truncated"} <= seen
    assert all(r["tokens"] > 512 and r["tokens_kept"] <= 512 for r in lost if "max_seq_length" in r["reason"])
    # --explain: origin lines, then text
    r = cli("decode", str(out / "train_1_of_3.hdf5"), "--index", "0", "--explain")
    with h5py.File(out / "train_1_of_3.hdf5") as f:
        first = row_pieces(f, 0)[0]
    assert r.returncode == 0 and f"--- article 1: {chat_jsonl}:{first.line}  source={first.source}" in r.stdout
    assert f"id={first.record_id}" in r.stdout and "[PROMPT]<human>:" in r.stdout


def test_dropped_articles_are_listed_with_their_lines(tmp_path, chat_jsonl):
    out = tmp_path / "o"
    assert cli(*pipe_args(chat_jsonl, out)).returncode == 0  # greedy::drop at 512
    report = json.loads((out / "data_report.json").read_text())
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    lines = chat_jsonl.read_bytes().splitlines()
    atok = ArticleTokenizer(load_tokenizer(str(PYTHIA_TOKENIZER)), ArticleSettings())
    for split in ("train", "dev"):
        lost = report["splits"][split]["lost_articles"]
        assert lost and all(r["status"] == "dropped" and r["tokens_kept"] == 0 for r in lost)
        assert sum(r["tokens"] for r in lost) == meta[f"{split}_tokens_dropped_from_packing"]
        for r in lost[:20]:
            _, arts = articles_of_line(atok, lines[r["line"] - 1])
            assert len(arts[0].ids) == r["tokens"] > 512
    assert "Dropped and truncated articles" in (out / "data_report.md").read_text()


def supervised_by_source(out, split="train") -> dict:
    """Supervised tokens per source, counted from the HDF5 rows through their provenance."""
    counts = {}
    for path in sorted(out.glob(f"{split}_*.hdf5")):
        with h5py.File(path) as f:
            types = f["token_type_ids"][:]
            for row in range(len(types)):
                for p in row_pieces(f, row):
                    t = types[row, p.row_position : p.row_position + p.token_end - p.token_start]
                    counts[p.source] = counts.get(p.source, 0) + int(((t == COMPLETION) | (t == SEP)).sum())
    return counts


def test_mix_realizes_the_requested_shares_deterministically(tmp_path, chat_jsonl):
    out = tmp_path / "mix"
    r = cli(*pipe_args(chat_jsonl, out, "--mix", "dolly=0.4,oasst=0.6"))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "data_report.json").read_text())
    mix = report["mix"]
    assert set(mix) == {"dolly", "oasst"} and (out / "mix.png").stat().st_size > 1000
    assert mix["dolly"]["requested"] == 0.4 and mix["oasst"]["requested"] == 0.6
    for src in mix:
        assert abs(mix[src]["realized"] - mix[src]["requested"]) < 0.01, mix
    assert mix["oasst"]["repeats"] > 1 > mix["dolly"]["repeats"]  # oasst is the smaller source: up-sampled
    assert supervised_by_source(out) == {s: m["supervised_tokens"] for s, m in mix.items()}  # the files agree
    assert report["splits"]["dev"]["mix"]["dolly"]["requested"] is None  # dev keeps its natural mix
    again = tmp_path / "again"
    assert cli(*pipe_args(chat_jsonl, again, "--mix", "dolly=0.4,oasst=0.6")).returncode == 0
    assert (again / "manifest.sha256").read_bytes() == (out / "manifest.sha256").read_bytes()
    other = tmp_path / "other"
    assert cli(*pipe_args(chat_jsonl, other, "--mix", "dolly=0.4,oasst=0.6", "--seed", "7")).returncode == 0
    with h5py.File(out / "train_1_of_3.hdf5") as a, h5py.File(other / "train_1_of_3.hdf5") as b:
        assert not np.array_equal(a["input_ids"][:4], b["input_ids"][:4])


def test_mix_by_repeat_factors_and_upsampling(tmp_path, chat_jsonl):
    plain, rep = tmp_path / "plain", tmp_path / "rep"
    assert cli(*pipe_args(chat_jsonl, plain)).returncode == 0
    r = cli(*pipe_args(chat_jsonl, rep, "--mix", "oasst=x3,dolly=x1"))  # BLOOMChat's x1001, smaller
    assert r.returncode == 0, r.stderr
    base, mix = (json.loads((d / "data_report.json").read_text())["mix"] for d in (plain, rep))
    assert mix["oasst"]["repeats"] == 3 and mix["dolly"]["repeats"] == 1
    assert mix["oasst"]["articles"] == 3 * base["oasst"]["articles"]
    assert mix["oasst"]["supervised_tokens"] == 3 * base["oasst"]["supervised_tokens"]
    assert mix["dolly"]["supervised_tokens"] == base["dolly"]["supervised_tokens"]
    up = tmp_path / "up"
    assert cli(*pipe_args(chat_jsonl, up, "--mix", "dolly=0.5,oasst=0.5", "--mix_tokens", "upsample")).returncode == 0
    mix = json.loads((up / "data_report.json").read_text())["mix"]
    assert mix["dolly"]["repeats"] == 1 and mix["oasst"]["repeats"] > 1  # nothing down-sampled
    assert abs(mix["oasst"]["realized"] - 0.5) < 0.01


@pytest.mark.parametrize(
    "mix, needle",
    [
        ("wiki=1", "'wiki' is not in the training split"),
        ("dolly=abc", "not SOURCE=WEIGHT"),
        ("dolly=0,oasst=0", "sum to zero"),
        ("dolly=-1", "not SOURCE=WEIGHT"),
        ("dolly=0.5,oasst=x2", "not both"),
        ("dolly=1,dolly=2", "named twice"),
    ],
)
def test_bad_mix_is_one_line(tmp_path, chat_jsonl, mix, needle):
    r = cli(*pipe_args(chat_jsonl, tmp_path / "o", "--mix", mix))
    assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_explain_on_a_gdp_file_is_one_line():
    gdp_file = next((ROOT / "tests" / "tokenization_prep" / "gdp_examples").rglob("*.hdf5"))
    r = cli("decode", str(gdp_file), "--index", "0", "--explain", "--pretrained_tokenizer", str(PYTHIA_TOKENIZER))
    assert r.returncode == 2 and "has no provenance" in r.stderr and r.stderr.count("\n") == 1, r.stderr
