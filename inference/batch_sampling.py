"""A request's row in the engine's batch, and choosing every row's next token with its own settings and generator.

A row holds its tokens so far, its sampling state and its streamer (stop strings held back, whitespace trimmed);
it sends its handle an ``Event`` per step and its ``Reply`` at the end (``Wakes`` wakes the asyncio readers once
per step, not once per row). Each row runs the logits processors ``Sampling.processors`` builds (transformers' own,
in the order ``model.generate`` runs them), then takes the
argmax (greedy) or draws from the softmax with its own ``torch.Generator``, so a reply depends only on its prompt,
its settings and its seed, never on its batch mates. Log-probabilities are the model's own (log-softmax of the raw
logits), as OpenAI and vLLM report them.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from dataclasses import dataclass, field

import torch

from inference.generate import ChatStreamer, Reply, trimmed


@dataclass
class TokenLogprob:
    """One token and its log-probability, with the top alternatives."""

    id: int
    token: str  # the token's text as OpenAI shows it (tokenizer.decode([id]))
    logprob: float
    top: list[tuple[int, str, float]]  # (id, text, logprob), most likely first, len = requested k


@dataclass
class Event:
    """Newly visible text (never part of a stop string) and the generated tokens since the previous event."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


class Wakes:
    """The asyncio readers to wake: during a step of the engine thread they are gathered and woken with one
    ``call_soon_threadsafe`` per event loop when the step's events are out; from other threads, at once."""

    def __init__(self):
        self.thread: threading.Thread | None = None
        self.pending: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}

    def add(self, loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
        if threading.current_thread() is self.thread:
            for loop, flag in loops:
                self.pending.setdefault(loop, []).append(flag)
        else:
            _wake(loops)

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for loop, flags in pending.items():
            try:
                loop.call_soon_threadsafe(_set_all, flags)
            except RuntimeError:  # that event loop is closed: its readers are gone
                pass


def _wake(loops) -> None:
    for loop, flag in loops:
        try:
            loop.call_soon_threadsafe(flag.set)
        except RuntimeError:  # that event loop is closed: its reader is gone
            pass


def _set_all(flags: list[asyncio.Event]) -> None:
    for flag in flags:
        flag.set()


class Row:
    """A request in the running batch: its tokens so far, sampling state, streamer and pending output."""

    def __init__(self, handle, device: torch.device, tokenizer):
        self.handle, req = handle, handle.req
        s = req.sampling
        n = len(req.prompt_ids)
        self.ids = torch.empty(n + s.max_new_tokens, dtype=torch.long, device=device)
        self.ids[:n] = torch.tensor(req.prompt_ids, dtype=torch.long)
        self.n, self.new = n, 0
        self.last = req.prompt_ids[-1]
        self.penalty = s.repetition_penalty
        self.processors = s.processors(n, repetition=False)
        self.greedy = s.greedy
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(s.seed if s.seed is not None else secrets.randbits(63))
        self.text: list[str] = []
        self.lps: list[TokenLogprob] = []
        self.streamer = ChatStreamer(
            _fast_decoder(tokenizer), trimmed(self.text.append) if req.trim else self.text.append, req.stops
        )
        self.streamer.prompt_seen = True
        self.admitted = time.perf_counter()
        self.first_at: float | None = None
        self.stop: str | None = None

    def token_ids(self) -> torch.Tensor:
        return self.ids[None, : self.n]

    def add(self, token: int, lp: TokenLogprob | None, eos: int | None) -> None:
        """Take the next token: stream its text, note why the reply ends if it does."""
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.ids[self.n] = self.last = token
        self.n, self.new = self.n + 1, self.new + 1
        if lp is not None:
            self.lps.append(lp)
        self.streamer.put(torch.tensor([token]))
        if self.streamer.stopped:
            self.stop = "stop-string"
        elif eos is not None and token == eos:
            self.stop = "eos"
        elif self.new >= self.handle.req.sampling.max_new_tokens:
            self.stop = "length"

    def flush(self) -> None:
        """Send what the step produced; when the row is done, the rest of its text and its reply."""
        if self.handle.done:
            return
        reply = None
        if self.stop:
            self.streamer.end()
            now = time.perf_counter()
            text = self.streamer.text.strip() if self.handle.req.trim else self.streamer.text
            ttft = self.first_at - self.handle.submitted if self.first_at else None
            speed = self.new / (now - self.admitted) if self.new and now > self.admitted else None
            reply = Reply(text, self.new, self.stop, ttft, speed, 0, len(self.handle.req.prompt_ids))
        if self.text or self.lps or reply:
            event = Event("".join(self.text), self.lps) if (self.text or self.lps) else None
            self.text.clear()
            self.lps = []
            self.handle._push(event, reply)


class _BackendDecoder:
    """``tokenizer.decode`` straight from the Rust tokenizer: the streamer decodes every row's reply at every step,
    and transformers' wrapper (type checks over each id) costs twice the decoding itself."""

    def __init__(self, backend):
        self.backend = backend

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)


def _fast_decoder(tokenizer):
    """The tokenizer itself, or its backend when that decodes to the same text (no clean-up of spaces)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer
    return _BackendDecoder(backend)


def repetition_penalty(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """transformers' ``RepetitionPenaltyLogitsProcessor`` for every row at once, each with its own penalty, over
    its prompt and generated tokens. Rows are padded with their own first token, which is penalised anyway."""
    seqs = [r.token_ids()[0] for r in rows]
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=-1)
    ids = torch.where(ids < 0, ids[:, :1], ids)
    penalty = torch.tensor([r.penalty for r in rows], dtype=logits.dtype, device=logits.device)[:, None]
    score = logits.gather(1, ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, ids, score)


def next_tokens(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """The next token of each row from ``logits`` (rows, vocab), which are left as they are."""
    scores = logits
    if any(r.penalty != 1.0 for r in rows):
        scores = repetition_penalty(logits, rows)
    for i, row in enumerate(rows):
        if row.processors:
            one = scores[i : i + 1]
            for processor in row.processors:  # called directly: LogitsProcessorList inspects each signature
                one = processor(row.token_ids(), one)
            scores = scores.clone() if scores is logits else scores
            scores[i : i + 1] = one
    # numpy's argmax is several times faster than torch's on CPU (0.1 vs 0.7 ms for 8 x 50k); both take the first
    on_cpu = scores.device.type == "cpu" and scores.dtype == torch.float32
    chosen = (scores.numpy() if on_cpu else scores).argmax(-1).tolist()
    for i, row in enumerate(rows):
        if not row.greedy:
            probs = torch.softmax(scores[i : i + 1], dim=-1)
            chosen[i] = int(torch.multinomial(probs, 1, generator=row.generator))
    return chosen


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, k: int, decode) -> list[TokenLogprob]:
    """Each target token's log-probability under ``logits`` (one row per target) and the top ``k`` there."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    mine = lp.gather(1, targets.view(-1, 1)).view(-1).tolist()
    tops = lp.topk(k, dim=-1) if k else None
    out = []
    for j, t in enumerate(targets.tolist()):
        top = []
        if tops is not None:
            top = [(i, decode(i), v) for i, v in zip(tops.indices[j].tolist(), tops.values[j].tolist())]
        out.append(TokenLogprob(t, decode(t), mine[j], top))
    return out


def prompt_logprobs(logits: torch.Tensor, ids: torch.Tensor, k: int, decode) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability given the tokens before it (the first has none); ``logits`` are the
    prompt's own positions (len(ids), vocab)."""
    return [None] + token_logprobs(logits[:-1], ids[1:], k, decode)
