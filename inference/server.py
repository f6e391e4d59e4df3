"""An OpenAI-compatible chat server over a trained model (FastAPI), plus the web chat page at ``/``.

``POST /v1/chat/completions`` (streamed as server-sent events, or not) and ``GET /v1/models``. Messages are
rendered by ``common.chat_format`` exactly as in training and in the CLI (role tags escaped, oldest turns
trimmed to fit the context); sampling settings go through the same validated ``Sampling`` object. One model
generates one reply at a time: requests wait in a queue (a single worker thread), so concurrent clients are
all answered. Bad requests get OpenAI-shaped JSON errors: ``{"error": {"message", "type", "param", "code"}}``.
The BLOOMChat format has no system role: leading system messages follow the same rule as data_prep
(``chat_format.apply_system_rule``): refused with a 400 by default, or folded into the first user message when
the server runs with ``--system fold``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from common.chat_format import HUMAN, Turn, apply_system_rule
from common.errors import first_line
from inference.generate import ChatSession, Exchange, Reply, context_length
from inference.sampling import Sampling, SettingError

PAGE = Path(__file__).with_name("web") / "index.html"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: only text parts are supported
            if any(p.get("type") != "text" for p in self.content):
                raise ApiError(400, "only text content parts are supported", "messages")
            return "".join(str(p.get("text", "")) for p in self.content)
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields this server does not use (user, logprobs=false)
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = 1


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def to_session_inputs(req: ChatRequest, system: str = "reject") -> tuple[list[Exchange], str]:
    """(past exchanges, the new user message): user/assistant alternating, ending with a user message.

    Leading system/developer messages are folded into the first user message when ``system`` is "fold"."""
    msgs = [(m.role, m.text()) for m in req.messages]
    lead = 0
    while system == "fold" and lead < len(msgs) and msgs[lead][0] in ("system", "developer"):
        lead += 1
    system_text, msgs = "\n\n".join(t.strip() for _, t in msgs[:lead]), msgs[lead:]
    if not msgs:
        raise ApiError(400, "no user message after the system message", "messages")
    for i, (role, _) in enumerate(msgs, start=lead):
        if role in ("system", "developer"):
            hint = (
                "only leading system messages are folded"
                if system == "fold"
                else "put the instructions in the first user message, or start the server with --system fold"
            )
            raise ApiError(
                400, f"messages[{i}]: the BLOOMChat format has no {role} role; {hint}", f"messages[{i}].role"
            )
        if role == "tool":
            raise ApiError(400, f"messages[{i}]: tool messages are not supported", f"messages[{i}].role")
        want = "user" if (i - lead) % 2 == 0 else "assistant"
        if role != want:
            raise ApiError(
                400,
                f"messages[{i}] is {role}, expected {want}: messages alternate user/assistant, "
                "starting and ending with user",
                f"messages[{i}].role",
            )
    if msgs[-1][0] != "user":
        raise ApiError(400, "the last message must be from the user", "messages")
    if lead:
        turns, _ = apply_system_rule(system_text, [Turn(HUMAN, msgs[0][1])], "fold")
        msgs[0] = ("user", turns[0].text)
    past = [Exchange(msgs[i][1], Reply(msgs[i + 1][1], 0, "eos", None, None)) for i in range(0, len(msgs) - 1, 2)]
    return past, msgs[-1][1]


def sampling_for(req: ChatRequest, defaults: Sampling, context: int) -> Sampling:
    values = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "max_new_tokens": req.max_completion_tokens or req.max_tokens,
    }
    values = {k: v for k, v in values.items() if v is not None}
    try:
        s = defaults.updated(**values)
        s.check_context(context)
    except SettingError as exc:  # the API calls max_new_tokens max_tokens
        param = "max_tokens" if exc.field == "max_new_tokens" else exc.field
        raise ApiError(400, str(exc).replace("max_new_tokens", "max_tokens"), param) from None
    return s


def create_app(loaded, defaults: Sampling, model_id: str, system: str = "reject") -> FastAPI:
    """The app serving ``loaded`` (an ``inference.loading.Loaded``) under the name ``model_id``.

    ``system``: the rule for system messages ("reject" or "fold", as in ``common.chat_format``)."""
    app = FastAPI(title="bloomchat-pipeline server", docs_url=None, redoc_url=None)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")  # the request queue
    created = int(time.time())
    context = context_length(loaded.model, loaded.tokenizer)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        e = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {e['msg']}" if param else e["msg"]
        return JSONResponse(error_body(message, "invalid_request_error", param, None), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind, None, None), status_code=exc.status_code)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "bloomchat-pipeline"}],
        }

    @app.get("/")
    async def page():
        return FileResponse(PAGE, media_type="text/html")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        if req.model not in (None, "", model_id):
            raise ApiError(
                404,
                f"the model {req.model!r} does not exist; this server serves {model_id!r}",
                "model",
                "model_not_found",
            )
        if req.n != 1:
            raise ApiError(400, "n: only n=1 is supported", "n")
        past, user = to_session_inputs(req, system)
        sampling = sampling_for(req, defaults, context)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "stop: at most 4 stop strings", "stop")
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        session = ChatSession(loaded.model, loaded.tokenizer, sampling=sampling, exchanges=past, device=loaded.device)
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        if not req.stream:

            async def watch():  # a client that went away frees the worker for the requests behind it
                while not cancelled.is_set():
                    if await request.is_disconnected():
                        cancelled.set()
                    await asyncio.sleep(0.25)

            watcher = asyncio.create_task(watch())
            try:
                reply = await loop.run_in_executor(
                    worker, lambda: session.respond(user, stops=tuple(stops), should_stop=cancelled.is_set)
                )
            except Exception as exc:
                raise ApiError(500, f"generation failed: {first_line(exc)}", kind="server_error") from None
            finally:
                cancelled.set()
                watcher.cancel()
            return {
                "id": rid,
                "object": "chat.completion",
                "created": now,
                "model": model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "finish_reason": finish(reply),
                    }
                ],
                "usage": usage(reply),
            }
        queue: asyncio.Queue = asyncio.Queue()

        def run():
            def emit(text: str):
                if cancelled.is_set():
                    raise KeyboardInterrupt  # the client went away: stop generating (respond keeps it tidy)
                loop.call_soon_threadsafe(queue.put_nowait, ("text", text))

            try:
                reply = session.respond(user, emit, stops=tuple(stops), should_stop=cancelled.is_set)
                loop.call_soon_threadsafe(queue.put_nowait, ("done", reply))
            except Exception as exc:  # reported in the stream, never a dead connection
                loop.call_soon_threadsafe(queue.put_nowait, ("error", first_line(exc)))

        def chunk(delta: dict, reason: str | None = None, extra: dict | None = None) -> str:
            body = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": now,
                "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                **(extra or {}),
            }
            return f"data: {json.dumps(body)}\n\n"

        async def events():
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
                        yield f"data: {json.dumps(error_body(value, 'server_error', None, None))}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:  # also when the client disconnects: stop the generation, free the worker for the next one
                cancelled.set()
                if not future.done():
                    await future

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    return app


def finish(reply: Reply) -> str:
    return "length" if reply.stop == "length" else "stop"


def usage(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.new_tokens,
        "total_tokens": reply.prompt_tokens + reply.new_tokens,
    }
