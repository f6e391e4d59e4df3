"""Dev loss per source and category (the trainer's) and ``python -m training.evaluate`` on real tokenized data."""

import json

import h5py
import pytest
import torch
import yaml

from tests.conftest import PYTHIA_TOKENIZER, chat_jsonl_file, tokenize
from tests.training.conftest import run_in_process
from tokenization_prep.provenance import row_pieces
from training.config import ModelConfig, TinyShape
from training.data import PackedDataset, collate, load_data, row_features
from training.dev_loss import GroupedLoss
from training.evaluate import classify, dev_loss
from training.evaluate import main as evaluate_main
from training.modeling import build_model, packed_token_losses, weighted_loss

SEQ, SHAPE, SEED = 128, {"hidden_size": 32, "num_layers": 2, "num_heads": 4}, 5


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """Dolly (with categories) + OASST (without) tokenized at 128 with a dev split."""
    d = tmp_path_factory.mktemp("mixed")
    out = d / "tok"
    tokenize(chat_jsonl_file(d, dolly_lines=300), out, SEQ, "greedy::truncate_left")
    return out


def tiny(data_dir):
    model, _ = build_model(
        ModelConfig(kind="pythia", tiny=TinyShape(**SHAPE)), load_data(data_dir).embedding_rows, SEQ, None, SEED
    )
    return model.eval()


def test_loss_by_source_and_category_equals_each_article_alone(mixed_dir):
    model = tiny(mixed_dir)
    dev = PackedDataset(mixed_dir, "dev", 0.0, groups=True)
    assert dev.groups.names["source"] == ["dolly", "oasst"] and "open_qa" in dev.groups.names["category"]
    acc = GroupedLoss(dev.groups.names, "cpu")
    with torch.no_grad():
        for lo in range(0, len(dev), 4):
            batch = collate(dev.__getitems__(list(range(lo, min(len(dev), lo + 4)))))
            acc.add(batch, packed_token_losses(model, batch))
    got = acc.result([float(x) for x in acc.sums()])
    want = {"source": {}, "category": {}}
    with h5py.File(dev.files[0]) as f, torch.no_grad():
        ids, types = f["input_ids"][:], f["token_type_ids"][:]
        for row in range(len(ids)):
            for p in row_pieces(f, row):
                end = p.row_position + p.token_end - p.token_start
                feats = row_features(ids[row, p.row_position : end], types[row, p.row_position : end], 0.0)
                x = feats["input_ids"][None]
                loss, w = weighted_loss(model(input_ids=x).logits, x, feats["weights"][None])
                for table, name in (("source", p.source), ("category", p.category or "-")):
                    s = want[table].setdefault(name, [0.0, 0.0])
                    s[0], s[1] = s[0] + float(loss), s[1] + w
    for table in ("source", "category"):
        expect = {k: a / b for k, (a, b) in want[table].items() if b}
        assert got[f"by_{table}"].keys() == expect.keys()
        for k, v in expect.items():
            assert got[f"by_{table}"][k] == pytest.approx(v, rel=1e-4), (table, k)
    total = sum(v[0] for v in want["source"].values()) / sum(v[1] for v in want["source"].values())
    assert got["loss"] == pytest.approx(total, rel=1e-4)


def test_classify_reply_stops():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(PYTHIA_TOKENIZER))
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tok.eos_token_id
    assert classify(enc(" Paris.") + [eos, eos], tok, eos) == ("stop_eos", False, len(enc(" Paris.")))
    assert classify(enc(" Paris.\n<human>: and"), tok, eos)[:2] == ("stop_tag", True)
    assert classify(enc(" Paris. <bot>: yes"), tok, eos) == ("stop_length", True, len(enc(" Paris. <bot>: yes")))


def run_eval(*args) -> tuple[int, str, str]:
    """``python -m training evaluate ARGS`` in this process: (exit status, stdout, stderr)."""
    return run_in_process(evaluate_main, *args)


