"""The chat page at / of the server, in a real headless Chromium (Debian's, driven by Playwright): streaming,
multi-turn, the sampling controls and the model's defaults, stop, reset while streaming, a refused message, input
methods, reload, regenerate, edit-last, Markdown rendered safely, the API key."""

import json
import re
import shutil
import urllib.request
from contextlib import contextmanager

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chat_page(base):
    """A fresh browser on the page: (page, errors): errors collects uncaught page errors and console errors
    (a script blocked by the Content-Security-Policy is one)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and not http_status(m.text) and errors.append(m.text))
            page.goto(base + "/")
            expect(page.locator("#title")).to_have_text("chat with ckpt")
            yield page, errors
        finally:
            browser.close()


def http_status(text: str) -> bool:
    """Chromium's console line for an HTTP error answer (a 400 or 401 the test asks for), not a page error."""
    return text.startswith("Failed to load resource: the server responded with a status of")


def prompt_tokens(page) -> int:
    return int(page.locator("#status").inner_text().split("prompt ")[1].split(",")[0])


def sse(*chunks: str) -> str:
    """A canned streamed chat completion of these content chunks."""
    events = [{"choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]} for c in chunks]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(chunks), "total_tokens": 9}})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def test_page_chats_and_a_refused_message_keeps_its_text(server, tmp_path):
    from playwright.sync_api import expect

    base, records = server
    with chat_page(base) as (page, errors):
        sent = []
        page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
        page.fill("#temperature", "0")
        page.fill("#input", records[0]["instruction"])
        page.keyboard.press("Enter")
        expect(page.locator(".assistant")).to_have_text(records[0]["response"])
        expect(page.locator("#send")).to_be_enabled()
        assert sent[0]["stream_options"] == {"include_usage": True} and sent[0]["temperature"] == 0
        first_prompt = prompt_tokens(page)
        page.fill("#input", records[1]["instruction"])  # a second turn carries the first in its prompt
        page.click("#send")
        expect(page.locator(".assistant").nth(1)).to_have_text(records[1]["response"])
        expect(page.locator("#send")).to_be_enabled()
        assert prompt_tokens(page) > first_prompt + 5
        page.fill("#max_tokens", "1")  # the controls reach the server
        page.fill("#input", records[2]["instruction"])
        page.click("#send")
        expect(page.locator(".note")).to_have_text("[reply cut at max_tokens]")
        page.fill("#temperature", "-1")  # a bad value: the server's one-line error, the page goes on
        page.fill("#input", "hello there")
        page.click("#send")
        expect(page.locator(".note").nth(1)).to_contain_text("error: temperature")
        expect(page.locator("#input")).to_have_value("hello there")  # the typed text is back in the box
        expect(page.locator(".user")).to_have_count(3)  # and its bubble gone, as from the history
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "")
        page.click("#send")  # the same text again, now accepted: history and screen agree
        expect(page.locator(".assistant")).to_have_count(4)
        expect(page.locator("#send")).to_be_enabled()
        assert [m["role"] for m in sent[-1]["messages"]] == ["user", "assistant"] * 3 + ["user"]
        page.click("#reset")
        expect(page.locator(".msg")).to_have_count(0)
        page.screenshot(path=str(tmp_path / "page.png"))
        assert not errors, errors


def test_reset_while_streaming_leaves_a_clean_page_and_later_messages_work(server):
    from playwright.sync_api import expect

    base, records = server
    with chat_page(base) as (page, errors):
        for name, value in (("temperature", "100"), ("top_p", "1"), ("max_tokens", "1500"), ("seed", "0")):
            page.fill("#" + name, value)  # near-uniform sampling: a long reply that rarely ends by itself
        page.fill("#input", "Tell me a long story")
        page.keyboard.press("Enter")
        expect(page.locator(".assistant")).to_have_text(re.compile(r"\S{20}"))
        page.click("#stop")  # Stop keeps the reply so far, and says so
        expect(page.locator(".note")).to_have_text("[reply stopped]")
        expect(page.locator("#regenerate")).to_be_enabled()
        page.fill("#input", "And another one")
        page.keyboard.press("Enter")
        expect(page.locator(".assistant").nth(1)).to_have_text(re.compile(r"\S{20}"))
        expect(page.locator("#stop")).to_be_enabled()
        page.click("#reset")
        page.wait_for_timeout(500)  # the aborted request settles
        expect(page.locator("#log > *")).to_have_count(0)  # no "[reply stopped]" on the cleared page
        for name in ("top_p", "max_tokens", "seed"):
            page.fill("#" + name, "")
        page.fill("#temperature", "0")
        page.fill("#input", records[0]["instruction"])
        page.keyboard.press("Enter")  # the stopped reply is not in the new history: this works
        expect(page.locator(".assistant")).to_have_text(records[0]["response"])
        expect(page.locator(".note")).to_have_count(0)
        assert not errors, errors


def test_enter_while_an_input_method_composes_does_not_send(server):
    from playwright.sync_api import expect

    base, _ = server
    with chat_page(base) as (page, errors):
        requests = []
        page.on("request", lambda r: requests.append(r.url) if "/chat/" in r.url else None)
        page.focus("#input")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Input.imeSetComposition", {"text": "にほん", "selectionStart": 3, "selectionEnd": 3})
        page.keyboard.press("Enter")  # confirms the composition (keyCode 229, isComposing): no send
        page.locator("#input").dispatch_event("keydown", {"key": "Enter", "isComposing": True})
        page.wait_for_timeout(300)
        assert requests == [] and page.locator(".msg").count() == 0
        expect(page.locator("#input")).to_have_value(re.compile("にほん"))
        assert not errors, errors


def test_reload_keeps_the_chat_and_regenerate_and_edit_last(server):
    from playwright.sync_api import expect

    base, records = server
    with chat_page(base) as (page, errors):
        page.fill("#temperature", "0")
        for r in records[:2]:
            page.fill("#input", r["instruction"])
            page.keyboard.press("Enter")
            expect(page.locator("#regenerate")).to_be_enabled()
        two_turns = prompt_tokens(page)
        page.reload()
        expect(page.locator(".user")).to_have_text([r["instruction"] for r in records[:2]])
        expect(page.locator(".assistant")).to_have_text([r["response"] for r in records[:2]])
        page.fill("#temperature", "0")
        page.click("#regenerate")  # greedy: the same last reply again, in its place
        expect(page.locator("#regenerate")).to_be_enabled()
        expect(page.locator(".assistant")).to_have_text([r["response"] for r in records[:2]])
        assert prompt_tokens(page) == two_turns  # the old reply was not sent along
        page.click("#edit")  # the last message back into the box, its exchange gone
        expect(page.locator("#input")).to_have_value(records[1]["instruction"])
        expect(page.locator(".msg")).to_have_count(2)
        page.fill("#input", records[2]["instruction"])
        page.keyboard.press("Enter")
        expect(page.locator(".assistant").nth(1)).to_have_text(records[2]["response"])
        page.reload()  # the edited history is what was kept
        expect(page.locator(".user")).to_have_text([records[0]["instruction"], records[2]["instruction"]])
        assert not errors, errors


def test_sampling_fields_show_the_models_defaults(server):
    from playwright.sync_api import expect

    base, _ = server
    defaults = json.load(urllib.request.urlopen(base + "/props", timeout=10))["defaults"]
    with chat_page(base) as (page, errors):
        expect(page.locator("#max_tokens")).to_have_attribute("placeholder", str(defaults["max_new_tokens"]))
        for name in ("top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            shown = page.locator("#" + name).get_attribute("placeholder")
            assert float(shown) == float(defaults[name]), (name, shown, defaults[name])
        temperature = float(page.locator("#temperature").get_attribute("placeholder"))
        assert temperature == (defaults["temperature"] if defaults["do_sample"] else 0)
        assert not errors, errors


def test_markdown_is_rendered_and_model_html_stays_text(server):
    from playwright.sync_api import expect

    base, _ = server
    reply = sse(
        "Some **bold** and `code`:\n\n```\nprint(1)\n```\n",
        '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>',
        "\n\n![remote](http://198.51.100.7/x.png) [a link](javascript:window.pwned=3)",
    )
    with chat_page(base) as (page, errors):
        remote = []
        page.on("request", lambda r: remote.append(r.url) if "198.51.100.7" in r.url else None)
        page.route("**/v1/chat/completions", lambda route: route.fulfill(body=reply, content_type="text/event-stream"))
        page.fill("#input", "show me")
        page.keyboard.press("Enter")
        out = page.locator(".assistant")
        expect(out.locator("strong")).to_have_text("bold")
        expect(out.locator("pre code")).to_have_text("print(1)\n")
        expect(out).to_contain_text('<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>')
        assert out.locator("img, script").count() == 0 and remote == []
        page.locator(".assistant a").click()  # a javascript: link is sanitized away
        assert page.evaluate("window.pwned") is None
        assert not [e for e in errors if "pwned" in e], errors


def test_api_key_is_sent_when_the_server_asks_and_kept(server):
    from playwright.sync_api import expect

    base, _ = server

    def chat(route):
        if route.request.headers.get("authorization") == "Bearer sk-test":
            route.fulfill(body=sse("welcome"), content_type="text/event-stream")
        else:
            body = {"error": {"message": "invalid API key", "type": "invalid_request_error", "param": None}}
            route.fulfill(status=401, body=json.dumps(body), content_type="application/json")

    with chat_page(base) as (page, errors):
        page.route("**/v1/chat/completions", chat)
        page.fill("#input", "hi")
        page.keyboard.press("Enter")
        expect(page.locator(".note")).to_contain_text("invalid API key (enter the server's API key")
        expect(page.locator("#input")).to_have_value("hi")
        page.fill("#api_key", "sk-test")
        page.locator("#api_key").dispatch_event("change")
        page.click("#send")
        expect(page.locator(".assistant")).to_have_text("welcome")
        page.reload()
        expect(page.locator("#api_key")).to_have_value("sk-test")
        assert not errors, errors
