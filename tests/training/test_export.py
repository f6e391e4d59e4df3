"""LoRA export: the shard-by-shard merge gives peft's ``merge_and_unload`` logits, holds one shard at a time and maps
checkpoint names; a stage's export under ZeRO-3 gathers only the adapter; ``merge_lora`` refuses in one line."""

import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from common.cli import guard
from tests.conftest import ROOT
from tests.training.conftest import free_port
from training import merge_lora
from training.config import LoraConfig, ModelConfig, StageConfig, TinyShape
from training.export import save_model
from training.merge_lora import merge_from_disk
from training.modeling import apply_lora, build_model

VOCAB = 256
SHAPE = TinyShape(hidden_size=32, num_layers=2, num_heads=4)
IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
CASES = {  # peft settings the merge must reproduce: patterns, rsLoRA with a B bias, Conv1D and an embedding
    "pythia": dict(
        target_modules=["query_key_value", "dense_h_to_4h"],
        rank_pattern={"dense_h_to_4h": 2},
        alpha_pattern={"layers.1.attention.query_key_value": 3},
    ),
    "bloom": dict(target_modules=["query_key_value", "dense"], use_rslora=True, lora_bias=True),
    "gpt2": dict(target_modules=["c_attn", "wte"], fan_in_fan_out=True),
}


def saved_base(kind: str, path: Path) -> Path:
    """A tiny random model saved by plain save_pretrained in several small shards."""
    if kind == "gpt2":  # Conv1D weights (fan_in_fan_out) and a head tied to the embedding
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(1)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    else:
        model = build_model(ModelConfig(kind=kind, tiny=SHAPE), VOCAB, 128, seed=1)[0]
    model.save_pretrained(path, max_shard_size="20KB")
    assert len(list(path.glob("*.safetensors"))) >= 3
    return path


def make_adapter(base: Path, path: Path, r: int = 4, alpha: int = 8, **settings) -> Path:
    """A peft adapter on the base with random (nonzero) A and B factors."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), PeftLora(r=r, lora_alpha=alpha, **settings))
    randomize_lora(model)
    model.save_pretrained(path)
    return path


def randomize_lora(model, seed: int = 2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def plain_logits(path: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return logits(AutoModelForCausalLM.from_pretrained(path))


def peft_logits(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload())


def saved_keys(path: Path) -> set:
    return set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"])


@pytest.mark.parametrize("kind", CASES)
def test_shard_merge_gives_peft_merge_logits(kind, tmp_path):
    base = saved_base(kind, tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter", **CASES[kind])
    out = tmp_path / "merged"
    out.mkdir()
    result = merge_from_disk(str(base), adapter, out)
    assert len(result.files) > 1 and saved_keys(out) == saved_keys(base)  # names of a plain save_pretrained
    ours, ref = plain_logits(out), peft_logits(base, adapter)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (ref - plain_logits(base)).abs().max() > 0.01  # the adapter changes the model far beyond the tolerance


def rewrite_base(src: Path, dst: Path, rename, extra: dict) -> Path:
    """A copy of a saved base with its tensor names changed and ``extra`` tensors added to its first shard."""
    dst.mkdir()
    index = json.loads((src / "model.safetensors.index.json").read_text())
    weight_map = {}
    for i, f in enumerate(sorted(src.glob("*.safetensors"))):
        tensors = {rename(k): t for k, t in load_file(str(f)).items()} | (extra if i == 0 else {})
        save_file(tensors, str(dst / f.name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, f.name))
    (dst / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}))
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_checkpoint_names_map_to_plain_names(tmp_path):
    """BLOOM hub-style names (no ``transformer.``) with the tied ``lm_head`` saved too; Pythia's ``embed_out`` and a
    leftover buffer: the merged dir has exactly the names plain save_pretrained writes, and peft's logits."""
    for kind, rename, extra, renamed in (
        ("bloom", lambda k: k.removeprefix("transformer."), "lm_head.weight", "h.0.input_layernorm.weight"),
        ("pythia", lambda k: k.replace("lm_head.", "embed_out."), "gpt_neox.rotary_emb.inv_freq", "embed_out.weight"),
    ):
        base = saved_base(kind, tmp_path / f"{kind}_base")
        adapter = make_adapter(base, tmp_path / f"{kind}_adapter", target_modules=["query_key_value"])
        where = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
        emb = "transformer.word_embeddings.weight"  # BLOOM's tied head saved as a copy; for Pythia a stray buffer
        value = load_file(str(base / where[emb]))[emb] if kind == "bloom" else torch.tensor(-1e9)
        old = rewrite_base(base, tmp_path / f"{kind}_old", rename, {extra: value})
        assert renamed in saved_keys(old) and extra in saved_keys(old)
        out = tmp_path / f"{kind}_merged"
        out.mkdir()
        result = merge_from_disk(str(old), adapter, out)
        assert saved_keys(out) == saved_keys(base)
        assert result.skipped == ([extra] if kind == "pythia" else [])
        torch.testing.assert_close(plain_logits(out), peft_logits(base, adapter), rtol=1e-5, atol=1e-5)


