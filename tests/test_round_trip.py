"""One conversation as token ids through every stage: data_prep's JSONL, tokenization_prep's HDF5 row, and the
prompt inference builds for the same history plus the reply, must be the same ids (and the reply's token types)."""

import json
import os
import subprocess
import sys

import h5py
import pytest

from common.chat_format import BOT, HUMAN, join_pairs, parse_text
from data_prep.jobs import prepare_oa_dolly
from inference.generate import ChatSession, Exchange, Reply
from tests.conftest import OASST_TREES, PYTHIA_TOKENIZER, ROOT
from tokenization_prep.schema import COMPLETION, PROMPT, SEP
from tokenization_prep.tokenizer_io import load_tokenizer


@pytest.mark.parametrize("turn_pairs", [1, 2])
def test_a_conversation_is_the_same_tokens_in_training_and_in_the_chat(tmp_path, turn_pairs):
    chat = tmp_path / "oa.jsonl"
    prepare_oa_dolly(chat, None, str(OASST_TREES))  # data_prep: real OASST trees -> pairs JSONL
    line = next(x for x in chat.read_text().splitlines() if len(json.loads(x)) == turn_pairs)
    one = tmp_path / "one.jsonl"
    one.write_text(line + "\n")
    out = tmp_path / "one.hdf5"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokenization_prep",
            "data_prep",
            "--input_path",
            str(one),
            "--output_path",
            str(out),
            "--pretrained_tokenizer",
            str(PYTHIA_TOKENIZER),
            "--max_seq_length",
            "4096",
            "--input_packing_config",
            "single::drop",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        types = f["token_type_ids"][0]
        n = int((types != 2).sum())
        ids, types = f["input_ids"][0][:n].tolist(), types[:n]

    turns, why = parse_text(join_pairs(json.loads(line)))
    assert why is None and [t.role for t in turns] == [HUMAN, BOT] * turn_pairs
    tok = load_tokenizer(str(PYTHIA_TOKENIZER))
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=len(tok),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=4096,
        )
    )
    session = ChatSession(model, tok, device="cpu")
    for user, bot in zip(turns[:-2:2], turns[1:-2:2]):
        session.exchanges.append(Exchange(user.text, Reply(bot.text, 0, "eos", None, None)))
    prompt = session.prompt_ids(turns[-2].text)  # what inference feeds the model before the last reply
    reply = tok(" " + turns[-1].text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == prompt + reply  # token for token
    assert list(types[len(prompt) :]) == [COMPLETION] * (len(reply) - 1) + [SEP]
    start = max((i + 1 for i, t in enumerate(types[: len(prompt)]) if t != PROMPT), default=0)
    last_human = tok(turns[-2].text, add_special_tokens=False)["input_ids"]
    assert len(prompt) - start > len(last_human) and set(types[start : len(prompt)]) == {PROMPT}  # masked
    assert SEP not in set(types[: len(prompt)]) and (turn_pairs == 1 or COMPLETION in set(types[:start]))
