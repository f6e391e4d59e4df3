"""The OpenAI-compatible server, driven by the official openai client over loopback: plain, streamed,
8 concurrent clients, bad requests (OpenAI-shaped 4xx JSON errors)."""

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

pytestmark = pytest.mark.slow


def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=300, max_retries=0)


def ask(c, text, **kw):
    return c.chat.completions.create(
        model="ckpt", messages=[{"role": "user", "content": text}], **{"temperature": 0, **kw}
    )


def test_models_lists_the_stage_name(server):
    base, _ = server
    assert [m.id for m in client(base).models.list().data] == ["ckpt"]


def test_a_plain_reply_is_the_trained_response(server):
    base, records = server
    r = ask(client(base), records[0]["instruction"])
    assert r.choices[0].message.content == records[0]["response"] and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_streamed_reply_is_the_same_text(server):
    base, records = server
    chunks = list(ask(client(base), records[0]["instruction"], stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == records[0]["response"] and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens > 0


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


def test_seeded_sampling_repeats(server):
    base, _ = server
    c = client(base)
    a, b = (ask(c, "Tell me something", temperature=1.0, seed=5).choices[0].message.content for _ in range(2))
    assert a == b


def test_eight_concurrent_clients_are_all_answered(server):
    base, records = server
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, client(base), records[i % 4]["instruction"], stream=bool(i % 2)) for i in range(8)]
        results = [f.result(timeout=300) for f in futures]
    for i, r in enumerate(results):
        if i % 2:
            text = "".join(ch.choices[0].delta.content or "" for ch in r if ch.choices)
        else:
            text = r.choices[0].message.content
        assert text == records[i % 4]["response"], i


@pytest.mark.parametrize(
    "kwargs,status,param",
    [
        ({"temperature": -1}, 400, "temperature"),
        ({"top_p": 1.5}, 400, "top_p"),
        ({"max_tokens": 100000}, 400, "max_tokens"),
        ({"n": 2}, 400, "n"),
        ({"messages": []}, 400, "messages"),
        (
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
            400,
            "messages[0].role",
        ),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, 400, "messages[1].role"),
        ({"messages": [{"role": "wizard", "content": "a"}]}, 400, "messages.0.role"),
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
    assert json.loads(err.value.read())["error"]["type"] == "invalid_request_error"


def test_a_client_that_goes_away_frees_the_queue(server):
    """A stream dropped after its first chunk stops generating: the next request does not wait for it."""
    base, records = server
    c = client(base)
    long = {"temperature": 100.0, "top_p": 1.0, "seed": 3, "max_tokens": 1500}  # near-uniform: no early end
    t0 = time.perf_counter()
    full = ask(c, "Tell me a long story", **long)
    full_s = time.perf_counter() - t0
    assert full.usage.completion_tokens > 1000, full.usage
    stream = ask(c, "Tell me a long story", stream=True, **long)
    next(iter(stream))
    stream.close()  # the client goes away
    t0 = time.perf_counter()
    r = ask(c, records[0]["instruction"])
    waited = time.perf_counter() - t0
    assert r.choices[0].message.content == records[0]["response"]
    assert waited < full_s / 3, (waited, full_s)
