"""The same optimizer step whatever the topology: micro-batches x accumulation x processes, and the ZeRO stage.

Proven in this process where the math lives: the sampler gives every split of a step the same rows, the loss
scale makes every split's gradient the gradient of the step's token-weighted mean loss, the dev rows are sharded
so that the summed dev loss is one process's, and a resume refuses another global batch. Then one real launch of
two processes (Slurm-style, ZeRO-3, loading a saved model partitioned) ends with the weights, losses and dev loss
of one process, and its checkpoint resumes in one process through DeepSpeed's universal checkpoint. (ZeRO-3 with
offload against ZeRO-2: test_stages.py; AdamW's eps makes weights of near-zero gradients differ between
optimizer implementations, so stages are compared by what the models compute there.)
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from tests.conftest import ROOT
from tests.training.conftest import final_weights, free_port, max_abs_diff, run_stage, stage_env, write_stage
from training import checkpoint
from training.config import ModelConfig, TinyShape
from training.data import PackedDataset, StepSampler, collate, dev_shard, epoch_order
from training.dev_loss import GroupedLoss
from training.modeling import build_model, packed_forward, packed_loss, packed_token_losses, weighted_loss
from training.trainer import loss_scale, supervised_weight

# (micro_batch_size, gradient_accumulation_steps, processes): every split of 4 rows a step
SPLITS = [(1, 4, 1), (2, 2, 1), (4, 1, 1), (1, 2, 2), (2, 1, 2), (1, 1, 4)]


def step_rows(n_rows: int, seed: int, split, steps_per_epoch: int, step: int) -> list[list[list[int]]]:
    """Per rank, its micro-batches of rows for optimizer step ``step``, as the trainer's sampler gives them."""
    micro, accum, world = split
    return [
        list(StepSampler(n_rows, seed, micro, accum, world, r, steps_per_epoch, step, step + 1)) for r in range(world)
    ]


def test_every_split_of_a_step_trains_the_same_rows():
    n, seed, spe = 50, 3, 12  # 12 steps of 4 rows an epoch; steps 0-29 cross two epochs
    for step in range(30):
        epoch, s = divmod(step, spe)
        want = sorted(epoch_order(n, seed, epoch)[4 * s : 4 * s + 4].tolist())
        for split in SPLITS:
            ranks = step_rows(n, seed, split, spe, step)
            assert [[len(mb) for mb in r] for r in ranks] == [[split[0]] * split[1]] * split[2], split
            assert sorted(row for r in ranks for mb in r for row in mb) == want, (split, step)


def one_step(model, data: PackedDataset, ranks: list[list[list[int]]]) -> tuple[float, dict]:
    """The trainer's arithmetic for one step, every rank's backward run here in turn: each micro-batch's summed
    loss times ``loss_scale``, gradients added over micro-batches (DeepSpeed with ``scale_wrt_gas=False``) and
    averaged over ranks (DeepSpeed's all-reduce). Returns (the logged loss, the gradients)."""
    batches = [[collate(data.__getitems__(mb)) for mb in rank] for rank in ranks]
    total = sum(supervised_weight(rank) for rank in batches)  # the all-reduced weight of the step
    scale = loss_scale(total, len(ranks))
    loss, grads = 0.0, {}
    for rank in batches:
        model.zero_grad()
        for b in rank:
            loss_sum = packed_loss(model, b)
            (loss_sum * scale).backward()
            loss += loss_sum.item()
        for n, p in model.named_parameters():
            grads[n] = grads.get(n, 0) + p.grad / len(ranks)
    return loss / total, grads


@pytest.fixture(scope="module")
def tiny_model(token_dirs):
    model = build_model(ModelConfig(kind="pythia", tiny=TinyShape(hidden_size=32, num_layers=2)), 50277, 128)[0]
    return model.train()


