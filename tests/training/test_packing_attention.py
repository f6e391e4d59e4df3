"""Attention is isolated per article inside a packed row, for GPT-NeoX (rotary) and BLOOM (ALiBi), for every
attention implementation available here, in fp32 and bf16, at length 2048."""

import h5py
import numpy as np
import pytest
import torch

from common.errors import ConfigError
from training.attention import SUPPORTED, check_attention
from training.config import ModelConfig, TinyShape
from training.data import row_features
from training.modeling import MODEL_CLASSES, build_model, packed_forward, tiny_config
from training.preflight import DsFacts
from training.weights import load_model

LENGTH, PROBE_AT = 2048, 1700


def available(kind):
    """Implementations installed here that run on the CPU (flash-attn needs CUDA and bf16: not tested here)."""
    out = []
    for impl in SUPPORTED[kind]:
        if impl == "flash_attention_2":
            continue
        try:
            check_attention(kind, impl, training=False)
            out.append(impl)
        except ConfigError:
            pass
    return out


CASES = [(kind, impl) for kind in ("pythia", "bloom") for impl in available(kind)]


def articles(token_dir):
    """The real articles (token ids, token types) of a tokenized split, each ending at its SEP token."""
    out = []
    for name in ("train_1_of_2.hdf5", "train_2_of_2.hdf5"):
        with h5py.File(token_dir / name) as f:
            for ids, types in zip(f["input_ids"][:], f["token_type_ids"][:], strict=True):
                start = 0
                for end in np.flatnonzero(types == 3):
                    out.append((ids[start : end + 1], types[start : end + 1]))
                    start = end + 1
    return out


def packed_row(token_dir):
    """A 2048-token row of real articles with a probe article starting after position 1700, then padding."""
    arts = articles(token_dir)
    probe = max(arts, key=lambda a: len(a[0]))
    ids, types, at = [], [], 0
    for a in arts:
        if at >= PROBE_AT:
            break
        ids.append(a[0])
        types.append(a[1])
        at += len(a[0])
    assert PROBE_AT <= at <= LENGTH - len(probe[0])
    pad = LENGTH - at - len(probe[0])
    ids = np.concatenate(ids + [probe[0], np.zeros(pad, dtype=probe[0].dtype)])
    types = np.concatenate(types + [probe[1], np.full(pad, 2, dtype=probe[1].dtype)])
    return ids, types, slice(at, at + len(probe[0])), len(arts[0][0])


def logits(model, ids, types):
    feats = row_features(ids, types, 0.0)
    with torch.no_grad():
        return packed_forward(model, {k: v[None] for k, v in feats.items()})[0].float()


def build(kind, impl, dtype):
    shape = TinyShape(hidden_size=64, num_layers=2, num_heads=4)
    return build_model(ModelConfig(kind=kind, tiny=shape), 50277, LENGTH, seed=0, attn=impl)[0].to(dtype).eval()


@pytest.mark.parametrize("kind,impl", CASES)
def test_packed_logits_equal_each_article_alone(kind, impl, token_dirs):
    ids, types, probe, first = packed_row(token_dirs[1])
    fp32, bf16 = build(kind, impl, torch.float32), build(kind, impl, torch.bfloat16)
    ref = {"first": logits(fp32, ids[:first], types[:first]), "probe": logits(fp32, ids[probe], types[probe])}
    packed32, packed16 = logits(fp32, ids, types), logits(bf16, ids, types)
    for name, where in (("first", slice(0, first)), ("probe", probe)):
        torch.testing.assert_close(packed32[where], ref[name], rtol=0, atol=2e-5, msg=f"{kind} {impl} fp32 {name}")
    # bf16: the probe packed at 1700 is as close to fp32 as the probe alone in bf16 (the issue asks for 1.5x; we
    # compute the same numbers, so 1.1x. ALiBi from absolute positions makes it 1.2x worse on this tiny model)
    alone16 = logits(bf16, ids[probe], types[probe])
    dev_alone = (alone16 - ref["probe"]).abs().mean().item()
    dev_packed = (packed16[probe] - ref["probe"]).abs().mean().item()
    assert dev_packed <= 1.1 * dev_alone + 1e-7, (kind, impl, dev_packed, dev_alone)
    # the stock forward of one article (what inference runs) agrees with the packed path
    with torch.no_grad():
        stock = fp32(input_ids=torch.as_tensor(ids[probe], dtype=torch.long)[None]).logits[0]
    torch.testing.assert_close(stock, ref["probe"], rtol=0, atol=2e-5)
    # without restarting positions (one long article) the probe would see everything before it
    naive = row_features(ids, types, 0.0)
    naive["position_ids"] = torch.arange(LENGTH)
    with torch.no_grad():
        unisolated = packed_forward(fp32, {k: v[None] for k, v in naive.items()})[0][probe]
    assert (unisolated - ref["probe"]).abs().max() > 1e-3


