"""Generation over any model the training stage writes (or a hub id, or a LoRA adapter dir).

``load_model_tokenizer_for_generate`` and ``generate_response`` follow Dolly's API; ``ChatSession`` keeps a
multi-turn history rendered by ``data_prep.chat_format`` (the exact text training saw), trims the oldest
turns to fit the context, streams text, and stops at the trained end-of-turn token or at a ``<human>:``
tag, which is never printed even in part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from data_prep.chat_format import (BOT, HUMAN, HUMAN_TAG, Conversation, Turn, escape_role_tags,
                                   prompt_for_next_bot_turn, to_pairs)

STOP_STRINGS = ("\n" + HUMAN_TAG, HUMAN_TAG)
DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.2, "max_new_tokens": 512,
            "do_sample": True, "seed": None}  # BLOOMChat's sampling defaults


def load_model_tokenizer_for_generate(path: str):
    """(model, tokenizer) from a save_pretrained dir, a hub id, or a LoRA adapter dir (safetensors only)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        import json

        from peft import PeftModel

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, trust_remote_code=False)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        tok_src = path if (Path(path) / "tokenizer_config.json").is_file() else base
    else:
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
        tok_src = path
    tokenizer = AutoTokenizer.from_pretrained(tok_src, trust_remote_code=False)
    model.eval()
    return model, tokenizer


def context_length(model, tokenizer) -> int:
    """The model's usable context: max positions if it has them (GPT-NeoX), else the tokenizer's, else 2048."""
    n = getattr(model.config, "max_position_embeddings", None)
    if n:
        return int(n)
    m = getattr(tokenizer, "model_max_length", None)
    return int(m) if m and m < 1e8 else 2048


class _StopFlag(StoppingCriteria):
    def __init__(self, streamer: "ChatStreamer"):
        self.streamer = streamer

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.streamer.stopped


class ChatStreamer(BaseStreamer):
    """Receives new tokens, emits only text that cannot be the start of a stop string."""

    def __init__(self, tokenizer, emit: Callable[[str], None]):
        self.tokenizer, self.emit = tokenizer, emit
        self.ids: list[int] = []
        self.shown = 0  # characters of the decoded reply already emitted
        self.stopped = False
        self.prompt_seen = False
        self.first_token_at: float | None = None
        self.text = ""

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in STOP_STRINGS) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            text = text[:cut]
        safe = len(text)
        if not self.stopped:
            for s in STOP_STRINGS:  # hold back a tail that could still grow into a stop string
                k = next((k for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), 0)
                safe = min(safe, len(text) - k)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                safe = min(safe, len(text) - 1)
        self.text = text
        if safe > self.shown:
            self.emit(text[self.shown:safe])
            self.shown = safe

    def end(self) -> None:
        """Generation is over: what was held back was not a stop string after all."""
        if len(self.text) > self.shown:
            self.emit(self.text[self.shown:])
            self.shown = len(self.text)


@dataclass
class Reply:
    text: str
    new_tokens: int
    stop: str  # eos | stop-string | length | interrupted
    ttft: float | None
    tokens_per_s: float | None


@dataclass
class ChatSession:
    """A conversation with a model: history of turns, sampling parameters, trimming and streaming."""

    model: object
    tokenizer: object
    params: dict = field(default_factory=lambda: dict(DEFAULTS))
    history: list[Turn] = field(default_factory=list)
    trimmed_turns: int = 0

    def prompt_ids(self, user_text: str) -> list[int]:
        """Prompt tokens, dropping the oldest exchanges (then the start of the message) to fit the context."""
        limit = context_length(self.model, self.tokenizer) - int(self.params["max_new_tokens"])
        if limit < 16:
            raise ValueError(f"max_new_tokens {self.params['max_new_tokens']} leaves no room for a prompt")
        history = list(self.history)
        self.trimmed_turns = 0
        while True:
            text = prompt_for_next_bot_turn(history, user_text, self.tokenizer.eos_token)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= limit:
                return ids
            if history:
                history = history[2:]
                self.trimmed_turns += 2
            else:  # the message alone is too long: keep its end
                return ids[-limit:]

    def respond(self, user_text: str, emit: Callable[[str], None] = lambda s: None) -> Reply:
        """Generate the bot reply to ``user_text``; the exchange joins the history (also when interrupted)."""
        ids = self.prompt_ids(user_text)
        p = self.params
        if p.get("seed") is not None:
            torch.manual_seed(int(p["seed"]))
        streamer = ChatStreamer(self.tokenizer, emit)
        kwargs = {"max_new_tokens": int(p["max_new_tokens"]), "do_sample": bool(p["do_sample"]),
                  "repetition_penalty": float(p["repetition_penalty"]), "eos_token_id": self.tokenizer.eos_token_id,
                  "pad_token_id": self.tokenizer.eos_token_id}
        if kwargs["do_sample"]:
            kwargs.update(temperature=float(p["temperature"]), top_p=float(p["top_p"]), top_k=int(p["top_k"]))
        start = time.perf_counter()
        stop = "length"
        out = None
        try:
            with torch.no_grad():
                out = self.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                          dtype=torch.long), streamer=streamer,
                                          stopping_criteria=StoppingCriteriaList([_StopFlag(streamer)]), **kwargs)
        except KeyboardInterrupt:
            stop = "interrupted"
        n_new = len(streamer.ids)
        if stop != "interrupted":
            if streamer.stopped:
                stop = "stop-string"
            elif out is not None and out.shape[1] > len(ids) and int(out[0, -1]) == self.tokenizer.eos_token_id:
                stop = "eos"
        elapsed = time.perf_counter() - start
        ttft = streamer.first_token_at - start if streamer.first_token_at else None
        text = streamer.text.strip()
        self.history += [Turn(HUMAN, user_text), Turn(BOT, text)]
        return Reply(text, n_new, stop, ttft, n_new / elapsed if elapsed > 0 and n_new else None)


def generate_response(instruction: str, model, tokenizer, **generate_kwargs) -> str:
    """Dolly's API: one instruction in, the bot's reply out (our chat format, stops at end of turn)."""
    session = ChatSession(model, tokenizer, params={**DEFAULTS, **generate_kwargs})
    return session.respond(instruction).text


def as_data_prep_line(history: list[Turn], conv_id: str) -> list[dict]:
    """The conversation as a data_prep pairs line (role tags escaped, as data_prep writes them)."""
    turns = [Turn(t.role, escape_role_tags(t.text)[0]) for t in history]
    return to_pairs(Conversation(turns, source="chat", id=conv_id))
