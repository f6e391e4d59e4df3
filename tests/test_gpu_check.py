"""benchmarks/gpu_check.sh and the MFU FLOP count of benchmarks/train_flops.py.

The GPU path needs a CUDA machine; here ``--tiny`` runs the same script end to end on the CPU (install step
skipped, same bench code, same DeepSpeed configs with torch's AdamW), and the FLOP count is checked on a row
whose articles and supervised tokens are counted by hand.
"""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest

from tests.conftest import ROOT

P, C, PAD, S = 0, 1, 2, 3  # token types: prompt, completion, padding, end of article (tokenization_prep.schema)
# article A (5 tokens), article B (4), article C cut off before its end token (2), then 5 padding tokens
ROW = np.array([P, P, C, C, S] + [P, C, C, S] + [P, C] + [PAD] * 5)


@pytest.fixture
def flops_mod(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import train_flops

    return train_flops


def test_article_lengths_and_counts(flops_mod):
    assert flops_mod.article_lengths(ROW).tolist() == [5, 4, 2]
    c = flops_mod.row_counts(ROW, prompt_loss_weight=0.0)
    # supervised (weight > 0) next-token targets: A predicts C, C, S (3); B predicts C, C, S (3); C predicts C (1);
    # no target across an article boundary or into padding
    assert c == flops_mod.RowCounts(real=11, supervised=7, pairs=15 + 10 + 3, articles=3)
    # prompt_loss_weight > 0 adds A's second prompt token as a target (B's and C's first prompt tokens would be
    # targets of the previous article: never)
    assert flops_mod.row_counts(ROW, prompt_loss_weight=0.5).supervised == 8


def test_flops_by_hand(flops_mod):
    shape = flops_mod.ModelShape(layers=2, hidden=8, head_rows=10, non_embedding=100, total=260)
    f = flops_mod.flops(flops_mod.row_counts(ROW, 0.0), shape)
    assert f["dense"] == 6 * 100 * 11  # 6 N T
    assert f["attention"] == 12 * 2 * 8 * 28  # 3 (fwd+bwd) x 2 matmuls x 2 FLOPs x layers x hidden x pairs
    assert f["head"] == 6 * 8 * 10 * 7  # 6 h V on the supervised tokens only
    assert f["total"] == 6600 + 5376 + 3360
    assert f["hw_lora"] == 4 * 100 * 11 + 5376 + 4 * 8 * 10 * 7  # frozen weights: no weight gradients
    two = flops_mod.row_counts(ROW, 0.0) + flops_mod.row_counts(ROW, 0.0)
    assert flops_mod.flops(two, shape)["total"] == 2 * f["total"]


def test_model_shape_leaves_out_embeddings(flops_mod):
    tiny = {"hidden_size": 64, "num_layers": 2, "num_heads": 4}
    pythia = flops_mod.model_shape("pythia", tiny, 50277, 128)  # untied: input embedding and head both out
    assert (pythia.head_rows, pythia.layers, pythia.hidden) == (50304, 2, 64)
    assert pythia.total - pythia.non_embedding == 2 * 50304 * 64
    bloom = flops_mod.model_shape("bloom", tiny, 50277, 128)  # tied: the one matrix once
    assert bloom.total - bloom.non_embedding == 50304 * 64


def test_mfu_summary_flags_a_replay_that_drifted(flops_mod, monkeypatch):
    import bench_gpu_training as bench

    shape = flops_mod.ModelShape(layers=2, hidden=8, head_rows=10, non_embedding=100, total=260)
    counts = [flops_mod.row_counts(ROW, 0.0)] * 3
    timed = [{"step": s, "step_s": 0.5, "tokens_per_s": 22.0} for s in (2, 3)]  # 11 real tokens a step
    ok = bench.mfu_summary(timed, counts, shape, peak=1e6, lora=False)
    assert "error" not in ok and ok["counts"]["real"] == 22
    assert ok["mfu"] == pytest.approx(2 * 15336 / 1.0 / 1e6)
    timed[0]["tokens_per_s"] = 30.0
    assert "error" in bench.mfu_summary(timed, counts, shape, peak=1e6, lora=False)


@pytest.mark.slow
def test_gpu_check_tiny(tmp_path):
    """The whole script on the CPU: exit 0, and a results JSON with finite timings and the MFU breakdown."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks/gpu_check.sh"),
            "--tiny",
            "--output_path",
            str(out),
            "--work",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "budget: install" in proc.stdout and "gpu_check: PASSED" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    assert {r["config"] for r in doc["runs"]} == {"zero2", "zero3"}
    for r in doc["runs"]:
        assert "error" not in r
        for key in ("step_s", "tokens_per_s", "mfu"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["run"], key)
        f = r["flops"]
        assert f["formula"] == doc["mfu_formula"] and "12 l h" in f["formula"]
        assert f["counts"]["real"] == pytest.approx(f["logged_real_tokens"])  # the replayed rows are the trained ones
        assert f["flops"]["total"] == f["flops"]["dense"] + f["flops"]["attention"] + f["flops"]["head"] > 0
    assert set(doc["packing_check"]) == {"pythia_sdpa", "pythia_eager"}
    assert all(c["ok"] for c in doc["packing_check"].values())
    assert (out / "gpu_check.log").is_file() and (out / "runs.tar.gz").is_file()
