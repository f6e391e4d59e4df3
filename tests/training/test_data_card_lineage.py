"""The data card carried into a final model's lineage, without training one: fake tokenized dirs (real data_prep
cards of the bundled sources' licenses) and lineage dicts built in tmp_path."""

import json
import shutil

import pytest

from common.data_card import write_data_card
from common.errors import ConfigError
from tests.conftest import OIG_JOKES
from tokenization_prep.data_card import CARD_JSON, CARD_MD, write_output_card
from tokenization_prep.schema import TokenizedDir, TokenizedMetadata
from training.data_card import carry_data_card, check_data_card, merged_licenses

META = {
    "max_seq_length": 8, "token_type_ids": True, "vocab_size": 10, "tokenizer_model_type": "x",
    "number_of_training_files": 1, "number_of_dev_files": 0, "number_of_test_files": 0,
    "max_batch_size_train": 1, "max_batch_size_dev": None,
}  # fmt: skip


def data_dir(tmp_path, name: str, sources: dict[str, str]) -> TokenizedDir:
    """A tokenized dir holding only what the lineage needs: the card from one input whose sources have these
    licenses, and metadata's data_licenses (None when ``sources`` is empty: no card)."""
    d = tmp_path / name
    d.mkdir()
    src = tmp_path / f"{name}.jsonl"
    shutil.copyfile(OIG_JOKES, src)
    counts = {"read": 10, "written": 10, "filtered": {}, "rejected": {}}
    if sources:
        write_data_card(src, {"output": str(src), "lines": 10, "sources": dict.fromkeys(sources, counts)}, sources)
    licenses = write_output_card(d, [src])
    return TokenizedDir(d, TokenizedMetadata.model_validate({**META, "data_licenses": licenses}), {}, None)


def test_stage2_inherits_stage1_licenses(tmp_path):
    stage1 = data_dir(tmp_path, "oig", {"unified_joke_explanations": "Apache-2.0"})
    final1 = tmp_path / "final1"
    final1.mkdir()
    lineage1 = carry_data_card(stage1, None, final1)  # stage 1 from a hub model: no parent lineage
    assert lineage1["data_licenses"] == ["Apache-2.0"] and lineage1["data_card"]["licenses"] == ["Apache-2.0"]
    stage2 = data_dir(tmp_path, "oa_dolly", {"dolly": "CC-BY-SA-3.0", "oasst": "Apache-2.0"})
    final2 = tmp_path / "final2"
    final2.mkdir()
    lineage2 = carry_data_card(stage2, {"stage": "stage1", **lineage1}, final2)
    assert lineage2["data_licenses"] == ["Apache-2.0", "CC-BY-SA-3.0"]
    assert lineage2["data_card"] == json.loads((stage2.path / CARD_JSON).read_text())
    assert (final2 / CARD_MD).read_text() == (stage2.path / CARD_MD).read_text()
    # stage 3 on MIT-only data still carries stage 2's share-alike data
    assert merged_licenses(["MIT"], {"data_licenses": lineage2["data_licenses"]}) == [
        "Apache-2.0", "CC-BY-SA-3.0", "MIT"
    ]  # fmt: skip


def test_unknown_data_is_noassertion(tmp_path):
    bare = data_dir(tmp_path, "gdp", {})
    final = tmp_path / "final"
    final.mkdir()
    carried = carry_data_card(bare, None, final)
    assert carried == {"data_licenses": ["NOASSERTION"], "data_card": None} and not (final / CARD_MD).exists()
    older_parent = {"stage": "stage1"}  # a lineage written before data_licenses existed
    assert merged_licenses(["Apache-2.0"], older_parent) == ["Apache-2.0", "NOASSERTION"]
    assert merged_licenses(None, {"data_licenses": ["MIT"]}) == ["MIT", "NOASSERTION"]


def test_malformed_card_fails_before_training(tmp_path):
    d = data_dir(tmp_path, "oig", {"unified_joke_explanations": "Apache-2.0"})
    card = json.loads((d.path / CARD_JSON).read_text())
    card["licenses"] = "Apache-2.0"
    (d.path / CARD_JSON).write_text(json.dumps(card))
    with pytest.raises(ConfigError) as exc:
        check_data_card(d)
    assert str(exc.value).startswith(f"data_dir {d.path / CARD_JSON}: not a data card") and "\n" not in str(exc.value)
