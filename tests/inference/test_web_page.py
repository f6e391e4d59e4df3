"""The chat page at / of the server, in a real headless Chromium (Debian's, driven by Playwright): streaming,
multi-turn, the sampling controls, stop and reset."""

import shutil

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


def test_page_chats_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, records = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.goto(base + "/")
            expect(page.locator("#title")).to_have_text("chat with ckpt")
            page.fill("#temperature", "0")
            page.fill("#input", records[0]["instruction"])
            page.keyboard.press("Enter")
            expect(page.locator(".assistant")).to_have_text(records[0]["response"])
            expect(page.locator("#send")).to_be_enabled()
            first_prompt = int(page.locator("#status").inner_text().split("prompt ")[1].split(",")[0])
            page.fill("#input", records[1]["instruction"])  # a second turn carries the first in its prompt
            page.click("#send")
            expect(page.locator(".assistant").nth(1)).to_have_text(records[1]["response"])
            expect(page.locator("#send")).to_be_enabled()
            second_prompt = int(page.locator("#status").inner_text().split("prompt ")[1].split(",")[0])
            assert second_prompt > first_prompt + 5
            page.fill("#max_tokens", "1")  # the controls reach the server
            page.fill("#input", records[2]["instruction"])
            page.click("#send")
            expect(page.locator(".note")).to_have_text("[reply cut at max_tokens]")
            page.fill("#temperature", "-1")  # a bad value: the server's one-line error, the page goes on
            page.fill("#input", "hello")
            page.click("#send")
            expect(page.locator(".note").nth(1)).to_contain_text("error: temperature")
            page.click("#reset")
            expect(page.locator(".msg")).to_have_count(0)
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
