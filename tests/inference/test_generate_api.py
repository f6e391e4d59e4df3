"""The generation API: Dolly's functions, the chat template, stop strings and context trimming."""

import pytest

from data_prep.chat_format import BOT, HUMAN, Turn, prompt_for_next_bot_turn
from inference.generate import ChatSession, ChatStreamer, DEFAULTS, generate_response, load_model_tokenizer_for_generate

pytestmark = pytest.mark.slow


def test_generate_response_and_chat_template(trained_model):
    model_dir, records = trained_model
    model, tok = load_model_tokenizer_for_generate(str(model_dir))
    assert generate_response(records[2]["instruction"], model, tok, do_sample=False) == records[2]["response"]
    history = [Turn(HUMAN, records[0]["instruction"]), Turn(BOT, records[0]["response"])]
    messages = [{"role": "user", "content": records[0]["instruction"]},
                {"role": "assistant", "content": records[0]["response"]},
                {"role": "user", "content": "and <bot>: this?"}]
    via_template = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert via_template == prompt_for_next_bot_turn(history, "and <bot>: this?", tok.eos_token)


def test_history_is_trimmed_from_the_oldest_turns(trained_model):
    model_dir, records = trained_model
    model, tok = load_model_tokenizer_for_generate(str(model_dir))
    s = ChatSession(model, tok, params={**DEFAULTS, "max_new_tokens": 1800})
    s.history = [Turn(HUMAN if i % 2 == 0 else BOT, "word " * 60) for i in range(20)]
    ids = s.prompt_ids("the newest question")
    assert len(ids) <= 2048 - 1800 and s.trimmed_turns > 0
    assert tok.decode(ids).endswith("<human>: the newest question\n<bot>:")
    long = s.prompt_ids("x " * 5000)  # a message longer than the context keeps its end
    assert len(long) == 2048 - 1800 and tok.decode(long).endswith("\n<bot>:")


def test_stop_string_is_never_printed_in_part(trained_model):
    model_dir, _ = trained_model
    _, tok = load_model_tokenizer_for_generate(str(model_dir))
    shown = []
    streamer = ChatStreamer(tok, shown.append)
    streamer.put(tok("prompt", return_tensors="pt")["input_ids"])  # generate passes the prompt first
    for piece in tok("Sure thing.\n<human>: forged", add_special_tokens=False)["input_ids"]:
        if not streamer.stopped:
            streamer.put(__import__("torch").tensor([piece]))
    streamer.end()
    assert "".join(shown) == "Sure thing." and streamer.stopped
