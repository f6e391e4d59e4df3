"""Dev loss per source and category (the trainer's) and ``python -m training.evaluate`` on real tokenized data."""

import json
import os
import subprocess
import sys

import h5py
import pytest
import torch
import yaml

from tests.conftest import PYTHIA_TOKENIZER, ROOT, chat_jsonl_file, tokenize
from tokenization_prep.provenance import row_pieces
from training.config import ModelConfig, TinyShape
from training.data import PackedDataset, collate, load_data, row_features
from training.dev_loss import GroupedLoss
from training.evaluate import classify, dev_loss
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


def run_eval(*args):
    return subprocess.run(
        [sys.executable, "-m", "training.evaluate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )


def test_evaluate_command_side_by_side(mixed_dir, tmp_path):
    from transformers import AutoTokenizer

    model_dir = tmp_path / "model"
    tiny(mixed_dir).save_pretrained(model_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(mixed_dir / "tokenizer")).save_pretrained(model_dir)
    cfg = tmp_path / "stage.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"name": "s", "data_dir": str(mixed_dir), "seed": SEED, "model": {"kind": "pythia", "tiny": SHAPE}}
        )
    )
    out = tmp_path / "eval.json"
    r = run_eval(
        "--untrained",
        str(cfg),
        "--model",
        str(model_dir),
        "--data",
        str(mixed_dir),
        "--prompts",
        "3",
        "--max-new-tokens",
        "6",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    untrained, saved = result["models"]["untrained (stage)"], result["models"][str(model_dir)]
    assert set(saved["sources"]) == {"dolly", "oasst"}
    for source, s in saved["sources"].items():
        assert s["prompts"] == 3 and s["stop_eos"] + s["stop_tag"] + s["stop_length"] == pytest.approx(1)
        assert s == untrained["sources"][source]  # the same seed builds the same weights: the same numbers
    assert f"| {model_dir} | dolly |" in r.stdout
    # --dev-rows N: the dev loss of the first N rows only, the supervised tokens of exactly those rows
    dev = PackedDataset(load_data(mixed_dir), "dev", 0.0, groups=True)
    first2 = float(sum(dev[i]["weights"][:-1].sum() for i in range(2)))
    part = dev_loss(tiny(mixed_dir).eval(), dev, 1, torch.device("cpu"), rows=2)
    assert sum(part["tokens_by_source"].values()) == first2 < sum(s["dev_tokens"] for s in saved["sources"].values())
    bad = [
        (("--model", str(tmp_path), "--data", str(mixed_dir)), "not a model dir"),
        (("--model", str(model_dir), "--data", str(tmp_path / "nope")), "no such directory"),
        (("--data", str(mixed_dir)), "give at least one --model"),
        (("--model", str(model_dir), "--data", str(mixed_dir), "--dev-rows", "-1"), "--dev-rows must be"),
    ]
    no_dev = tmp_path / "no_dev"
    tokenize(
        mixed_dir.parent / "chat.jsonl",
        no_dev,
        SEQ,
        "greedy::drop",
        num_training_splits=1,
        num_dev_splits=None,
        num_test_splits=None,
    )
    bad.append((("--model", str(model_dir), "--data", str(no_dev)), "no dev split"))
    for args, needle in bad:
        r = run_eval(*args)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr[-999:]
