"""Preference pairs for ``objective: dpo``: the batch, the sequences' log-probs, the pair losses and their metrics.

A preference row (tokenization_prep, ``kind: preference``) holds the prompt once, then the chosen reply, then the
rejected reply, then padding (token types 0 | 1 | 4 | 2). ``preference_batch`` turns B rows into 2B sequences, B
chosen (prompt + chosen) then B rejected (prompt + rejected), right-padded to the batch's longest (a multiple of
8), positions 0..n-1 and the padding as a segment of its own (as in SFT rows). ``weights[s, t]`` is 1 where
position t predicts a reply token of sequence s (the reply's closing EOS included).

The training forward (``PackedLM.forward(..., preference=PairLoss(...))``) runs the model once on the 2B sequences
and, inside the output head (one ZeRO-3 gather), ``PairLoss.__call__``: (a) every scored token's cross-entropy
without gradients, summed per sequence into log-probs; (b) the pair losses and g = d(sum of losses)/d(log-probs) by
autograd on those 2B numbers; (c) the surrogate sum_t w_t * CE_t with w_t = -g[sequence of t], through the fused
``LinearCrossEntropy``. Its gradient is exactly the DPO gradient (d logp_s = -sum_t d CE_t), and no full-vocabulary
fp32 logits are ever made. Backward the surrogate; log the real loss (``PairLoss.stats``).

Losses (TRL's definitions; ``tests/training/test_preference.py`` checks them and the surrogate's gradients):
sigmoid -logsigmoid(beta*((pc-pr)-(rc-rr))) with label smoothing; ipo (logits - 1/(2 beta))^2 on length-averaged
log-probs; simpo -logsigmoid(beta*(pc/nc - pr/nr) - gamma), reference-free. Rewards beta*(p - r) (ipo: on the
averaged log-probs, as TRL; simpo: beta*p/n).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tokenization_prep.schema import CHOSEN, PADDING, REJECTED
from training.loss import linear_cross_entropy

METRICS = ("loss", "reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected")
WIDTH_MULTIPLE = 8


def row_spans(types: np.ndarray) -> tuple[int, int, int]:
    """(first chosen, first rejected, end of the rejected reply) of a preference row's token types."""
    types = np.asarray(types)
    chosen = np.flatnonzero(types == CHOSEN)
    rejected = np.flatnonzero(types == REJECTED)
    if not len(chosen) or not len(rejected):
        raise ValueError("not a preference row (no chosen or no rejected tokens); tokenize preference records")
    c0, r0 = int(chosen[0]), int(rejected[0])
    pad = np.flatnonzero(types[r0:] == PADDING)
    return c0, r0, r0 + int(pad[0]) if len(pad) else len(types)


def preference_batch(rows: list[dict]) -> dict:
    """2B sequences (B chosen then B rejected) from B preference rows.

    Each row: ``input_ids`` and ``token_type_ids`` (1-D, as tokenization_prep writes them), optionally ``index``
    (its row number in the split: ``pair_index``) and ``source_id``. Returns ``input_ids``, ``position_ids``,
    ``weights`` (2B, W), ``counts`` (2B,) scored tokens, ``real_tokens`` (non-padding tokens), ``pair_index`` and
    ``source_ids`` (B,)."""
    seqs, scored = [], []
    for which in (0, 1):
        for row in rows:
            ids = np.asarray(row["input_ids"], dtype=np.int64)
            c0, r0, end = row_spans(row["token_type_ids"])
            reply = ids[c0:r0] if which == 0 else ids[r0:end]
            seqs.append(np.concatenate([ids[:c0], reply]))
            scored.append(len(reply))
    longest = max(len(s) for s in seqs)
    width = -(-longest // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    n = len(seqs)
    input_ids = torch.zeros((n, width), dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    weights = torch.zeros((n, width), dtype=torch.float32)
    for s, (seq, k) in enumerate(zip(seqs, scored)):
        m = len(seq)
        input_ids[s, :m] = torch.from_numpy(seq)
        position_ids[s, :m] = torch.arange(m)
        position_ids[s, m:] = torch.arange(width - m)  # the padding: a segment of its own
        weights[s, m - k - 1 : m - 1] = 1.0  # position t predicts token t + 1: the reply's tokens
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "weights": weights,
        "counts": torch.tensor(scored, dtype=torch.float64),
        "real_tokens": torch.tensor([len(s) for s in seqs]),
        "pair_index": torch.tensor([int(r.get("index", j)) for j, r in enumerate(rows)], dtype=torch.long),
        "source_ids": torch.tensor([int(r.get("source_id", -1)) for r in rows], dtype=torch.long),
    }


def logps_of(token_losses: torch.Tensor) -> torch.Tensor:
    """Summed log-probs per sequence from (S, W) per-token CE of the scored tokens (float64 sums)."""
    return -token_losses.double().sum(dim=1)


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs (2B,), scored token counts (2B,)) of a batch's sequences under ``model`` (no gradients)."""
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            loss_weights=batch["weights"],
            per_token=True,
        )
    counts = batch["weights"][:, :-1].double().sum(dim=1)
    return logps_of(out.loss), counts