def test_every_split_of_a_step_gets_the_gradient_of_the_token_weighted_mean(token_dirs, tiny_model):
    """Against the plain reference: cross-entropy over full logits of the step's 4 rows, weighted per target token,
    divided by their summed weight. prompt_loss_weight 0.5, so that weights are not all 0 or 1."""
    data = PackedDataset(token_dirs[0], "train", 0.5)
    rows = sorted(row for r in step_rows(len(data), 3, (4, 1, 1), len(data) // 4, 5) for mb in r for row in mb)
    batch = collate(data.__getitems__(rows))
    tiny_model.zero_grad()
    loss_sum, weight = weighted_loss(packed_forward(tiny_model, batch), batch["input_ids"], batch["weights"])
    (loss_sum / weight).backward()
    want = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    for split in SPLITS:
        loss, grads = one_step(tiny_model, data, step_rows(len(data), 3, split, len(data) // 4, 5))
        assert loss == pytest.approx(loss_sum.item() / weight, rel=1e-5), split
        for n, g in want.items():
            torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-7, msg=lambda m: f"{split} {n}: {m}")
    assert max(g.abs().max() for g in want.values()) > 1e-3  # the gradients compared are not all zero


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("micro", [1, 2, 3])
def test_the_dev_rows_are_shared_out_once_in_equal_batches(world, micro):
    for n in (1, 5, 7, 12):
        shards = [dev_shard(n, r, world, micro) for r in range(world)]
        assert len({len(s) for s in shards}) == 1 and all(len(b) == micro for s in shards for b in s)
        assert sorted(k for s in shards for b in s for k in b if k is not None) == list(range(n))


def test_the_sharded_dev_loss_adds_up_to_one_process(token_dirs, tiny_model):
    """Every rank's sums of its shard (fill rows weighted 0), added as the all-reduce adds them, equal one process's:
    the loss in all and per source and category."""
    dev = PackedDataset(token_dirs[1], "dev", 0.0, groups=True)
    n = min(len(dev), 7)  # an odd count: fill rows on some ranks

    def sums(world: int, rank: int) -> list[float]:
        acc = GroupedLoss(dev.groups.names, "cpu")
        with torch.no_grad():
            for part in dev_shard(n, rank, world, 2):
                rows = dev.__getitems__([0 if k is None else k for k in part])
                for k, row in zip(part, rows):
                    if k is None:
                        row["weights"] = torch.zeros_like(row["weights"])
                batch = collate(rows)
                acc.add(batch, packed_token_losses(tiny_model, batch))
        return [float(x) for x in acc.sums()]

    acc = GroupedLoss(dev.groups.names, "cpu")
    one = acc.result(sums(1, 0))
    three = acc.result([sum(x) for x in zip(*(sums(3, r) for r in range(3)))])
    assert one["by_source"] and three.keys() == one.keys()
    assert three["loss"] == pytest.approx(one["loss"], rel=1e-6)
    for table in ("by_source", "by_category", "tokens_by_source"):
        assert three[table] == pytest.approx(one[table], rel=1e-6), table


def saved_checkpoint(ckpt: Path, topo: dict, ranks: int) -> None:
    """What checkpoint.save leaves for the resume checks: latest, trainer_state.json, each rank's RNG file."""
    (ckpt / "step3").mkdir(parents=True)
    (ckpt / "latest").write_text("step3")
    (ckpt / "step3" / "trainer_state.json").write_text(json.dumps({"step": 3, "samples": 12, "topology": topo}))
    for r in range(ranks):
        (ckpt / "step3" / f"rng_state_rank{r}.pt").write_bytes(b"")


def test_a_resume_continues_only_the_same_global_batch_and_zero_stage(tmp_path):
    two = checkpoint.topology(2, 1, 2, 0)  # 2 processes x micro 1 x accumulation 2
    saved_checkpoint(tmp_path / "ckpt", two, ranks=2)
    assert checkpoint.check_resume(tmp_path / "ckpt", checkpoint.topology(1, 1, 4, 0))["universal"] is False
    with pytest.raises(ConfigError) as exc:
        checkpoint.check_resume(tmp_path / "ckpt", checkpoint.topology(1, 1, 2, 0))
    assert "world_size 2 -> 1" in str(exc.value) and "global batch of 4 rows" in str(exc.value)
    with pytest.raises(ConfigError, match="the ZeRO stage changes"):
        checkpoint.check_resume(tmp_path / "ckpt", checkpoint.topology(2, 1, 2, 3))
    saved_checkpoint(tmp_path / "z3", checkpoint.topology(2, 1, 2, 3), ranks=1)  # ZeRO-3, rank 1's RNG lost
    assert checkpoint.check_resume(tmp_path / "z3", checkpoint.topology(1, 1, 4, 3))["universal"] is True
    with pytest.raises(ConfigError, match=r"lacks the RNG state of rank\(s\) \[1\]"):
        checkpoint.check_resume(tmp_path / "z3", checkpoint.topology(2, 1, 2, 3))


# ---- one real launch of two processes, against one process ----

LR = 1e-2
ZERO3_FP32 = {"zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW", "params": {}}}  # fp32: comparable


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(token_dirs, tmp_path_factory):
    """A saved tiny BLOOM (tied head: the partitioned loader's hard case) trained at ZeRO-3 for 3 steps of 4 rows
    from the same weights: ``one``, one process, micro 1 x accumulation 4; ``two``, two processes started as srun
    starts them (SLURM_* variables, no RANK), micro 1 x accumulation 2, a DataLoader worker each and gradient
    checkpointing (neither changes the math). Both save a checkpoint at step 2."""
    base_dir = tmp_path_factory.mktemp("topology")
    base = base_dir / "base"
    shape = TinyShape(hidden_size=32, num_layers=2, num_heads=4)
    build_model(ModelConfig(kind="bloom", tiny=shape), 50277, 128, seed=1)[0].save_pretrained(base)
    zero3 = base_dir / "zero3_fp32.json"
    zero3.write_text(json.dumps(ZERO3_FP32))
    common = dict(
        model={"kind": "bloom", "name_or_path": str(base)},
        init_from=str(base),
        deepspeed=str(zero3),
        max_steps=3,
        micro_batch_size=1,
        lr=LR,
        save_every=2,
        eval_every=3,
    )
    one = write_stage(base_dir, "one", token_dirs[1], gradient_accumulation_steps=4, **common)
    r = run_stage(one)
    assert r.returncode == 0, r.stderr[-3000:]
    two = write_stage(
        base_dir,
        "two",
        token_dirs[1],
        gradient_accumulation_steps=2,
        dataloader_workers=1,
        gradient_checkpointing=True,
        **common,
    )
    port = str(free_port())
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NODELIST": "127.0.0.[1]",
        "MASTER_PORT": port,
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "training", "run", "--config", str(two)],
            cwd=ROOT,
            env={**stage_env(2), **slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]
    return {"one": base_dir / "ckpt" / "one", "two": base_dir / "ckpt" / "two", "stdout": outs[0][0], "port": port}


@pytest.mark.slow
def test_two_processes_end_with_one_process_weights(runs):
    """Far below one step's change (~lr per weight): the same rows, the same gradient, the same AdamW steps."""
    one, two = final_weights(runs["one"] / "final"), final_weights(runs["two"] / "final")
    assert {k: v.shape for k, v in two.items()} == {k: v.shape for k, v in one.items()}  # whole tensors gathered
    assert max_abs_diff(one, two) < LR * 1e-2


@pytest.mark.slow
def test_two_processes_log_the_global_loss_and_tokens_of_each_step(runs):
    one, two = metrics(runs["one"]), metrics(runs["two"])
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)  # token-weighted over both ranks
        assert b["supervised_tokens"] == a["supervised_tokens"]  # every rank's tokens counted


