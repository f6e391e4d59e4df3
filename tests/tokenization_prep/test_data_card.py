"""Data cards carried through tokenization: the inputs' cards combined into the output dir, ``data_licenses`` in
metadata.yaml, the manifest covering both card files, a malformed card refused in one line."""

import json
import shutil

import pytest
import yaml

from common.data_card import data_card_paths, write_data_card
from common.errors import DataError
from tests.conftest import OIG_JOKES, chat_jsonl_file, tokenize
from tokenization_prep.data_card import CARD_JSON, CARD_MD, read_output_card, write_output_card
from tokenization_prep.metadata import write_manifest
from tokenization_prep.schema import MANIFEST, TokenizedMetadata, load_tokenized_dir


def stats(read: int, written: int) -> dict:
    return {"read": read, "written": written, "filtered": {"near-duplicate": read - written}, "rejected": {}}


def carded_inputs(directory) -> list:
    """Two real inputs with data_prep cards: the OIG jokes (Apache-2.0) and a Dolly-named copy (CC-BY-SA-3.0)."""
    oig, dolly = directory / "a_oig.jsonl", directory / "b_dolly.jsonl"
    shutil.copyfile(OIG_JOKES, oig)
    shutil.copyfile(OIG_JOKES, dolly)
    write_data_card(
        oig, {"output": str(oig), "lines": 356, "sources": {"unified_joke_explanations": stats(356, 356)}}, {}
    )
    write_data_card(dolly, {"output": str(dolly), "lines": 350, "sources": {"dolly": stats(356, 350)}}, {})
    return [oig, dolly]


def test_cards_combined_into_the_output_dir(tmp_path):
    files = carded_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert write_output_card(out, files) == ["Apache-2.0", "CC-BY-SA-3.0"]
    card = read_output_card(out)
    assert card == json.loads((out / CARD_JSON).read_text())
    assert [(s["input"], s["source"], s["license"], s["written"]) for s in card["sources"]] == [
        ("a_oig.jsonl", "unified_joke_explanations", "Apache-2.0", 356),
        ("b_dolly.jsonl", "dolly", "CC-BY-SA-3.0", 350),
    ]
    assert card["share_alike"] and "dolly in b_dolly.jsonl (CC-BY-SA-3.0)" in card["share_alike_obligation"]
    assert card["commercial_use_ok"] and card["inputs_without_card"] == []
    assert [i["card"]["output"] for i in card["inputs"]] == [str(f) for f in files]
    md = (out / CARD_MD).read_text()
    assert "## Share-alike obligation" in md and "## Input b_dolly.jsonl" in md and "Databricks" in md
    write_manifest(out)  # the manifest lists both card files: an edited card fails the dir's check
    assert {"data_card.json", "DATA_CARD.md"} <= {
        line.split("  ")[1] for line in (out / MANIFEST).read_text().splitlines()
    }


def test_inputs_without_card(tmp_path):
    files = carded_inputs(tmp_path)
    data_card_paths(files[1])[0].unlink()
    out = tmp_path / "out"
    out.mkdir()
    assert write_output_card(out, files) == ["Apache-2.0", "NOASSERTION"]  # unknown terms are said, not dropped
    card = read_output_card(out)
    assert card["inputs_without_card"] == ["b_dolly.jsonl"] and not card["commercial_use_ok"]
    assert not card["share_alike"]
    data_card_paths(files[0])[0].unlink()
    bare = tmp_path / "bare"
    bare.mkdir()
    assert write_output_card(bare, files) is None and not any(bare.iterdir()) and read_output_card(bare) is None


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.pop("licenses"),
        lambda c: c["sources"]["dolly"]["license"].update(id="GPL-9"),
        lambda c: c.update(card_version=99),
        lambda c: "not json",
    ],
)
def test_malformed_input_card_is_one_line(tmp_path, edit):
    files = carded_inputs(tmp_path)
    path = data_card_paths(files[1])[0]
    card = json.loads(path.read_text())
    path.write_text("{oops" if edit(card) == "not json" else json.dumps(card))
    with pytest.raises(DataError) as exc:
        write_output_card(tmp_path, files)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)


def test_metadata_data_licenses_is_optional():
    base = {
        "max_seq_length": 8, "token_type_ids": True, "vocab_size": 10, "tokenizer_model_type": "x",
        "number_of_training_files": 1, "number_of_dev_files": 0, "number_of_test_files": 0,
        "max_batch_size_train": 1, "max_batch_size_dev": None,
    }  # fmt: skip
    assert TokenizedMetadata.model_validate(base).data_licenses is None  # older outputs and gdp's still load
    assert TokenizedMetadata.model_validate({**base, "data_licenses": ["MIT"]}).data_licenses == ["MIT"]
    with pytest.raises(ValueError):
        TokenizedMetadata.model_validate({**base, "data_licenses": "MIT"})


def test_pipeline_carries_the_card(tmp_path):
    """The pipeline on real data_prep output (50 Dolly records, 100 OASST trees) with its card: both card files in
    the output, listed in the manifest, and metadata.yaml's data_licenses."""
    src = chat_jsonl_file(tmp_path, dolly_lines=50)
    assert data_card_paths(src)[0].is_file()
    out = tmp_path / "tok"
    tokenize(src, out, 256, "greedy::drop")
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["data_licenses"] == ["Apache-2.0", "CC-BY-SA-3.0"]
    assert read_output_card(out)["licenses"] == meta["data_licenses"] and (out / CARD_MD).is_file()
    load_tokenized_dir(out, full=True)
    (out / CARD_JSON).write_text((out / CARD_JSON).read_text().replace("CC-BY-SA-3.0", "CC0-1.0"))
    with pytest.raises(DataError, match="data_card.json: .*altered"):
        load_tokenized_dir(out, full=True)
