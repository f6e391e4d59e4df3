"""One chat completion on the server's single generation worker: a whole reply, or a stream of server-sent events.

One model generates one reply at a time: requests wait in a queue (a thread pool of one worker), so concurrent
clients are all answered in turn. A client that goes away stops its generation (the worker is freed for the requests
behind it); a generation that fails is a 500 error, or an error event in a stream, never a dead connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import AsyncIterator

from starlette.requests import Request

from common.errors import first_line
from inference.generate import ChatSession
from inference.openai_api import ApiError, chunk_event, completion_body, error_event, finish, usage

DISCONNECT_POLL_S = 0.25  # how often a waiting whole-reply request checks that its client is still there


@dataclass
class Completion:
    """One checked request: the session holding its history and sampling, the new user message, its stop strings."""

    session: ChatSession
    user: str
    stops: tuple[str, ...]
    model_id: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


async def whole_reply(worker: Executor, job: Completion, request: Request) -> dict:
    """Generate the reply on ``worker`` and return the completion body; stop early if the client goes away."""
    loop = asyncio.get_running_loop()
    cancelled = threading.Event()

    async def watch():  # a client that went away frees the worker for the requests behind it
        while not cancelled.is_set():
            if await request.is_disconnected():
                cancelled.set()
            await asyncio.sleep(DISCONNECT_POLL_S)

    watcher = asyncio.create_task(watch())
    try:
        reply = await loop.run_in_executor(
            worker, lambda: job.session.respond(job.user, stops=job.stops, should_stop=cancelled.is_set)
        )
    except Exception as exc:  # the server answers every request: a failed generation is a 500, not a dropped socket
        raise ApiError(500, f"generation failed: {first_line(exc)}", kind="server_error") from None
    finally:
        cancelled.set()
        watcher.cancel()
    return completion_body(job.id, job.created, job.model_id, reply)


async def streamed_reply(worker: Executor, job: Completion) -> AsyncIterator[str]:
    """Server-sent events: a first chunk with the role, one chunk per piece of text, a last one with the finish
    reason and usage, then ``[DONE]``. Closing the stream (the client went away) stops the generation."""
    loop = asyncio.get_running_loop()
    cancelled = threading.Event()
    queue: asyncio.Queue = asyncio.Queue()

    def run():  # on the worker thread: hand each piece of text to the event loop
        def emit(text: str):
            if cancelled.is_set():
                raise KeyboardInterrupt  # the client went away: stop generating (respond keeps it tidy)
            loop.call_soon_threadsafe(queue.put_nowait, ("text", text))

        try:
            reply = job.session.respond(job.user, emit, stops=job.stops, should_stop=cancelled.is_set)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", reply))
        except Exception as exc:  # reported in the stream, never a dead connection
            loop.call_soon_threadsafe(queue.put_nowait, ("error", first_line(exc)))

    def chunk(delta: dict, reason: str | None = None, extra: dict | None = None) -> str:
        return chunk_event(job.id, job.created, job.model_id, delta, reason, extra)

    future = loop.run_in_executor(worker, run)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await queue.get()
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "done":
                yield chunk({}, finish(value), {"usage": usage(value)})
                break
            else:
                yield error_event(value)
                break
        yield "data: [DONE]\n\n"
    finally:  # also when the client disconnects: stop the generation, free the worker for the next one
        cancelled.set()
        if not future.done():
            await future
