"""``objective: dpo`` as a user runs it: real preference pairs (data_prep + tokenization_prep on the bundled OASST
trees and a user-held file), DeepSpeed on CPU, from a saved stage-2-like model. The ln 2 start, the logged metrics
per step and per dev source, the stored reference pass, LoRA, an exact resume after kill -9, and every refusal
before training as one line."""

import json
import math
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import GPT2_TOKENIZER, ROOT
from tests.training.conftest import final_weights, run_in_process, run_stage, stage_command, stage_env
from tests.training.test_preference import PREF_SEQ
from tests.training.test_preference import preference_dirs as preference_dirs  # a fixture
from training import run
from training.config import ModelConfig, TinyShape
from training.modeling import build_model

pytestmark = pytest.mark.slow  # stages in processes of their own, each some seconds

SHAPE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def stage2_model(preference_dirs, tmp_path_factory):
    """A saved model as stage 2 leaves it (weights, config, the data's tokenizer beside them)."""
    from transformers import AutoTokenizer

    base = tmp_path_factory.mktemp("stage2") / "final"
    build_model(ModelConfig(kind="pythia", tiny=TinyShape(**SHAPE)), 50277, PREF_SEQ, None, 3)[0].save_pretrained(base)
    AutoTokenizer.from_pretrained(str(preference_dirs["pairs"] / "tokenizer")).save_pretrained(base)
    return base


