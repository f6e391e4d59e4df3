"""Packed-equals-alone on a device: each article of a real packed row gives the same logits as alone, per attention
implementation (used by bench_gpu_training.py and so by gpu_check.sh, on CUDA or, with --tiny, on the CPU)."""

from __future__ import annotations

import math
from pathlib import Path


def packing_check(kind: str, shape: dict, data: Path, device: str, attn: str, tol: float, most: int = 6) -> dict:
    """Logits of the packed row with the most articles vs each article alone (at most ``most``: the first and last
    ones), in fp32 (gated: within ``tol``) and bf16 (reported), under ``attn``. Without the block mask article 2
    must differ by far more, or the check could not fail."""
    import h5py
    import numpy as np
    import torch

    from training.config import ModelConfig, TinyShape
    from training.data import load_data, row_features
    from training.modeling import build_model, packed_forward

    torch.set_float32_matmul_precision("highest")  # fp32 really fp32 (no TF32) for the fp32 comparison
    loaded = load_data(data)
    with h5py.File(loaded.splits["train"][0]) as f:
        types = f["token_type_ids"][:]
        row = int(np.argmax((types == 3).sum(axis=1)))  # the row holding the most articles
        ids, types = f["input_ids"][row], types[row]
    ends = np.flatnonzero(types == 3)
    spans = list(zip(np.concatenate([[0], ends[:-1] + 1]), ends + 1))
    chosen = spans if len(spans) <= most else spans[: most // 2] + spans[-(most - most // 2) :]
    batch = {k: v[None].to(device) for k, v in row_features(ids, types, 0.0).items()}
    mc = ModelConfig(kind=kind, tiny=TinyShape(**shape))
    model = build_model(mc, loaded.meta.vocab_size, loaded.meta.max_seq_length, seed=0, attn=attn)[0]
    model = model.eval().to(device)
    res = {"articles": len(spans), "articles_checked": len(chosen), "last_article_start": int(spans[-1][0])}
    res["row_tokens"] = int(ends[-1] + 1)
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            packed = packed_forward(model, batch)[0].float()
            gaps = []
            for lo, hi in chosen:
                alone = model(input_ids=batch["input_ids"][:, lo:hi], use_cache=False).logits[0].float()
                gaps.append((packed[lo:hi] - alone).abs().max().item())
            res[str(dtype).removeprefix("torch.")] = {
                "max_dlogit": max(gaps),
                "max_dlogit_last_article": gaps[-1],
                "max_abs_logit": packed[: spans[-1][1]].abs().max().item(),
            }
            if dtype == torch.float32 and len(spans) > 1:  # sanity: without the block mask article 2 sees article 1
                lo, hi = spans[1]
                naive = model(input_ids=batch["input_ids"][:, :hi], use_cache=False).logits[0, lo:hi].float()
                alone = model(input_ids=batch["input_ids"][:, lo:hi], use_cache=False).logits[0].float()
                res["float32_no_mask_article2"] = (naive - alone).abs().max().item()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    gap, no_mask = res["float32"]["max_dlogit"], res.get("float32_no_mask_article2", math.inf)
    res["ok"] = gap <= tol and no_mask > 10 * max(gap, 1e-7)
    return res
