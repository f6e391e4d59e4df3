"""Attention is isolated per article inside a packed row, for GPT-NeoX (rotary) and BLOOM (ALiBi)."""

import h5py
import numpy as np
import pytest
import torch

from training.config import ModelConfig, TinyShape
from training.data import row_features
from training.modeling import build_model, packed_forward


@pytest.mark.parametrize("kind", ["pythia", "bloom"])
def test_packed_logits_equal_each_article_alone(kind, token_dirs):
    with h5py.File(token_dirs[1] / "train_1_of_2.hdf5") as f:
        types = f["token_type_ids"][:]
        row = int(np.argmax((types == 3).sum(axis=1)))  # the row holding the most articles
        ids, types = f["input_ids"][row], types[row]
    assert (types == 3).sum() >= 2
    model = build_model(ModelConfig(kind=kind, tiny=TinyShape()), 50277, 128, seed=0)[0].eval()
    feats = row_features(ids, types, 0.0)
    with torch.no_grad():
        packed = packed_forward(model, {k: v[None] for k, v in feats.items()})[0]
        ends = np.flatnonzero(types == 3)
        start, naive_gap = 0, 0.0
        for end in ends:
            alone = model(input_ids=torch.tensor(ids[start:end + 1], dtype=torch.long)[None]).logits[0]
            torch.testing.assert_close(packed[start:end + 1], alone, rtol=0, atol=1e-5)
            start = end + 1
        second = slice(ends[0] + 1, ends[1] + 1)
        naive = model(input_ids=torch.tensor(ids, dtype=torch.long)[None]).logits[0]
        alone = model(input_ids=torch.tensor(ids[second], dtype=torch.long)[None]).logits[0]
        naive_gap = (naive[second] - alone).abs().max().item()
    assert naive_gap > 1e-3  # without the mask the second article would see the first


def test_row_features_weights_positions_segments():
    types = np.array([0, 0, 1, 1, 3, 0, 1, 3, 2, 2])
    f = row_features(np.arange(10), types, 0.5)
    assert f["segment_ids"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert f["position_ids"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1]
    # weight[i] is for predicting token i+1: prompt 0.5, completion/SEP 1, never across articles or padding
    assert f["weights"].tolist() == [0.5, 1, 1, 1, 0, 1, 1, 0, 0, 0]
