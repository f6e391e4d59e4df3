"""Dev loss in all and per source and category of the articles (from the rows' provenance): the accumulator the
trainer's sharded evaluation and ``training.evaluate`` share, and how its results are logged and printed."""

from __future__ import annotations

import torch

PAIR_METRICS = ("loss", "reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected")  # preference.METRICS


class GroupedLoss:
    """Sums of per-token weighted losses and weights, in all and per group code (code -1, none, kept as ``-``)."""

    def __init__(self, names: dict[str, list[str]], device):
        self.names = names
        self.num = torch.zeros((), dtype=torch.float64, device=device)
        self.den = torch.zeros((), dtype=torch.float64, device=device)
        self.by = {t: torch.zeros((2, len(n) + 1), dtype=torch.float64, device=device) for t, n in names.items()}

    def add(self, batch: dict, losses: torch.Tensor) -> None:
        """One batch: ``losses`` (B, L) per-token weighted losses; ``batch`` has weights and ``{table}_ids``."""
        losses = losses.double()
        w = batch["weights"].double().clone()
        w[:, -1] = 0  # the last position predicts nothing
        self.num += losses.sum()
        self.den += w.sum()
        for t, acc in self.by.items():  # code -1 (none) lands in the last column
            codes = batch[f"{t}_ids"].reshape(-1) % acc.shape[1]
            acc[0].index_add_(0, codes, losses.reshape(-1))
            acc[1].index_add_(0, codes, w.reshape(-1))

    def sums(self) -> list:
        """Every sum as one flat list (for one all-reduce over ranks)."""
        return [self.num, self.den, *torch.cat([a.reshape(-1) for a in self.by.values()]).unbind()]

    def result(self, flat: list[float]) -> dict:
        """{"loss", "by_source", "by_category", "tokens_by_source", "tokens_by_category"} from ``sums()``."""
        out, pos = {"loss": flat[0] / max(flat[1], 1e-8)}, 2
        for t, acc in self.by.items():
            n = acc.shape[1]
            loss, weight = flat[pos : pos + n], flat[pos + n : pos + 2 * n]
            pos += 2 * n
            labels = self.names[t] + ["-"]
            out[f"by_{t}"] = {labels[c]: loss[c] / weight[c] for c in range(n) if weight[c] > 0}
            out[f"tokens_by_{t}"] = {labels[c]: int(weight[c]) for c in range(n) if weight[c] > 0}
        return out


def eval_record(result: dict | None, prefix: str = "eval_loss") -> dict:
    """metrics.jsonl / lineage keys of an evaluation: ``eval_loss``, ``eval_loss_by_source``, ...by_category (a
    preference evaluation: ``eval_loss``, ``eval_reward_accuracy``, ... and ``eval_by_source``)."""
    if result is None:
        return {prefix: None}
    if result.get("kind") == "preference":
        base = prefix.removesuffix("_loss")
        return {**{f"{base}_{k}": result[k] for k in PAIR_METRICS}, f"{base}_by_source": result["by_source"]}
    return {
        prefix: result["loss"],
        f"{prefix}_by_source": result["by_source"],
        f"{prefix}_by_category": result["by_category"],
    }


def log_eval(writer, record: dict, step: int) -> None:
    """TensorBoard scalars eval/loss, eval/loss_by_source/NAME and eval/loss_by_category/NAME."""
    if record.get("eval_loss") is None:
        return
    if "eval_reward_accuracy" in record:
        for k in PAIR_METRICS:
            writer.add_scalar(f"eval/{k}", record[f"eval_{k}"], step)
            for name, values in record["eval_by_source"].items():
                writer.add_scalar(f"eval/{k}_by_source/{name}", values[k], step)
        return
    writer.add_scalar("eval/loss", record["eval_loss"], step)
    for table in ("source", "category"):
        for name, value in record[f"eval_loss_by_{table}"].items():
            writer.add_scalar(f"eval/loss_by_{table}/{name}", value, step)


def eval_table(stage: str, result: dict) -> list[str]:
    """The end-of-stage table: dev loss in all, per source and per category, with supervised tokens (preference
    pairs: every pair metric in all and per source)."""
    if result.get("kind") == "preference":
        head = " | ".join(PAIR_METRICS)
        out = [f"dev pairs of {stage} (- means no source):", f"| source | pairs | {head} |", "|---|---:|" + "---:|" * 5]
        for name, m in [("all", result), *sorted(result["by_source"].items())]:
            out.append(f"| {name} | {m['pairs']:,} | " + " | ".join(f"{m[k]:.4f}" for k in PAIR_METRICS) + " |")
        return out
    out = [
        f"dev loss of {stage} (token-weighted; - means no source or category):",
        "| group | name | supervised tokens | dev loss |",
        "|---|---|---:|---:|",
        f"| all | all | {sum(result['tokens_by_source'].values()):,} | {result['loss']:.4f} |",
    ]
    for table in ("source", "category"):
        for name, value in sorted(result[f"by_{table}"].items()):
            out.append(f"| {table} | {name} | {result[f'tokens_by_{table}'][name]:,} | {value:.4f} |")
    return out
