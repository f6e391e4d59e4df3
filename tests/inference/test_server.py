"""The server app in-process (FastAPI's test client, the real batching engine) over a tiny random model: routes,
reply shapes, streaming, logprobs, legacy completions, the context limit, the API key, the body limit, CORS, metrics
and OpenAI-shaped errors. The real server process with a trained model and the openai client: ``test_serve.py``."""

import json

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from common.chat_format import prompt_for_next_bot_turn
from inference.loading import Loaded
from inference.sampling import Sampling
from inference.server import begin_shutdown, create_app
from tests.conftest import PYTHIA_TOKENIZER, ROOT
from tokenization_prep.tokenizer_io import load_tokenizer

USER = [{"role": "user", "content": "Hello there"}]
CONTEXT = 256
GREEDY = {"temperature": 0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def tiny():
    tok = load_tokenizer(str(PYTHIA_TOKENIZER))  # with its EOS token, as training saves it
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=CONTEXT,
    )
    return Loaded(GPTNeoXForCausalLM(config).eval(), tok, "cpu", "fp32", "tiny")


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, Sampling(max_new_tokens=4), "tiny")) as c:
        yield c


@pytest.fixture(scope="module")
def guarded(tiny):
    """An app with an API key, a small body limit and one CORS origin."""
    app = create_app(
        tiny,
        Sampling(max_new_tokens=4),
        "tiny",
        api_key="s3cret",
        cors_origin=["http://app.test"],
        max_request_bytes=2048,
    )
    with TestClient(app) as c:
        yield c


def post(client, body, path="/v1/chat/completions", **kw):
    return client.post(path, json=body, **kw)


