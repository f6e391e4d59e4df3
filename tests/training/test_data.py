"""The step sampler and DataLoader: the global data order of every step, whatever workers, and from any step."""

import numpy as np
import torch

from training.data import PackedDataset, StepSampler, collate, epoch_order, step_loader


def test_step_sampler_splits_each_step_by_rank_then_micro_batch():
    n, seed, spe = 40, 7, 5  # 5 steps of 8 rows: micro 2 x accumulation 2 x 2 ranks
    got = {r: list(StepSampler(n, seed, 2, 2, 2, r, spe, 0, 12)) for r in (0, 1)}
    for step in range(12):
        epoch, s = divmod(step, spe)
        rows = epoch_order(n, seed, epoch)[s * 8 : (s + 1) * 8].tolist()
        assert got[0][2 * step] + got[0][2 * step + 1] + got[1][2 * step] + got[1][2 * step + 1] == rows
    # a run resumed at step 7 continues the same sequence
    assert list(StepSampler(n, seed, 2, 2, 2, 1, spe, 7, 12)) == got[1][14:]
    assert len(StepSampler(n, seed, 2, 2, 2, 1, spe, 7, 12)) == 10


def test_loader_with_workers_gives_the_rows_of_direct_reads(token_dirs):
    ds = PackedDataset(token_dirs[1], "train", 0.5)
    spe = len(ds) // 6
    sampler = StepSampler(len(ds), 3, 3, 2, 1, 0, spe, 1, spe + 2)  # crosses into the second epoch
    expected = [collate([ds[i] for i in idx]) for idx in sampler]
    for workers in (0, 2):
        got = list(step_loader(ds, sampler, workers, 2, pin=False))
        assert len(got) == len(expected) == 2 * (spe + 1)
        for a, b in zip(got, expected, strict=True):
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), k
    # a batch naming rows out of order and from both files reads each file once, in the asked order
    idx = [len(ds) - 1, 0, 5, len(ds) - 2]
    many = ds.__getitems__(idx)
    for i, row in zip(idx, many, strict=True):
        assert np.array_equal(row["input_ids"], ds[i]["input_ids"])
