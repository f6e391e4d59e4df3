"""Benchmark batched serving: requests/s, tokens/s, latency and time to first token at 1, 4, 8 and 16 clients.

The demo-sized model (Pythia-shaped, hidden 64, 2 layers, 4 heads, random init, the Pythia tokenizer with the chat
template) answers real Dolly instructions, greedy, 64 new tokens (a random model rarely stops earlier), streamed.

- server mode (the default): ``python -m inference.serve`` on a loopback port, once with ``--max_batch 1`` (one
  request at a time, as before continuous batching) and once with the default, in the same run. Each client is a
  thread of this process with a minimal HTTP/1.1 client over a raw socket (``--client raw``: it finds the first
  non-empty ``content`` in the bytes, no JSON parsing per chunk), so the figures are the server's, not the cost of
  parsing 1,000 chunks a second in the benchmark's own process next to the server; ``--client openai`` uses the
  official ``openai`` client instead (pydantic per chunk: on 2 cores it adds time to first token under load).
  Time to first token is from sending the request to the first streamed content.
- ``--direct``: the same load on ``inference.engine.Engine`` in this process (no HTTP), ``max_batch`` 1 and 16;
  time to first token is the engine's (submit to first token).
- Arrivals: every client sends its next request as soon as its last one ends. With ``--stagger`` the clients'
  first requests are spread over one reply's duration instead of all at once: with every reply 64 tokens long,
  clients that start together stay in lockstep, so without it each request arrives in a burst with all the others
  (the worst case for time to first token: the burst's prompts queue behind each other's prefills).

    .venv/bin/python benchmarks/bench_serve.py [--direct] [--client raw|openai] [--stagger] [--clients 1 4 8 16]
        [--requests 32] [--work DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
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


NEW_TOKENS = 64
FIRST_CONTENT = re.compile(rb'"content": ?"[^"]')  # a chunk with text (the first chunk's content is "")


def threads_env(threads: int) -> dict:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def start(model: Path, max_batch: int | None, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ["--max_batch", str(max_batch)] if max_batch else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference.serve", "--model", str(model), "--port", str(port), "--name", "demo", *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", **threads_env(threads)},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} (flags {' '.join(extra) or 'none'})")
        try:
            urllib.request.urlopen(base + "/v1/models", timeout=2).read()
            return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def over_http(base: str):
    """One streamed request to the server: (latency, time to first content, completion tokens)."""
    import openai

    c = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=300, max_retries=0)

    def one(text: str) -> tuple[float, float | None, int]:
        t0 = time.perf_counter()
        ttft, tokens = None, 0
        stream = c.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": text}],
            temperature=0,
            max_tokens=NEW_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        for ch in stream:
            if ttft is None and ch.choices and ch.choices[0].delta.content:
                ttft = time.perf_counter() - t0
            if ch.usage:
                tokens = ch.usage.completion_tokens
        return time.perf_counter() - t0, ttft, tokens

    return one


def raw_http(base: str):
    """One streamed request over a raw socket: (latency, time to first content, completion tokens)."""
    host, port = base.split("//")[1].rsplit(":", 1)

    def one(text: str) -> tuple[float, float | None, int]:
        body = json.dumps(
            {
                "model": "demo",
                "messages": [{"role": "user", "content": text}],
                "temperature": 0,
                "max_tokens": NEW_TOKENS,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        t0 = time.perf_counter()
        ttft, buf = None, bytearray()
        with socket.create_connection((host, int(port)), timeout=300) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(head + body)
            while data := s.recv(65536):
                buf += data
                if ttft is None and FIRST_CONTENT.search(buf):
                    ttft = time.perf_counter() - t0
        latency = time.perf_counter() - t0
        if not buf.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"the server answered {bytes(buf[:200])!r}")
        usage = json.loads(bytes(buf).split(b"data: ")[-2].split(b"\r\n")[0].decode())["usage"]
        return latency, ttft, usage["completion_tokens"]

    return one


def direct(engine, tokenizer):
    """One request straight to the engine, its events read as they come: (latency, time to first token, tokens)."""
    from common.chat_format import prompt_for_next_bot_turn
    from inference.engine import GenRequest
    from inference.generate import STOP_STRINGS
    from inference.sampling import Sampling

    sampling = Sampling(temperature=0, max_new_tokens=NEW_TOKENS)

    def one(text: str) -> tuple[float, float | None, int]:
        t0 = time.perf_counter()
        ids = tokenizer(prompt_for_next_bot_turn([], text, tokenizer.eos_token), add_special_tokens=False)["input_ids"]
        h = engine.submit(GenRequest(ids, sampling, STOP_STRINGS))
        for _ in h.events():
            pass
        return time.perf_counter() - t0, h.reply.ttft, h.reply.new_tokens

    return one


def run(one, texts: list[str], clients: int, stagger: float = 0.0) -> dict:
    """``texts`` through ``clients`` closed-loop clients; with ``stagger`` s, client i starts i * stagger / clients
    seconds late."""
    t0 = time.perf_counter()
    queue = iter(texts)
    res: list = []

    def client(i: int) -> None:
        time.sleep(i * stagger / clients)
        for text in queue:  # shared: each client takes the next text when it is free
            res.append(one(text))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in res)
    ttfts = [r[1] for r in res if r[1] is not None]
    return {
        "req_s": len(texts) / wall,
        "tokens_s": sum(r[2] for r in res) / wall,
        "p50": statistics.median(lat),
        "p90": lat[int(0.9 * (len(lat) - 1))],
        "ttft_p50": statistics.median(ttfts) if ttfts else None,
    }


def table(label: str, one, texts: list[str], clients: list[int], stagger: bool) -> list[dict]:
    """Warm up, then one row per client count (each client count gets ``len(texts)`` requests)."""
    warm = run(one, texts[:4], 1)
    out = []
    for n in clients:
        r = run(one, texts, n, warm["p50"] if stagger else 0.0)
        ttft = f"{r['ttft_p50']:.3f}" if r["ttft_p50"] is not None else "-"
        print(
            f"{label:>14}{n:>8}{r['req_s']:>9.2f}{r['tokens_s']:>10.0f}{r['p50']:>8.3f}{r['p90']:>8.3f}{ttft:>12}",
            flush=True,
        )
        out.append({"mode": label, "clients": n, **r})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--direct", action="store_true", help="measure the engine in this process, not the server")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_serve"))
    ap.add_argument("--client", choices=["raw", "openai"], default="raw", help="HTTP client (default raw)")
    ap.add_argument("--stagger", action="store_true", help="spread the clients' first requests over one reply")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of the model (default 1)")
    args = ap.parse_args()
    model_dir = build(args.work)
    texts = instructions(args.requests)
    where = "Engine in-process" if args.direct else f"{args.client} client over loopback, streamed"
    where += ", staggered starts" if args.stagger else ", clients start together"
    print(
        f"demo-sized model (6.5M parameters), CPU fp32, {args.requests} Dolly instructions per row, greedy, "
        f"{NEW_TOKENS} new tokens, {args.threads} torch thread(s), {where}"
    )
    print(f"{'max_batch':>14}{'clients':>8}{'req/s':>9}{'tokens/s':>10}{'p50 s':>8}{'p90 s':>8}{'TTFT p50 s':>12}")
    rows = []
    for max_batch in (1, None):
        label = str(max_batch or "default")
        if args.direct:
            import torch
            from transformers import AutoModelForCausalLM

            from inference.engine import Engine
            from tokenization_prep.tokenizer_io import load_tokenizer

            torch.set_num_threads(args.threads)
            model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
            tok = load_tokenizer(str(model_dir))
            engine = Engine(model, tok, "cpu", 2048, max_batch or 16)
            engine.start()
            try:
                rows += table(label, direct(engine, tok), texts, args.clients, args.stagger)
            finally:
                engine.shutdown(5)
            continue
        proc, base = start(model_dir, max_batch, args.threads)
        try:
            client = raw_http(base) if args.client == "raw" else over_http(base)
            rows += table(label, client, texts, args.clients, args.stagger)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