@pytest.mark.slow
def test_two_processes_share_the_dev_loss_of_one_process(runs):
    one, two = metrics(runs["one"])[-1], metrics(runs["two"])[-1]
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)
    for table in ("eval_loss_by_source", "eval_loss_by_category"):
        assert two[table] and two[table] == pytest.approx(one[table], rel=1e-5), table


@pytest.mark.slow
def test_the_slurm_variables_make_one_world_of_two(runs):
    """What srun gives each task, and no RANK: one world of 2, not two copies of rank 0 in one output_path."""
    assert "2 processes (Slurm, 2 per node); rendezvous at 127.0.0.1:" in runs["stdout"]
    lineage = json.loads((runs["two"] / "final" / "lineage.json").read_text())
    assert lineage["topology"] == checkpoint.topology(2, 1, 2, 3)
    assert lineage["deepspeed"]["train_batch_size"] == 4


@pytest.mark.slow
def test_deepspeeds_shared_memory_buffers_are_not_left_behind(runs):
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{runs['port']}_*"))


@pytest.mark.slow
def test_the_two_process_zero3_checkpoint_resumes_in_one_process(runs, tmp_path):
    """ZeRO-3 partitions its files per process: DeepSpeed's ds_to_universal converts them once, one process with the
    same global batch continues from step 2 and ends where the two processes ended."""
    out = tmp_path / "two"
    shutil.copytree(runs["two"], out)  # the other tests read the launch's own outputs
    want = final_weights(out / "final")
    config = (runs["two"].parent.parent / "two.yaml").read_text().replace(str(runs["two"]), str(out))
    resumed = tmp_path / "resumed.yaml"
    resumed.write_text(config.replace("gradient_accumulation_steps: 2", "gradient_accumulation_steps: 4"))
    r = run_stage(resumed, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "checkpoints" / "step2_universal" / "zero").is_dir()
    assert max_abs_diff(want, final_weights(out / "final")) < LR / 100  # optimizer moments carried over
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]  # step 3 logged once
