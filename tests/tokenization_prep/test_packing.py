"""Packing plans on literal lengths (gdp's documented examples) and bfd's guarantees."""

import random

import pytest

from common.errors import ConfigError
from tokenization_prep.packing import PackingConfig, plan


def lens(seqs):
    return [[e - s for _, s, e in seq] for seq in seqs]


def test_gdp_docstring_examples():
    L = [2, 2, 4]
    assert plan(L, 3, PackingConfig.parse("greedy::drop")) == [[(0, 0, 2)], [(1, 0, 2)]]
    assert plan(L, 3, PackingConfig.parse("greedy::truncate_left"))[-1] == [(2, 1, 4)]
    assert plan(L, 3, PackingConfig.parse("greedy::truncate_right"))[-1] == [(2, 0, 3)]
    assert lens(plan(L, 3, PackingConfig.parse("full"))) == [[2, 1], [1, 2], [2]]
    assert plan(L, 3, PackingConfig.parse("single::drop")) == [[(0, 0, 2)], [(1, 0, 2)]]


def test_bfd_is_tight_and_deterministic():
    rng = random.Random(0)
    L = [rng.randint(1, 900) for _ in range(3000)]
    cfg = PackingConfig.parse("bfd::drop")
    seqs = plan(L, 1024, cfg)
    assert seqs == plan(L, 1024, cfg)
    assert sorted(a for seq in seqs for a, _, _ in seq) == list(range(len(L)))  # each article exactly once
    assert all(sum(n) <= 1024 for n in lens(seqs))
    greedy = plan(L, 1024, PackingConfig.parse("greedy::drop"))
    assert len(seqs) < len(greedy)
    assert len(seqs) <= 1.01 * (sum(L) / 1024) + 1


def test_bad_packing_config_names_the_choices():
    with pytest.raises(ConfigError, match="greedy::drop"):
        PackingConfig.parse("greedy")
