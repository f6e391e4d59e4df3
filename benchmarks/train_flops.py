"""Model FLOPs of packed training steps, for MFU: each trained row's work counted from its own articles.

``6 x all parameters x tokens`` overcounts (the input embedding is a lookup, not a matmul; the LM head runs only
on supervised tokens here) and leaves attention out. Per packed row, with l layers, hidden h (= heads x head
dim), V head rows (the padded vocab), N non-embedding parameters (everything but the input embedding and an
untied LM head; layer norms and biases included, <1%)::

    dense     = 6 N T            T: real (non-padding) tokens, as the trainer's tokens/s counts them
    attention = 12 l h P         P = sum over the row's articles of n(n+1)/2, the causal (query, key) pairs of an
                                 article of n tokens: QK^T and PV are 2 matmuls x 2 FLOPs a multiply-add x h per
                                 pair = 4 h P a layer forward, x3 for forward + backward
    head      = 6 h V S          S: supervised tokens (next-token loss weight > 0): training/loss.py makes logits
                                 for those only (forward 2hV, backward 2hV for the hidden states + 2hV the weight)

Articles are the runs of non-padding tokens ended by a SEP token (type 3), as ``training.data.row_features``
splits them; padding is never credited (its attention, its matmuls). MFU = the timed steps' summed FLOPs / their
summed step time / the GPU's bf16 dense peak. These are model FLOPs: flash kernels' backward recomputation and
eager/SDPA's masked-out cross-article blocks are work the hardware does that MFU does not credit.

LoRA runs report the same model FLOPs (full-training equivalent, so runs compare) and also ``hw``: the base is
frozen, so no weight gradients: 4 N T + attention + 4 h V S (the rank-r adapters' own FLOPs are left out).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SEP, PADDING = 3, 2  # tokenization_prep.schema's token types (kept literal: this module imports no project code)

LEGEND = (
    "model FLOPs per row = 6 N T (N non-embedding params, T real tokens) + 12 l h sum_articles n(n+1)/2 (attention, "
    "fwd+bwd) + 6 h V S (LM head on S supervised tokens); MFU = FLOPs of the timed steps / their time / bf16 peak; "
    "LoRA: same model FLOPs, hw = 4 N T + attention + 4 h V S"
)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a model: layers, hidden, head rows, non-embedding parameters."""

    layers: int
    hidden: int
    head_rows: int
    non_embedding: int
    total: int  # every parameter (tied ones once): the old 6N's N, kept for comparison


@dataclass(frozen=True)
class RowCounts:
    """The token counts of one or more packed rows that the FLOP count needs."""

    real: int  # non-padding tokens
    supervised: int  # next-token targets with loss weight > 0
    pairs: int  # causal (query, key) pairs within articles: sum of n(n+1)/2
    articles: int

    def __add__(self, other: RowCounts) -> RowCounts:
        return RowCounts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))


ZERO = RowCounts(0, 0, 0, 0)


def article_lengths(types: np.ndarray) -> np.ndarray:
    """Lengths of the articles of one packed row: non-padding tokens, an article ending at each SEP token (a last
    article cut off before its SEP counts as one too)."""
    types = np.asarray(types)
    segment = np.concatenate([[0], np.cumsum(types == SEP)[:-1]])
    counts = np.bincount(segment[types != PADDING], minlength=1)
    return counts[counts > 0]


def row_counts(types: np.ndarray, prompt_loss_weight: float) -> RowCounts:
    """Real, supervised and attention-pair counts of one packed row; the loss weights are the trainer's own
    (``training.data.row_features``), so what counts as supervised cannot drift from what is trained."""
    from training.data import row_features

    types = np.asarray(types)
    n = article_lengths(types)
    weights = row_features(np.zeros(len(types), dtype=np.int64), types, prompt_loss_weight)["weights"]
    return RowCounts(
        real=int((types != PADDING).sum()),
        supervised=int((weights > 0).sum()),
        pairs=int((n * (n + 1) // 2).sum()),
        articles=len(n),
    )


def flops(c: RowCounts, m: ModelShape) -> dict:
    """Model FLOPs of rows with counts ``c`` (see the module docstring), by part, and the LoRA hardware count."""
    dense = 6 * m.non_embedding * c.real
    attention = 12 * m.layers * m.hidden * c.pairs
    head = 6 * m.hidden * m.head_rows * c.supervised
    hw_lora = 4 * m.non_embedding * c.real + attention + 4 * m.hidden * m.head_rows * c.supervised
    return {"dense": dense, "attention": attention, "head": head, "total": dense + attention + head, "hw_lora": hw_lora}


def model_shape(kind: str, shape: dict, vocab: int, seq: int) -> ModelShape:
    """The parameter counts of the model a stage builds from ``shape``, counted on the meta device."""
    import torch

    from training.config import ModelConfig, TinyShape
    from training.modeling import MODEL_CLASSES, tiny_config

    config = tiny_config(ModelConfig(kind=kind, tiny=TinyShape(**shape)), vocab, seq)
    with torch.device("meta"):
        model = MODEL_CLASSES[kind](config)
    total = sum(p.numel() for p in model.parameters())  # a tied weight once
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    non_embedding = total - emb.numel() - (0 if head is emb else head.numel())
    return ModelShape(shape["num_layers"], shape["hidden_size"], head.shape[0], non_embedding, total)


def step_rows(n_rows: int, steps: int, micro_batch: int, seed: int) -> list[list[int]]:
    """The dataset rows each optimizer step 1..steps trains in a one-process run (gradient accumulation 1): the
    trainer's own sampler replayed."""
    from training.data import StepSampler

    spe = n_rows // micro_batch
    return list(StepSampler(n_rows, seed, micro_batch, 1, 1, 0, spe, 0, steps))


def steps_counts(dataset, rows_by_step: list[list[int]]) -> list[RowCounts]:
    """The summed ``RowCounts`` of each step's rows, token types read from ``dataset``'s HDF5 files (a
    ``training.data.PackedDataset``)."""
    import h5py

    handles: dict[int, h5py.File] = {}
    out = []
    try:
        for rows in rows_by_step:
            total = ZERO
            for k in rows:
                i, r = dataset.index[k]
                if i not in handles:
                    handles[i] = h5py.File(dataset.files[i], "r")
                total = total + row_counts(handles[i]["token_type_ids"][r], dataset.plw)
            out.append(total)
    finally:
        for f in handles.values():
            f.close()
    return out