def preference_loss(pc, pr, rc, rr, nc, nr, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses (B,), chosen rewards (B,), rejected rewards (B,)) of pairs: policy log-probs ``pc``/``pr`` (summed
    over the chosen / rejected reply), reference ``rc``/``rr`` (None for simpo), scored counts ``nc``/``nr``;
    ``cfg`` a DpoConfig (beta, loss, label_smoothing, simpo_gamma)."""
    beta, ls = cfg.beta, cfg.label_smoothing
    if cfg.loss == "simpo":
        chosen, rejected = beta * pc / nc, beta * pr / nr
        logits = chosen - rejected - cfg.simpo_gamma
        losses = -F.logsigmoid(logits) * (1 - ls) - F.logsigmoid(-logits) * ls
        return losses, chosen.detach(), rejected.detach()
    if cfg.loss == "ipo":  # TRL averages the log-probs over the reply's tokens for ipo, the reference's too
        pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
    logits = (pc - pr) - (rc - rr)
    if cfg.loss == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    return losses, (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


class PairLoss:
    """The preference path of the output head: called inside ``LinearCEHead.forward`` with the gathered head weight.

    ``reference`` holds the 2B reference log-probs (chosen then rejected; None for simpo). After the call,
    ``stats`` holds per pair: losses, chosen and rejected rewards and policy log-probs (detached)."""

    def __init__(self, cfg, reference: torch.Tensor | None = None):
        self.cfg, self.reference, self.stats = cfg, reference, None

    def __call__(self, hidden, weight, input_ids, weights) -> torch.Tensor:
        with torch.no_grad():  # (a) the scored tokens' CE, without gradients
            token_losses = linear_cross_entropy(hidden, weight, input_ids, weights, per_token=True)
        counts = weights[:, :-1].double().sum(dim=1)
        logps = logps_of(token_losses)
        with torch.enable_grad():  # (b) g = d(sum of pair losses) / d(log-probs), on 2B numbers
            leaf = logps.detach().requires_grad_(True)
            losses, chosen_r, rejected_r = self.pair_losses(leaf, counts)
            (g,) = torch.autograd.grad(losses.sum(), leaf)
        b = len(losses)
        self.stats = {
            "losses": losses.detach(),
            "chosen_rewards": chosen_r,
            "rejected_rewards": rejected_r,
            "logps_chosen": logps[:b],
            "logps_rejected": logps[b:],
        }
        # (c) the surrogate: d/d(params) of sum_t -g[s(t)] * CE_t = sum_s g_s * d logp_s
        w = weights * (-g).to(weights.dtype)[:, None]
        return linear_cross_entropy(hidden, weight, input_ids, w)

    def pair_losses(self, logps: torch.Tensor, counts: torch.Tensor):
        b = len(logps) // 2
        ref = self.reference
        rc, rr = (None, None) if ref is None else (ref[:b].to(logps), ref[b:].to(logps))
        return preference_loss(logps[:b], logps[b:], rc, rr, counts[:b], counts[b:], self.cfg)


def stats_of(losses, chosen_rewards, rejected_rewards, logps_chosen, logps_rejected) -> torch.Tensor:
    """Per pair (B, 6): loss, reward right, reward margin, chosen and rejected log-probs, 1 (the pair count)."""
    return torch.stack(
        [
            losses.double(),
            (chosen_rewards > rejected_rewards).double(),
            (chosen_rewards - rejected_rewards).double(),
            logps_chosen.double(),
            logps_rejected.double(),
            torch.ones_like(losses, dtype=torch.float64),
        ],
        dim=1,
    )


class PairMetrics:
    """Sums of per-pair metrics in all and per source code (-1, none, kept as ``-``), for one all-reduce."""

    def __init__(self, sources: list[str], device):
        self.sources = sources
        self.sum = torch.zeros((len(sources) + 1, 6), dtype=torch.float64, device=device)

    def add(self, per_pair: torch.Tensor, source_ids: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """``per_pair`` (B, 6) from ``stats_of``; ``keep`` (B,) 0 for fill rows."""
        if keep is not None:
            per_pair = per_pair * keep.double()[:, None]
        self.sum.index_add_(0, source_ids.to(self.sum.device) % self.sum.shape[0], per_pair)

    def sums(self) -> list:
        return list(self.sum.reshape(-1).unbind())

    def result(self, flat: list[float]) -> dict:
        """{"kind": "preference", "pairs", METRICS..., "by_source": {name: {"pairs", METRICS...}}}."""
        table = np.asarray([float(x) for x in flat]).reshape(self.sum.shape)
        labels = self.sources + ["-"]
        out = {"kind": "preference", **means(table.sum(axis=0)), "by_source": {}}
        for c, row in enumerate(table):
            if row[5] > 0:
                out["by_source"][labels[c]] = means(row)
        return out


def means(row) -> dict:
    n = max(float(row[5]), 1e-12)
    return {"pairs": int(row[5]), **{k: float(row[i]) / n for i, k in enumerate(METRICS)}}