def test_unavailable_or_unisolating_attention_is_one_line():
    with pytest.raises(ConfigError, match="cannot isolate packed articles on bloom"):
        check_attention("bloom", "mask_free")
    if not torch.cuda.is_available():
        for kind in ("pythia", "bloom"):
            with pytest.raises(ConfigError, match="no backward pass on the CPU"):
                check_attention(kind, "flex_attention")
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        with pytest.raises(ConfigError, match="flash-attn"):
            build_model(ModelConfig(kind="pythia", tiny=TinyShape()), 50277, 128, attn="flash_attention_2")


def test_row_features_weights_positions_segments():
    types = np.array([0, 0, 1, 1, 3, 0, 1, 3, 2, 2])
    f = row_features(np.arange(10), types, 0.5)
    assert f["segment_ids"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert f["position_ids"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1]
    # weight[i] is for predicting token i+1: prompt 0.5, completion/SEP 1, never across articles or padding
    assert f["weights"].tolist() == [0.5, 1, 1, 1, 0, 1, 1, 0, 0, 0]


@pytest.mark.parametrize("heads", [1, 4, 12, 16, 32, 112])  # 112: BLOOM-176B, not a power of two
def test_alibi_slopes_are_blooms(heads):
    """Our ALiBi slopes (no private transformers name) equal the ones BLOOM's own forward adds."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    from training.attention import alibi_slopes

    theirs = build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)[:, 0, 1]  # slope x position 1
    assert torch.equal(alibi_slopes(heads), theirs)


def test_auto_attention_is_the_fastest_isolating_kernel_here():
    from transformers.utils import is_flash_attn_2_available

    from training.attention import resolve_attention

    assert resolve_attention("auto", cuda=False, dtype=torch.bfloat16) == "sdpa"
    fast = "flash_attention_2" if is_flash_attn_2_available() else "flex_attention"
    assert resolve_attention("auto", cuda=True, dtype=torch.bfloat16) == fast
    assert resolve_attention("auto", cuda=True, dtype=torch.float32) == "flex_attention"
    assert resolve_attention("eager", cuda=True, dtype=torch.bfloat16) == "eager"


def test_rotary_frequencies_stay_fp32_in_a_16_bit_model():
    """A model built from config in bf16 keeps RoPE's inv_freq in fp32, equal to the fp32 model's."""
    config = tiny_config(ModelConfig(kind="pythia", tiny=TinyShape()), 50277, 128)
    ref = load_model(MODEL_CLASSES["pythia"], config, None, DsFacts(0, torch.float32, False, False), {}, 0)[0]
    bf16 = load_model(MODEL_CLASSES["pythia"], config, None, DsFacts(0, torch.bfloat16, False, False), {}, 0)[0]
    assert next(bf16.parameters()).dtype == torch.bfloat16
    theirs, ours = ref.gpt_neox.rotary_emb.inv_freq, bf16.gpt_neox.rotary_emb.inv_freq
    assert ours.dtype == torch.float32 and torch.equal(ours, theirs)
