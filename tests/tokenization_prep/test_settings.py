"""Each tokenization setting declared once: the flags generated from the fields, values parsed once, YAML recipes
(``--config``) equal to the flags they replace, and the BLOOMChat wrappers over them."""

import subprocess

import pytest
import yaml
from pydantic import ValidationError

from common.errors import ConfigError
from common.settings import parse_settings
from tests.conftest import OIG_JOKES, PYTHIA_TOKENIZER, ROOT
from tests.tokenization_prep.conftest import pipe_args, run
from tokenization_prep.packing import PackingConfig
from tokenization_prep.pipeline import make_parser
from tokenization_prep.settings import MixSpec, PipelineConfig

CONFIGS = ROOT / "tokenization_prep" / "configs"
# the flags bloomchat_tokenize.sh passed before the recipes were YAML
BLOOMCHAT_FLAGS = (
    "--dev_ratio 0.0 --test_ratio 0.0 --shuffle on_RAM --max_seq_length 2048 --input_packing_config greedy::drop "
    "--num_training_splits 8"
).split()


def parse(*argv) -> PipelineConfig:
    return parse_settings(make_parser(), PipelineConfig, [str(a) for a in argv])


REQUIRED = ("--input_path", "in.jsonl", "--output_path", "out", "--pretrained_tokenizer", "tok")


def test_values_are_parsed_once_into_their_types():
    cfg = parse(*REQUIRED, "--input_packing_config", "bfd::truncate_left", "--mix", "dolly=3,oasst=1")
    assert cfg.input_packing_config == PackingConfig("bfd", "truncate_left")
    assert cfg.mix == MixSpec({"dolly": 0.75, "oasst": 0.25}, False, "input", "dolly=3,oasst=1")
    assert cfg.model_dump()["input_packing_config"] == "bfd::truncate_left"  # logged and recorded as given


def test_gdp_spellings_are_kept():
    cfg = parse("--input_file_path", "in.jsonl", *REQUIRED[2:], "--model_config", "m", "--prompt_keyword", "q")
    assert (cfg.input_path, cfg.model_config_path, cfg.article.prompt_keyword) == ("in.jsonl", "m", "q")
    assert parse(*REQUIRED, "--shuffle").shuffle == "False"  # gdp's bare --shuffle


def test_the_config_is_never_changed():
    cfg = parse(*REQUIRED)
    with pytest.raises(ValidationError):
        cfg.max_seq_length = 1


@pytest.mark.parametrize(
    "mix, needle",
    [
        ("dolly=abc", "not SOURCE=WEIGHT"),
        ("dolly=0,oasst=0", "sum to zero"),
        ("dolly=-1", "not SOURCE=WEIGHT"),
        ("dolly=0.5,oasst=x2", "not both"),
        ("dolly=1,dolly=2", "named twice"),
    ],
)
def test_a_bad_mix_is_a_config_error(mix, needle):
    with pytest.raises(ConfigError, match=needle):
        parse(*REQUIRED, "--mix", mix)


def test_a_bad_mix_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="--mix_tokens lots"):
        parse(*REQUIRED, "--mix", "dolly=1", "--mix_tokens", "lots")
    assert parse(*REQUIRED, "--mix", "dolly=1", "--mix_tokens", "1_000").mix.budget == 1000


def test_a_bad_packing_config_is_a_config_error():
    with pytest.raises(ConfigError, match="greedy::drop"):
        PipelineConfig(input_path="a", output_path="b", pretrained_tokenizer="t", input_packing_config="greedy")


@pytest.mark.parametrize("recipe", ["bloomchat_oa_dolly.yaml", "bloomchat_openchatkit.yaml"])
def test_recipes_hold_the_flags_the_script_passed(recipe):
    from_yaml = parse("--config", CONFIGS / recipe, *REQUIRED)
    from_flags = parse(*REQUIRED, *BLOOMCHAT_FLAGS)
    assert from_yaml == from_flags
    assert yaml.safe_load((CONFIGS / recipe).read_text())["pretrained_tokenizer"] == "bigscience/bloom"


def test_flags_override_the_config(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_seq_length: 256\nprompt_keyword: question\nshuffle: False\n")
    cfg = parse("--config", recipe, *REQUIRED, "--max_seq_length", "512")
    assert cfg.max_seq_length == 512 and cfg.article.prompt_keyword == "question" and cfg.shuffle == "False"


def test_a_config_run_equals_the_flags_run(tmp_path, tokenized, chat_jsonl):
    args = pipe_args(chat_jsonl, tmp_path / "o")
    flags = dict(zip(args[1::2], args[2::2]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({k.lstrip("-"): v for k, v in flags.items() if k != "--output_path"}))
    r = run("pipeline", "--config", recipe, "--output_path", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "manifest.sha256").read_bytes() == (tokenized / "manifest.sha256").read_bytes()


@pytest.mark.slow  # a bash and a Python start-up; the recipes themselves are checked above
def test_bloomchat_script_runs_with_bundled_tokenizer(tmp_path):
    from data_prep.jobs import subsample_openchatkit

    src = tmp_path / "ock.jsonl"
    subsample_openchatkit(src, str(OIG_JOKES), sample_size=200)
    out = tmp_path / "ock_out"
    r = subprocess.run(
        ["bash", "tokenization_prep/tokenization_openchatkit.sh", str(PYTHIA_TOKENIZER), str(src), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["number_of_training_files"] == 8 and meta["input_packing_config"] == "greedy::drop"
    assert meta["max_seq_length"] == 2048 and len(list(out.glob("train_*_of_8.hdf5"))) == 8
    log = (out / "logs.log").read_text().splitlines()
    assert f"input_path: {src}" in log and f"pretrained_tokenizer: {PYTHIA_TOKENIZER}" in log
