"""A tiny model trained by the training stage on real short Dolly records, so that it replies and stops.

The server and chat processes these tests start run torch on one thread (``ONE_THREAD``): a tiny model gains nothing
from more, and under a loaded CPU (tests beside other tests) spinning OpenMP threads make a 5-second reply take over
a minute.
"""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import yaml

from data_prep.jobs import prepare_oa_dolly
from tests.conftest import DOLLY, PYTHIA_TOKENIZER, ROOT
from tokenization_prep.pipeline import run_pipeline
from tokenization_prep.settings import PipelineConfig

N_RECORDS = 24
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def short_dolly_records():
    """The first real Dolly records whose instruction and response are both short."""
    out = []
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if not r["context"] and len(r["response"]) < 40 and len(r["instruction"]) < 60:
                out.append(r)
            if len(out) == N_RECORDS:
                return out
    return out


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """(final model dir, the records it was trained on)."""
    base = tmp_path_factory.mktemp("chatmodel")
    records = short_dolly_records()
    src = base / "dolly_short.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    prepare_oa_dolly(base / "chat.jsonl", str(src), None)
    run_pipeline(
        PipelineConfig(
            input_path=str(base / "chat.jsonl"),
            output_path=str(base / "tok"),
            pretrained_tokenizer=str(PYTHIA_TOKENIZER),
            max_seq_length=64,
            input_packing_config="single::truncate_right",
            shuffle="on_RAM",
            num_training_splits=1,
        )
    )
    cfg = {
        "name": "chat",
        "data_dir": str(base / "tok"),
        "output_path": str(base / "ckpt"),
        "model": {"kind": "pythia", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4}},
        "deepspeed": "training/configs/ds/cpu.json",
        "epochs": 100,
        "max_steps": 150,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "lr": 3e-3,
        "seed": 1,
        "log_every": 50,
    }
    (base / "chat.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run(
        [sys.executable, "-m", "training", "run", "--config", str(base / "chat.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "DS_ACCELERATOR": "cpu"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return base / "ckpt" / "final", records


class ServerProcess:
    """``python -m inference.serve --port 0`` over a model dir: its printed base URL, its output lines as they come
    (read on a thread so the pipe never fills), and a stop that says how it exited."""

    def __init__(self, model_dir, *flags: str, env: dict | None = None, timeout: float = 120):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inference.serve", "--model", str(model_dir), "--port", "0", *flags],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", **ONE_THREAD, **(env or {})},
        )
        self.lines: list[str] = []
        self.ended = False  # the output closed (the process exited)
        threading.Thread(target=self._read, daemon=True).start()
        first = self.wait_for("OpenAI API http://", timeout)
        if first is None:
            self.proc.kill()
            raise RuntimeError("server did not start: " + "".join(self.lines)[-2000:])
        self.base = re.search(r"OpenAI API (http://\S+)/v1", first).group(1)
        assert not self.base.endswith(":0"), first  # --port 0: the real port is printed
        deadline = time.time() + timeout
        while True:  # the port listens from the start; the app answers once the engine runs
            try:
                urllib.request.urlopen(self.base + "/health", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.proc.kill()
                    raise RuntimeError("server did not answer: " + "".join(self.lines)[-2000:]) from None
                time.sleep(0.2)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
        self.ended = True

    def wait_for(self, text: str, timeout: float) -> str | None:
        """The first output line containing ``text``, waiting up to ``timeout`` seconds for it (None: never)."""
        deadline = time.time() + timeout
        while True:
            ended = self.ended
            hit = next((line for line in list(self.lines) if text in line), None)
            if hit is not None or ended or time.time() > deadline:
                return hit
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="session")
def server(trained_model):
    """``python -m inference.serve`` on a free loopback port over the trained model: (base URL, records)."""
    model_dir, records = trained_model
    proc = ServerProcess(model_dir)
    yield proc.base, records
    proc.stop()