class ShardTracker:
    """Wraps safe_open / save_file: every tensor read or written is tracked by weak reference with the number of
    shards written before it, so a tensor of an earlier shard still alive when the next is read is caught."""

    def __init__(self):
        self.tracked, self.shards_written, self.peak = [], 0, 0

    def _track(self, tensors):
        self.tracked += [(self.shards_written, weakref.ref(t)) for t in tensors]
        live = {r().data_ptr(): r() for _, r in self.tracked if r() is not None}
        self.peak = max(self.peak, sum(t.numel() * t.element_size() for t in live.values()))

    def safe_open(self, path, framework, **kw):
        tracker, handle = self, safe_open(path, framework, **kw)

        class Tracked:
            def __enter__(self):
                handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return handle.keys()

            def get_tensor(self, key):
                stale = [n for n, r in tracker.tracked if n < tracker.shards_written and r() is not None]
                assert not stale, f"{len(stale)} tensors of an earlier shard are still held"
                t = handle.get_tensor(key)
                tracker._track([t])
                return t

        return Tracked()

    def save_file(self, tensors, filename, metadata=None):
        self._track(tensors.values())
        save_file(tensors, filename, metadata=metadata)
        self.shards_written += 1


def test_merge_holds_one_shard_at_a_time(tmp_path, monkeypatch):
    base = saved_base("pythia", tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter", **CASES["pythia"])
    tracker = ShardTracker()
    monkeypatch.setattr(merge_lora, "safe_open", tracker.safe_open)
    monkeypatch.setattr(merge_lora, "save_file", tracker.save_file)
    out = tmp_path / "merged"
    out.mkdir()
    files = merge_from_disk(str(base), adapter, out).files
    shard_bytes = [sum(t.numel() * 4 for t in load_file(str(base / f)).values()) for f in files]
    assert tracker.shards_written == len(files) > 2
    assert 0 < tracker.peak <= max(shard_bytes) < sum(shard_bytes) / 2
    bf16 = tmp_path / "bf16"  # the stage's case: cast to the training dtype after the fp32 merge
    bf16.mkdir()
    merge_from_disk(str(base), adapter, bf16, dtype=torch.bfloat16)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    torch.testing.assert_close(plain_logits(bf16).float(), plain_logits(out), rtol=0.1, atol=0.1)


class FakeEngine:
    """What save_model reads of a DeepSpeed engine."""

    def __init__(self, module, stage: int):
        self.module, self.stage = module, stage

    def zero_optimization_stage(self) -> int:
        return self.stage


@pytest.mark.parametrize("on_disk", [True, False])
def test_save_model_gathers_only_the_adapter_when_the_base_is_on_disk(on_disk, tmp_path, monkeypatch):
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    base = saved_base("pythia", tmp_path / "base")
    mc = ModelConfig(kind="pythia", name_or_path=str(base)) if on_disk else ModelConfig(kind="pythia", tiny=SHAPE)
    lora = LoraConfig(r=4, alpha=8, dropout=0.0)
    cfg = StageConfig(name="t", data_dir=str(tmp_path), model=mc, lora=lora)
    model = apply_lora(build_model(mc, VOCAB, 128, init_from=base, seed=1)[0], "pythia", lora)
    randomize_lora(model)
    gathered, real = [], deepspeed.zero.GatheredParameters

    def spy(params, **kw):
        assert kw == {"modifier_rank": None}  # read on every rank, written back by none
        gathered.append(list(params))
        return real(params, **kw)

    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", spy)

    def no_collective(*args, **kw):
        raise AssertionError("rank 0 alone built a model under zero.Init: the other ranks would hang")

    monkeypatch.setattr(deepspeed.zero, "Init", no_collective)
    keep = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})  # as trainer
    save_model(FakeEngine(model, 3), cfg, tmp_path / "final", tmp_path / "adapter")
    del keep
    lora_params = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert {id(p) for p in gathered[0]} == lora_params  # first the adapter, on every rank
    later = {id(p) for ps in gathered[1:] for p in ps}
    assert later == ({id(p) for p in model.parameters()} - lora_params if not on_disk else set())
    ref = peft_logits(base, tmp_path / "adapter")  # the model was built from ``base``'s weights in both cases
    torch.testing.assert_close(plain_logits(tmp_path / "final"), ref, rtol=1e-5, atol=1e-5)


