"""``python -m training run``: its flags, and every refusal before training starts as one line (exit 2), checked in
this process (the same ``main`` under the same guard as the command) and once through a real process."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import GPT2_TOKENIZER, ROOT, chat_jsonl_file, tokenize
from tests.training.conftest import run_in_process, run_stage, stage_env
from training import run
from training.config import ModelConfig, TinyShape
from training.modeling import build_model


def refusal(config, *flags) -> str:
    """The one line ``python -m training run --config CONFIG FLAGS`` refuses with (asserted: exit 2, one line)."""
    code, _, err = run_in_process(run.main, "--config", config, *flags)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err[-2000:]
    return err


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"model": {"kind": "gpt3", "tiny": {}}}, "model.kind"),
        ({"deepspeed": "training/configs/ds/nope.json"}, "deepspeed config"),
        ({"attn_implementation": "flash"}, "attn_implementation: Input should be"),
        ({"attn_implementation": "flex_attention"}, "no backward pass on the CPU"),
        ({"model": {"kind": "bloom", "tiny": {}}, "attn_implementation": "flex_attention"}, "flex_attention has no"),
        ({"deepspeed": "training/configs/ds/zero2_fp16.json"}, "fp16 needs a CUDA GPU"),
        ({"micro_batch_size": 4096}, "cannot fill one step"),
    ],
)
def test_a_bad_setting_is_one_line(over, needle, token_dirs, stage_config):
    assert needle in refusal(stage_config("x", token_dirs[0], **over))


def test_an_unknown_setting_is_one_line(token_dirs, stage_config, tmp_path):
    bad = tmp_path / "unknown.yaml"
    bad.write_text(stage_config("x", token_dirs[0]).read_text() + "learning_rate: 1\n")
    assert "learning_rate: Extra inputs are not permitted" in refusal(bad)


def test_missing_data_names_the_stage_that_makes_it(token_dirs, stage_config, tmp_path):
    assert "nowhere: no such directory; run tokenization_prep first" in refusal(stage_config("y", tmp_path / "nowhere"))


def test_data_altered_after_tokenization_is_refused(token_dirs, stage_config, tmp_path):
    shifted = tmp_path / "shifted"
    shutil.copytree(token_dirs[0], shifted)
    meta = shifted / "metadata.yaml"
    meta.write_text(meta.read_text().replace("max_seq_length: 128", "max_seq_length: 256"))
    assert "metadata.yaml: sha256 differs from when it was written" in refusal(stage_config("u", shifted))


def test_init_from_must_be_a_saved_model(token_dirs, stage_config, tmp_path):
    assert "run the earlier stage first" in refusal(stage_config("z", token_dirs[0], init_from=str(tmp_path)))


def test_data_tokenized_with_another_tokenizer_than_init_from_is_refused(token_dirs, stage_config, tmp_path):
    """init_from's model came with the Pythia tokenizer; data tokenized with GPT-2's: one line naming the fix."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    build_model(ModelConfig(kind="pythia", tiny=TinyShape()), 50277, 128, None, 3)[0].save_pretrained(base)
    AutoTokenizer.from_pretrained(str(token_dirs[0] / "tokenizer")).save_pretrained(base)
    gpt2 = tmp_path / "gpt2_tok"
    tokenize(chat_jsonl_file(tmp_path), gpt2, 128, "greedy::truncate_left", tokenizer=GPT2_TOKENIZER, shuffle="False")
    line = refusal(stage_config("s3", gpt2, init_from=str(base)))
    assert "tokenized with another tokenizer" in line and f"--pretrained_tokenizer {base}" in line


def test_a_finished_stage_is_trained_again_only_with_overwrite_output_path(stage_config, tmp_path):
    cfg = stage_config("done", tmp_path / "nowhere")
    (tmp_path / "ckpt" / "done" / "final").mkdir(parents=True)
    line = refusal(cfg)
    assert "already holds a finished stage" in line and "pass --overwrite_output_path" in line
    # with the flag it gets past that check, to the next one (here: the data dir)
    assert "no such directory" in refusal(cfg, "--overwrite_output_path")


def test_max_steps_overrides_the_config_and_keeps_its_bounds(token_dirs, stage_config):
    cfg = stage_config("m", token_dirs[0], max_steps=6)
    flags, stage = run.parse(["--config", str(cfg), "--max_steps", "2", "--resume"])
    assert stage.max_steps == 2 and flags.resume and not flags.overwrite_output_path
    assert run.parse(["--config", str(cfg)])[1].max_steps == 6
    assert "max_steps" in refusal(cfg, "--max_steps", "0")


def test_the_deepspeed_launchers_local_rank_flag_is_accepted(token_dirs, stage_config):
    """``deepspeed training/run.py --config X`` passes --local_rank=N; the rank itself comes from the environment."""
    flags, _ = run.parse([f"--local_rank={1}", "--config", str(stage_config("d", token_dirs[0]))])
    assert flags.config.endswith("d.yaml")


def test_the_command_line_says_a_refusal_in_one_line(token_dirs, stage_config, tmp_path):
    """End to end through ``python -m training run``: exit 2 and one line on stderr, nothing else."""
    bad = tmp_path / "unknown.yaml"
    bad.write_text(stage_config("x", token_dirs[0]).read_text() + "learning_rate: 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "training", "run", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=stage_env(),
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "learning_rate: Extra inputs" in r.stderr, r.stderr


@pytest.mark.slow
def test_a_model_too_large_for_this_machine_is_refused_before_loading(token_dirs, stage_config):
    """Through a real process, once the process group is up: the memory plan refuses in one line, nothing loads."""
    tiny = {"hidden_size": 16384, "num_layers": 64, "num_heads": 128}
    r = run_stage(stage_config("huge", token_dirs[0], model={"kind": "pythia", "tiny": tiny}))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-1000:]
    assert "B parameters under ZeRO-0" in r.stderr and "available" in r.stderr


@pytest.mark.slow
def test_a_deepspeed_config_deepspeed_refuses_is_its_own_reason_in_one_line(token_dirs, stage_config, tmp_path):
    bad = tmp_path / "bad_ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "no_such_setting": 1}}))
    r = run_stage(stage_config("bad", token_dirs[0], deepspeed=str(bad)))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-1000:]
    assert "no_such_setting" in r.stderr and "fp16" not in r.stderr  # DeepSpeed's own reason, not a guess
