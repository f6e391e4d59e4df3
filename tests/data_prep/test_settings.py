"""The data_prep commands' settings: declared once, the flags generated from them, bad values one ConfigError line."""

import pytest

from common.errors import ConfigError
from data_prep.cli import parse_command
from data_prep.jobs import prepare_chat, prepare_oa_dolly, subsample_openchatkit
from data_prep.settings import ChatRecordsSettings, OaDollySettings, OigSettings
from tests.conftest import OASST_TREES


def parse(model, *argv):
    return parse_command("x", "doc", model, list(argv))


def test_flags_are_the_fields():
    s = parse(
        OaDollySettings,
        "--output_path", "o.jsonl", "--overwrite_output_path", "--format", "bloomchat", "--oasst_split", "validation",
        "--oasst_mode", "rank", "--oasst_lang", "en,de", "fr", "--oasst_drop_deleted", "--dedup",
    )  # fmt: skip
    assert (s.output_path, s.overwrite_output_path, s.format, s.oasst_split) == (
        "o.jsonl",
        True,
        "bloomchat",
        "validation",
    )
    assert s.oasst_mode == "rank" and s.oasst_lang == ["en", "de", "fr"] and s.oasst_drop_deleted and s.dedup


def test_defaults_are_bloomchats():
    s = parse(OigSettings)
    assert s.output_path == "data_prep/bloom_ock_100K_each.jsonl" and s.sample_size == 100_000 and s.seed == 42
    assert len(s.files) == 25 and not s.keep_prosocial and s.format == "pairs"


@pytest.mark.parametrize("old", ["--output", "--overwrite", "--oasst-split", "--sample-size"])
def test_old_spellings_are_refused(old):
    with pytest.raises(SystemExit) as exit_:
        parse(OigSettings if old == "--sample-size" else OaDollySettings, old, "1")
    assert exit_.value.code == 2


def test_a_bad_value_names_its_flag():
    with pytest.raises(ConfigError, match="--sample_size: must be at least 1"):
        parse(OigSettings, "--sample_size", "0")
    with pytest.raises(ConfigError, match="--input"):
        parse(ChatRecordsSettings)  # the one setting without a default


def test_a_config_file_and_flags_mean_the_same(tmp_path):
    recipe = tmp_path / "oa.yaml"
    recipe.write_text("dolly: ''\noasst_lang: [de]\nformat: bloomchat\n")
    s = parse(OaDollySettings, "--config", str(recipe), "--format", "pairs")
    assert (s.dolly, s.oasst_lang, s.format) == ("", ["de"], "pairs")  # the flag given overrides the file
    recipe.write_text("format: xml\n")
    with pytest.raises(ConfigError, match=r"--config .*oa.yaml: --format: choose one of"):
        parse(OaDollySettings, "--config", str(recipe))
    recipe.write_text("fmt: pairs\n")
    with pytest.raises(ConfigError, match="--fmt: Extra inputs are not permitted"):
        parse(OaDollySettings, "--config", str(recipe))


def test_python_callers_get_the_same_checks(tmp_path):
    with pytest.raises(ConfigError, match="--fmt"):
        prepare_oa_dolly(tmp_path / "o.jsonl", None, str(OASST_TREES), fmt="pairs")
    with pytest.raises(ConfigError, match="--oasst_mode: choose one of"):
        prepare_oa_dolly(tmp_path / "o.jsonl", None, str(OASST_TREES), oasst_mode="worst")
    with pytest.raises(ConfigError, match="--system"):
        prepare_chat(tmp_path / "o.jsonl", ["x.jsonl"], system="keep")
    with pytest.raises(ConfigError, match="--sample_size"):
        subsample_openchatkit(tmp_path / "o.jsonl", "x", sample_size=-1)
    assert not (tmp_path / "o.jsonl").exists()
