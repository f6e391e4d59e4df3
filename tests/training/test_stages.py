"""Stages on real tokenized data with DeepSpeed on CPU, as a user runs them.

One module-scoped run of ``training/run_stages.sh``: stage 1 (a full fine-tune) then stage 2 (LoRA, from stage 1's
final model); each of its outputs is checked by a focused test. Then an exact resume after kill -9, and ZeRO-3
with CPU offload against ZeRO-2. (Refusals before training: test_run.py; topologies and two processes:
test_topology.py.)
"""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest
import torch
import yaml

from tests.conftest import ROOT
from tests.training.conftest import (
    final_weights,
    max_abs_diff,
    run_in_process,
    run_stage,
    stage_command,
    stage_env,
    write_stage,
)
from training import merge_lora
from training.config import ModelConfig, TinyShape
from training.modeling import build_model

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def stages(token_dirs, tmp_path_factory):
    """``bash training/run_stages.sh CONFIG_DIR``: stage1_oig (6 steps, checkpoints and evaluations every 3), then
    stage2_oa_dolly, a LoRA stage of 2 steps from stage 1's final/. Returns their output dirs."""
    configs = tmp_path_factory.mktemp("configs")
    write_stage(configs, "stage1_oig", token_dirs[0])
    final1 = configs / "ckpt" / "stage1_oig" / "final"
    over = dict(max_steps=2, save_every=0, eval_every=0, init_from=str(final1), lora=LORA)
    write_stage(configs, "stage2_oa_dolly", token_dirs[1], **over)
    r = subprocess.run(
        ["bash", "training/run_stages.sh", str(configs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**stage_env(), "PYTHON": sys.executable},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return configs / "ckpt" / "stage1_oig", configs / "ckpt" / "stage2_oa_dolly"


def metrics(out) -> list[dict]:
    return [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def lineage(out) -> dict:
    return json.loads((out / "final" / "lineage.json").read_text())


@pytest.mark.slow
def test_the_script_trains_stage2_from_stage1s_final_model(stages):
    s1, s2 = stages
    assert lineage(s2)["init_from"] == str(s1 / "final") and lineage(s2)["parent"]["stage"] == "stage1_oig"


@pytest.mark.slow
def test_a_final_model_loads_in_plain_transformers_with_its_chat_template(stages):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    final = stages[0] / "final"
    assert (final / "model.safetensors").is_file()
    assert AutoModelForCausalLM.from_pretrained(final).config.model_type == "gpt_neox"  # transformers loads it alone
    assert AutoTokenizer.from_pretrained(final).chat_template
    assert GenerationConfig.from_pretrained(final).eos_token_id == 0


@pytest.mark.slow
def test_every_step_is_logged_with_its_throughput(stages):
    records = metrics(stages[0])
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens_per_s"] > 0 and r["supervised_tokens"] > 0 for r in records)
    assert list((stages[0] / "logs").glob("events.out.tfevents.*"))  # TensorBoard's too


@pytest.mark.slow
def test_the_dev_loss_is_logged_every_eval_every_steps_and_the_loss_falls(stages):
    records = metrics(stages[0])
    assert [r["step"] for r in records if r.get("eval_loss") is not None] == [3, 6]
    assert records[-1]["loss"] < records[0]["loss"]


@pytest.mark.slow
def test_the_lineage_records_the_data_the_tokenizer_and_the_dev_loss(stages, token_dirs):
    record = lineage(stages[1])
    meta = yaml.safe_load((token_dirs[1] / "metadata.yaml").read_text())
    assert record["data_manifest_sha256"] and record["steps"] == 2
    assert record["tokenizer_sha256"] == meta["tokenizer_sha256"] == record["parent"]["tokenizer_sha256"]
    assert record["final_eval_loss_by_source"] == {"oasst": pytest.approx(record["final_eval_loss"])}


@pytest.mark.slow
def test_finished_outputs_are_renamed_into_place(stages):
    for out in stages:
        assert (out / "final").is_dir() and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_a_lora_stage_saves_its_adapter_naming_its_base(stages):
    adapter = json.loads((stages[1] / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(stages[0] / "final") and adapter["r"] == 4


@pytest.mark.slow
def test_a_lora_stages_final_model_has_the_adapter_merged(stages):
    merged, base = final_weights(stages[1] / "final"), final_weights(stages[0] / "final")
    assert merged.keys() == base.keys()  # a plain model: no lora_ tensors
    qkv = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert not torch.equal(merged[qkv], base[qkv])  # LoRA changed it


@pytest.mark.slow
def test_merge_lora_gives_the_stages_own_merge(stages, tmp_path):
    code, stdout, err = run_in_process(
        merge_lora.main, "--adapter", stages[1] / "adapter", "--output_path", tmp_path / "merged"
    )
    assert code == 0, err[-2000:]
    assert "merged model written to" in stdout
    ours, stage = final_weights(tmp_path / "merged"), final_weights(stages[1] / "final")
    assert ours.keys() == stage.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], stage[k], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_chat_loads_a_lora_adapter_dir(stages):
    from inference.generate import load_model_tokenizer_for_generate

    model, tok = load_model_tokenizer_for_generate(str(stages[1] / "adapter"))
    assert tok.chat_template and not any("lora" in n for n, _ in model.named_parameters())


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_weights(token_dirs, stage_config, tmp_path):
    """LoRA dropout draws from the RNG and a DataLoader worker reads ahead: the weights match only if the run
    continues exactly (step, data order, every RNG, reader processes restarted)."""
    over = dict(max_steps=12, save_every=4, eval_every=0, dataloader_workers=1, lora={**LORA, "dropout": 0.2})
    ref = run_stage(stage_config("ref", token_dirs[0], **over))
    assert ref.returncode == 0, ref.stderr[-2000:]
    cfg = stage_config("killed", token_dirs[0], **over)
    log = tmp_path / "ckpt" / "killed" / "logs" / "metrics.jsonl"
    proc = subprocess.Popen(
        stage_command(cfg),
        cwd=ROOT,
        env=stage_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 6:  # resumes from step 4
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the stage and its reader process
    proc.wait()
    assert not (tmp_path / "ckpt" / "killed" / "final").exists(), "the run ended before it was killed"
    res = run_stage(cfg, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["step"] for r in metrics(tmp_path / "ckpt" / "killed")] == list(range(1, 13))  # none logged twice
    a, b = final_weights(tmp_path / "ckpt" / "ref" / "final"), final_weights(tmp_path / "ckpt" / "killed" / "final")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.lowest
def test_zero3_offload_bf16_trains_like_zero2(token_dirs, stage_config, tmp_path):
    """ZeRO-3 with CPU offload trains and saves what ZeRO-2 does from the same weights (shards gathered)."""
    base = tmp_path / "base"  # one starting point: ZeRO-3 initializes a config-built model differently
    shape = TinyShape(hidden_size=32, num_layers=2, num_heads=4)
    build_model(ModelConfig(kind="pythia", tiny=shape), 50277, 128, None, 3)[0].save_pretrained(base)
    init = final_weights(base)
    finals = {}
    for name, ds in (("z3", "zero3_offload_bf16"), ("z2", "zero2_bf16")):
        cfg = stage_config(
            name,
            token_dirs[0],
            max_steps=2,
            save_every=0,
            eval_every=0,
            init_from=str(base),
            deepspeed=f"training/configs/ds/{ds}.json",
        )
        r = run_stage(cfg)
        assert r.returncode == 0, r.stderr[-2000:]
        finals[name] = final_weights(tmp_path / "ckpt" / name / "final")
    z3, z2 = finals["z3"], finals["z2"]
    assert {k: v.shape for k, v in z3.items()} == {k: v.shape for k, v in init.items()}  # whole tensors
    assert 5e-4 < max_abs_diff(z2, init) < 1e-2  # trained from the same weights: two Adam steps of lr 1e-3
    # weights with a zero true gradient (key biases, rare embedding rows) get summation-order noise that AdamW
    # turns into full steps, so compare what the models compute: the loss on real rows
    from transformers import AutoModelForCausalLM

    with h5py.File(sorted(token_dirs[0].glob("train_*.hdf5"))[0]) as f:
        ids = torch.from_numpy(f["input_ids"][:4].astype("int64"))
    losses = {}
    for name, path in (
        ("init", base),
        ("z3", tmp_path / "ckpt" / "z3" / "final"),
        ("z2", tmp_path / "ckpt" / "z2" / "final"),
    ):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        with torch.no_grad():
            losses[name] = model(input_ids=ids, labels=ids).loss.item()
    assert abs(losses["z3"] - losses["z2"]) < 0.05 * abs(losses["z2"] - losses["init"]), losses
