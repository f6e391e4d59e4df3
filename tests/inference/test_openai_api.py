"""The OpenAI protocol side of the server without a model: request checks (every field typed, every unsupported one
refused by name), messages -> the chat session's inputs, and the bodies' shapes."""

import json

import pytest

from common.chat_format import prompt_for_next_bot_turn
from data_prep.jobs import prepare_chat
from inference.engine import TokenLogprob
from inference.legacy_completions import CompletionRequest
from inference.openai_api import (
    ApiError,
    ChatRequest,
    chat_logprobs,
    checked,
    context_exceeded,
    param_of,
    sampling_for,
    to_session_inputs,
)
from inference.sampling import Sampling

MSGS = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
]
USER = MSGS[1:2]


def chat(**fields) -> ChatRequest:
    req = checked(ChatRequest, {"messages": USER, **fields})
    req.refuse_unsupported()
    return req


def refusal(make, **fields) -> ApiError:
    with pytest.raises(ApiError) as err:
        make(**fields)
    assert err.value.status == 400 and err.value.kind == "invalid_request_error"
    return err.value


def test_a_system_message_is_refused_by_default():
    with pytest.raises(ApiError, match="--system fold") as err:
        to_session_inputs(ChatRequest(model="ckpt", messages=MSGS))
    assert err.value.param == "messages[0].role"


def test_fold_gives_the_prompt_prepare_chat_trains_on(tmp_path):
    """With --system fold the first prompt is exactly what prepare_chat --system fold writes."""
    past, user = to_session_inputs(ChatRequest(model="ckpt", messages=MSGS), "fold")
    assert [e.user for e in past] == ["Answer in one word.\n\nCapital of France?"] and user == "And of Italy?"
    src = tmp_path / "m.jsonl"
    src.write_text(json.dumps({"messages": MSGS[:3]}) + "\n")
    prepare_chat(tmp_path / "o.jsonl", [str(src)], system="fold")
    pair = json.loads((tmp_path / "o.jsonl").read_text())[0]
    assert prompt_for_next_bot_turn([], past[0].user, "</s>") == pair["prompt"]


def test_fold_never_moves_a_later_system_message():
    late = ChatRequest(model="ckpt", messages=MSGS[1:3] + [MSGS[0], MSGS[3]])
    with pytest.raises(ApiError, match="only leading system messages"):
        to_session_inputs(late, "fold")


def test_messages_must_alternate_and_end_with_the_user():
    with pytest.raises(ApiError, match="the last message must be from the user"):
        to_session_inputs(ChatRequest(messages=MSGS[1:3]))
    with pytest.raises(ApiError, match="expected assistant") as err:
        to_session_inputs(ChatRequest(messages=[MSGS[1], MSGS[1]]))
    assert err.value.param == "messages[1].role"


def test_stop_is_a_string_or_at_most_four():
    assert chat(stop="x").stop_strings() == ("x",) and chat(stop=["a", ""]).stop_strings() == ("a",)
    assert refusal(chat, stop=list("abcde")).param == "stop"
    assert "string" in refusal(chat, stop=3).message


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"temperature": "0.5"}, "temperature"),
        ({"top_k": 1.5}, "top_k"),
        ({"seed": True}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"logprobs": 1}, "logprobs"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"stream_options": {"other": 1}}, "stream_options.other"),
        ({"messages": [{"role": "wizard", "content": "a"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_every_field_is_type_checked_by_name(fields, param):
    err = refusal(chat, **fields)
    assert err.param == param and err.message.startswith(param + ":"), err.message


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"n": 2}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream: true
        ({"messages": [{"role": "user", "content": "a", "tool_calls": [{"id": "x"}]}]}, "messages[0].tool_calls"),
    ],
)
def test_what_we_cannot_honour_is_refused_by_name(fields, param):
    assert refusal(chat, **fields).param == param


def test_harmless_fields_are_accepted():
    req = chat(
        user="u1",
        metadata={"a": "b"},
        store=False,
        parallel_tool_calls=True,
        response_format={"type": "text"},
        logit_bias={},
        modalities=["text"],
        tools=None,
        n=1,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c", "refusal": None, "tool_calls": None, "annotations": []},
            {"role": "user", "content": "d", "name": "me"},
        ],
    )
    assert req.messages[0].text() == "ab" and not req.include_usage()
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage()


def test_sampling_fields_reach_the_settings_with_the_apis_names_in_errors():
    s = sampling_for(
        chat(top_k=5, min_p=0.1, presence_penalty=1.0, frequency_penalty=-0.5, repetition_penalty=1.1, seed=3),
        Sampling(),
        7,
        2048,
    )
    assert (s.top_k, s.min_p, s.presence_penalty, s.frequency_penalty, s.seed, s.max_new_tokens) == (
        5,
        0.1,
        1.0,
        -0.5,
        3,
        7,
    )
    with pytest.raises(ApiError) as err:
        sampling_for(chat(), Sampling(), 0, 2048, "max_completion_tokens")
    assert err.value.param == "max_completion_tokens" and "max_completion_tokens" in err.value.message
    with pytest.raises(ApiError) as err:
        sampling_for(chat(presence_penalty=3.0), Sampling(), None, 2048)
    assert err.value.param == "presence_penalty"
    with pytest.raises(ApiError) as err:
        sampling_for(chat(), Sampling(), 2040, 2048)
    assert err.value.param == "max_tokens" and "2048-token context" in err.value.message
    with pytest.raises(ApiError) as err:
        sampling_for(chat(presence_penalty=3.0), Sampling(), None, 2048)
    assert err.value.param == "presence_penalty"


def test_the_context_error_is_openais():
    e = context_exceeded(2048, 2000, 100)
    assert e.code == "context_length_exceeded" and e.param == "messages" and e.status == 400
    assert e.message.startswith("This model's maximum context length is 2048 tokens. However, you requested 2100")


def test_param_names_as_openai_writes_them():
    assert param_of(("messages", 2, "content")) == "messages[2].content" and param_of(()) is None


def test_legacy_prompt_forms():
    def prompt(p):
        return checked(CompletionRequest, {"prompt": p}).prompt

    assert prompt("a") == ["a"] and prompt(["a", "b"]) == ["a", "b"]
    assert prompt([1, 2]) == [[1, 2]] and prompt([[1], [2, 3]]) == [[1], [2, 3]]
    for bad in ([], [[]], [1, "a"], 5, None, [True]):
        with pytest.raises(ApiError) as err:
            prompt(bad)
        assert err.value.param == "prompt"
    req = checked(CompletionRequest, {"prompt": "a", "best_of": 2})
    with pytest.raises(ApiError, match="best_of"):
        req.refuse_unsupported()
    with pytest.raises(ApiError, match="suffix"):
        checked(CompletionRequest, {"prompt": "a", "suffix": "z"}).refuse_unsupported()


def test_chat_logprobs_shape():
    lp = chat_logprobs([TokenLogprob(5, "é", -0.5, [(5, "é", -0.5), (6, "a", -1.0)])])
    assert lp["content"][0] == {
        "token": "é",
        "logprob": -0.5,
        "bytes": [195, 169],
        "top_logprobs": [
            {"token": "é", "logprob": -0.5, "bytes": [195, 169]},
            {"token": "a", "logprob": -1.0, "bytes": [97]},
        ],
    }
