"""Requests through the server's one batching ``Engine``: what the app serves (``Served``), submitting a generation,
collecting a whole reply or streaming it, and the chat-completions route.

Every request shares the engine's batch (continuous batching). A client that goes away cancels its handle at once,
so its row leaves the batch at the next step; a generation that fails is a 500, or an error event in a stream, never
a dead connection; a reply cut by a shutdown is a 503 (or an error event).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from common.chat_format import prompt_for_next_bot_turn
from common.errors import first_line
from inference.engine import Engine, EngineError, GenRequest, Handle
from inference.generate import STOP_STRINGS, ChatSession, Reply, context_length, turns
from inference.metrics import Metrics
from inference.openai_api import (
    ApiError,
    ChatRequest,
    chat_logprobs,
    checked,
    completion_body,
    context_exceeded,
    error_event,
    finish,
    sampling_for,
    sse,
    to_session_inputs,
    usage,
)
from inference.sampling import Sampling

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
INLINE_CHARS = 4096  # prompts up to this many characters are tokenized on the event loop (well under a millisecond)
SHUT_DOWN = "the server shut down before the reply was finished; send the request again"


@dataclass
class Served:
    """What the app serves: a loaded model (an ``inference.loading.Loaded``) under a name, its sampling defaults,
    the rule for system messages, the engine (started in the app's lifespan) and the metrics."""

    loaded: object
    defaults: Sampling
    model_id: str
    system: str = "reject"
    max_batch: int = 16
    created: int = field(default_factory=lambda: int(time.time()))
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    shutting_down: bool = False

    def __post_init__(self):
        self.context = context_length(self.loaded.model, self.loaded.tokenizer)

    def start(self) -> None:
        """Start the engine (the app's lifespan calls this)."""
        loaded = self.loaded
        self.engine = Engine(loaded.model, loaded.tokenizer, loaded.device, self.context, self.max_batch)
        self.engine.start()
        self.metrics.watch_queue(lambda: self.engine.waiting, lambda: self.engine.running)

    def in_flight(self) -> int:
        return self.engine.waiting + self.engine.running if self.engine else 0

    def check_model(self, name: str | None) -> None:
        if name not in (None, "", self.model_id):
            raise ApiError(
                404,
                f"model: the model {name!r} does not exist; this server serves {self.model_id!r}",
                "model",
                "model_not_found",
            )

    def submit(self, gen: GenRequest) -> Handle:
        """The engine's handle for ``gen``; a 503 once shutdown began."""
        if self.shutting_down or self.engine is None:
            raise ApiError(503, "the server is shutting down; send the request again later", kind="server_error")
        try:
            handle = self.engine.submit(gen)
        except EngineError as exc:
            raise ApiError(503, f"the server cannot take requests: {first_line(exc)}", kind="server_error") from None
        except ValueError as exc:
            raise ApiError(400, first_line(exc), "max_tokens", "context_length_exceeded") from None
        self.metrics.prompt_tokens.inc(len(gen.prompt_ids))
        return handle

    def outcome(self, handle: Handle) -> Reply:
        """The reply of a handle whose events ended; a failure is a 500, a shutdown's cut a 503, a cancelled
        request (its client went away) a 499 as nginx logs it."""
        try:
            reply = handle.reply or handle.result(timeout=5)
        except EngineError as exc:
            raise ApiError(500, f"generation failed: {first_line(exc)}", kind="server_error") from None
        self.metrics.reply(reply.new_tokens, reply.ttft)
        if reply.stop == "interrupted":  # cancelled by a shutdown, or its client went away (nobody reads this)
            if self.shutting_down:
                raise ApiError(503, SHUT_DOWN, kind="server_error")
            raise ApiError(499, "the client closed the request before the reply was done", kind="client_closed")
        return reply


async def read_json(request: Request):
    """The request body as JSON; a body that is not JSON is a 400 saying so (param null)."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({first_line(exc)}); send a JSON object") from None


async def cancel_on_disconnect(request: Request, handle: Handle) -> None:
    """Wait for the client to go away, then cancel its generation (its batch row is freed at the next step)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return


async def collect(served: Served, handle: Handle, request: Request) -> tuple[Reply, list]:
    """The whole reply of ``handle`` and its generated tokens' logprobs; the client going away cancels it."""
    watcher = asyncio.create_task(cancel_on_disconnect(request, handle))
    logprobs: list = []
    try:
        async for event in handle.aevents():
            logprobs.extend(event.logprobs)
    except EngineError:
        pass  # outcome() reports it
    finally:
        watcher.cancel()
    return served.outcome(handle), logprobs


async def relay(handle: Handle) -> AsyncIterator:
    """The handle's events, ending quietly on a failure (``Served.outcome`` reports it)."""
    try:
        async for event in handle.aevents():
            yield event
    except EngineError:
        return


def stream_response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=STREAM_HEADERS)


