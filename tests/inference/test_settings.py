"""The chat and serve commands' settings: one model-loading model shared by both, flags generated from the fields,
every sampling setting a chat flag, bad values one line before any model loads."""

import socket
import subprocess
import sys

import pytest

from common.cli import guard
from common.errors import ConfigError
from inference import chat
from inference.sampling import Sampling
from inference.settings import ChatSettings, ModelSettings, ServeSettings, parse_command
from tests.conftest import ROOT


def test_chat_flags_are_the_fields():
    s = parse_command("chat", "doc", ChatSettings, ["--model", "m", "--dtype", "bf16", "--max_new_tokens", "7"])
    assert (s.model, s.device, s.dtype, s.quantize, s.max_new_tokens) == ("m", "auto", "bf16", None, 7)
    assert s.sampling_overrides() == {"max_new_tokens": 7}
    greedy = parse_command("chat", "doc", ChatSettings, ["--greedy", "--history_file", ""])
    assert greedy.sampling_overrides() == {"do_sample": False} and greedy.history_file == ""


def test_every_sampling_setting_is_a_chat_flag_and_loading_is_shared():
    assert set(Sampling.model_fields) - set(ChatSettings.model_fields) == {"do_sample"}  # --greedy sets it
    shared = set(ModelSettings.model_fields)
    assert shared <= set(ChatSettings.model_fields) and shared <= set(ServeSettings.model_fields)


@pytest.mark.parametrize(
    "model,argv",
    [
        (ChatSettings, ["--max-new-tokens", "4"]),
        (ChatSettings, ["--history-file", "h"]),
        (ChatSettings, ["--top-p", "0.5"]),
        (ChatSettings, ["--dtype", "fp8"]),
        (ServeSettings, ["--model", "m", "--quantize", "2bit"]),
    ],
)
def test_old_spellings_and_bad_choices_are_refused(model, argv):
    with pytest.raises(SystemExit) as exit_:
        parse_command("x", "doc", model, argv)
    assert exit_.value.code == 2


def test_serve_needs_a_model_and_a_port():
    with pytest.raises(ConfigError, match="--model"):
        parse_command("serve", "doc", ServeSettings, [])
    with pytest.raises(ConfigError, match="--port: .*70000 is not a port"):
        parse_command("serve", "doc", ServeSettings, ["--model", "m", "--port", "70000"])


def serve(*flags):
    cmd = [sys.executable, "-m", "inference", "serve", *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_taken_port_is_one_line_before_loading(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:  # the model path does not exist: the port is checked first
        r = serve("--model", str(tmp_path / "none"), "--port", str(taken.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_bad_port_is_one_line():
    r = serve("--model", "x", "--port", "70000")
    assert r.returncode == 2 and "is not a port" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--max_new_tokens", "-3"], "--max_new_tokens: must be at least 1"),
        (["--top_p", "2"], "--top_p: must be at most 1"),
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "101"], "--temperature: must be at most 100"),
        (["--seed", "-1"], "--seed: must be at least 0"),
        (["--max_new_tokens", "2040"], "max_new_tokens 2040 leaves no room for a prompt in this model's 2048-token"),
        (["--device", "cuda"], "CUDA GPU"),
        (["--quantize", "8bit", "--device", "cpu"], "needs a CUDA GPU"),
    ],
)
def test_bad_chat_flags_are_one_line_before_the_model_loads(tmp_path, capsys, flags, needle):
    (tmp_path / "tokenizer.json").write_text("{}")  # a model dir whose weights would fail to load: none are read
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 2048}')
    assert guard(chat.main, ["--model", str(tmp_path), "--message", "hi", *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_a_bad_generation_config_or_a_file_is_one_line_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 2048}')  # no weights: loading would fail
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "generation_config.json").write_text('{"temperature": -2}')
    assert guard(chat.main, ["--model", str(tmp_path), "--message", "hi"]) == 2
    err = capsys.readouterr().err
    assert (
        "generation_config.json: temperature: Input should be greater than or equal to 0 (got -2)" in err
        and err.count("\n") == 1
    ), err
    assert guard(chat.main, ["--model", str(tmp_path / "config.json"), "--message", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"this is a file; give the directory that holds the model (--model {tmp_path})" in err, err
