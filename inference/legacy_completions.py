"""POST /v1/completions: OpenAI's legacy text completions, which eval harnesses (lm-eval-harness) call.

The prompt is raw text (no chat format): a string, a list of strings, a list of token ids or a list of lists, one
choice per prompt. Only the request's stop strings stop it (and the end-of-text token); the text is verbatim.
``echo`` puts the prompt before the text; ``logprobs: k`` gives the legacy logprobs (tokens, token_logprobs,
top_logprobs, text_offset), over the prompt too with ``echo``; ``max_tokens: 0`` with both scores the prompt without
generating, as lm-eval-harness's loglikelihood requests do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from pydantic import Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from inference.completions import Served, chunk_head, collect, read_json, relay, stream_response
from inference.engine import GenRequest, Handle
from inference.openai_api import (
    MAX_TOP_LOGPROBS,
    ApiError,
    CommonRequest,
    checked,
    context_exceeded,
    error_event,
    finish,
    sampling_for,
    sse,
    usage,
)

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions


class CompletionRequest(CommonRequest):
    """OpenAI's legacy completions request; any field not here is a 400."""

    prompt: Any = Field(...)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v):
        def ids(x) -> bool:
            return isinstance(x, list) and bool(x) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

        if isinstance(v, str) or ids(v):
            return [v]
        if isinstance(v, list) and v and all(isinstance(p, str) or ids(p) for p in v):
            return v
        raise ValueError("must be a string, a list of strings, a list of token ids or a list of such lists")

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.best_of not in (None, 1):
            raise ApiError(400, f"best_of: only best_of=1 is supported (got {self.best_of})", "best_of")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ApiError(400, f"max_tokens: must be 0 or more (got {self.max_tokens})", "max_tokens")


@dataclass
class Prompt:
    text: str  # what echo shows
    ids: list[int]


