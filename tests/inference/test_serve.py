"""The OpenAI-compatible server as a real process, driven by the official openai client over loopback: plain,
streamed, 8 concurrent clients each getting what it gets alone, logprobs, legacy completions, the context limit,
the API key, Prometheus metrics, a client going away, bad requests, and SIGINT during a long stream."""

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.inference.conftest import ServerProcess

pytestmark = pytest.mark.slow
LONG = {"temperature": 100.0, "top_p": 1.0, "seed": 3, "max_tokens": 1500}  # near-uniform: no early end


def client(base, key="unused"):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, timeout=300, max_retries=0)


def ask(c, text, **kw):
    return c.chat.completions.create(
        model="ckpt", messages=[{"role": "user", "content": text}], **{"temperature": 0, **kw}
    )


def streamed_text(chunks) -> str:
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def metrics(base) -> dict:
    """{(sample name, sorted labels): value} from /metrics, parsed by prometheus_client."""
    text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def running(base) -> float:
    return metrics(base)[("inference_requests_running", ())]


def test_models_lists_the_stage_name(server):
    base, _ = server
    assert [m.id for m in client(base).models.list().data] == ["ckpt"]


def test_a_plain_reply_is_the_trained_response(server):
    base, records = server
    r = ask(client(base), records[0]["instruction"])
    assert r.choices[0].message.content == records[0]["response"] and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_streamed_reply_is_the_same_text_and_usage_only_when_asked(server):
    base, records = server
    chunks = list(ask(client(base), records[0]["instruction"], stream=True))
    assert streamed_text(chunks) == records[0]["response"] and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == "stop" and all(ch.usage is None for ch in chunks)
    chunks = list(ask(client(base), records[0]["instruction"], stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(ch.usage is None for ch in chunks[:-1])


def test_stream_equals_whole_for_the_same_seed(server):
    base, _ = server
    c = client(base)
    kw = {"temperature": 1.0, "top_p": 1.0, "seed": 11, "max_tokens": 300}
    whole = ask(c, "Tell me something", **kw).choices[0].message.content
    assert streamed_text(ask(c, "Tell me something", stream=True, **kw)) == whole
    assert ask(c, "Tell me something", **kw).choices[0].message.content == whole  # seeded: repeats


def test_the_history_goes_into_the_prompt(server):
    base, records = server
    c = client(base)
    single = ask(c, records[0]["instruction"])
    multi = c.chat.completions.create(
        model="ckpt",
        temperature=0,
        messages=[
            {"role": "user", "content": records[1]["instruction"]},
            {"role": "assistant", "content": "<bot>: forged"},
            {"role": "user", "content": records[0]["instruction"]},
        ],
    )
    assert multi.usage.prompt_tokens > single.usage.prompt_tokens


def test_max_tokens_cuts_the_reply(server):
    base, records = server
    short = ask(client(base), records[0]["instruction"], max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2


def test_a_stop_string_ends_the_reply_before_it(server):
    base, records = server
    c = client(base)
    rec = next(x for x in records if len(x["response"].split()) >= 3)
    full = ask(c, rec["instruction"]).choices[0].message.content
    word = full.split()[1]
    cut = ask(c, rec["instruction"], stop=[word])
    assert cut.choices[0].message.content == full.split(word)[0].strip() and len(full.split(word)[0]) > 0


def test_eight_concurrent_clients_each_get_what_they_get_alone(server):
    """Batched together, greedy and seeded sampled replies are exactly the ones each request gets on its own."""
    base, records = server

    def job(i):
        kw = {"stream": bool(i % 2)}
        if i >= 4:
            kw.update(temperature=1.0, top_p=1.0, seed=100 + i, max_tokens=30)
        r = ask(client(base), records[i % 4]["instruction"], **kw)
        return streamed_text(r) if i % 2 else r.choices[0].message.content

    alone = [job(i) for i in range(8)]
    assert alone[:4] == [records[i]["response"] for i in range(4)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(job, range(8), timeout=300))
    assert together == alone


def test_logprobs_and_top_logprobs(server):
    base, records = server
    r = ask(client(base), records[0]["instruction"], logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and t.logprob <= 0
        assert t.token == t.top_logprobs[0].token and t.logprob == pytest.approx(tops[0])  # greedy: the top one
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    assert ask(client(base), records[0]["instruction"]).choices[0].logprobs is None


def test_legacy_completions_with_the_openai_client(server):
    base, records = server
    c = client(base)
    r = c.completions.create(model="ckpt", prompt=["Once upon a time", "The sky"], max_tokens=5, temperature=0)
    assert [ch.index for ch in r.choices] == [0, 1] and r.usage.completion_tokens <= 10
    scored = c.completions.create(model="ckpt", prompt="The sky is blue", max_tokens=0, echo=True, logprobs=1)
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text == "The sky is blue" and "".join(lp.tokens) == "The sky is blue"
    assert lp.token_logprobs[0] is None and all(x < 0 for x in lp.token_logprobs[1:])
    assert scored.usage.completion_tokens == 0
    chunks = list(
        c.completions.create(model="ckpt", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True)
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text


def test_a_prompt_too_long_for_the_context_is_a_400(server):
    base, _ = server
    c = client(base)
    with pytest.raises(openai.BadRequestError) as err:
        ask(c, "word " * 3000, max_tokens=10)
    assert err.value.code == "context_length_exceeded" and "maximum context length" in err.value.message
    r = ask(c, "word " * 3000, max_tokens=10, extra_body={"truncation": "auto"})
    assert r.usage.prompt_tokens + 10 <= 2048


def test_metrics_are_prometheus_text(server):
    base, records = server
    before = metrics(base)
    ask(client(base), records[0]["instruction"])
    after = metrics(base)
    key = ("inference_requests_total", (("route", "/v1/chat/completions"), ("status", "200")))
    assert after[key] == before.get(key, 0) + 1
    assert after[("inference_generation_tokens_total", ())] > before[("inference_generation_tokens_total", ())]
    assert ("inference_requests_waiting", ()) in after and ("inference_time_to_first_token_seconds_count", ()) in after


def test_a_client_that_goes_away_frees_its_batch_row(server):
    """A stream dropped after its first chunk, or a whole request whose client times out, stops generating at once
    (a 1500-token reply takes seconds)."""
    base, records = server
    c = client(base)
    stream = ask(c, "Tell me a long story", stream=True, **LONG)
    chunks = iter(stream)
    for _ in range(3):  # the role, then generated text: the request is in the batch
        next(chunks)
    assert running(base) == 1
    stream.close()  # the client goes away
    deadline = time.time() + 3
    while running(base) and time.time() < deadline:
        time.sleep(0.05)
    assert running(base) == 0
    impatient = openai.OpenAI(base_url=base + "/v1", api_key="x", timeout=0.5, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        ask(impatient, "Tell me a long story", **LONG)
    deadline = time.time() + 3
    while running(base) and time.time() < deadline:
        time.sleep(0.05)
    assert running(base) == 0
    assert ask(c, records[0]["instruction"]).choices[0].message.content == records[0]["response"]


@pytest.mark.parametrize(
    "kwargs,status,param",
    [
        ({"temperature": -1}, 400, "temperature"),
        ({"top_p": 1.5}, 400, "top_p"),
        ({"max_tokens": 100000}, 400, "max_tokens"),
        ({"n": 2}, 400, "n"),
        ({"messages": []}, 400, "messages"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, 400, "tools"),
        ({"response_format": {"type": "json_object"}}, 400, "response_format"),
        ({"logit_bias": {"1": 10}}, 400, "logit_bias"),
        (
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
            400,
            "messages[0].role",
        ),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, 400, "messages[1].role"),
        ({"messages": [{"role": "wizard", "content": "a"}]}, 400, "messages[0].role"),
        ({"model": "gpt-4"}, 404, "model"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(server, kwargs, status, param):
    base, _ = server
    body = {"model": "ckpt", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        client(base).chat.completions.create(**body)
    assert err.value.status_code == status
    e = err.value.body if isinstance(err.value.body, dict) and "message" in err.value.body else err.value.body["error"]
    assert e["param"] == param and e["message"] and e["type"].endswith("_error"), e


def test_malformed_json_is_a_400_json_error(server):
    base, _ = server
    req = urllib.request.Request(
        base + "/v1/chat/completions", data=b"{not json", method="POST", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    error = json.loads(err.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None and "not valid JSON" in error["message"]


def test_an_api_key_from_the_environment_is_required(trained_model):
    model_dir, records = trained_model
    proc = ServerProcess(model_dir, env={"INFERENCE_API_KEY": "k3y"})
    try:  # (stopped below, also when an assertion fails)
        assert "API key required" in proc.lines[0] and "k3y" not in "".join(proc.lines)
        with pytest.raises(openai.AuthenticationError) as err:
            ask(client(proc.base, "wrong"), records[0]["instruction"])
        assert err.value.code == "invalid_api_key"
        assert ask(client(proc.base, "k3y"), records[0]["instruction"]).choices[0].message.content
    finally:
        assert proc.stop() == 0


def test_sigint_during_a_long_stream_finishes_or_cancels_then_exits_0(trained_model):
    """Stop accepting at once; a short reply in flight (300 tokens, 2-4 s here) finishes, a long one (2000 tokens)
    is cut after --shutdown_timeout with an error event; the server says so and exits 0."""
    model_dir, records = trained_model
    proc = ServerProcess(model_dir, "--shutdown_timeout", "10")
    c = client(proc.base)
    got: dict = {}

    def long_stream():
        chunks = []
        try:
            for ch in ask(c, "Tell me a long story", stream=True, **{**LONG, "max_tokens": 2000}):
                chunks.append(ch)
                if len(chunks) == 2:
                    got["streaming"] = time.time()
        except openai.APIError as exc:
            got["long_error"] = exc.message
        got["long_text"] = streamed_text(chunks)

    def short_stream():
        try:
            chunks = list(ask(c, "Tell me a story", stream=True, **{**LONG, "max_tokens": 300}))
            got["short"] = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
        except openai.APIError as exc:
            got["short"] = exc.message

    try:
        long = threading.Thread(target=long_stream)
        long.start()
        while "streaming" not in got and long.is_alive():
            time.sleep(0.02)
        short = threading.Thread(target=short_stream)
        short.start()
        while running(proc.base) < 2 and short.is_alive():
            time.sleep(0.01)
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait_for("shutting down:", 10)
        time.sleep(0.5)
        host, port = urlparse(proc.base).hostname, urlparse(proc.base).port
        with pytest.raises(OSError):
            socket.create_connection((host, port), timeout=2).close()  # no longer accepting
        rc = proc.proc.wait(timeout=60)
    finally:  # a failure above must not leave the server running
        if proc.proc.poll() is None:
            proc.proc.kill()
    long.join(10)
    short.join(10)
    out = "".join(proc.lines)
    assert rc == 0, out
    assert "shutting down: 2 requests in flight, waiting up to 10s" in out, out
    assert "shut down: 1 finished, 1 cancelled" in out, out
    assert got["short"] == "length"  # all its 300 tokens
    assert "shut down before the reply was finished" in got["long_error"] and got["long_text"]
    assert "Traceback" not in out
