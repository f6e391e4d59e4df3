"""The README's first command on a fresh clone (reduced mode): catches a file the demo needs that is not committed
(bundled data, configs, scripts) or an output it expects from an earlier run."""

import json
import os
import subprocess
import sysconfig

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_demo_command_on_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    readme = (clone / "README.md").read_text().split("```")[1].strip().splitlines()
    assert readme == ["bash scripts/demo.sh", "bash scripts/test.sh"]  # the README's two commands
    # The install step itself is what CI runs on its own fresh clone (scripts/test.sh -> scripts/setup.sh); here the
    # clone reuses this checkout's environment (the same Pipfile.lock, so setup.sh finds it in sync) and runs its
    # own code (PYTHONPATH), saving a second multi-minute install in every test run.
    assert (clone / "Pipfile.lock").read_bytes() == (ROOT / "Pipfile.lock").read_bytes()
    (clone / ".venv").symlink_to(ROOT / ".venv")
    lock = (ROOT / "Pipfile.lock").stat()
    os.utime(clone / "Pipfile.lock", ns=(lock.st_atime_ns, lock.st_mtime_ns))
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PIPENV_ACTIVE", "PYTHONPATH", "PIPENV_PIPFILE", "RANK", "WORLD_SIZE")
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    # the clone's code first, then the packages by this checkout's path: DeepSpeed JIT-builds its CPU ops (the
    # shared-memory comm op) from its own path, which seen through the clone's .venv link would rebuild them (a
    # minute and more) and flip the shared build back and forth with this checkout's
    env["PYTHONPATH"] = os.pathsep.join([str(clone), sysconfig.get_paths()["purelib"]])
    proc = subprocess.run(
        ["bash", "scripts/demo.sh", "--quick"], cwd=clone, env=env, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    out = proc.stdout
    for artifact in (
        "data_prep/oasst1_dolly.jsonl",
        "data_prep/bloom_ock_100K_each.jsonl",
        "tokenization_prep/oasst1_dolly_out/manifest.sha256",
        "tokenization_prep/bloom_ock_100k_out/train_8_of_8.hdf5",
        "training/ckpt/stage1_oig/final/model.safetensors",
        "training/ckpt/stage2_oa_dolly/final/lineage.json",
        "tokenization_prep/oasst1_preferences_out/manifest.sha256",
        "training/ckpt/stage3_dpo/final/lineage.json",
        "training/ckpt/loss_curves.png",
        "training/ckpt/evaluation.json",
    ):
        assert (clone / artifact).is_file(), artifact
    assert "\nbot: " in out and "tokens, stop: " in out and "== summary" in out and "| padding % |" in out
    lineage = json.loads((clone / "training/ckpt/stage3_dpo/final/lineage.json").read_text())
    assert sum(s["pairs"] for s in lineage["final_eval_by_source"].values()) == 8  # --quick's --eval_rows 8
    # the data card followed the data: stage 3's own pairs are OASST1's (Apache-2.0), its parents' Dolly (CC BY-SA)
    assert lineage["data_licenses"] == ["Apache-2.0", "CC-BY-SA-3.0"] and lineage["data_card"]["licenses"] == [
        "Apache-2.0"
    ]
    assert (clone / "training/ckpt/stage3_dpo/final/DATA_CARD.md").is_file()
    assert "trained on data under: Apache-2.0, CC-BY-SA-3.0" in out and "share-alike (CC-BY-SA-3.0)" in out
    evaluation = json.loads((clone / "training/ckpt/evaluation.json").read_text())
    assert evaluation["dev_pairs"] == 8 and evaluation["dev_rows"] == 4  # --quick's --dev_pairs, --dev_rows
    assert "what the models learned" in out and "| untrained (stage1_oig) | dolly |" in out  # the evaluation
    rerun = subprocess.run(
        ["bash", "scripts/demo.sh", "--quick"], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0 and rerun.stdout.count("up to date (inputs and outputs match their hashes)") == 10
