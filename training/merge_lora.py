"""``python -m training merge_lora --adapter DIR --output_path DIR [--base DIR_OR_HUB_ID]``: merge a LoRA adapter.

The adapter is folded into its base one safetensors shard at a time: each shard is read tensor by tensor, the
adapter's delta added to its target weights in fp32 (peft's scaling: ``lora_alpha / r``, per-module
``rank_pattern`` / ``alpha_pattern``, ``alpha / sqrt(r)`` with rsLoRA, ``fan_in_fan_out``), cast back, and written
under the names a plain ``save_pretrained`` of the model class gives. At most one shard and the adapter are in
memory, whatever the model's size. The output dir appears complete or not at all (a temp dir renamed). The base
defaults to the one recorded in the adapter's config; the tokenizer is copied from the adapter dir or the base.
A stage's LoRA export (``training.export``) uses the same merge.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import save_file

from common.cli import guard
from common.errors import ConfigError, first_line
from common.settings import command_parser, parse_settings
from training.lora_adapter import Factors, read_adapter, read_adapter_config
from training.weights import safetensors_files

INDEX = "model.safetensors.index.json"


class SavedNames:
    """The tensor names a plain ``save_pretrained`` of the config's model class writes, and the map from a
    checkpoint's names to them: transformers' own renamings (e.g. Pythia's ``embed_out`` -> ``lm_head``), the
    base-model prefix (``transformer.`` / ``gpt_neox.``) added or stripped, and tied aliases (BLOOM's ``lm_head``
    shares ``transformer.word_embeddings``) folded onto the name that is kept. Built on the meta device: no memory."""

    def __init__(self, config):
        from transformers.initialization import no_init_weights
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        config = copy.deepcopy(config)
        config._attn_implementation = "eager"  # always available; the names do not depend on it
        # the class itself, not from_config: that would build under zero.Init while a trainer's ZeRO-3 config is
        # alive, a collective that rank 0 (merging alone) would wait on forever
        with torch.device("meta"), no_init_weights():
            model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
        model.tie_weights()  # no_init_weights skips tying, and the tied pairs are what this class finds out
        self.model_class = type(model).__name__
        self.shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.prefix = model.base_model_prefix + "." if model.base_model_prefix else None
        targets = set(getattr(model, "_tied_weights_keys", None) or ())
        groups = defaultdict(list)
        for name, p in model.named_parameters(remove_duplicate=False):
            groups[id(p)].append(name)
        self.alias = {}  # tied name -> the name save_pretrained keeps
        for names in (g for g in groups.values() if len(g) > 1):
            keep = next((n for n in names if n not in targets), names[0])
            self.alias.update({n: keep for n in names if n != keep})
        self.saved = [k for k in self.shapes if k not in self.alias]
        self._renamings, self._converters = _weight_transforms(model)

    def model_name(self, key: str) -> str | None:
        """The model's name for a checkpoint tensor (None when the model has no such tensor)."""
        renamed = key
        if self._renamings or self._converters:
            from transformers.core_model_loading import rename_source_key

            renamed, converter = rename_source_key(key, self._renamings, self._converters)
            if converter is not None:
                raise ConfigError(f"base tensor {key} needs transformers' weight conversion; merge it with peft")
        for name in (renamed, key):
            if name in self.shapes:
                return name
            if self.prefix and name.startswith(self.prefix) and name[len(self.prefix) :] in self.shapes:
                return name[len(self.prefix) :]
            if self.prefix and self.prefix + name in self.shapes:
                return self.prefix + name
        return None


def _weight_transforms(model) -> tuple[list, list]:
    """transformers' load-time key renamings and converters for the model (empty where this version has none)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:
        return [], []
    maps = get_model_conversion_mapping(model)
    return [m for m in maps if isinstance(m, WeightRenaming)], [m for m in maps if isinstance(m, WeightConverter)]


@dataclass
class Shard:
    """One output file: its name and, per output tensor, the checkpoint key it is read from."""

    name: str
    keys: dict[str, str]  # output name -> checkpoint key
    source: Path | None = None  # a safetensors file; None: the in-memory state


@dataclass
class Merge:
    """What a merge did: the files written, the LoRA targets merged, the checkpoint tensors the model ignores."""

    files: list[str]
    targets: int
    skipped: list[str]


def plan(headers: list[tuple[str, Path | None, list[str]]], names: SavedNames, factors: dict[str, Factors]):
    """Shards to write, and {output weight name: [factors]} / skipped keys, from the checkpoint's names only."""
    found: dict[str, tuple[int, str]] = {}  # model name -> (shard index, checkpoint key)
    skipped = []
    for i, (_, _, keys) in enumerate(headers):
        for key in keys:
            name = names.model_name(key)
            if name is None:
                skipped.append(key)  # as transformers' from_pretrained ignores unexpected keys
            elif name in found:
                raise ConfigError(f"base tensors {found[name][1]} and {key} are both the model's {name}")
            else:
                found[name] = (i, key)
    for alias, keep in names.alias.items():  # a tied copy is written under the kept name only, once
        if alias in found:
            i, key = found.pop(alias)
            found.setdefault(keep, (i, key))
    if missing := [n for n in names.saved if n not in found]:
        raise ConfigError(f"base has no tensor for {missing[0]} ({len(missing)} missing); is it a {names.model_class}?")
    deltas: dict[str, list[tuple[str, Factors]]] = defaultdict(list)
    for module, f in factors.items():
        for suffix in ("weight", "bias") if f.b_bias is not None else ("weight",):
            name = names.model_name(f"{module}.{suffix}")
            name = names.alias.get(name, name)
            if name not in found:
                raise ConfigError(
                    f"adapter targets {module}.{suffix}, which the base ({names.model_class}) lacks: not its base?"
                )
            deltas[name].append((suffix, f))
    shards = [Shard(n, {}, src) for n, src, _ in headers]
    for name in names.saved:
        i, key = found[name]
        shards[i].keys[name] = key
    return [s for s in shards if s.keys], deltas, skipped


def merged_tensor(t: torch.Tensor, parts: list[tuple[str, Factors]], dtype, name: str) -> torch.Tensor:
    """``t`` plus its LoRA deltas, added in fp32 and cast to ``dtype`` (floating tensors only)."""
    out = dtype if dtype is not None and t.is_floating_point() else t.dtype
    if not parts:
        return t.to(out).contiguous()
    w = t.to(torch.float32, copy=True)  # never changes the caller's tensor
    for suffix, f in parts:
        d = f.delta() if suffix == "weight" else f.b_bias.float() * f.scale
        if d.shape != w.shape:
            raise ConfigError(f"adapter delta for {name} has shape {tuple(d.shape)}, the base {tuple(w.shape)}")
        w += d
    return w.to(out).contiguous()


def write_merged(headers, config, adapter_dir, out_dir: Path, dtype=None, memory=None, index=False) -> Merge:
    """Merge shard by shard into ``out_dir``: each output file is built, written and dropped before the next."""
    names = SavedNames(config)
    factors = read_adapter(adapter_dir)
    shards, deltas, skipped = plan(headers, names, factors)
    if len(shards) == 1 and not index:
        shards[0].name = "model.safetensors"
    weight_map, total = {}, 0
    for shard in shards:
        with safe_open(str(shard.source), "pt") if shard.source else contextlib.nullcontext(memory) as src:
            tensors = {}
            for name, key in shard.keys.items():
                t = src.get_tensor(key)
                if tuple(t.shape) != names.shapes[name]:
                    raise ConfigError(f"base tensor {key} has shape {tuple(t.shape)}, the config {names.shapes[name]}")
                tensors[name] = merged_tensor(t, deltas.get(name, []), dtype, name)
                del t
        save_file(tensors, str(out_dir / shard.name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard.name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    if index or len(shards) > 1:
        (out_dir / INDEX).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    config = copy.deepcopy(config)
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(str(out_dir))
    return Merge([s.name for s in shards], len(factors), skipped)


def merge_from_disk(base: str, adapter_dir, out_dir: Path, dtype=None) -> Merge:
    """Merge the adapter into the base's safetensors (a local dir or hub id) into the empty dir ``out_dir``."""
    from transformers import AutoConfig

    files = safetensors_files(base)
    base_dir = files[0].parent
    headers = []
    for f in files:
        with safe_open(str(f), "pt") as st:
            headers.append((f.name, f, list(st.keys())))
    config = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=False)
    merge = write_merged(headers, config, adapter_dir, out_dir, dtype, index=(base_dir / INDEX).is_file())
    if (base_dir / "generation_config.json").is_file():
        shutil.copy(base_dir / "generation_config.json", out_dir)
    return merge


class _Tensors(dict):
    """A state dict read like a safetensors file."""

    def get_tensor(self, key):
        return self[key]


def merge_in_memory(state: dict, config, adapter_dir, out_dir: Path, dtype=None) -> Merge:
    """The same merge for a base that exists only in memory (``state``: the model's names, one shard)."""
    return write_merged(
        [("model.safetensors", None, list(state))], config, adapter_dir, out_dir, dtype, _Tensors(state)
    )


@contextlib.contextmanager
def staged_dir(output: Path):
    """An empty temp dir beside ``output`` that replaces it once the block finishes (removed if it fails)."""
    output = Path(output)
    tmp = output.parent / f".{output.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def merge(adapter: str, output: str, base: str | None = None, overwrite: bool = False) -> tuple[Path, Merge]:
    """The offline merge: ``output`` gets the merged model (the base's dtype) and the tokenizer."""
    from transformers import AutoTokenizer

    base = base or read_adapter_config(adapter)["base_model_name_or_path"]
    out = Path(output).expanduser()
    if out.exists() and not overwrite:
        raise ConfigError(f"--output_path {output} exists; pass --overwrite_output_path to replace it")
    with staged_dir(out) as tmp:
        try:
            result = merge_from_disk(base, adapter, tmp)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--adapter {adapter}: cannot merge onto {base} ({first_line(exc)})") from None
        for src in (adapter, base):
            try:
                AutoTokenizer.from_pretrained(src, trust_remote_code=False).save_pretrained(str(tmp))
                break
            except (OSError, ValueError):
                continue
    return out, result


class MergeSettings(BaseModel):
    """The merge_lora command's settings."""

    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(description="a LoRA adapter dir (a stage's adapter/)")
    output_path: str = Field(description="dir for the merged model (refused if it exists)")
    base: str | None = Field(None, description="base model dir or hub id (default: the adapter config's)")
    overwrite_output_path: bool = Field(False, description="replace an existing --output_path")


def main(argv=None) -> int:
    args = parse_settings(command_parser("python -m training merge_lora", __doc__, MergeSettings), MergeSettings, argv)
    out, result = merge(args.adapter, args.output_path, args.base, args.overwrite_output_path)
    if result.skipped:
        print(f"skipped {len(result.skipped)} base tensor(s) the model does not use, e.g. {result.skipped[0]}")
    print(f"merged model written to {out} ({result.targets} LoRA targets, {len(result.files)} file(s))")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