def tokenized(served: Served, prompts: list) -> list[Prompt]:
    """Each prompt as text and token ids; an empty prompt or an id outside the vocabulary is a 400."""
    tok = served.loaded.tokenizer
    vocab = served.loaded.model.get_input_embeddings().num_embeddings
    out = []
    for i, p in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(p, str):
            ids = tok(p, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ApiError(400, f"{where}: the prompt is empty", "prompt")
            out.append(Prompt(p, ids))
        else:
            bad = next((t for t in p if not 0 <= t < vocab), None)
            if bad is not None:
                raise ApiError(400, f"{where}: token id {bad} is not in the vocabulary (0-{vocab - 1})", "prompt")
            out.append(Prompt(tok.decode(p), list(p)))
    return out


def legacy_logprobs(tokens: list, ids: list[int], tok, offset: int) -> dict:
    """The legacy ``logprobs`` object; ``tokens`` are ``TokenLogprob`` or None (the first prompt token)."""
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for i, t in enumerate(tokens):
        text = t.token if t is not None else tok.decode([ids[i]])
        out["tokens"].append(text)
        out["token_logprobs"].append(t.logprob if t is not None else None)
        out["top_logprobs"].append({s: lp for _, s, lp in t.top} if t is not None else None)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def merged(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return a or b
    return {k: a[k] + b[k] for k in a}


async def completions(request: Request):
    """POST /v1/completions: one choice per prompt, whole or streamed."""
    served: Served = request.app.state.served
    req: CompletionRequest = checked(CompletionRequest, await read_json(request))
    req.refuse_unsupported()
    served.check_model(req.model)
    max_new = DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    sampling = sampling_for(req, served.defaults, max(1, max_new), served.context)
    prompts = await run_in_threadpool(tokenized, served, req.prompt)
    for p in prompts:
        if len(p.ids) + max_new > served.context or len(p.ids) >= served.context:
            raise context_exceeded(served.context, len(p.ids), max_new, "prompt")
    score = req.echo and req.logprobs is not None
    handles: list[Handle | None] = []
    for p in prompts:
        if max_new == 0 and not score:
            handles.append(None)  # nothing to generate or score
            continue
        gen = GenRequest(
            p.ids,
            sampling,
            req.stop_strings(),
            logprobs=req.logprobs if max_new else None,
            prompt_logprobs=req.logprobs if score else None,
            trim=False,
        )
        try:
            handles.append(served.submit(gen))
        except ApiError:  # shutting down: the prompts already submitted are not wanted either
            for h in handles:
                if h is not None:
                    h.cancel()
            raise
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    job = Job(served, req, prompts, handles, max_new, rid, created)
    if req.stream:
        return stream_response(job.stream())
    return JSONResponse(await job.whole(request))


@dataclass
class Job:
    """One legacy completions request: its prompts and their engine handles (None: nothing to run)."""

    served: Served
    req: CompletionRequest
    prompts: list[Prompt]
    handles: list[Handle | None]
    max_new: int
    rid: str
    created: int

    def head(self) -> dict:
        return chunk_head(self.rid, self.created, self.served.model_id, "text_completion")

    def echoed(self, i: int) -> tuple[str, dict | None]:
        """What a choice starts with: the prompt (and its logprobs) with echo, else nothing."""
        if not self.req.echo:
            return "", None
        p, h = self.prompts[i], self.handles[i]
        if self.req.logprobs is None or h is None:
            return p.text, None
        return p.text, legacy_logprobs(h.prompt_logprobs or [None] * len(p.ids), p.ids, self.tok, 0)

    @property
    def tok(self):
        return self.served.loaded.tokenizer

    def generated(self, tokens: list, offset: int) -> dict | None:
        if self.req.logprobs is None or not self.max_new:
            return None
        return legacy_logprobs(tokens, [t.id for t in tokens], self.tok, offset)

    async def whole(self, request: Request) -> dict:
        choices, prompt_tokens, new_tokens = [], 0, 0
        try:
            for i, h in enumerate(self.handles):
                prompt_tokens += len(self.prompts[i].ids)
                if h is None:
                    choices.append({"index": i, "text": self.echoed(i)[0], "logprobs": None, "finish_reason": "length"})
                    continue
                reply, tokens = await collect(self.served, h, request)
                text, lp = self.echoed(i)
                if self.max_new:
                    lp = merged(lp, self.generated(tokens, len(text)))
                    text += reply.text
                    new_tokens += reply.new_tokens
                reason = finish(reply) if self.max_new else "length"
                choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": reason})
        finally:
            for h in self.handles:
                if h is not None and h.reply is None:
                    h.cancel()
        return {**self.head(), "choices": choices, "usage": usage(prompt_tokens, new_tokens)}

    async def stream(self) -> AsyncIterator[str]:
        """Chunks of every choice as they come (each names its index), a last one per choice with its finish
        reason, the usage chunk when asked for, then ``[DONE]``."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, h: Handle | None):
            if h is not None:
                async for event in relay(h):
                    await queue.put((i, event))
            await queue.put((i, None))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(self.handles)]
        n = len(self.handles)
        offsets, started, new_tokens, left = [0] * n, [False] * n, 0, n
        try:
            while left:
                i, event = await queue.get()
                if not started[i]:  # the echo first (its logprobs are known once the prompt was read)
                    started[i] = True
                    text, lp = self.echoed(i)
                    offsets[i] = len(text)
                    if text:
                        yield self.chunk(i, text, lp)
                if event is not None:
                    if self.max_new and (event.text or event.logprobs):
                        lp = self.generated(event.logprobs, offsets[i])
                        offsets[i] += len(event.text)
                        yield self.chunk(i, event.text, lp)
                    continue
                left -= 1
                h = self.handles[i]
                if h is None:
                    yield self.chunk(i, "", None, "length")
                    continue
                try:
                    reply = self.served.outcome(h)
                except ApiError as exc:
                    self.served.metrics.errors.labels(exc.kind).inc()
                    yield error_event(exc.message)
                    break
                new_tokens += reply.new_tokens if self.max_new else 0
                yield self.chunk(i, "", None, finish(reply) if self.max_new else "length")
            else:
                if self.req.include_usage():
                    prompt_tokens = sum(len(p.ids) for p in self.prompts)
                    yield sse({**self.head(), "choices": [], "usage": usage(prompt_tokens, new_tokens)})
            yield sse("[DONE]")
        finally:  # the client went away, or a choice failed: free every batch row still running
            for t in tasks:
                t.cancel()
            for h in self.handles:
                if h is not None and h.reply is None:
                    h.cancel()

    def chunk(self, i: int, text: str, logprobs: dict | None, reason: str | None = None) -> str:
        choice = {"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}
        return sse({**self.head(), "choices": [choice]})
