"""Continuous batching: concurrent requests share each forward pass, each with its own settings, stops and cancel.

One generation thread loops over steps. Each step admits waiting requests (up to ``max_batch`` rows), prefills them
together (left-padded) and sends their first tokens at once, then does the same for any that arrived meanwhile, so
a new request waits for at most the step in progress; merges their KV caches into the running batch (left-padded to
a common length, concatenated on the batch dimension); then runs one decode forward for every row with a 2D
attention mask and explicit positions (rotary models read the positions, ALiBi models such as BLOOM the mask). Rows
are sampled each with its own processors and generator (``inference.batch_sampling``), so a reply does not depend
on what else is in the batch. Finished, stopped and cancelled rows leave the batch at once; leading columns that
only held padding are then dropped.

transformers' own continuous batching (``generate_batch``) ran at 53-85 tokens/s on the demo model on this CPU,
against 1,229 for one static batch of 8 (issue 23; re-measured on a loaded CPU, one thread, 8 prompts x 64 greedy
tokens: 39 tokens/s, static batch 519, this engine with the 8 at once 532), hence this loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from common.errors import first_line
from inference.batch_sampling import Event, Row, TokenLogprob, Wakes, next_tokens, prompt_logprobs, token_logprobs
from inference.generate import Reply
from inference.kv_cache import growing_cache
from inference.sampling import Sampling

__all__ = ["Engine", "EngineError", "Event", "GenRequest", "Handle", "TokenLogprob"]
log = logging.getLogger(__name__)
MAX_LOGPROBS = 20


class EngineError(Exception):
    """A failed generation (the message is one line), or a request to an engine that is shutting down."""


@dataclass
class GenRequest:
    """One reply to generate: prompt tokens, sampling settings, stop strings, what log-probabilities to report."""

    prompt_ids: list[int]
    sampling: Sampling
    stops: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: each generated token's logprob and the top k
    prompt_logprobs: int | None = None  # None: none; k: each prompt token's logprob (the first None) and top k
    trim: bool = True  # strip whitespace as generate.trimmed does (chat replies); False: text verbatim


class Handle:
    """A submitted request: its events as they come, its ``reply`` once done, ``cancel()`` to end it early."""

    def __init__(self, req: GenRequest, wake: threading.Condition, wakes: Wakes):
        self.req = req
        self._wakes = wakes
        self.reply: Reply | None = None
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        self.error: str | None = None
        self.submitted = time.perf_counter()
        self.cancelled = False
        self._wake_engine = wake
        self._events: list[Event] = []
        self._done = False
        self._cond = threading.Condition()
        self._loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        """End the reply at the next step (stop "interrupted"); safe from any thread."""
        self.cancelled = True
        with self._wake_engine:
            self._wake_engine.notify_all()

    def _push(self, event: Event | None, reply: Reply | None = None, error: str | None = None) -> None:
        with self._cond:
            if event is not None:
                self._events.append(event)
            if reply is not None or error is not None:
                self.reply, self.error, self._done = reply, error, True
            self._cond.notify_all()
            loops = list(self._loops)
        self._wakes.add(loops)

    def events(self) -> Iterator[Event]:
        """The events in order, blocking; raises EngineError at the end if the generation failed."""
        seen = 0
        while True:
            with self._cond:
                while seen == len(self._events) and not self._done:
                    self._cond.wait()
                new, done = self._events[seen:], self._done
                seen += len(new)
            yield from new
            if done:
                if self.error:
                    raise EngineError(self.error)
                return

    async def aevents(self) -> AsyncIterator[Event]:
        """``events`` for asyncio: ends when the reply is done."""
        flag = asyncio.Event()
        waker = (asyncio.get_running_loop(), flag)
        with self._cond:
            self._loops.append(waker)
        try:
            seen = 0
            while True:
                flag.clear()
                with self._cond:
                    new, done = self._events[seen:], self._done
                    seen += len(new)
                for event in new:
                    yield event
                if done:
                    if self.error:
                        raise EngineError(self.error)
                    return
                if not new:
                    await flag.wait()
        finally:
            with self._cond:
                self._loops.remove(waker)

    def result(self, timeout: float | None = None) -> Reply:
        """The reply once done; EngineError if the generation failed, TimeoutError after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"no reply within {timeout} s")
        if self.error:
            raise EngineError(self.error)
        return self.reply


