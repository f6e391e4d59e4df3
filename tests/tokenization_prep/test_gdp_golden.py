"""Element-for-element equality with generative_data_prep's own reference outputs (data/gdp_golden)."""

import h5py
import numpy as np
import pytest

from tests.conftest import GDP_GOLDEN, GPT2_TOKENIZER
from tokenization_prep.packing import PackingConfig
from tokenization_prep.settings import ArticleSettings
from tokenization_prep.single_file import data_prep_file
from tokenization_prep.tokenizer_io import load_tokenizer

CASES = [("dialogue", "single::truncate_right"), ("generative_tuning", "single::drop"), ("pretraining", "full")]


@pytest.mark.parametrize("case,packing", CASES)
def test_same_tokens_as_gdp(tmp_path, case, packing):
    tok = load_tokenizer(str(GPT2_TOKENIZER))
    out = tmp_path / f"{case}.hdf5"
    data_prep_file(
        GDP_GOLDEN / case / f"example_{case}_data.jsonl",
        out,
        tok,
        1024,
        PackingConfig.parse(packing),
        ArticleSettings(keep_prompt_only_sequences=True),
    )
    with h5py.File(out) as got, h5py.File(GDP_GOLDEN / case / f"data_prepped_{case}.hdf5") as want:
        for key in ("input_ids", "token_type_ids"):
            assert got[key].dtype == np.int32
            assert got[key].shape == want[key].shape
            assert np.array_equal(got[key][:], want[key][:])
