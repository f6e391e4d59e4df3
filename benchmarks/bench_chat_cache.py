"""Benchmark the chat's time to first token by turn, with the KV cache reused across turns and without.

A Pythia-shaped model built from config (random weights, the Pythia tokenizer, 4,096 positions so 20 turns fit
without trimming) is saved with the bundled tokenizer and loaded as the chat loads it. Shapes: ``demo`` (the
demo's hidden 64, 2 layers), ``76m`` (hidden 512, 8 layers), and the real Pythia-410M (hidden 1024, 24 layers)
and Pythia-1.4B (hidden 2048, 24 layers) shapes. Reuse makes a turn cost its new tokens; what still grows with
the turn is their attention over the cache, about context / (6 x hidden) of the layers' other work, so the
turn-20 / turn-1 ratio falls as the model widens.
Each session sends 20 real user messages of about 100 tokens (Dolly instructions + contexts), greedy, 16 new
tokens a reply; "no reuse" drops the cache before every turn (what the chat did before). Prints the time to
first token of turns 1, 5, 10, 15, 20 and turn 20 / turn 1.

    .venv/bin/python benchmarks/bench_chat_cache.py [--shape demo|76m|410m|1.4b] [--turns 20] [--repeats 3]
        [--no-baseline] [--work /tmp/bench_chat_cache]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def messages(tokenizer, n: int, target: int = 100) -> list[str]:
    """n real Dolly instruction+context texts cut to about ``target`` tokens."""
    out = []
    with gzip.open(ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            text = (r["instruction"] + " " + r["context"]).strip()
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= target:
                out.append(tokenizer.decode(ids[:target]))
            if len(out) == n:
                return out
    raise SystemExit("not enough long Dolly records")


SHAPES = {"demo": (64, 2, 4), "76m": (512, 8, 8), "410m": (1024, 24, 16), "1.4b": (2048, 24, 16)}


def build(work: Path, shape: str) -> Path:
    """The benchmark model as a save_pretrained dir with the Pythia tokenizer (cached)."""
    out = work / f"model_{shape}"
    hidden, layers, heads = SHAPES[shape]
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tokenization_prep.tokenizer_io import load_tokenizer

    tok = load_tokenizer(str(ROOT / "data/tokenizers/gpt-neox-20b"))  # with EOS and the chat template
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=4096,
        rotary_pct=0.25,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPTNeoXForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def session_ttft(loaded, texts: list[str], reuse: bool) -> list[float]:
    from inference.generate import ChatSession
    from inference.sampling import Sampling

    s = ChatSession(
        loaded.model, loaded.tokenizer, sampling=Sampling(do_sample=False, max_new_tokens=16), device=loaded.device
    )
    out = []
    for text in texts:
        if not reuse:
            s._cache, s._cache_ids = None, []
        r = s.respond(text)
        out.append(r.ttft)
        assert s.trimmed_turns == 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="76m")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="sessions per mode; the median per turn is shown")
    ap.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the no-reuse sessions (minutes per session at 410m and up on a CPU)",
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_chat_cache"))
    args = ap.parse_args()
    import torch

    from inference.loading import load_for_chat

    torch.set_num_threads(torch.get_num_threads())
    loaded = load_for_chat(str(build(args.work, args.shape)), "auto", "auto")
    texts = messages(loaded.tokenizer, args.turns)
    session_ttft(loaded, texts[:2], True)  # warm-up
    res = {}
    modes = (True,) if args.no_baseline else (True, False)
    for reuse in modes:
        runs = [session_ttft(loaded, texts, reuse) for _ in range(args.repeats)]
        res[reuse] = [statistics.median(r[i] for r in runs) for i in range(args.turns)]
    n = sum(p.numel() for p in loaded.model.parameters())
    print(
        f"Pythia-shaped {n / 1e6:.1f}M parameters, {loaded.device} {loaded.dtype}, {args.turns} turns of ~100-token "
        f"Dolly messages, greedy, 16 new tokens a reply; median of {args.repeats} sessions"
    )
    shown = sorted({0, 4, 9, 14, args.turns - 1} & set(range(args.turns)))
    print(
        f"{'time to first token (ms)':<28}"
        + "".join(f"{'turn ' + str(i + 1):>10}" for i in shown)
        + f"{'last/first':>12}"
    )
    for reuse, label in ((True, "KV cache reused"), (False, "no reuse (before)")):
        if reuse not in res:
            continue
        t = res[reuse]
        print(f"{label:<28}" + "".join(f"{t[i] * 1e3:>10.1f}" for i in shown) + f"{t[-1] / t[0]:>11.2f}x")


if __name__ == "__main__":
    main()
