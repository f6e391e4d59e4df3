"""``objective: dpo`` in the trainer: the preference rows, the step and the dev evaluation (``StageRunner`` calls these
hooks; everything else, DeepSpeed, LoRA, checkpoints and resume, launchers, is the SFT stage's own).

A step's loss is the mean over its pairs across micro-batches and ranks: each micro-batch's surrogate (the sum over
its pairs, ``training/preference.py``) is scaled by world / (the step's pairs over all ranks) before backward, as
the SFT loss is by its supervised weight. Logged per step and per dev evaluation (in all and per source):
``loss``, ``reward_accuracy``, ``reward_margin``, ``logps_chosen``, ``logps_rejected``.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import torch

from common.errors import ConfigError
from tokenization_prep.provenance import TokenGroups
from training.data import SplitRows, dev_shard
from training.distributed import global_sum, to_device
from training.preference import METRICS, PairLoss, PairMetrics, preference_batch, preference_loss, stats_of
from training.reference import ReferenceLogps


class PreferenceDataset(SplitRows):
    """The rows of a preference split (one pair per row), each with its index and its source code (from the rows'
    provenance; -1: none). ``sources``: the code -> name list shared by the split's files."""

    def __init__(self, data, split: str):
        self.files = data.splits[split]
        self.seq_len = data.meta.max_seq_length
        self.index: list[tuple[int, int]] = []
        handles = [h5py.File(p, "r") for p in self.files]
        try:
            for i, f in enumerate(handles):
                if "input_ids" not in f or "token_type_ids" not in f:
                    raise ConfigError(f"{self.files[i]}: needs datasets input_ids and token_type_ids")
                self.index += [(i, r) for r in range(f["input_ids"].shape[0])]
            groups = TokenGroups(handles)
        finally:
            for f in handles:
                f.close()
        self.sources = groups.names["source"]
        self.source_of = []
        for p in groups.pieces:  # one piece per row: its source code
            self.source_of.append(
                None if p is None else p["source"][p["row_offsets"][:-1].clip(max=len(p["source"]) - 1)]
            )
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __getitems__(self, ks: list[int]) -> list[dict]:
        out = []
        for k in ks:
            i, r = self.index[k]
            f = self._file(i)
            codes = self.source_of[i]
            out.append(
                {
                    "input_ids": np.asarray(f["input_ids"][r], dtype=np.int64),
                    "token_type_ids": np.asarray(f["token_type_ids"][r]),
                    "index": k,
                    "source_id": -1 if codes is None or not len(codes) else int(codes[r]),
                }
            )
        return out


class PreferenceObjective:
    """The dpo objective's hooks for ``StageRunner``: datasets, collate, ``prepare`` (reference log-probs),
    ``train_step``, ``evaluate``, ``record`` (the last step's metrics) and ``lineage``."""

    collate = staticmethod(preference_batch)

    def __init__(self, runner):
        self.runner, self.cfg = runner, runner.cfg.dpo
        self.train = PreferenceDataset(runner.data, "train")
        self.dev = PreferenceDataset(runner.data, "dev") if runner.data.splits["dev"] else None
        self.reference = ReferenceLogps(runner)  # a resume against another reference pass: refused here
        self.record: dict = {}

    def prepare(self) -> None:
        """The reference log-probs (the stored pass, run now, or the live model), once the engine exists."""
        self.reference.prepare()

    def train_step(self, loader) -> tuple[float, float, float]:
        """One optimizer step: global (mean pair loss, scored tokens, real tokens); the step's metrics in ``record``."""
        r = self.runner
        batches = [next(loader) for _ in range(r.cfg.gradient_accumulation_steps)]
        local = [
            float(sum(len(b["pair_index"]) for b in batches)),
            sum(float(b["weights"][:, :-1].sum()) for b in batches),
            sum(float(b["real_tokens"].sum()) for b in batches),
        ]
        batches = [to_device(b, r.device) for b in batches]
        pairs, scored, real = global_sum(local, r.device)
        scale = r.world / max(pairs, 1.0)  # DeepSpeed averages over ranks: the mean over the step's pairs
        acc = torch.zeros(6, dtype=torch.float64, device=r.device)
        for b in batches:
            pair_loss = PairLoss(self.cfg, self.reference.of(b, "train"))
            out = r.engine(
                input_ids=b["input_ids"],
                position_ids=b["position_ids"],
                loss_weights=b["weights"],
                preference=pair_loss,
            )
            r.engine.backward(out.loss * scale, scale_wrt_gas=False)
            r.engine.step()
            acc += stats_of(**pair_loss.stats).sum(dim=0)
        sums = global_sum(list(acc.unbind()), r.device)
        n = max(sums[5], 1.0)
        self.record = {k: sums[i] / n for i, k in enumerate(METRICS)}
        return self.record["loss"], scored, real

    def evaluate(self) -> dict | None:
        """Dev pairs sharded over ranks (fill rows weigh 0), sums all-reduced: in all and per source."""
        r = self.runner
        if self.dev is None or not len(self.dev):
            return None
        acc = PairMetrics(self.dev.sources, r.device)
        r.engine.eval()
        with torch.no_grad():
            pairs = min(len(self.dev), r.cfg.eval_rows or len(self.dev))
            for part in dev_shard(pairs, r.rank, r.world, r.cfg.micro_batch_size):
                batch = to_device(preference_batch(self.dev.__getitems__([k or 0 for k in part])), r.device)
                keep = torch.tensor([k is not None for k in part], device=r.device)
                acc.add(
                    pair_stats(r.engine, batch, self.reference.of(batch, "dev"), self.cfg), batch["source_ids"], keep
                )
        r.engine.train()
        return acc.result(global_sum(acc.sums(), r.device))

    def lineage(self) -> dict:
        return {"objective": "dpo", "dpo": self.cfg.model_dump(), **self.reference.lineage()}


def pair_stats(model, batch: dict, reference: torch.Tensor | None, cfg) -> torch.Tensor:
    """(B, 6) per-pair metrics of a batch under ``model`` (no gradients): ``training.preference.stats_of``."""
    from training.preference import sequence_logps

    logps, counts = sequence_logps(model, batch)
    b = len(logps) // 2
    rc, rr = (None, None) if reference is None else (reference[:b], reference[b:])
    losses, cr, rj = preference_loss(logps[:b], logps[b:], rc, rr, counts[:b], counts[b:], cfg)
    return stats_of(losses, cr, rj, logps[:b], logps[b:])