def dpo_stage(directory, name, data_dir, init_from, **over):
    import yaml

    cfg = {
        "name": name,
        "data_dir": str(data_dir),
        "output_path": str(directory / "ckpt" / name),
        "init_from": str(init_from) if init_from else None,
        "model": {"kind": "pythia", "tiny": SHAPE},
        "deepspeed": "training/configs/ds/cpu.json",
        "objective": "dpo",
        "dpo": {"beta": 0.1},
        "max_steps": 4,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "lr": 1e-3,
        "eval_every": 2,
        "seed": 3,
    }
    cfg.update(over)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def metrics(out) -> list[dict]:
    return [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dpo_run(preference_dirs, stage2_model, tmp_path_factory):
    """A sigmoid DPO stage of 4 steps from the stage-2 model, evaluated every 2 steps; its output dir."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    d = tmp_path_factory.mktemp("dpo")
    r = run_stage(dpo_stage(d, "dpo", preference_dirs["pairs"], stage2_model, save_every=2))
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "ckpt" / "dpo"


def test_the_first_step_from_the_reference_is_ln_2(dpo_run):
    """The policy equals the reference at step 1 and the reference pass computed what step 1's forward computes:
    the sigmoid loss is ln 2 (CPU fp32) and no pair's reward differs."""
    first = metrics(dpo_run)[0]
    assert abs(first["loss"] - math.log(2)) < 1e-6, first["loss"]
    assert first["reward_margin"] == 0 and first["reward_accuracy"] == 0
    assert first["logps_chosen"] < 0 and first["logps_rejected"] < 0
    later = metrics(dpo_run)[-1]
    assert later["loss"] != first["loss"] and later["reward_margin"] != 0  # trained: the policy left the reference


def test_every_step_and_dev_evaluation_logs_the_pair_metrics_per_source(dpo_run):
    records = metrics(dpo_run)
    keys = ("loss", "reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(k in r for r in records for k in keys)
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    by_source = evals[-1]["eval_by_source"]
    assert set(by_source) == {"oasst", "held"}  # the dev split holds trees of both sources
    pairs = sum(s["pairs"] for s in by_source.values())
    for k in keys:  # the overall figure is the pair-weighted mean of the sources'
        mean = sum(s[k] * s["pairs"] for s in by_source.values()) / pairs
        assert evals[-1][f"eval_{k}"] == pytest.approx(mean)


def test_the_lineage_records_the_objective_and_the_reference_pass(dpo_run, stage2_model):
    from safetensors import safe_open

    lineage = json.loads((dpo_run / "final" / "lineage.json").read_text())
    assert lineage["objective"] == "dpo" and lineage["dpo"]["beta"] == 0.1 and lineage["dpo"]["loss"] == "sigmoid"
    assert lineage["init_from"] == str(stage2_model) and "final_eval_reward_accuracy" in lineage
    with safe_open(str(dpo_run / "reference_logps.safetensors"), "pt") as f:
        assert f.metadata()["fingerprint"] == lineage["reference_logps"]["fingerprint"]
        assert f.get_tensor("train").shape[1] == 2 and (f.get_tensor("train") < 0).all()


def test_simpo_trains_with_lora_and_no_reference(preference_dirs, stage2_model, tmp_path):
    """The reference-free loss as a stage (ipo's and simpo's gradients are checked in process, test_preference.py)."""
    over = {"dpo": {"beta": 2.0, "loss": "simpo"}, "lora": LORA, "max_steps": 2, "eval_every": 0}
    r = run_stage(dpo_stage(tmp_path, "simpo", preference_dirs["pairs"], stage2_model, **over))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "ckpt" / "simpo"
    assert (out / "adapter").is_dir() and len(metrics(out)) == 2
    assert not (out / "reference_logps.safetensors").exists()  # simpo: reference-free


def test_a_live_reference_gives_the_stored_passes_numbers(preference_dirs, stage2_model, dpo_run, tmp_path):
    over = {"dpo": {"beta": 0.1, "reference": "live"}, "max_steps": 2, "eval_every": 0}
    r = run_stage(dpo_stage(tmp_path, "live", preference_dirs["pairs"], stage2_model, **over))
    assert r.returncode == 0, r.stderr[-3000:]
    live, stored = metrics(tmp_path / "ckpt" / "live"), metrics(dpo_run)
    assert live[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and len(live) == 2
    for a, b in zip(live, stored):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_zero3_starts_at_ln_2(preference_dirs, stage2_model, tmp_path):
    """ZeRO-3 (CPU offload, bf16): the partitioned policy scores the reference pass, and step 1 is ln 2."""
    over = {"deepspeed": "training/configs/ds/zero3_offload_bf16.json", "max_steps": 1, "eval_every": 0}
    r = run_stage(dpo_stage(tmp_path, "z3", preference_dirs["pairs"], stage2_model, **over))
    assert r.returncode == 0, r.stderr[-3000:]
    assert abs(metrics(tmp_path / "ckpt" / "z3")[0]["loss"] - math.log(2)) < 1e-6


def test_kill_and_resume_gives_the_same_weights(preference_dirs, stage2_model, tmp_path):
    """Killed with -9 after a checkpoint, then ``--resume``: the stored reference pass is reused and the weights
    equal an uninterrupted run's (LoRA dropout, so every RNG must continue exactly)."""
    over = {"max_steps": 8, "save_every": 2, "eval_every": 0, "lora": {**LORA, "dropout": 0.2}}
    ref = run_stage(dpo_stage(tmp_path, "ref", preference_dirs["pairs"], stage2_model, **over))
    assert ref.returncode == 0, ref.stderr[-2000:]
    cfg = dpo_stage(tmp_path, "killed", preference_dirs["pairs"], stage2_model, **over)
    out = tmp_path / "ckpt" / "killed"
    proc = subprocess.Popen(
        stage_command(cfg), cwd=ROOT, env=stage_env(), start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = out / "logs" / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run ended before it was killed"
    stamp = (out / "reference_logps.safetensors").stat().st_mtime_ns
    res = run_stage(cfg, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "reference_logps.safetensors").stat().st_mtime_ns == stamp  # reused, not computed again
    assert [r["step"] for r in metrics(out)] == list(range(1, 9))
    a, b = final_weights(tmp_path / "ckpt" / "ref" / "final"), final_weights(out / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def refusal(config) -> str:
    code, _, err = run_in_process(run.main, "--config", config)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err[-2000:]
    return err


def test_bad_input_is_one_line_before_training(preference_dirs, stage2_model, token_dirs, tmp_path):
    pairs = preference_dirs["pairs"]
    stage = lambda name, data=pairs, init=stage2_model, **over: dpo_stage(tmp_path, name, data, init, **over)  # noqa: E731
    sft = {"objective": "sft", "dpo": None}
    assert "holds preference pairs (metadata.yaml kind: preference)" in refusal(stage("a", **sft))
    assert "holds SFT rows (metadata.yaml kind: sft) but the stage's objective is dpo" in refusal(
        stage("b", token_dirs[1], init=None)
    )  # fmt: skip
    assert "dpo.beta: Input should be greater than 0" in refusal(stage("c", dpo={"beta": 0}))
    assert "a dpo block is set but objective is sft" in refusal(stage("d", objective="sft"))
    other = tmp_path / "gpt2_model"
    build_model(ModelConfig(kind="pythia", tiny=TinyShape(**SHAPE)), 50277, PREF_SEQ, None, 3)[0].save_pretrained(other)
    for f in GPT2_TOKENIZER.iterdir():  # GPT-2's tokenizer beside the reference model's weights
        shutil.copy(f, other / f.name)
    line = refusal(stage("e", dpo={"reference_model": str(other)}))
    assert "than dpo.reference_model" in line and "tokenized with another tokenizer" in line
    assert not (tmp_path / "ckpt").exists()  # nothing started


def test_a_resume_against_another_reference_pass_is_one_line(preference_dirs, stage2_model, dpo_run, tmp_path):
    """A copy of the DPO run (its checkpoints and stored pass), the stored pass's fingerprint changed."""
    cfg = dpo_stage(tmp_path, "dpo", preference_dirs["pairs"], stage2_model, save_every=2)
    shutil.copytree(dpo_run, tmp_path / "ckpt" / "dpo")
    from safetensors.torch import load_file, save_file

    path = tmp_path / "ckpt" / "dpo" / "reference_logps.safetensors"
    save_file(load_file(str(path)), str(path), {"fingerprint": "another model"})
    assert "was computed for other data or another reference model" in refusal_resume(cfg)


def refusal_resume(config) -> str:
    code, _, err = run_in_process(run.main, "--config", config, "--resume")
    assert code == 2 and err.count("\n") == 1, err[-2000:]
    return err


def test_evaluate_scores_dev_pairs_relative_to_the_first_model(
    dpo_run, stage2_model, preference_dirs, token_dirs, tmp_path
):
    """``python -m training evaluate --preference_data``: stage 2 then stage 3; the rewards are relative to the first
    model (stage 2: zero), and stage 3's equal the trainer's own final dev evaluation per source."""
    from training import evaluate

    out = tmp_path / "eval.json"
    code, stdout, err = run_in_process(
        evaluate.main, "--model", stage2_model, "--model", dpo_run / "final", "--data", token_dirs[1],
        "--preference_data", preference_dirs["pairs"], "--prompts", 1, "--max_new_tokens", 2, "--dev_rows", 1,
        "--batch_size", 3, "--output_path", out,
    )  # fmt: skip
    assert code == 0, err[-2000:]
    result = json.loads(out.read_text())
    assert result["reference"] == str(stage2_model)
    base, tuned = (result["models"][str(m)]["preference"] for m in (stage2_model, dpo_run / "final"))
    lineage = json.loads((dpo_run / "final" / "lineage.json").read_text())
    assert set(base) == set(tuned) == set(lineage["final_eval_by_source"]) == {"oasst", "held"}
    for source, mine in lineage["final_eval_by_source"].items():
        assert base[source]["reward_accuracy"] == 0 and base[source]["reward_margin"] == 0
        assert tuned[source]["pairs"] == mine["pairs"]
        assert tuned[source]["reward_accuracy"] == mine["reward_accuracy"]
        assert tuned[source]["reward_margin"] == pytest.approx(mine["reward_margin"], rel=1e-3, abs=1e-6)
        assert 0 <= tuned[source]["logp_accuracy"] <= 1
    assert f"| {dpo_run / 'final'} | held |" in stdout and "reward accuracy" in stdout
    # --dev_pairs N: the first N dev pairs only
    code, _, err = run_in_process(
        evaluate.main, "--model", dpo_run / "final", "--data", token_dirs[1], "--preference_data",
        preference_dirs["pairs"], "--prompts", 1, "--max_new_tokens", 2, "--dev_rows", 1, "--dev_pairs", 2,
        "--output_path", out,
    )  # fmt: skip
    assert code == 0, err[-2000:]
    quick = json.loads(out.read_text())
    pairs = sum(s["pairs"] for s in quick["models"][str(dpo_run / "final")]["preference"].values())
    assert quick["dev_pairs"] == 2 and pairs == 2