class Engine:
    """Serves ``GenRequest``s from one generation thread that batches them by decoding step (see the module)."""

    def __init__(self, model, tokenizer, device: str, context: int, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1 (got {max_batch})")
        self.model, self.tokenizer, self.context, self.max_batch = model, tokenizer, context, max_batch
        self.device = torch.device(device)
        self.eos = tokenizer.eos_token_id
        self.vocab = model.get_input_embeddings().num_embeddings
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos or 0)
        self._cond = threading.Condition()
        self._waiting: deque[Handle] = deque()
        self._rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (rows, cached positions): 1 real token, 0 padding
        self._closing = self._stopped = False
        self._thread: threading.Thread | None = None
        self._admitting: list[Handle] = []  # taken from the queue, being prefilled
        self._decoded: dict[int, str] = {}
        self._wakes = Wakes()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows) + len(self._admitting)

    def start(self) -> None:
        """Start the generation thread (a daemon)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
            self._wakes.thread = self._thread
            self._thread.start()

    def submit(self, req: GenRequest) -> Handle:
        """Queue a request; EngineError once shutdown began, ValueError if it cannot be served."""
        if self._closing:
            raise EngineError("the engine is shutting down; no new requests")
        n, m = len(req.prompt_ids), req.sampling.max_new_tokens
        if n == 0:
            raise ValueError("prompt_ids is empty: give at least one token")
        bad = next((t for t in req.prompt_ids if not 0 <= t < self.vocab), None)
        if bad is not None:
            raise ValueError(f"prompt_ids: token id {bad} is not in the model's vocabulary (0 to {self.vocab - 1})")
        if n + m > self.context:
            raise ValueError(
                f"the prompt's {n} tokens and max_new_tokens {m} exceed the model's {self.context}-token context"
            )
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(req, name)
            if k is not None and not 0 <= k <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be between 0 and {MAX_LOGPROBS} (got {k})")
        handle = Handle(req, self._cond, self._wakes)
        with self._cond:
            self._waiting.append(handle)
            self._cond.notify_all()
        return handle

    def shutdown(self, timeout: float) -> tuple[int, int]:
        """Stop admitting; let running and waiting requests finish for up to ``timeout`` seconds, cancel the rest.
        Returns (finished, cancelled)."""
        with self._cond:
            self._closing = True
            live = [h for h in self._live() if not h.done]
        deadline = time.monotonic() + timeout
        for h in live:
            left = deadline - time.monotonic()
            with h._cond:
                h._cond.wait_for(lambda h=h: h._done, max(0.0, left))
        late = [h for h in live if not h.done]
        for h in late:
            h.cancel()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for h in late:  # never started, or the thread is stuck: end them anyway
            if not h.done:
                h._push(None, error="the engine shut down")
        return len(live) - len(late), len(late)

    # the generation thread

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._waiting or self._rows or self._stopped):
                        self._cond.wait()
                    if self._stopped and not any(not h.cancelled for h in self._live()):
                        self._end_all()
                        self._wakes.flush()
                        return
                try:
                    self._step()
                except Exception as exc:  # a fault outside a forward: fail what the batch held rather than hang
                    rows, self._rows, self._cache, self._mask = self._rows, [], None, None
                    self._fail([r.handle for r in rows] + self._admitting, exc)
                self._admitting = []
                self._wakes.flush()
                time.sleep(0)  # let the readers of this step's events and new submitters run before the next step

    def _admit(self) -> list[Handle]:
        """Take waiting requests while the batch has room (dropping those cancelled before their turn)."""
        with self._cond:
            for h in [h for h in self._waiting if h.cancelled]:
                self._waiting.remove(h)
                h._push(None, _interrupted(h))
            new = []
            while self._waiting and len(new) + len(self._rows) < self.max_batch:
                new.append(self._waiting.popleft())
            self._admitting = self._admitting + new
        return new

    def _live(self) -> list[Handle]:
        return list(self._waiting) + self._admitting + [r.handle for r in self._rows]

    def _end_all(self) -> None:
        for h in list(self._waiting):
            h._push(None, _interrupted(h))
        self._waiting.clear()
        for row in self._rows:
            row.stop = "interrupted"
            row.flush()
        self._rows, self._cache, self._mask = [], None, None

    def _step(self) -> None:
        """Admit and prefill waiting requests (again while more arrive and there is room), sending their first
        tokens at once, then decode one token for every running row."""
        for row in self._rows:
            if row.handle.cancelled:
                row.stop = "interrupted"
        self._retire()
        while new := self._admit():
            scored = [[h] for h in new if h.req.prompt_logprobs is not None]  # all-position logits: one at a time
            for group in scored + [[h for h in new if h.req.prompt_logprobs is None]]:
                try:
                    if group:
                        self._prefill([Row(h, self.device, self.tokenizer) for h in group])
                except Exception as exc:  # fail only this step's requests; the engine goes on serving
                    self._fail(group, exc)
            self._admitting = []
            self._wakes.flush()  # first tokens out before the decode step
        if self._rows:
            try:
                self._decode()
            except Exception as exc:
                rows, self._rows, self._cache, self._mask = self._rows, [], None, None
                self._fail([r.handle for r in rows], exc)

    def _fail(self, handles: list[Handle], exc: Exception) -> None:
        msg = f"generation failed: {first_line(exc)}"
        log.error("%s (%d request(s))", msg, len(handles))
        for h in handles:
            if not h.done:
                h._push(None, error=msg)

    def _decode_token(self, token: int) -> str:
        text = self._decoded.get(token)
        if text is None:
            text = self._decoded[token] = self.tokenizer.decode([token])
        return text

    def _take(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Choose, record and stream each row's next token from its ``logits`` row."""
        tokens = next_tokens(logits, rows)
        for i, (row, tok) in enumerate(zip(rows, tokens)):
            k = row.handle.req.logprobs
            lp = None
            if k is not None:
                lp = token_logprobs(logits[i : i + 1], torch.tensor([tok]), k, self._decode_token)[0]
            row.add(tok, lp, self.eos)
            row.flush()

    def _prefill(self, rows: list[Row]) -> None:
        """Run the new rows' prompts (left-padded), take their first tokens, merge them into the batch."""
        lengths = [r.n for r in rows]
        width = max(lengths)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            ids[i, width - r.n :] = r.ids[: r.n]
            mask[i, width - r.n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        want_prompt = any(r.handle.req.prompt_logprobs is not None for r in rows)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=0 if want_prompt else 1,
        )
        for i, r in enumerate(rows):
            k = r.handle.req.prompt_logprobs
            if k is not None:
                own = out.logits[i, width - r.n :]
                r.handle.prompt_logprobs = prompt_logprobs(own, r.ids[: r.n], k, self._decode_token)
        self._take(rows, out.logits[:, -1, :].float())
        keep = [i for i, r in enumerate(rows) if not r.stop]
        if not keep:
            return
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        rows = [rows[i] for i in keep]
        if len(keep) < len(mask):
            idx = torch.tensor(keep, device=self.device)
            kv = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in kv]
            mask = mask.index_select(0, idx)
        if self._cache is not None:
            width = max(mask.shape[1], self._mask.shape[1])
            old = [(layer.keys, layer.values) for layer in self._cache.layers]
            kv = [
                (torch.cat([_pad(k0, width), _pad(k1, width)]), torch.cat([_pad(v0, width), _pad(v1, width)]))
                for (k0, v0), (k1, v1) in zip(old, kv)
            ]
            mask = torch.cat([_pad_mask(self._mask, width), _pad_mask(mask, width)])
            rows = self._rows + rows
        self._set_batch(rows, kv, mask)

    def _set_batch(self, rows: list[Row], kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """Make ``rows`` the running batch over caches ``kv`` and ``mask``, without leading all-padding columns."""
        start = int(mask.any(0).long().argmax()) if len(rows) else 0
        cache = growing_cache(self.model, self.context)
        for layer, (k, v) in zip(cache.layers, kv):
            layer.update(k[..., start:, :], v[..., start:, :])
        self._rows, self._cache, self._mask = rows, cache, mask[:, start:]

    def _retire(self) -> None:
        """Send finished rows their replies and take them out of the batch."""
        done = [r for r in self._rows if r.stop]
        if not done:
            return
        for r in done:
            r.flush()  # a reply not sent yet (a cancelled row)
        keep = [i for i, r in enumerate(self._rows) if not r.stop]
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        idx = torch.tensor(keep, device=self.device)
        kv = [(layer.keys.index_select(0, idx), layer.values.index_select(0, idx)) for layer in self._cache.layers]
        self._set_batch([self._rows[i] for i in keep], kv, self._mask.index_select(0, idx))

    def _decode(self) -> None:
        """One forward over the last token of every running row; each takes its next token."""
        rows = self._rows
        mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long, device=self.device)], dim=1)
        last = torch.tensor([[r.last] for r in rows], dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=last,
            attention_mask=mask,
            position_ids=mask.sum(-1, keepdim=True) - 1,
            past_key_values=self._cache,
            use_cache=True,
        )
        self._mask = mask
        self._take(rows, out.logits[:, -1, :].float())
        self._retire()


def _interrupted(h: Handle) -> Reply:
    """The reply of a request cancelled before it ran."""
    return Reply("", 0, "interrupted", None, None, 0, len(h.req.prompt_ids))


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad a (batch, heads, positions, dim) cache tensor with zeros to ``width`` positions."""
    return F.pad(x, (0, 0, width - x.shape[-2], 0)) if x.shape[-2] < width else x


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0)) if mask.shape[1] < width else mask
