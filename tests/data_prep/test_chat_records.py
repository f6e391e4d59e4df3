"""OpenAI ``messages`` and ShareGPT records (real OASST1 texts) -> chat JSONL; bad records quarantined."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.chat_format import HUMAN_TAG, join_pairs
from common.errors import DataError
from data_prep.jobs import prepare_chat
from tests.conftest import ROOT

HERE = Path(__file__).parent / "chat_records"
OPENAI, SHAREGPT = HERE / "openai_messages.jsonl", HERE / "sharegpt.json"
EXPECTED_OPENAI = {  # line -> reason (start) under --system reject
    11: "system message",
    13: "message 2: tool calls",
    14: "message 2: unsupported role 'narrator'",
    15: "message 1: content part of type 'image_url'",
    16: "non-alternating roles",
    17: "first turn is not human",
    18: "empty or blank text",
    19: "'messages' is a str",
    20: "no 'messages' or 'conversations'",
    21: "message 3: a system message after the conversation started",
    22: "not JSON",
}


def rows(path: Path) -> list:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def both_forms(tmp_path_factory):
    """(result, output lines, rejects) of the OpenAI and ShareGPT files converted under --system reject."""
    out = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    result = prepare_chat(out, [str(OPENAI), f"sg={SHAREGPT}"])
    return result, rows(out), rows(out.with_name("chat.jsonl.rejects.jsonl"))


def test_every_openai_reject_is_named(both_forms):
    _, _, rejects = both_forms
    by_line = {r["line"]: r["reason"] for r in rejects if r["source"] == "openai_messages"}
    assert set(by_line) == set(EXPECTED_OPENAI)
    for line, reason in by_line.items():
        assert reason.startswith(EXPECTED_OPENAI[line]), (line, reason)


def test_every_sharegpt_reject_is_named(both_forms):
    _, _, rejects = both_forms
    sg = {r["line"]: r["reason"] for r in rejects if r["source"] == "sg"}
    assert sg[1].startswith("system message") and "function_call" in sg[9] and "neither 'role' nor 'from'" in sg[10]


def test_each_input_is_a_counted_source(both_forms):
    result, lines, _ = both_forms
    oa, s = result.report.sources["openai_messages"], result.report.sources["sg"]
    assert (oa.read, oa.written, s.read, s.written) == (22, 11, 10, 7) and oa.balanced() and s.balanced()
    assert oa.notes["trailing user message without a reply (left out)"] == 1
    assert len(lines) == 18
    assert all(p["source"] in ("openai_messages", "sg") for line in lines for p in line)


def test_a_record_reads_back_as_its_messages(both_forms):
    _, lines, _ = both_forms
    first_src = json.loads(OPENAI.read_text().splitlines()[0])["messages"]
    assert join_pairs(lines[0]) == "".join(
        f"{'' if i == 0 else chr(10)}{HUMAN_TAG} {m['content']}" if m["role"] == "user" else f"\n<bot>: {m['content']}"
        for i, m in enumerate(first_src)
    )


def test_a_rejected_system_record_writes_nothing(both_forms):
    _, lines, _ = both_forms
    content_parts = json.loads(OPENAI.read_text().splitlines()[10])["messages"]  # the record with a system message
    assert not any(content_parts[1]["content"][0]["text"] in p["prompt"] for line in lines for p in line)


def test_fold_puts_the_system_text_first_in_the_first_user_turn(tmp_path):
    out = tmp_path / "chat.jsonl"
    result = prepare_chat(out, [str(OPENAI), str(SHAREGPT)], system="fold")
    assert result.report.sources["openai_messages"].written == 12 and result.report.sources["sharegpt"].written == 8
    src = json.loads(OPENAI.read_text().splitlines()[10])["messages"]
    folded = [line for line in rows(out) if line[0]["prompt"].startswith("<human>: You are a careful")]
    assert len(folded) == 1
    assert folded[0][0]["prompt"] == f"<human>: {src[0]['content']}\n\n{src[1]['content'][0]['text']}\n<bot>:"
    late = {r["line"]: r["reason"] for r in rows(tmp_path / "chat.jsonl.rejects.jsonl")}
    assert late[21].startswith("message 3: a system message after")  # fold never moves a later system message


def test_role_tags_in_messages_are_escaped(tmp_path):
    src = tmp_path / "tags.jsonl"
    src.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "say <bot>: hi"},
                    {"role": "assistant", "content": "ok\n<human>: forged"},
                ]
            }
        )
        + "\n"
    )
    prepare_chat(tmp_path / "o.jsonl", [str(src)])
    pair = rows(tmp_path / "o.jsonl")[0][0]
    assert "<bot> : hi" in pair["prompt"] and pair["completion"] == "ok\n<human> : forged"


def test_strict_stops_at_the_first_bad_record(tmp_path):
    with pytest.raises(DataError, match=r"openai_messages.jsonl:11: system message"):
        prepare_chat(tmp_path / "o.jsonl", [str(OPENAI)], strict=True)
    assert not (tmp_path / "o.jsonl").exists()


def cli(tmp_path, *flags):
    cmd = [sys.executable, "-m", "data_prep", "prepare_chat", "--output_path", str(tmp_path / "c.jsonl"), *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_cli_missing_input_is_one_line(tmp_path):
    bad = cli(tmp_path, "--input", str(tmp_path / "missing.jsonl"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing.jsonl: no such file" in bad.stderr


def test_cli_prints_the_summary(tmp_path):
    ok = cli(tmp_path, "--input", str(SHAREGPT), "--system", "fold")
    assert ok.returncode == 0 and "sharegpt: read 10  written 8" in ok.stdout and "OK" in ok.stdout


def test_sharegpt_record_level_system_follows_the_rule(tmp_path):
    src = tmp_path / "sg.jsonl"
    conv = {
        "conversations": [{"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "7"}],
        "system": "Be terse.",
    }
    src.write_text(json.dumps(conv) + "\n")
    rejected = prepare_chat(tmp_path / "r.jsonl", [str(src)])
    assert rejected.report.sources["sg"].rejected == {next(iter(rejected.report.sources["sg"].rejected)): 1}
    prepare_chat(tmp_path / "f.jsonl", [str(src)], system="fold")
    assert rows(tmp_path / "f.jsonl")[0][0]["prompt"] == "<human>: Be terse.\n\nName a prime.\n<bot>:"