@pytest.fixture(scope="module")
def saved_model(mixed_dir, tmp_path_factory):
    """The tiny model saved as a stage's final/ would be (weights and tokenizer)."""
    from transformers import AutoTokenizer

    model_dir = tmp_path_factory.mktemp("model")
    tiny(mixed_dir).save_pretrained(model_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(mixed_dir / "tokenizer")).save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def side_by_side(mixed_dir, saved_model, tmp_path_factory):
    """One evaluate run: the seed config's untrained model beside the saved one. (exit, stdout, JSON result)"""
    work = tmp_path_factory.mktemp("eval")
    cfg = work / "stage.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"name": "s", "data_dir": str(mixed_dir), "seed": SEED, "model": {"kind": "pythia", "tiny": SHAPE}}
        )
    )
    out = work / "eval.json"
    code, stdout, stderr = run_eval(
        "--untrained", cfg, "--model", saved_model, "--data", mixed_dir, "--prompts", 3, "--max_new_tokens", 6,
        "--output_path", out,
    )  # fmt: skip
    assert code == 0, stderr[-2000:]
    return stdout, json.loads(out.read_text())


def test_evaluate_scores_every_source_of_every_model(side_by_side, saved_model):
    result = side_by_side[1]
    assert list(result["models"]) == ["untrained (stage)", str(saved_model)]
    for label, m in result["models"].items():
        assert set(m["sources"]) == {"dolly", "oasst"}, label
        for source, s in m["sources"].items():
            assert s["prompts"] == 3 and s["stop_eos"] + s["stop_tag"] + s["stop_length"] == pytest.approx(1)
            assert s["dev_loss"] > 0 and s["dev_tokens"] > 0, (label, source)


def test_an_untrained_config_scores_like_the_same_weights_saved(side_by_side, saved_model):
    """The same seed builds the same weights: the untrained config and the saved model get the same numbers."""
    models = side_by_side[1]["models"]
    assert models["untrained (stage)"]["sources"] == models[str(saved_model)]["sources"]
    assert models["untrained (stage)"]["dev_loss"] == models[str(saved_model)]["dev_loss"]


def test_evaluate_prints_a_table_row_per_model_and_source(side_by_side, saved_model):
    stdout = side_by_side[0]
    for label in ("untrained (stage)", str(saved_model)):
        for source in ("dolly", "oasst"):
            assert f"| {label} | {source} |" in stdout


def test_dev_rows_limits_the_dev_loss_to_the_first_rows(mixed_dir):
    """--dev_rows N: the dev loss of the first N rows only, the supervised tokens of exactly those rows."""
    dev = PackedDataset(load_data(mixed_dir), "dev", 0.0, groups=True)
    first2 = float(sum(dev[i]["weights"][:-1].sum() for i in range(2)))
    everything = float(sum(dev[i]["weights"][:-1].sum() for i in range(len(dev))))
    part = dev_loss(tiny(mixed_dir), dev, 1, torch.device("cpu"), rows=2)
    assert sum(part["tokens_by_source"].values()) == first2 < everything


@pytest.fixture(scope="module")
def no_dev_dir(mixed_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("no_dev") / "tok"
    tokenize(
        mixed_dir.parent / "chat.jsonl",
        out,
        SEQ,
        "greedy::drop",
        num_training_splits=1,
        num_dev_splits=None,
        num_test_splits=None,
    )
    return out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--model", "{tmp}", "--data", "{data}"), "not a model dir"),
        (("--model", "{model}", "--data", "{tmp}/nope"), "no such directory"),
        (("--data", "{data}"), "give at least one --model"),
        (("--model", "{model}", "--data", "{data}", "--dev_rows", "-1"), "--dev_rows: must be at least 0"),
        (("--model", "{model}", "--data", "{no_dev}"), "no dev split"),
    ],
)
def test_bad_input_is_one_line(args, needle, mixed_dir, saved_model, tmp_path, request):
    no_dev = request.getfixturevalue("no_dev_dir") if "{no_dev}" in args else None
    paths = {"tmp": tmp_path, "data": mixed_dir, "model": saved_model, "no_dev": no_dev}
    code, _, stderr = run_eval(*(a.format(**paths) for a in args))
    assert code == 2 and needle in stderr and stderr.count("\n") == 1, stderr[-999:]
