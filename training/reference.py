"""The reference model's log-probs for ``objective: dpo``: one first pass, stored beside the checkpoints, or live.

``reference: precomputed`` (the default): before the first step the model at its initial weights (or
``dpo.reference_model``) scores every train and dev pair once, in eval mode without gradients, rows sharded over
the ranks and the table all-reduced; rank 0 writes ``<output>/reference_logps.safetensors`` atomically (``train``
and ``dev``: (rows, 2) float64, chosen and rejected summed log-probs) with a fingerprint of what decides them (the
data's manifest, the reference weights, the training dtype) in its metadata. A resumed run (or a fresh run with the
same fingerprint) reuses the file; ``--resume`` against a file of another fingerprint is one line. The train rows
are scored in epoch 0's micro-batches (the trainer's order), so the pass computes bit for bit what the first
step's forward computes: at step 1 the sigmoid loss is exactly ln 2. Only the policy stays in memory.

``reference: live``: a frozen copy of the reference (partitioned like the policy under ZeRO-3) scores each
micro-batch in the step. ``simpo`` needs no reference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from common.errors import ConfigError
from common.files import atomic_write, sha256_file
from training.config import deepspeed_dict
from training.data import StepSampler, dev_shard, epoch_order
from training.distributed import to_device
from training.preference import preference_batch, sequence_logps
from training.preflight import DsFacts

FILE = "reference_logps.safetensors"
MIB = 2**20


def model_fingerprint(path: Path) -> str:
    """sha256 over a saved model's config, lineage and weights' names, sizes, first and last MiB (cheap at any
    size; a retrained model differs in its lineage and almost surely in those bytes)."""
    h = hashlib.sha256()
    for name in ("config.json", "lineage.json"):
        if (path / name).is_file():
            h.update(name.encode() + (path / name).read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(MIB))
            fh.seek(max(0, size - MIB))
            h.update(fh.read(MIB))
    return h.hexdigest()


def fingerprint(cfg, data, init: Path | None, dtype) -> str:
    """What decides the reference log-probs: the data, the reference weights (a model dir, or the tiny shape and
    seed), the dtype."""
    ref = cfg.resolve(cfg.dpo.reference_model) or init
    manifest = data.path / "manifest.sha256"
    parts = {
        "data": sha256_file(manifest) if manifest.is_file() else str(data.path),
        "model": model_fingerprint(ref) if ref else json.dumps([cfg.model.model_dump(), cfg.seed], sort_keys=True),
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_reference_model(cfg, data, init: Path | None, ds: dict, facts, attn: str, device):
    """The frozen reference model (``dpo.reference_model``, else ``init_from``, else the tiny shape at the same
    seed) in eval mode: a DeepSpeed engine without optimizer under ZeRO-3 (partitioned as the policy), else the
    plain model on ``device``."""
    from training.config import ModelConfig
    from training.modeling import build_model

    path = cfg.resolve(cfg.dpo.reference_model) or init
    mc = ModelConfig(kind=cfg.model.kind, name_or_path=str(path)) if path else cfg.model
    model, keep = build_model(
        mc, data.embedding_rows, data.meta.max_seq_length, None, cfg.seed, ds=ds, attn=attn, check=False
    )
    model.requires_grad_(False)
    if facts.stage == 3:
        import deepspeed

        infer = {k: v for k, v in ds.items() if k not in ("optimizer", "scheduler")}
        model = deepspeed.initialize(model=model, config=infer)[0]
    else:
        model = model.to(device)
    model.eval()
    return model, keep


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def score(model, dataset, shards: list[list[int | None]], n: int, device) -> torch.Tensor:
    """(n, 2) chosen / rejected log-probs of the rows in ``shards`` (this rank's micro-batches; None: a fill row,
    computed so every rank runs the same forwards, then dropped), summed over the ranks."""
    table = torch.zeros((n, 2), dtype=torch.float64, device=device)
    with torch.no_grad():
        for part in shards:
            rows = dataset.__getitems__([0 if k is None else k for k in part])
            batch = to_device(preference_batch(rows), device)
            logps, _ = sequence_logps(model, batch)
            b = len(part)
            for j, k in enumerate(part):
                if k is not None:
                    table[k, 0], table[k, 1] = logps[j], logps[b + j]
    return _all_reduce(table)


def train_shards(runner) -> list[list[int | None]]:
    """This rank's micro-batches of the train rows: epoch 0's steps as the trainer runs them, then the rows epoch
    0 leaves out (a last partial step), shared out as dev rows are."""
    cfg, n = runner.cfg, len(runner.train)
    spe, per_step = runner.steps_per_epoch, runner.rows_per_step
    sampler = StepSampler(
        n, cfg.seed, cfg.micro_batch_size, cfg.gradient_accumulation_steps, runner.world, runner.rank, spe, 0, spe
    )
    shards: list[list[int | None]] = [list(p) for p in sampler]
    left = epoch_order(n, cfg.seed, 0)[spe * per_step :]
    for part in dev_shard(len(left), runner.rank, runner.world, cfg.micro_batch_size):
        shards.append([None if k is None else int(left[k]) for k in part])
    return shards


class ReferenceLogps:
    """The reference log-probs of a stage's pairs: ``of(batch, split)`` gives the 2B values of a batch (chosen
    then rejected; None for simpo)."""

    def __init__(self, runner):
        """Before any process group: a ``--resume`` whose stored pass has another fingerprint is refused here."""
        self.runner = r = runner
        self.cfg = r.cfg.dpo
        self.tables: dict[str, torch.Tensor] = {}
        self.model = None
        self.path = r.out / FILE
        self.fingerprint = self.stored = None
        if self.cfg.loss == "simpo" or self.cfg.reference == "live":
            return
        dtype = DsFacts.of(deepspeed_dict(r.cfg, r.world)).dtype
        self.fingerprint = fingerprint(r.cfg, r.data, r.init, dtype)
        self.stored = self.read()
        if self.stored is not None and self.stored[0] != self.fingerprint:
            if r.resume:
                raise ConfigError(
                    f"--resume: {self.path} was computed for other data or another reference model than this "
                    "stage's (its fingerprint differs); start the stage again without --resume"
                )
            self.stored = None  # a fresh run computes it again

    def prepare(self) -> None:
        """Load the stored pass, or run it (fresh runs, or a resume that finds no file), or load the live model."""
        r = self.runner
        if self.cfg.loss == "simpo":
            return
        if self.cfg.reference == "live":
            self.model, self._keep = load_reference_model(r.cfg, r.data, r.init, r.ds_config, r.facts, r.attn, r.device)
            return
        stored = self.stored
        if stored is not None and all(stored[1].get(s, torch.empty(0)).shape[0] == n for s, n in self.sizes()):
            self.tables = {s: t.to(r.device) for s, t in stored[1].items()}
            return
        self.compute()

    def sizes(self) -> list[tuple[str, int]]:
        r = self.runner
        return [("train", len(r.train))] + ([("dev", len(r.dev))] if r.dev is not None else [])

    def read(self):
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), "pt") as f:
                meta = f.metadata() or {}
                return meta.get("fingerprint"), {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # a torn or foreign file: computed again
            return None

    def compute(self) -> None:
        r = self.runner
        if self.cfg.reference_model:
            model, keep = load_reference_model(r.cfg, r.data, r.init, r.ds_config, r.facts, r.attn, r.device)
        else:
            model, keep = r.engine, None
        model.eval()
        mb = r.cfg.micro_batch_size
        self.tables = {"train": score(model, r.train, train_shards(r), len(r.train), r.device)}
        if r.dev is not None:
            self.tables["dev"] = score(model, r.dev, dev_shard(len(r.dev), r.rank, r.world, mb), len(r.dev), r.device)
        r.engine.train()
        del model, keep
        if r.rank == 0:
            from safetensors.torch import save

            blob = save({k: v.cpu().contiguous() for k, v in self.tables.items()}, {"fingerprint": self.fingerprint})
            with atomic_write(self.path, "wb") as fh:
                fh.write(blob)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def of(self, batch: dict, split: str) -> torch.Tensor | None:
        if self.cfg.loss == "simpo":
            return None
        if self.model is not None:
            return sequence_logps(self.model, batch)[0]
        t = self.tables[split][batch["pair_index"]]
        return torch.cat([t[:, 0], t[:, 1]])

    def lineage(self) -> dict:
        return {
            "reference_logps": {"file": str(self.path), "fingerprint": self.fingerprint} if self.fingerprint else None
        }
