"""The OpenAI chat-completions protocol as this server speaks it: the request models, OpenAI-shaped errors
(``{"error": {"message", "type", "param", "code"}}``), the messages turned into a chat session's inputs, and the
bodies of a completion and of a streamed chunk.

The BLOOMChat format has no system role: leading system messages follow the same rule as data_prep
(``chat_format.apply_system_rule``): refused with a 400 by default, or folded into the first user message when
the server runs with ``--system fold``.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.chat_format import HUMAN, Turn, apply_system_rule
from inference.generate import Exchange, Reply
from inference.sampling import Sampling, SettingError

MAX_STOPS = 4  # OpenAI's limit on stop strings


class ApiError(Exception):
    """A request the server refuses (or a failed generation): the HTTP status and OpenAI's error fields."""

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
    """One message of a request (OpenAI's roles; only user and assistant exist in the BLOOMChat format)."""

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
    """The fields of OpenAI's chat-completions request this server reads."""

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
    """The model's sampling defaults with the request's values, checked (the API's names in any error)."""
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


def stop_strings(req: ChatRequest) -> tuple[str, ...]:
    """The request's stop strings (a string or a list of at most ``MAX_STOPS``)."""
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop: at most {MAX_STOPS} stop strings", "stop")
    return tuple(stops)


def finish(reply: Reply) -> str:
    """OpenAI's finish_reason: "length" when cut at max_tokens, else "stop"."""
    return "length" if reply.stop == "length" else "stop"


def usage(reply: Reply) -> dict:
    """OpenAI's token usage of a reply."""
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.new_tokens,
        "total_tokens": reply.prompt_tokens + reply.new_tokens,
    }


def completion_body(rid: str, created: int, model_id: str, reply: Reply) -> dict:
    """A whole (not streamed) chat completion."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
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


def chunk_event(
    rid: str, created: int, model_id: str, delta: dict, reason: str | None = None, extra: dict | None = None
) -> str:
    """One server-sent event of a streamed completion."""
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_id,
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        **(extra or {}),
    }
    return f"data: {json.dumps(body)}\n\n"


def error_event(message: str) -> str:
    """A server error reported inside a stream (the connection stays well-formed)."""
    return f"data: {json.dumps(error_body(message, 'server_error', None, None))}\n\n"