ZERO3_SCRIPT = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[2])
import deepspeed
from transformers.integrations import HfDeepSpeedConfig
from tests.training.test_export import VOCAB, randomize_lora
from training.config import LoraConfig, ModelConfig, StageConfig
from training.export import save_model
from training.modeling import apply_lora, build_model

tmp = Path(sys.argv[1])
lora = LoraConfig(r=4, alpha=8, dropout=0.0)
for name, mc in (("disk", ModelConfig(kind="bloom", name_or_path=str(tmp / "base"))),):
    model = apply_lora(build_model(mc, VOCAB, 128, init_from=tmp / "base", seed=1)[0], "bloom", lora)
    randomize_lora(model)
    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds)
    keep = HfDeepSpeedConfig(ds)  # transformers sees ZeRO-3 during the export, as in the trainer
    assert all(p.numel() == 0 for p in model.parameters()), "not partitioned"
    save_model(engine, StageConfig(name=name, data_dir=str(tmp), model=mc, lora=lora),
               tmp / name / "final", tmp / name / "adapter")
deepspeed.comm.barrier()
deepspeed.comm.destroy_process_group()
"""


@pytest.mark.slow
def test_zero3_export_of_a_partitioned_model_merges_like_peft(tmp_path):
    """A real ZeRO-3 engine on two processes: the partitioned adapter is gathered, the base read from disk, rank 0
    merges alone; the final gives peft's logits. (A model built from config, whose base is gathered layer by layer,
    is trained and merged on two ZeRO-3 processes by test_scale.py::test_lora_under_zero3_on_two_processes_...)"""
    base = saved_base("bloom", tmp_path / "base")
    script = tmp_path / "export_zero3.py"
    script.write_text(ZERO3_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(script), str(tmp_path), str(ROOT)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("disk",):
        ref = peft_logits(base, tmp_path / name / "adapter")
        torch.testing.assert_close(plain_logits(tmp_path / name / "final"), ref, rtol=1e-5, atol=1e-5)
        assert (ref - plain_logits(base)).abs().max() > 0.01


def test_merge_lora_command_refusals_are_one_line(tmp_path, capsys):
    base = saved_base("pythia", tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["query_key_value"])
    out = tmp_path / "out"

    bloom = saved_base("bloom", tmp_path / "bloom")

    def run(*args) -> tuple[int, str]:
        capsys.readouterr()
        code = guard(merge_lora.main, ["--adapter", str(adapter), "--output_path", str(out), *args])
        return code, capsys.readouterr().err

    for args, code_wanted, says in (
        (["--adapter", str(tmp_path)], 2, "no adapter_config.json"),
        (["--base", str(bloom)], 2, "which the base (BloomForCausalLM) lacks"),
        ([], 0, ""),
        ([], 2, "exists; pass --overwrite_output_path"),
        (["--overwrite_output_path"], 0, ""),
    ):
        code, err = run(*args)
        assert code == code_wanted and says in err and err.count("\n") == (code != 0), err
    assert not list(tmp_path.glob(".out*"))  # no temp dir left by the refused or finished runs
    torch.testing.assert_close(plain_logits(out), peft_logits(base, adapter), rtol=1e-5, atol=1e-5)
    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as st:
        assert st.metadata() == {"format": "pt"}