# ---- chat completions ----


def chat_prompt(served: Served, req: ChatRequest, sampling: Sampling, explicit: bool) -> tuple[list[int], Sampling]:
    """The prompt's token ids (and the sampling, its reply limit cut to fit when the request gave none).

    Too long for the context: a 400 ``context_length_exceeded``, unless ``truncation`` is "auto": then the oldest
    turns, then the start of the message, are dropped, as the CLI does."""
    past, user = to_session_inputs(req, served.system)
    tok = served.loaded.tokenizer
    ids = tok(prompt_for_next_bot_turn(turns(past), user, tok.eos_token), add_special_tokens=False)["input_ids"]
    context, new = served.context, sampling.max_new_tokens
    if len(ids) + new <= context:
        return ids, sampling
    if not explicit and len(ids) < context:  # OpenAI: without max_tokens a reply may take what the prompt leaves
        return ids, sampling.updated(max_new_tokens=context - len(ids))
    if req.truncation == "auto":
        if new >= context:
            raise context_exceeded(context, len(ids), new)
        session = ChatSession(served.loaded.model, tok, sampling, past, device=served.loaded.device)
        return session.prompt_ids(user), sampling
    raise context_exceeded(context, len(ids), new, hint=', or send "truncation": "auto" to drop the oldest turns')


async def chat_completions(request: Request):
    """POST /v1/chat/completions: a whole reply, or server-sent events when ``stream`` is true."""
    served: Served = request.app.state.served
    req: ChatRequest = checked(ChatRequest, await read_json(request))
    req.refuse_unsupported()
    served.check_model(req.model)
    max_new, max_name = req.max_new()
    sampling = sampling_for(req, served.defaults, max_new, served.context, max_name)
    if sum(len(m.text()) for m in req.messages) <= INLINE_CHARS:  # a thread hop costs more than tokenizing it
        ids, sampling = chat_prompt(served, req, sampling, max_new is not None)
    else:
        ids, sampling = await run_in_threadpool(chat_prompt, served, req, sampling, max_new is not None)
    gen = GenRequest(ids, sampling, STOP_STRINGS + req.stop_strings(), logprobs=req.logprobs_k(), trim=True)
    handle = served.submit(gen)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        return stream_response(chat_stream(served, handle, rid, created, len(ids), req))
    reply, logprobs = await collect(served, handle, request)
    lp = chat_logprobs(logprobs) if req.logprobs else None
    return JSONResponse(completion_body(rid, created, served.model_id, reply, len(ids), lp))


async def chat_stream(
    served: Served, handle: Handle, rid: str, created: int, prompt_tokens: int, req: ChatRequest
) -> AsyncIterator[str]:
    """A first chunk with the role, one per piece of text, one with the finish reason, the usage chunk when
    ``stream_options.include_usage`` asks for it (empty choices, OpenAI's way), then ``[DONE]``."""

    head = chunk_head(rid, created, served.model_id)

    def chunk(delta: dict, reason: str | None = None, logprobs=None) -> bytes:  # orjson: a chunk per token adds up
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in relay(handle):
            if event.text or event.logprobs:
                lp = chat_logprobs(event.logprobs) if req.logprobs else None
                yield chunk({"content": event.text}, logprobs=lp)
        finished = True
        try:
            reply = served.outcome(handle)
        except ApiError as exc:
            served.metrics.errors.labels(exc.kind).inc()
            yield error_event(exc.message)
            yield sse("[DONE]")
            return
        yield chunk({}, finish(reply))
        if req.include_usage():
            last = usage(prompt_tokens, reply.new_tokens)
            yield sse({**chunk_head(rid, created, served.model_id), "choices": [], "usage": last})
        yield sse("[DONE]")
    finally:  # the client went away (the stream was cancelled or closed): free its batch row now
        if not finished:
            handle.cancel()


def chunk_head(rid: str, created: int, model_id: str, kind: str = "chat.completion.chunk") -> dict:
    return {"id": rid, "object": kind, "created": created, "model": model_id}
