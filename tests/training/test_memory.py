"""Memory options keep the math: gradient checkpointing gives the same loss and gradients as without."""

import h5py
import pytest
import torch

from training.config import LoraConfig, ModelConfig, TinyShape
from training.data import collate, row_features
from training.modeling import apply_lora, build_model, enable_checkpointing, packed_loss


def packed_batch(token_dir, rows=2) -> dict:
    with h5py.File(token_dir / "train_1_of_2.hdf5") as f:
        return collate([row_features(f["input_ids"][r], f["token_type_ids"][r], 0.0) for r in range(rows)])


def loss_and_grads(kind: str, batch: dict, checkpointing: bool, lora: bool) -> tuple[float, dict, int]:
    """Loss, gradients, and the activation elements autograd saved for backward during the forward."""
    model = build_model(
        ModelConfig(kind=kind, tiny=TinyShape(hidden_size=64, num_layers=3, num_heads=4)), 50277, 128, seed=0
    )[0]
    if checkpointing:
        enable_checkpointing(model)
    if lora:
        model = apply_lora(model, kind, LoraConfig(r=4, alpha=8, dropout=0.0))
    model.train()
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # checkpointed layers save only their inputs
        loss_sum = packed_loss(model, batch)
    w = float(batch["weights"][:, :-1].sum())
    (loss_sum / w).backward()
    return float(loss_sum / w), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, sum(saved)


@pytest.mark.parametrize("kind", ["pythia", "bloom"])
@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_keeps_loss_and_gradients(kind, lora, token_dirs):
    batch = packed_batch(token_dirs[1])
    loss, grads, saved = loss_and_grads(kind, batch, checkpointing=False, lora=lora)
    loss_ck, grads_ck, saved_ck = loss_and_grads(kind, batch, checkpointing=True, lora=lora)
    assert saved_ck < 0.6 * saved  # checkpointing is really on: far fewer activations kept for backward
    assert loss_ck == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ck.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads_ck[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().max() > 0 for g in grads.values())


def test_checkpointing_on_a_model_without_support_is_one_line():
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="does not support it"):
        enable_checkpointing(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["pythia", "bloom"])
def test_weight_decay_skips_biases_and_norms(kind):
    """AdamW decays matrices only; every bias and LayerNorm weight is in the group with weight_decay 0."""
    from training.modeling import param_groups

    model = build_model(ModelConfig(kind=kind, tiny=TinyShape()), 50277, 128, seed=0)[0]
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert {f"{n}.weight" for n in norms} | {n for n in names.values() if n.endswith(".bias")} == skipped
    assert all(p.ndim == 2 for p in decay["params"]) and len(decay["params"]) + len(skipped) == len(names)
