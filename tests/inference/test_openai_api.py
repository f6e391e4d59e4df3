"""The OpenAI protocol side of the server without a model: messages -> the chat session's inputs."""

import json

import pytest

from common.chat_format import prompt_for_next_bot_turn
from data_prep.jobs import prepare_chat
from inference.openai_api import ApiError, ChatRequest, stop_strings, to_session_inputs

MSGS = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
]


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
    assert stop_strings(ChatRequest(messages=MSGS[1:2], stop="x")) == ("x",)
    with pytest.raises(ApiError, match="at most 4"):
        stop_strings(ChatRequest(messages=MSGS[1:2], stop=list("abcde")))
