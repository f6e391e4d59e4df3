"""The fused chunked loss equals cross-entropy over the full logits: same loss, same gradients, any chunking."""

import h5py
import pytest
import torch

from training import loss as loss_mod
from training.config import LoraConfig, ModelConfig, TinyShape
from training.data import collate, row_features
from training.modeling import apply_lora, build_model, packed_forward, packed_loss, weighted_loss


def batch_of(token_dir, rows=2, plw=0.5) -> dict:
    with h5py.File(token_dir / "train_1_of_2.hdf5") as f:
        return collate([row_features(f["input_ids"][r], f["token_type_ids"][r], plw) for r in range(rows)])


def loss_and_grads(kind, batch, fused: bool, lora: bool, dtype=torch.float32):
    model = build_model(
        ModelConfig(kind=kind, tiny=TinyShape(hidden_size=64, num_layers=2, num_heads=4)), 50277, 128, seed=0
    )[0].to(dtype)
    if lora:
        model = apply_lora(model, kind, LoraConfig(r=4, alpha=8, dropout=0.0))
    model.train()
    if fused:
        loss = packed_loss(model, batch)
    else:
        loss = weighted_loss(packed_forward(model, batch), batch["input_ids"], batch["weights"])[0]
    (loss * 0.01).backward()  # a scale, as the trainer applies: backward must multiply by it
    return loss.item(), {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["pythia", "bloom"])  # bloom ties its head to the embedding
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("budget", [None, 4 * 50304 * 37])  # one chunk; chunks of 37 tokens
def test_fused_loss_equals_full_logits(kind, lora, budget, token_dirs, monkeypatch):
    if budget:
        monkeypatch.setattr(loss_mod, "CHUNK_BYTES", budget)
    batch = batch_of(token_dirs[1])
    ref_loss, ref = loss_and_grads(kind, batch, fused=False, lora=lora)
    loss, grads = loss_and_grads(kind, batch, fused=True, lora=lora)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref.keys() and len(grads) > 0
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-4, atol=1e-7, msg=name)
    assert any(g.abs().max() > 0 for g in grads.values())


def test_fused_loss_in_bf16_matches_within_rounding(token_dirs, monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK_BYTES", 4 * 50304 * 64)
    batch = batch_of(token_dirs[1])
    ref_loss, ref = loss_and_grads("bloom", batch, fused=False, lora=False, dtype=torch.bfloat16)
    loss, grads = loss_and_grads("bloom", batch, fused=True, lora=False, dtype=torch.bfloat16)
    assert loss == pytest.approx(ref_loss, rel=2e-3)
    head = "lm_head.weight" if "lm_head.weight" in ref else "transformer.word_embeddings.weight"
    rel = (grads[head] - ref[head]).norm() / ref[head].norm()
    assert rel < 1e-2


def test_only_supervised_tokens_get_logits(monkeypatch):
    """Zero-weight tokens (padding, prompts at weight 0) are skipped; no weight at all is a zero loss."""
    seen = []
    real = loss_mod._chunk
    monkeypatch.setattr(loss_mod, "_chunk", lambda h, *a: seen.append(len(h)) or real(h, *a))
    hidden = torch.randn(1, 10, 8, requires_grad=True)
    weight = torch.randn(32, 8, requires_grad=True)
    weights = torch.tensor([[0, 1, 1, 0, 0, 0.5, 0, 0, 0, 1.0]])  # the last column never counts
    loss_mod.linear_cross_entropy(hidden, weight, torch.randint(0, 32, (1, 10)), weights).backward()
    assert seen == [3]
    assert hidden.grad[0, [0, 3, 4, 6, 7, 8, 9]].abs().max() == 0
    zero = loss_mod.linear_cross_entropy(hidden, weight, torch.zeros(1, 10, dtype=torch.long), weights * 0)
    zero.backward()
    assert zero.item() == 0 and weight.grad is not None
