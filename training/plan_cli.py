"""``python -m training plan``: will a stage fit its GPUs? A per-GPU memory plan, computed without any weights.

    python -m training plan --config training/configs/stage1_oig.yaml --gpus 8 --gpu_memory 80

Prints the line items (training/plan.py) with and without gradient checkpointing and a verdict that names the
setting to change. Exit 0: fits; 1: does not fit; 2: bad input. The sequence length is the data_dir's
(metadata.yaml) when it exists, else ``--max_seq_length``. Model shapes: ``init_from`` / ``name_or_path`` when a
local dir with config.json, the tiny shape, or the built-in table of public hub shapes (no network needed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from transformers import BloomConfig, GPTNeoXConfig

from common.cli import guard
from common.errors import ConfigError, DataError
from common.settings import add_settings, build
from tokenization_prep.schema import read_metadata
from training.attention import SUPPORTED, resolve_attention
from training.config import StageConfig, deepspeed_dict, load_config
from training.modeling import MODEL_CLASSES, model_config
from training.plan import CUDA_CONTEXT, FRAGMENTATION, GiB, Plan, Shape, Workload, count_params
from training.preflight import DsFacts

DEFAULT_SEQ_LEN = 2048


def _bloom(h: int, layers: int, heads: int) -> Shape:
    return Shape(kind="bloom", hidden=h, layers=layers, heads=heads, vocab=250_880, intermediate=4 * h)


def _pythia(h: int, layers: int, heads: int, vocab: int = 50_304) -> Shape:
    return Shape(kind="pythia", hidden=h, layers=layers, heads=heads, vocab=vocab, intermediate=4 * h)


# the public config.json shapes of the hub models the recipes name, for planning with no network
KNOWN_SHAPES = {
    "bigscience/bloom-560m": _bloom(1024, 24, 16),
    "bigscience/bloom-1b1": _bloom(1536, 24, 16),
    "bigscience/bloom-1b7": _bloom(2048, 24, 16),
    "bigscience/bloom-3b": _bloom(2560, 30, 32),
    "bigscience/bloom-7b1": _bloom(4096, 30, 32),
    "bigscience/bloom": _bloom(14336, 70, 112),
    "sambanovasystems/BLOOMChat-176B-v1": _bloom(14336, 70, 112),
    "EleutherAI/pythia-70m": _pythia(512, 6, 8),
    "EleutherAI/pythia-160m": _pythia(768, 12, 12),
    "EleutherAI/pythia-410m": _pythia(1024, 24, 16),
    "EleutherAI/pythia-1b": _pythia(2048, 16, 8),
    "EleutherAI/pythia-1.4b": _pythia(2048, 24, 16),
    "EleutherAI/pythia-2.8b": _pythia(2560, 32, 32),
    "EleutherAI/pythia-6.9b": _pythia(4096, 32, 32, 50_432),
    "EleutherAI/pythia-12b": _pythia(5120, 36, 40, 50_688),
}
KNOWN_SHAPES.update({f"{k}-deduped": v for k, v in list(KNOWN_SHAPES.items()) if "pythia" in k})


def hf_config(shape: Shape):
    """A transformers config of ``shape`` (Pythia's rotary 25% and parallel residual, untied head)."""
    if shape.kind == "bloom":
        return BloomConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, n_layer=shape.layers, n_head=shape.heads)
    return GPTNeoXConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit 2), like every other refusal here."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


class PlanSettings(BaseModel):
    """The plan command's settings: the stage, and the hardware to plan it on."""

    model_config = ConfigDict(extra="forbid")
    config: str = Field(description="stage YAML (see training/configs/)", json_schema_extra={"metavar": "FILE.yaml"})
    gpus: int = Field(gt=0, description="GPUs per node")
    gpu_memory: float = Field(
        gt=0,
        description="one GPU's memory in GiB (nvidia-smi MiB / 1024): H100 79.6, A100-80GB 80, A10 22.5, V100 31.7 "
        "or 15.8",
    )
    nodes: int = Field(1, gt=0, description="nodes of --gpus GPUs each")
    max_seq_length: int | None = Field(
        None, gt=0, description=f"tokens per row when data_dir has no metadata.yaml ({DEFAULT_SEQ_LEN})"
    )
    host_memory: float | None = Field(None, gt=0, description="host memory per node in GiB (checked if given)")


def make_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m training plan", description=__doc__.splitlines()[0])
    add_settings(ap, PlanSettings)
    return ap


def parse(argv=None) -> PlanSettings:
    """The settings, checked: a bad value is one ConfigError line naming the flag. (``--config`` is the stage's
    YAML here, read by ``build_plan``, not settings of this command.)"""
    return build(PlanSettings, vars(make_parser().parse_args(argv)))


def data_facts(cfg: StageConfig, seq_len: int | None) -> tuple[int, int | None, str]:
    """(sequence length, embedding rows or None, where the length came from)."""
    data = cfg.resolve(cfg.data_dir)
    if not (data / "metadata.yaml").is_file():
        return seq_len or DEFAULT_SEQ_LEN, None, "--max_seq_length" if seq_len else "default; no metadata.yaml yet"
    try:
        meta = read_metadata(data)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if seq_len and seq_len != meta.max_seq_length:
        raise ConfigError(
            f"--max_seq_length {seq_len} but data_dir {data} was tokenized at {meta.max_seq_length}; drop "
            "--max_seq_length"
        )
    return meta.max_seq_length, max(meta.vocab_size, meta.total_vocab_size or 0), "data_dir metadata.yaml"


