"""The OpenAI chat-completions protocol as this server speaks it: the request models (every field type-checked,
every unsupported one refused by name), OpenAI-shaped errors (``{"error": {"message", "type", "param", "code"}}``),
the messages turned into a chat session's inputs, and the bodies of a completion, a streamed chunk and logprobs.

The BLOOMChat format has no system role: leading system messages follow the same rule as data_prep
(``chat_format.apply_system_rule``): refused with a 400 by default, or folded into the first user message when
the server runs with ``--system fold``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.chat_format import HUMAN, Turn, apply_system_rule
from inference.generate import Exchange, Reply
from inference.sampling import Sampling, SettingError

MAX_STOPS = 4  # OpenAI's limit on stop strings
MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs
# Fields we cannot honour: a 400 naming them, never ignored (value None, or the one value we do honour, is fine).
REFUSED = {
    "tools": "tool (function) calling is not supported: the model was not trained for it",
    "tool_choice": "tool (function) calling is not supported: the model was not trained for it",
    "functions": "function calling is not supported: the model was not trained for it",
    "function_call": "function calling is not supported: the model was not trained for it",
    "logit_bias": "logit_bias is not supported; leave it out",
    "response_format": "only response_format {'type': 'text'} is supported (no JSON mode or schemas)",
    "modalities": "only the text modality is supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "this is not a reasoning model",
    "suffix": "suffix (insertion) is not supported",
}
HARMLESS = ({}, [], None)


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


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def param_of(loc: tuple) -> str | None:
    """pydantic's error location as OpenAI names a parameter: ``messages[0].role``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def checked(model: type[BaseModel], body: Any) -> BaseModel:
    """``body`` (parsed JSON) as ``model``; the first bad field is a 400 naming it."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        e = exc.errors()[0]
        param = param_of(e["loc"])
        given = e.get("input")
        shown = f" (got {json.dumps(given)[:60]})" if isinstance(given, (str, int, float, bool)) else ""
        msg = (
            "not a field of this API; leave it out"
            if e["type"] == "extra_forbidden"
            else e["msg"].removeprefix("Value error, ") + shown
        )
        raise ApiError(400, f"{param}: {msg}" if param else msg, param) from None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted, nothing to obfuscate


class CommonRequest(BaseModel):
    """Fields shared by chat and legacy completions: the model, sampling, stops, streaming, accepted no-ops."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None
    stop: Any = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None  # harmless: accepted, unused
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    logit_bias: Any = None
    suffix: Any = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, v):
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ValueError("must be a string or a list of strings")
        if len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        return v

    def refuse_unsupported(self) -> None:
        """A 400 for each field we cannot honour that was given a value other than its harmless one."""
        if self.n != 1:
            raise ApiError(400, f"n: only n=1 is supported (got {self.n})", "n")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options: only allowed when stream is true", "stream_options")
        ok = {"response_format": ({"type": "text"},), "modalities": (["text"],)}
        given = {**self.__dict__, **(self.__pydantic_extra__ or {})}
        for name, why in REFUSED.items():
            value = given.get(name)
            if value not in HARMLESS and value not in ok.get(name, ()):
                raise ApiError(400, f"{name}: {why}", name)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)


class Message(BaseModel):
    """One message of a request (OpenAI's roles; only user and assistant exist in the BLOOMChat format)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Any = None
    name: str | None = None
    refusal: str | None = None  # what an openai client sends back with an assistant message: harmless when empty
    annotations: list | None = None
    audio: None = None
    function_call: None = None
    tool_calls: list | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v):
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError("must be a string or a list of content parts")
        for j, p in enumerate(v):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise ValueError(f"part {j}: only {{'type': 'text', 'text': '...'}} content parts are supported")
        return v

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p["text"] for p in self.content)
        return self.content or ""


class ChatRequest(CommonRequest):
    """The fields of OpenAI's chat-completions request this server reads; any other is a 400."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    truncation: Literal["auto", "disabled"] = "disabled"  # the Responses API's name: "auto" drops the oldest turns
    parallel_tool_calls: bool | None = None  # harmless without tools
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        for i, m in enumerate(self.messages):
            if m.tool_calls:
                raise ApiError(
                    400, f"messages[{i}].tool_calls: tool calls are not supported", f"messages[{i}].tool_calls"
                )
        if self.top_logprobs and not self.logprobs:
            raise ApiError(400, "top_logprobs: needs logprobs set to true", "top_logprobs")

    def max_new(self) -> tuple[int | None, str]:
        """The reply's token limit the request gives (or None) and the name it gave it under."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


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


def sampling_for(
    req: CommonRequest, defaults: Sampling, max_new: int | None, context: int, max_name: str = "max_tokens"
) -> Sampling:
    """The model's sampling defaults with the request's values, checked (the API's names in any error); a reply
    limit given must leave room for a prompt in the ``context``."""
    names = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
    values = {k: getattr(req, k) for k in names if getattr(req, k) is not None}
    if req.seed is not None:
        values["seed"] = req.seed
    if max_new is not None:
        values["max_new_tokens"] = max_new
    try:
        s = defaults.updated(**values)
        if max_new is not None:
            s.check_context(context)
        return s
    except SettingError as exc:  # the API calls max_new_tokens max_tokens
        param = max_name if exc.field == "max_new_tokens" else exc.field
        raise ApiError(400, str(exc).replace("max_new_tokens", max_name), param) from None


def context_exceeded(context: int, prompt: int, new: int, what: str = "messages", hint: str = "") -> ApiError:
    """OpenAI's ``context_length_exceeded`` error."""
    return ApiError(
        400,
        f"This model's maximum context length is {context} tokens. However, you requested {prompt + new} tokens "
        f"({prompt} in the {what}, {new} in the completion). Please reduce the length of the {what} or "
        f"completion{hint}.",
        what,
        "context_length_exceeded",
    )


def finish(reply: Reply) -> str:
    """OpenAI's finish_reason: "length" when cut at max_tokens, else "stop"."""
    return "length" if reply.stop == "length" else "stop"


def usage(prompt_tokens: int, new_tokens: int) -> dict:
    """OpenAI's token usage."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens, "total_tokens": prompt_tokens + new_tokens}


def chat_logprobs(tokens: list) -> dict:
    """OpenAI's ``choices[].logprobs`` of a chat completion from the engine's ``TokenLogprob`` list."""

    def one(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [{**one(t.token, t.logprob), "top_logprobs": [one(s, lp) for _, s, lp in t.top]} for t in tokens],
        "refusal": None,
    }


def completion_body(rid: str, created: int, model_id: str, reply: Reply, prompt_tokens: int, logprobs) -> dict:
    """A whole (not streamed) chat completion."""
    choice = {"index": 0, "message": {"role": "assistant", "content": reply.text}, "logprobs": logprobs}
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [{**choice, "finish_reason": finish(reply)}],
        "usage": usage(prompt_tokens, reply.new_tokens),
    }


def sse(body: dict | str) -> str:
    """One server-sent event."""
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


def error_event(message: str, kind: str = "server_error") -> str:
    """An error reported inside a stream (the connection stays well-formed)."""
    return sse(error_body(message, kind, None, None))
