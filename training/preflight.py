"""Checks before anything loads: can this machine run the stage's DeepSpeed config, and will the stage fit here.

- ``DsFacts``: what the trainer needs to know of a DeepSpeed config dict (ZeRO stage, dtype, offload).
- ``check_hardware``: a DeepSpeed config this machine cannot run (fp16/bf16/offload here) is one line.
- ``check_memory``: the memory plan of ``training/plan.py`` (DeepSpeed's model-state estimators on a meta-device
  parameter count, activations at the run's micro-batch and length, buffers) against the memory found; refuses
  in one line naming the setting to change, before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import ConfigError
from training.distributed import comm_device, global_sum, local_world_size, world_size
from training.plan import Plan, Shape, Workload, count_params

GiB = 1024**3


@dataclass(frozen=True)
class DsFacts:
    """What the trainer needs to know about a DeepSpeed config dict."""

    stage: int
    dtype: torch.dtype
    offload_optimizer: bool
    offload_params: bool
    nvme_params: bool = False

    @classmethod
    def of(cls, ds: dict) -> "DsFacts":
        zero = ds.get("zero_optimization", {})
        dtype = (
            torch.bfloat16
            if ds.get("bf16", {}).get("enabled")
            else torch.float16
            if ds.get("fp16", {}).get("enabled")
            else torch.float32
        )
        dev = lambda key: (zero.get(key) or {}).get("device", "none") not in ("none", None)  # noqa: E731
        nvme = (zero.get("offload_param") or {}).get("device") == "nvme"
        return cls(int(zero.get("stage", 0)), dtype, dev("offload_optimizer"), dev("offload_param"), nvme)


def check_hardware(facts: DsFacts, ds_name: str) -> None:
    """The reasons a DeepSpeed config cannot run on this machine, said before DeepSpeed starts."""
    cuda = torch.cuda.is_available()
    if facts.dtype == torch.float16 and not cuda:
        raise ConfigError(
            f"deepspeed config {ds_name}: fp16 needs a CUDA GPU and this machine has none; "
            "use a bf16 config (ds/zero3_offload_bf16.json) or ds/cpu.json"
        )
    if facts.dtype == torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(
            f"deepspeed config {ds_name}: bf16 needs an Ampere or newer GPU "
            f"({torch.cuda.get_device_name()} has none); use ds/zero3_fp16.json or ds/zero2_fp16.json"
        )
    if (facts.offload_optimizer or facts.offload_params) and facts.stage < 2:
        raise ConfigError(f"deepspeed config {ds_name}: offload needs ZeRO stage 2 or 3 (it says {facts.stage})")
    if facts.nvme_params:
        raise ConfigError(
            f"deepspeed config {ds_name}: offload_param to nvme is not supported by this trainer's "
            "partitioned loader; offload parameters to cpu"
        )


def check_memory(cls, config, facts: DsFacts, ds: dict, ds_name: str, work: Workload) -> None:
    """Refuse in one line, before any weight loads, when the stage cannot fit the memory found here: the plan of
    ``training/plan.py`` (model states, activations at the run's micro-batch, length, checkpointing and attention,
    DeepSpeed buffers), the same one ``python -m training plan`` prints.

    The ranks decide together (one all-reduce), so a refusal on one rank never leaves the others waiting."""
    import psutil

    total, largest = count_params(cls, config)
    local, cuda = local_world_size(), torch.cuda.is_available()
    plan = Plan(Shape.of(config), total, largest, facts, ds, work, local, max(1, world_size() // local), cuda)
    device_free = torch.cuda.mem_get_info(torch.cuda.current_device())[0] if cuda else None
    problem = memory_refusal(plan, ds_name, psutil.virtual_memory().available, device_free)
    (refusals,) = global_sum([1.0 if problem else 0.0], comm_device())
    if refusals:
        raise ConfigError(problem or f"{_memory_head(plan, ds_name)}: another rank of this run found too little memory")


def memory_refusal(plan: Plan, ds_name: str, host_free: int, device_free: int | None) -> str | None:
    """One line naming the setting to change when ``plan`` does not fit the free memory, else None.

    ``device_free`` None is the CPU accelerator: its "device" is the host, so each process gets an equal share of
    what the host states leave free."""
    if device_free is None:
        host_states = plan.states()[0]
        if host_states > host_free:
            return (
                f"{_memory_head(plan, ds_name)}: needs {host_states / GiB:.1f} GiB of host memory for the model "
                f"states alone but {host_free / GiB:.1f} GiB is available; use a ZeRO-3 config over more "
                "processes or machines, LoRA (lora:) or a smaller model"
            )
        fits, verdict = plan.verdict((host_free - host_states) // plan.gpus_per_node)
    else:
        fits, verdict = plan.verdict(device_free, host_free)
    return None if fits else f"{_memory_head(plan, ds_name)}: {verdict}"


def _memory_head(plan: Plan, ds_name: str) -> str:
    return (
        f"model of {plan.params / 1e9:.2f}B parameters under ZeRO-{plan.facts.stage} ({ds_name}, "
        f"{plan.gpus_per_node} process(es) per node) at micro_batch_size {plan.work.micro_batch} x "
        f"{plan.work.seq_len} tokens"
    )
