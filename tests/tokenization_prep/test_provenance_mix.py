"""Row provenance, --explain, the lost-article report and --mix, on real data_prep output."""

import json

import h5py
import numpy as np
import orjson
import pytest
import yaml

from tests.conftest import PYTHIA_TOKENIZER, ROOT
from tests.tokenization_prep.conftest import pipe_args, run
from tokenization_prep.articles import ArticleTokenizer, parse_line
from tokenization_prep.provenance import row_pieces
from tokenization_prep.schema import COMPLETION, SEP
from tokenization_prep.settings import ArticleSettings
from tokenization_prep.tokenizer_io import load_tokenizer


def articles_of_line(atok, raw: bytes):
    parts = parse_line(raw, atok.settings)
    return parts, atok.assemble([parts], atok.encode([parts]))[0]


@pytest.fixture(scope="module")
def truncated_out(tmp_path_factory, chat_jsonl):
    """``pipe_args``' output with greedy::truncate_right: long articles keep their head."""
    out = tmp_path_factory.mktemp("truncated") / "o"
    r = run(*pipe_args(chat_jsonl, out, "--input_packing_config", "greedy::truncate_right"))
    assert r.returncode == 0, r.stderr
    return out


def pieces_by_line(out) -> dict[int, list]:
    """Input line -> every (file, row, piece) of the output that holds part of its article."""
    seen = {}
    for path in sorted(out.glob("*.hdf5")):
        with h5py.File(path) as f:
            for row in range(len(f["input_ids"])):
                for p in row_pieces(f, row):
                    seen.setdefault(p.line, []).append((path.name, row, p))
    return seen


def test_every_piece_of_every_row_points_at_its_input_line(truncated_out, chat_jsonl):
    atok = ArticleTokenizer(load_tokenizer(str(PYTHIA_TOKENIZER)), ArticleSettings())
    parts = [parse_line(raw, atok.settings) for raw in chat_jsonl.read_bytes().splitlines()]
    articles = atok.assemble(parts, atok.encode(parts))  # per input line, its articles
    truncated = 0
    for path in sorted(truncated_out.glob("*.hdf5")):
        with h5py.File(path) as f:
            ids = f["input_ids"][:]
            for row in range(len(ids)):
                pieces = row_pieces(f, row)
                assert pieces and pieces[0].row_position == 0
                for p in pieces:
                    assert p.file == str(chat_jsonl)
                    arts = articles[p.line - 1]
                    assert len(arts) == 1 and p.article_tokens == len(arts[0].ids)
                    got = ids[row, p.row_position : p.row_position + p.token_end - p.token_start]
                    assert np.array_equal(got, arts[0].ids[p.token_start : p.token_end]), (path.name, row, p.line)
                    assert p.truncated == (p.token_end - p.token_start < p.article_tokens)
                    truncated += p.truncated
    assert truncated


def test_pieces_carry_their_records_id_source_and_category(truncated_out, chat_jsonl):
    lines = chat_jsonl.read_bytes().splitlines()
    seen = pieces_by_line(truncated_out)
    assert len(seen) > 1000
    for line, held in seen.items():
        record = orjson.loads(lines[line - 1])[0]
        for _, _, p in held:
            assert (p.record_id, p.source, p.category) == (record["id"], record["source"], record.get("category"))


def test_the_lost_articles_report_agrees_with_the_rows(truncated_out):
    report = json.loads((truncated_out / "data_report.json").read_text())
    lost = report["splits"]["train"]["lost_articles"] + report["splits"]["dev"]["lost_articles"]
    assert {r["line"] for r in lost if r["status"] == "truncated"} <= set(pieces_by_line(truncated_out))
    assert all(r["tokens"] > 512 and r["tokens_kept"] <= 512 for r in lost if "max_seq_length" in r["reason"])


def test_explain_prints_each_articles_origin_then_its_text(truncated_out, chat_jsonl):
    r = run("decode", str(truncated_out / "train_1_of_3.hdf5"), "--index", "0", "--explain")
    with h5py.File(truncated_out / "train_1_of_3.hdf5") as f:
        first = row_pieces(f, 0)[0]
    assert r.returncode == 0 and f"--- article 1: {chat_jsonl}:{first.line}  source={first.source}" in r.stdout
    assert f"id={first.record_id}" in r.stdout and "[PROMPT]<human>:" in r.stdout


def test_dropped_articles_are_listed_with_their_lines(tokenized, chat_jsonl):
    out = tokenized  # greedy::drop at 512
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


MIX = "dolly=0.4,oasst=0.6"