def model_shape(cfg: StageConfig, vocab: int | None, seq_len: int):
    """(transformers config, where its shape came from), never from the network."""
    mc = cfg.model
    if mc.tiny:
        return model_config(mc, None, vocab or 50_277, seq_len), "tiny shape"
    for source in (cfg.init_from, mc.name_or_path):
        path = cfg.resolve(source)
        if path is not None and (path / "config.json").is_file():
            return model_config(mc, str(path), vocab or 0, seq_len), str(Path(source) / "config.json")
    shape = KNOWN_SHAPES.get(mc.name_or_path)
    if shape is None:
        raise ConfigError(
            f"model {mc.name_or_path}: shape unknown without the hub; set model.name_or_path (or init_from) to a "
            "local dir with config.json, or use a built-in shape (bigscience/bloom-*, EleutherAI/pythia-*, "
            "sambanovasystems/BLOOMChat-176B-v1)"
        )
    if shape.kind != mc.kind:
        raise ConfigError(f"model {mc.name_or_path} is a {shape.kind} model but model.kind says {mc.kind}")
    return hf_config(shape), f"{mc.name_or_path}, built-in shape"


def build_plan(args: PlanSettings) -> tuple[Plan, str]:
    """The plan of ``args.config`` on the given hardware, and a two-line header saying what was planned."""
    cfg = load_config(args.config)
    seq_len, vocab, seq_from = data_facts(cfg, args.max_seq_length)
    config, shape_from = model_shape(cfg, vocab, seq_len)
    world = args.gpus * args.nodes
    ds = deepspeed_dict(cfg, world)
    facts = DsFacts.of(ds)
    attn = resolve_attention(cfg.attn_implementation, True, facts.dtype)  # what a GPU with these packages runs
    if attn not in SUPPORTED[cfg.model.kind]:
        raise ConfigError(f"attn_implementation {attn} cannot isolate packed articles on {cfg.model.kind}")
    total, largest = count_params(MODEL_CLASSES[cfg.model.kind], config)
    work = Workload.of(cfg, seq_len, attn)
    plan = Plan(Shape.of(config), total, largest, facts, ds, work, args.gpus, args.nodes)
    dtype = str(facts.dtype).removeprefix("torch.")
    offload = " + optimizer offload" if facts.offload_optimizer else ""
    head = (
        f"stage {cfg.name}: {cfg.model.kind}, {total / 1e9:.2f}B parameters ({shape_from}), {dtype}, "
        f"ZeRO-{facts.stage}{offload} ({cfg.deepspeed})\n"
        f"{args.gpus} GPU(s) x {args.nodes} node(s) of {args.gpu_memory:g} GiB; micro_batch_size {work.micro_batch} "
        f"x {seq_len} tokens ({seq_from}), attn {cfg.attn_implementation} -> {attn}; global batch {work.micro_batch} x "
        f"{cfg.gradient_accumulation_steps} x {world} = {ds['train_batch_size']}; the config has "
        f"gradient_checkpointing: {str(work.gradient_checkpointing).lower()} (*)"
    )
    return plan, head


def table(plan: Plan) -> str:
    """The per-GPU line items in GiB, without and with gradient checkpointing (* marks the configured one)."""
    states = plan.states()[1]
    buffers, what = plan.buffers()
    acts = {ck: plan.activations(ck) for ck in (False, True)}
    mark = {ck: "*" if ck == plan.work.gradient_checkpointing else " " for ck in (False, True)}
    rows = [
        (f"model states (ZeRO-{plan.facts.stage}, DeepSpeed's estimate)", states, states),
        ("activations kept for backward", acts[False].saved, acts[True].saved),
        ("masks / ALiBi bias / rotary tables", acts[False].shared, acts[True].shared),
        ("peak A: loss head (fp32 logits chunk, grads)", acts[False].loss, acts[True].loss),
        ("peak B: one layer's backward (the larger counts)", acts[False].working, acts[True].working),
        (f"DeepSpeed buffers ({what})", buffers, buffers),
    ]
    tensors = {ck: states + acts[ck].total + buffers for ck in (False, True)}
    rows.append(
        (
            f"CUDA context {CUDA_CONTEXT / GiB:.1f} + {FRAGMENTATION:.0%} fragmentation",
            plan.allowance(tensors[False]),
            plan.allowance(tensors[True]),
        )
    )
    rows.append(("total per GPU", plan.need(False), plan.need(True)))
    head = f"{'per GPU, GiB':<56}{'checkpointing off' + mark[False]:>19}{'on' + mark[True]:>8}"
    return "\n".join([head] + [f"{name:<56}{a / GiB:>18.2f} {b / GiB:>7.2f}" for name, a, b in rows])


def main(argv=None) -> int:
    args = parse(argv)
    plan, head = build_plan(args)
    host_capacity = None if args.host_memory is None else int(args.host_memory * GiB)
    fits, verdict = plan.verdict(int(args.gpu_memory * GiB), host_capacity)
    given = f" of {args.host_memory:g} given" if args.host_memory else ""
    print(head)
    print(table(plan))
    print(f"host memory per node for model states: {plan.states()[0] / GiB:.1f} GiB{given}")
    print(f"verdict: {verdict}")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(guard(main))
