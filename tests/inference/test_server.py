"""The server app in-process (FastAPI's test client) over a tiny random model: routes, reply shapes, streaming, and
OpenAI-shaped errors. The real server process with a trained model and the openai client: ``test_serve.py``."""

import json

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

from inference.loading import Loaded
from inference.sampling import Sampling
from inference.server import create_app
from tests.conftest import PYTHIA_TOKENIZER

USER = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def client():
    tok = AutoTokenizer.from_pretrained(PYTHIA_TOKENIZER)
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=256,
    )
    model = GPTNeoXForCausalLM(config).eval()
    app = create_app(Loaded(model, tok, "cpu", "fp32", "tiny"), Sampling(max_new_tokens=4), "tiny")
    with TestClient(app) as c:
        yield c


def test_models_lists_the_served_name(client):
    body = client.get("/v1/models").json()
    assert [m["id"] for m in body["data"]] == ["tiny"] and body["object"] == "list"


def test_the_page_is_served_at_the_root(client):
    r = client.get("/")
    assert (
        r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "/v1/chat/completions" in r.text
    )


def test_a_whole_reply_has_openai_shape(client):
    body = client.post("/v1/chat/completions", json={"messages": USER, "temperature": 0, "max_tokens": 3}).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert (
        0 < usage["completion_tokens"] <= 3
        and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )


def test_a_stream_is_role_then_text_then_finish_then_done(client):
    body = {"messages": USER, "temperature": 0, "max_tokens": 3, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and last["usage"]["completion_tokens"] <= 3
    whole = client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == whole["choices"][0]["message"]["content"]  # greedy: the same reply either way


@pytest.mark.parametrize(
    "extra,status,param",
    [
        ({"model": "gpt-4"}, 404, "model"),
        ({"n": 2}, 400, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"temperature": -1}, 400, "temperature"),
        ({"max_tokens": 10_000}, 400, "max_tokens"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": []}, 400, "messages"),
    ],
)
def test_bad_requests_are_openai_shaped_errors(client, extra, status, param):
    r = client.post("/v1/chat/completions", json={"messages": USER, **extra})
    error = r.json()["error"]
    assert r.status_code == status and error["param"] == param and error["type"].endswith("_error"), error


def test_malformed_json_and_unknown_paths_are_json_errors(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