def sse(client, body, path="/v1/chat/completions"):
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def log_softmax(tiny, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(tiny.model(torch.tensor([ids])).logits[0].float(), -1)


def chat_ids(tiny, text: str) -> list[int]:
    return tiny.tokenizer(prompt_for_next_bot_turn([], text, tiny.tokenizer.eos_token))["input_ids"]


def metric(client, name: str, **labels) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_models_health_props(client):
    body = client.get("/v1/models").json()
    assert [m["id"] for m in body["data"]] == ["tiny"] and body["object"] == "list"
    assert client.get("/health").json() == {"status": "ok"}
    props = client.get("/props").json()
    assert props["model"] == "tiny" and props["context_length"] == CONTEXT and props["max_batch"] == 16
    assert props["defaults"] == Sampling(max_new_tokens=4).model_dump()


def test_the_page_is_served_with_a_strict_content_security_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = dict(p.strip().split(" ", 1) for p in r.headers["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["connect-src"] == "'self'" and "http" not in csp["img-src"]
    assert csp["default-src"] == "'none'"
    page_files = [p.name for p in (ROOT / "inference" / "web").glob("*.js")]
    assert page_files
    for name in page_files:
        assert client.get(f"/web/{name}").status_code == 200
    assert client.get("/web/nothing.js").status_code == 404


def test_a_whole_reply_has_openai_shape(client):
    body = post(client, {"messages": USER, "temperature": 0, "max_tokens": 3}).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_stream_is_role_then_text_then_finish_then_done(client):
    body = {"messages": USER, "temperature": 1.0, "seed": 7, "max_tokens": 4, "stream": True}
    chunks = sse(client, body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)  # not asked for
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    whole = post(client, {**body, "stream": False}).json()
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == whole["choices"][0]["message"]["content"]  # the same seed: the same reply either way


def test_usage_comes_in_an_extra_last_chunk_only_when_asked(client):
    body = {"messages": USER, **GREEDY, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse(client, body)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and "usage" not in chunks[-2]


def test_chat_logprobs_are_the_models(client, tiny):
    body = {"messages": USER, **GREEDY, "max_tokens": 3, "logprobs": True, "top_logprobs": 3}
    content = post(client, body).json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    want = log_softmax(tiny, chat_ids(tiny, "Hello there"))[-1]
    first = content[0]
    assert first["token"] == tiny.tokenizer.decode([int(want.argmax())])  # greedy: the most likely token
    assert first["logprob"] == pytest.approx(float(want.max()), abs=1e-4)
    tops = [t["logprob"] for t in first["top_logprobs"]]
    assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(first["logprob"])
    assert first["bytes"] == list(first["token"].encode())
    chunks = sse(client, {**body, "stream": True})
    streamed = [
        t
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for t in c["choices"][0]["logprobs"]["content"]
    ]
    assert [t["token"] for t in streamed] == [t["token"] for t in content]


def test_a_prompt_too_long_is_context_length_exceeded_unless_truncation_is_auto(client, tiny):
    long = [{"role": "user", "content": "word " * 400}]
    r = post(client, {"messages": long, "max_tokens": 5})
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert f"maximum context length is {CONTEXT} tokens" in error["message"] and "truncation" in error["message"]
    r = post(client, {"messages": long, **GREEDY, "max_tokens": 5, "truncation": "auto"})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == CONTEXT - 5
    history = [{"role": "user", "content": "old " * 300}, {"role": "assistant", "content": "ok"}]
    r = post(client, {"messages": history + USER, **GREEDY, "max_tokens": 5, "truncation": "auto"})
    assert r.json()["usage"]["prompt_tokens"] == len(chat_ids(tiny, "Hello there"))  # the old turn dropped whole


def test_without_max_tokens_a_long_prompt_gets_the_room_left(client, tiny):
    n = next(n for n in range(200, 300) if len(chat_ids(tiny, "word " * n)) >= CONTEXT - 2)
    prompt = len(chat_ids(tiny, "word " * n))
    assert prompt < CONTEXT
    r = post(client, {"messages": [{"role": "user", "content": "word " * n}], **GREEDY})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= CONTEXT - prompt


def test_legacy_completions_string_list_and_ids(client, tiny):
    ids = tiny.tokenizer("Once upon a time")["input_ids"]
    body = {"prompt": ["Once upon a time", ids], **GREEDY, "max_tokens": 3}
    r = post(client, body, "/v1/completions").json()
    assert r["object"] == "text_completion" and [c["index"] for c in r["choices"]] == [0, 1]
    assert r["choices"][0]["text"] == r["choices"][1]["text"]  # the same prompt, as text or as ids
    assert r["usage"] == {"prompt_tokens": 2 * len(ids), "completion_tokens": 6, "total_tokens": 2 * len(ids) + 6}
    echo = post(client, {**body, "prompt": "Once upon a time", "echo": True}, "/v1/completions").json()
    assert echo["choices"][0]["text"] == "Once upon a time" + r["choices"][0]["text"]
    default = post(client, {"prompt": "Once upon a time", **GREEDY}, "/v1/completions").json()
    assert default["usage"]["completion_tokens"] == 16  # OpenAI's default max_tokens for completions


def test_legacy_prompt_scoring_as_lm_eval_harness_asks(client, tiny):
    """max_tokens 0 + echo + logprobs: each prompt token's logprob under the model, nothing generated."""
    text = "The capital of France is Paris"
    ids = tiny.tokenizer(text)["input_ids"]
    body = {"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    r = post(client, body, "/v1/completions").json()
    choice = r["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == text and r["usage"]["completion_tokens"] == 0
    want = log_softmax(tiny, ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for i in range(1, len(ids)):
        assert lp["token_logprobs"][i] == pytest.approx(float(want[i - 1, ids[i]]), abs=1e-4)
        (top,) = lp["top_logprobs"][i].values()
        assert top == pytest.approx(float(want[i - 1].max()), abs=1e-4)
    assert "".join(lp["tokens"]) == text and lp["text_offset"][-1] == len(text) - len(lp["tokens"][-1])


def test_legacy_stream_gives_each_choice_by_index(client):
    body = {"prompt": ["Hi", "Yo"], **GREEDY, "max_tokens": 3, "echo": True}
    whole = post(client, body, "/v1/completions").json()
    chunks = sse(client, {**body, "stream": True, "stream_options": {"include_usage": True}}, "/v1/completions")
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == whole["choices"][i]["text"]
        assert mine[-1]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == whole["usage"]


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"model": "gpt-4"}, 404, "model"),
        ({"n": 2}, 400, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"temperature": -1}, 400, "temperature"),
        ({"top_p": "high"}, 400, "top_p"),
        ({"max_tokens": 10_000}, 400, "max_tokens"),
        ({"max_completion_tokens": 0}, 400, "max_completion_tokens"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": []}, 400, "messages"),
        ({"tools": [{"type": "function"}]}, 400, "tools"),
        ({"response_format": {"type": "json_schema"}}, 400, "response_format"),
        ({"logit_bias": {"1": 5}}, 400, "logit_bias"),
        ({"frequency_penalty": 5}, 400, "frequency_penalty"),
        ({"best_of": 3}, 400, "best_of"),
    ],
)
def test_bad_requests_are_openai_shaped_errors(client, body, status, param):
    r = post(client, {"messages": USER, **body})
    error = r.json()["error"]
    assert r.status_code == status and error["param"] == param and error["type"].endswith("_error"), error


@pytest.mark.parametrize(
    "body,param",
    [
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": [10**9]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x " * 300}, "prompt"),
        ({"messages": USER}, "prompt"),  # required
    ],
)
def test_bad_legacy_requests_name_the_field(client, body, param):
    r = post(client, body, "/v1/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.json()


def test_malformed_json_and_unknown_paths_are_json_errors(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] is None and "not valid JSON" in error["message"]
    r = client.post("/v1/chat/completions", json=[1, 2])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_failed_generation_is_a_500_and_the_server_goes_on(client, tiny):
    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    tiny.model.forward = boom
    try:
        r = post(client, {"messages": USER, **GREEDY})
        assert r.status_code == 500 and "simulated" in r.json()["error"]["message"]
        chunks = sse(client, {"messages": USER, **GREEDY, "stream": True})
        assert chunks[-1]["error"]["type"] == "server_error" and "simulated" in chunks[-1]["error"]["message"]
    finally:
        del tiny.model.forward
    assert post(client, {"messages": USER, **GREEDY}).status_code == 200


def test_metrics_count_requests_tokens_errors_and_time_to_first_token(client):
    ok = metric(client, "inference_requests_total", route="/v1/chat/completions", status="200")
    bad = metric(client, "inference_requests_total", route="/v1/chat/completions", status="400")
    tokens = metric(client, "inference_generation_tokens_total")
    ttft = metric(client, "inference_time_to_first_token_seconds_count")
    errors = metric(client, "inference_errors_total", type="invalid_request_error")
    post(client, {"messages": USER, **GREEDY, "max_tokens": 3})
    post(client, {"messages": USER, "temperature": "hot"})
    assert metric(client, "inference_requests_total", route="/v1/chat/completions", status="200") == ok + 1
    assert metric(client, "inference_requests_total", route="/v1/chat/completions", status="400") == bad + 1
    assert metric(client, "inference_generation_tokens_total") == tokens + 3
    assert metric(client, "inference_time_to_first_token_seconds_count") == ttft + 1
    assert metric(client, "inference_errors_total", type="invalid_request_error") == errors + 1
    assert metric(client, "inference_requests_waiting") == 0 and metric(client, "inference_requests_running") == 0
    client.get("/no/such/page/123")
    assert metric(client, "inference_requests_total", route="other", status="404") >= 1  # no label per odd path


def test_an_api_key_is_required_on_the_api_only(guarded):
    r = post(guarded, {"messages": USER, **GREEDY})
    error = r.json()["error"]
    assert r.status_code == 401 and error["code"] == "invalid_api_key" and "s3cret" not in error["message"]
    assert post(guarded, {"messages": USER}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/props").status_code == 401 and guarded.get("/v1/models").status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert post(guarded, {"messages": USER, **GREEDY}, headers=ok).status_code == 200
    assert guarded.get("/props", headers=ok).status_code == 200
    assert guarded.get("/health").status_code == 200 and guarded.get("/").status_code == 200


def test_the_body_limit_is_a_413_by_length_and_while_reading(guarded):
    ok = {"Authorization": "Bearer s3cret"}
    big = {"messages": [{"role": "user", "content": "x" * 3000}]}
    r = post(guarded, big, headers=ok)
    assert (
        r.status_code == 413
        and r.json()["error"]["code"] == "request_too_large"
        and "2048" in r.json()["error"]["message"]
    )
    data = json.dumps(big).encode()
    chunked = guarded.post(
        "/v1/chat/completions", content=(data[i : i + 500] for i in range(0, len(data), 500)), headers=ok
    )
    assert chunked.status_code == 413 and "content-length" not in {k.lower() for k in chunked.request.headers}


def test_cors_allows_the_configured_origin_only(guarded, client):
    pre = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST"}
    r = guarded.options("/v1/chat/completions", headers={**pre, "Access-Control-Request-Headers": "authorization"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.test"
    r = guarded.get("/v1/models", headers={"Origin": "http://app.test", "Authorization": "Bearer s3cret"})
    assert r.headers["access-control-allow-origin"] == "http://app.test"
    r = guarded.options("/v1/chat/completions", headers={**pre, "Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get("/v1/models", headers={"Origin": "http://app.test"}).headers


def test_shutdown_refuses_new_requests_and_health_says_so(tiny):
    app = create_app(tiny, Sampling(max_new_tokens=4), "tiny")
    said = []
    with TestClient(app) as c:
        begin_shutdown(app, 1.0, said.append)
        assert c.get("/health").status_code == 503
        r = post(c, {"messages": USER})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert said == ["shutting down: 0 requests in flight, waiting up to 1s", "shut down: 0 finished, 0 cancelled"]
