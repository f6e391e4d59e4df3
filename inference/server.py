"""An OpenAI-compatible chat server over a trained model (FastAPI), plus the web chat page at ``/``.

``POST /v1/chat/completions`` (streamed as server-sent events, or not) and ``GET /v1/models``. Messages are
rendered by ``common.chat_format`` exactly as in training and in the CLI (role tags escaped, oldest turns trimmed
to fit the context); sampling settings go through the same validated ``Sampling`` object. The protocol lives in
``inference.openai_api``, the generation on the one worker in ``inference.completions``; this module holds the app:
what it serves (``Served``, on ``app.state``), its routes and its error handlers.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from inference.completions import Completion, streamed_reply, whole_reply
from inference.generate import ChatSession, context_length
from inference.openai_api import ApiError, ChatRequest, error_body, sampling_for, stop_strings, to_session_inputs
from inference.sampling import Sampling

PAGE = Path(__file__).with_name("web") / "index.html"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class Served:
    """What the app serves: a loaded model (an ``inference.loading.Loaded``) under a name, its sampling defaults,
    the rule for system messages, and the one generation worker that is the request queue."""

    loaded: object
    defaults: Sampling
    model_id: str
    system: str = "reject"
    created: int = field(default_factory=lambda: int(time.time()))
    worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
    )

    def __post_init__(self):
        self.context = context_length(self.loaded.model, self.loaded.tokenizer)

    def completion(self, req: ChatRequest) -> Completion:
        """The checked request as a session over this model; a bad request is an ``ApiError``."""
        if req.model not in (None, "", self.model_id):
            raise ApiError(
                404,
                f"the model {req.model!r} does not exist; this server serves {self.model_id!r}",
                "model",
                "model_not_found",
            )
        if req.n != 1:
            raise ApiError(400, "n: only n=1 is supported", "n")
        past, user = to_session_inputs(req, self.system)
        sampling = sampling_for(req, self.defaults, self.context)
        stops = stop_strings(req)
        loaded = self.loaded
        session = ChatSession(loaded.model, loaded.tokenizer, sampling=sampling, exchanges=past, device=loaded.device)
        return Completion(session, user, stops, self.model_id)


def create_app(loaded, defaults: Sampling, model_id: str, system: str = "reject") -> FastAPI:
    """The app serving ``loaded`` (an ``inference.loading.Loaded``) under the name ``model_id``.

    ``system``: the rule for system messages ("reject" or "fold", as in ``common.chat_format``)."""
    app = FastAPI(title="bloomchat-pipeline server", docs_url=None, redoc_url=None)
    app.state.served = Served(loaded, defaults, model_id, system)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/", chat_page, methods=["GET"])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    return app


# ---- routes ----


async def list_models(request: Request):
    served: Served = request.app.state.served
    return {
        "object": "list",
        "data": [
            {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "bloomchat-pipeline"}
        ],
    }


async def chat_page():
    return FileResponse(PAGE, media_type="text/html")


async def chat_completions(req: ChatRequest, request: Request):
    served: Served = request.app.state.served
    job = served.completion(req)
    if req.stream:
        return StreamingResponse(
            streamed_reply(served.worker, job), media_type="text/event-stream", headers=STREAM_HEADERS
        )
    return await whole_reply(served.worker, job, request)


# ---- errors, all OpenAI-shaped JSON ----


async def api_error(request: Request, exc: ApiError):
    return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)


async def invalid_request(request: Request, exc: RequestValidationError):
    """A body that does not parse or does not fit ``ChatRequest``: a 400 naming the first bad field."""
    errs = exc.errors()
    e = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {e['msg']}" if param else e["msg"]
    return JSONResponse(error_body(message, "invalid_request_error", param, None), status_code=400)


async def http_error(request: Request, exc: HTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind, None, None), status_code=exc.status_code)