@pytest.fixture(scope="module")
def mixed_out(tmp_path_factory, chat_jsonl):
    out = tmp_path_factory.mktemp("mixed") / "mix"
    r = run(*pipe_args(chat_jsonl, out, "--mix", MIX))
    assert r.returncode == 0, r.stderr
    return out


def test_mix_realizes_the_requested_shares(mixed_out):
    mix = json.loads((mixed_out / "data_report.json").read_text())["mix"]
    assert set(mix) == {"dolly", "oasst"} and (mixed_out / "mix.png").stat().st_size > 1000
    assert mix["dolly"]["requested"] == 0.4 and mix["oasst"]["requested"] == 0.6
    for src in mix:
        assert abs(mix[src]["realized"] - mix[src]["requested"]) < 0.01, mix
    assert mix["oasst"]["repeats"] > 1 > mix["dolly"]["repeats"]  # oasst is the smaller source: up-sampled


def test_mixed_files_hold_what_the_report_says(mixed_out):
    mix = json.loads((mixed_out / "data_report.json").read_text())["mix"]
    assert supervised_by_source(mixed_out) == {s: m["supervised_tokens"] for s, m in mix.items()}


def test_dev_keeps_its_natural_mix(mixed_out):
    report = json.loads((mixed_out / "data_report.json").read_text())
    assert report["splits"]["dev"]["mix"]["dolly"]["requested"] is None
    meta = yaml.safe_load((mixed_out / "metadata.yaml").read_text())
    assert meta["mix"] == MIX and meta["mix_tokens"] == "input"  # the settings as given


@pytest.mark.slow  # a rerun; the slow kill test reruns the whole pipeline too
def test_mix_is_deterministic_for_a_seed(tmp_path, chat_jsonl, mixed_out):
    again = tmp_path / "again"
    assert run(*pipe_args(chat_jsonl, again, "--mix", MIX)).returncode == 0
    assert (again / "manifest.sha256").read_bytes() == (mixed_out / "manifest.sha256").read_bytes()


def test_another_seed_mixes_other_rows(tmp_path, chat_jsonl, mixed_out):
    other = tmp_path / "other"
    assert run(*pipe_args(chat_jsonl, other, "--mix", MIX, "--seed", "7")).returncode == 0
    with h5py.File(mixed_out / "train_1_of_3.hdf5") as a, h5py.File(other / "train_1_of_3.hdf5") as b:
        assert not np.array_equal(a["input_ids"][:4], b["input_ids"][:4])


def test_mix_by_repeat_factors(tmp_path, chat_jsonl, tokenized):
    plain, rep = tokenized, tmp_path / "rep"
    r = run(*pipe_args(chat_jsonl, rep, "--mix", "oasst=x3,dolly=x1"))  # BLOOMChat's x1001, smaller
    assert r.returncode == 0, r.stderr
    base, mix = (json.loads((d / "data_report.json").read_text())["mix"] for d in (plain, rep))
    assert mix["oasst"]["repeats"] == 3 and mix["dolly"]["repeats"] == 1
    assert mix["oasst"]["articles"] == 3 * base["oasst"]["articles"]
    assert mix["oasst"]["supervised_tokens"] == 3 * base["oasst"]["supervised_tokens"]
    assert mix["dolly"]["supervised_tokens"] == base["dolly"]["supervised_tokens"]


def test_mix_upsample_loses_nothing(tmp_path, chat_jsonl):
    up = tmp_path / "up"
    assert run(*pipe_args(chat_jsonl, up, "--mix", "dolly=0.5,oasst=0.5", "--mix_tokens", "upsample")).returncode == 0
    mix = json.loads((up / "data_report.json").read_text())["mix"]
    assert mix["dolly"]["repeats"] == 1 and mix["oasst"]["repeats"] > 1  # nothing down-sampled
    assert abs(mix["oasst"]["realized"] - 0.5) < 0.01


def test_a_source_not_in_the_split_is_one_line(tmp_path, chat_jsonl):
    r = run(*pipe_args(chat_jsonl, tmp_path / "o", "--mix", "wiki=1"))
    assert r.returncode == 2 and "'wiki' is not in the training split" in r.stderr and r.stderr.count("\n") == 1


def test_explain_on_a_gdp_file_is_one_line():
    gdp_file = next((ROOT / "tests" / "tokenization_prep" / "gdp_examples").rglob("*.hdf5"))
    r = run("decode", str(gdp_file), "--index", "0", "--explain", "--pretrained_tokenizer", str(PYTHIA_TOKENIZER))
    assert r.returncode == 2 and "has no provenance" in r.stderr and r.stderr.count("\n") == 1, r.stderr
