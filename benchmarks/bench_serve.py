"""Benchmark the OpenAI-compatible server: requests/s and latency at 1 and 8 concurrent clients.

The demo-sized model (Pythia-shaped, hidden 64, 2 layers, 4 heads, random init, the Pythia tokenizer with
the chat template) is saved and served by ``python -m inference.serve`` on a loopback port; clients are the
official ``openai`` client, each request a real Dolly instruction, greedy, 32 new tokens (a random model
rarely stops earlier), non-streamed; streamed requests also report time to first token.

    .venv/bin/python benchmarks/bench_serve.py [--requests 32] [--work /tmp/bench_serve]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(work: Path) -> Path:
    out = work / "demo_model"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tokenization_prep.tokenizer_io import load_tokenizer

    tok = load_tokenizer(str(ROOT / "data/tokenizers/gpt-neox-20b"))
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPTNeoXForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def instructions(n: int) -> list[str]:
    out = []
    with gzip.open(ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line)["instruction"])
            if len(out) == n:
                return out
    return out


def start(model: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference.serve", "--model", str(model), "--port", str(port), "--name", "demo"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/v1/models", timeout=2).read()
            return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def one(base: str, text: str, stream: bool) -> tuple[float, float | None, int]:
    import openai

    c = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)
    t0 = time.perf_counter()
    args = {"model": "demo", "messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 32}
    if not stream:
        r = c.chat.completions.create(**args)
        return time.perf_counter() - t0, None, r.usage.completion_tokens
    ttft, tokens = None, 0
    for ch in c.chat.completions.create(stream=True, **args):
        if ttft is None and ch.choices and ch.choices[0].delta.content:
            ttft = time.perf_counter() - t0
        if ch.usage:
            tokens = ch.usage.completion_tokens
    return time.perf_counter() - t0, ttft, tokens


def run(base: str, texts: list[str], clients: int, stream: bool) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        res = list(pool.map(lambda t: one(base, t, stream), texts))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in res)
    ttfts = [r[1] for r in res if r[1] is not None]
    return {
        "req_s": len(texts) / wall,
        "p50": statistics.median(lat),
        "p95": lat[int(0.95 * (len(lat) - 1))],
        "tokens_s": sum(r[2] for r in res) / wall,
        "ttft_p50": statistics.median(ttfts) if ttfts else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_serve"))
    args = ap.parse_args()
    proc, base = start(build(args.work))
    try:
        texts = instructions(args.requests)
        run(base, texts[:4], 1, False)  # warm-up
        print(
            f"demo-sized model (6.5M parameters), CPU fp32, {args.requests} Dolly instructions, greedy, "
            "32 new tokens, openai client over loopback"
        )
        print(f"{'clients':>8}{'mode':>8}{'req/s':>9}{'tokens/s':>10}{'p50 s':>8}{'p95 s':>8}{'TTFT p50 s':>12}")
        for clients in (1, 8):
            for stream in (False, True):
                r = run(base, texts, clients, stream)
                ttft = f"{r['ttft_p50']:.3f}" if r["ttft_p50"] is not None else "-"
                print(
                    f"{clients:>8}{'stream' if stream else 'plain':>8}{r['req_s']:>9.2f}{r['tokens_s']:>10.0f}"
                    f"{r['p50']:>8.3f}{r['p95']:>8.3f}{ttft:>12}"
                )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
