"""Sampling settings are validated in one line each; loading problems are one line with the fix."""

import json

import pytest
import torch

from inference.loading import LoadError, load_for_chat, pick_device, resolve_source
from inference.sampling import Sampling, SettingError


@pytest.mark.parametrize(
    "name,value",
    [
        ("temperature", "-1"),
        ("temperature", "nan"),
        ("temperature", "inf"),
        ("top_p", "-0.1"),
        ("top_p", "1.5"),
        ("top_k", "-1"),
        ("top_k", "2.5"),
        ("repetition_penalty", "0"),
        ("max_new_tokens", "0"),
        ("max_new_tokens", "abc"),
        ("seed", "99999999999999999999999"),
        ("seed", "-4"),
        ("do_sample", "ture"),
        ("min_p", "1.5"),
        ("presence_penalty", "3"),
        ("frequency_penalty", "-2.5"),
    ],
)
def test_bad_values_are_one_line_naming_the_setting(name, value):
    with pytest.raises(SettingError) as err:
        Sampling().with_value(name, value)
    msg = str(err.value)
    assert name in msg and "\n" not in msg


def test_good_values_parse_and_temperature_zero_is_greedy():
    s = Sampling().with_value("do_sample", "yes").with_value("seed", "7").with_value("top_k", "40")
    assert s.do_sample and s.seed == 7 and s.top_k == 40
    assert Sampling().with_value("seed", "none").seed is None
    zero = Sampling().with_value("temperature", "0")
    assert zero.greedy and zero.generate_kwargs()["do_sample"] is False and "temperature" not in zero.generate_kwargs()
    with pytest.raises(SettingError, match="unknown setting 'colour'"):
        Sampling().with_value("colour", "blue")
    with pytest.raises(SettingError, match="at most 2032"):
        Sampling(max_new_tokens=2040).check_context(2048)


def test_generate_kwargs_map_min_p_and_the_openai_penalties():
    s = Sampling(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, presence_penalty=0.5, frequency_penalty=0.25)
    kw = s.generate_kwargs()
    assert (kw["min_p"], kw["top_k"], kw["top_p"], kw["temperature"]) == (0.05, 40, 0.9, 0.7)
    (penalty,) = kw["logits_processor"]
    scores = torch.zeros(1, 10)
    assert torch.equal(penalty(torch.tensor([[5, 7]]), scores), scores)  # the first call sees the prompt only
    out = penalty(torch.tensor([[5, 7, 7, 7, 9]]), scores)  # then 7 7 9 were generated; 5 and 7 in the prompt
    expected = torch.zeros(1, 10)
    expected[0, 7], expected[0, 9] = -0.5 - 2 * 0.25, -0.5 - 0.25
    assert torch.allclose(out, expected)
    # transformers' order, the one model.generate runs (custom processors go before the sampling warpers)
    assert [type(p).__name__ for p in s.updated(repetition_penalty=1.3).processors(2)] == [
        "RepetitionPenaltyLogitsProcessor",
        "PresenceFrequencyPenalty",
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
        "MinPLogitsWarper",
    ]
    greedy = Sampling(temperature=0, min_p=0.1, repetition_penalty=1)
    assert "min_p" not in greedy.generate_kwargs() and "logits_processor" not in greedy.generate_kwargs()
    assert len(greedy.processors(2)) == 0


def test_defaults_come_from_the_model_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"temperature": 0.3, "top_p": 0.5, "max_new_tokens": 64, "eos_token_id": 0, "do_sample": True})
    )
    s = Sampling.from_model_dir(tmp_path)
    assert (s.temperature, s.top_p, s.max_new_tokens) == (0.3, 0.5, 64)
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_p": 7}))
    with pytest.raises(SettingError, match="generation_config.json: top_p"):
        Sampling.from_model_dir(tmp_path)


def test_model_paths_and_devices_are_checked_before_loading(tmp_path):
    with pytest.raises(LoadError, match="no such directory"):
        resolve_source(str(tmp_path / "missing"))
    (tmp_path / "stage" / "final").mkdir(parents=True)
    (tmp_path / "stage" / "final" / "config.json").write_text("{}")
    with pytest.raises(LoadError, match="training stage dir; give its model"):
        resolve_source(str(tmp_path / "stage"))
    with pytest.raises(LoadError, match="no config.json"):
        resolve_source(str(tmp_path))
    assert resolve_source("org/model") == ("org/model", None)  # a hub id is left to transformers
    assert pick_device("cpu") == ("cpu", False)
    with pytest.raises(LoadError, match="not a device"):
        pick_device("tpu")
    with pytest.raises(LoadError, match="tokenizer files"):
        load_for_chat(str(tmp_path / "stage" / "final"), "cpu")


def test_broken_adapter_and_weights_are_one_line(tmp_path):
    bad = tmp_path / "adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(LoadError, match="not readable JSON"):
        resolve_source(str(bad))
    (bad / "adapter_config.json").write_text("{}")
    with pytest.raises(LoadError, match="base_model_name_or_path"):
        resolve_source(str(bad))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt_neox"}')
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(LoadError, match="cannot load"):
        load_for_chat(str(model), "cpu")
