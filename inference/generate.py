"""Generation over any model the training stage writes (or a hub id, or a LoRA adapter dir).

``load_model_tokenizer_for_generate`` and ``generate_response`` follow Dolly's API; ``ChatSession`` keeps a
multi-turn history rendered by ``common.chat_format`` (the exact text training saw), trims the oldest
turns to fit the context, streams text, and stops at the trained end-of-turn token or at a ``<human>:``
tag, which is never printed even in part. The KV cache of the previous turn is kept and reused for the
unchanged token prefix of the next prompt, so a turn costs its new tokens, not the whole history; it grows by
doubling (``inference.kv_cache``), so appending does not copy the history either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from common.chat_format import (
    BOT,
    HUMAN,
    HUMAN_TAG,
    Conversation,
    Turn,
    escape_role_tags,
    prompt_for_next_bot_turn,
    to_pairs,
)
from inference.kv_cache import growing_cache
from inference.loading import load_for_chat
from inference.sampling import Sampling, SettingError

STOP_STRINGS = ("\n" + HUMAN_TAG, HUMAN_TAG)
COMPLETE = ("eos", "stop-string")  # replies that ended by themselves: the only ones /save writes


def load_model_tokenizer_for_generate(path: str, device: str = "auto", dtype: str = "auto"):
    """Dolly's loader: (model, tokenizer) from a save_pretrained dir, a hub id or a LoRA adapter dir."""
    loaded = load_for_chat(path, device, dtype)
    return loaded.model, loaded.tokenizer


def context_length(model, tokenizer) -> int:
    """The model's usable context: max positions if it has them (GPT-NeoX), else the tokenizer's, else 2048."""
    n = getattr(model.config, "max_position_embeddings", None)
    if n:
        return int(n)
    m = getattr(tokenizer, "model_max_length", None)
    return int(m) if m and m < 1e8 else 2048


class _StopFlag(StoppingCriteria):
    def __init__(self, streamer: "ChatStreamer", should_stop: Callable[[], bool] | None = None):
        self.streamer, self.should_stop = streamer, should_stop

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.streamer.stopped or bool(self.should_stop and self.should_stop())


class ChatStreamer(BaseStreamer):
    """Receives new tokens, emits only text that cannot be the start of a stop string."""

    def __init__(self, tokenizer, emit: Callable[[str], None], stops: tuple[str, ...] = STOP_STRINGS):
        self.tokenizer, self.emit, self.stops = tokenizer, emit, stops
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
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            text = text[:cut]
        safe = len(text)
        if not self.stopped:
            for s in self.stops:  # hold back a tail that could still grow into a stop string
                k = next((k for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), 0)
                safe = min(safe, len(text) - k)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                safe = min(safe, len(text) - 1)
        self.text = text
        if safe > self.shown:
            self.emit(text[self.shown : safe])
            self.shown = safe

    def end(self) -> None:
        """Generation is over: what was held back was not a stop string after all."""
        if len(self.text) > self.shown:
            self.emit(self.text[self.shown :])
            self.shown = len(self.text)


def trimmed(emit: Callable[[str], None]) -> Callable[[str], None]:
    """``emit`` that drops leading whitespace and holds trailing whitespace until more text follows, so the
    streamed text is exactly the reply's stripped text."""
    state = {"started": False, "pending": ""}

    def out(text: str) -> None:
        if not state["started"]:
            text = text.lstrip()
            if not text:
                return
            state["started"] = True
        text = state["pending"] + text
        body = text.rstrip()
        state["pending"] = text[len(body) :]
        if body:
            emit(body)

    return out


@dataclass
class Reply:
    text: str
    new_tokens: int
    stop: str  # eos | stop-string | length | interrupted
    ttft: float | None
    tokens_per_s: float | None
    reused_tokens: int = 0  # prompt tokens served from the previous turn's KV cache
    prompt_tokens: int = 0

    @property
    def complete(self) -> bool:
        """Ended by itself with some text: fit to be training data."""
        return self.stop in COMPLETE and bool(self.text)


@dataclass
class Exchange:
    user: str
    reply: Reply


def turns(exchanges: list[Exchange]) -> list[Turn]:
    """The chat-format turns of some exchanges."""
    return [t for e in exchanges for t in (Turn(HUMAN, e.user), Turn(BOT, e.reply.text))]


@dataclass
class ChatSession:
    """A conversation with a model: exchanges, sampling settings, trimming, streaming, a reused KV cache."""

    model: object
    tokenizer: object
    sampling: Sampling = field(default_factory=Sampling)
    exchanges: list[Exchange] = field(default_factory=list)
    trimmed_turns: int = 0
    cut_tokens: int = 0  # tokens cut from the start of the last message (it alone did not fit the context)
    device: str | None = None
    last_replies: list[Reply] = field(default_factory=list)  # every sequence of the last generate (num_return_...)
    _cache: object = None  # the previous generate()'s KV cache
    _cache_ids: list[int] = field(default_factory=list)  # the tokens it holds

    def __post_init__(self):
        if self.device is None:
            self.device = str(next(self.model.parameters()).device)

    @property
    def context(self) -> int:
        return context_length(self.model, self.tokenizer)

    @property
    def history(self) -> list[Turn]:
        return turns(self.exchanges)

    def set_sampling(self, sampling: Sampling) -> None:
        """Use ``sampling`` from the next reply on (checked against this model's context)."""
        sampling.check_context(self.context)
        self.sampling = sampling

    def reset(self) -> None:
        self.exchanges.clear()
        self._cache, self._cache_ids = None, []

    def prompt_ids(self, user_text: str) -> list[int]:
        """Prompt tokens, dropping the oldest exchanges (then the start of the message) to fit the context.

        Sets ``trimmed_turns`` (old turns left out) and ``cut_tokens`` (tokens cut from the message's start)."""
        limit = max(1, self.context - self.sampling.max_new_tokens)
        history = self.history
        self.trimmed_turns = self.cut_tokens = 0
        while True:
            ids = self._render(history, user_text)
            if len(ids) <= limit:
                return ids
            if not history:  # the message alone is too long: keep its end
                return self._cut_message(user_text, len(ids) - limit, limit)
            history = history[2:]
            self.trimmed_turns += 2

    def _render(self, history: list[Turn], user_text: str) -> list[int]:
        text = prompt_for_next_bot_turn(history, user_text, self.tokenizer.eos_token)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _cut_message(self, user_text: str, over: int, limit: int) -> list[int]:
        """The prompt for the end of ``user_text`` that fits ``limit`` tokens (its role tags kept)."""
        words = self.tokenizer(user_text, add_special_tokens=False)["input_ids"]
        drop = min(over, len(words))
        while True:
            ids = self._render([], self.tokenizer.decode(words[drop:]).lstrip())
            if len(ids) <= limit or drop >= len(words):
                self.cut_tokens = drop
                return ids[-limit:]
            drop = min(len(words), drop + len(ids) - limit)

    def _reusable_cache(self, ids: list[int]):
        """The previous turn's cache cut to the prompt's common token prefix (at least one token left to run)."""
        if self._cache is None:
            return None, 0
        n = 0
        limit = min(len(ids) - 1, len(self._cache_ids))
        while n < limit and ids[n] == self._cache_ids[n]:
            n += 1
        if n == 0:
            return None, 0
        extra = self._cache.get_seq_length() - n
        if extra > 0:
            self._cache.crop(-extra)  # transformers: a negative count of tokens to remove from the end
        return self._cache, n

    def respond(
        self,
        user_text: str,
        emit: Callable[[str], None] = lambda s: None,
        stops: tuple[str, ...] = (),
        should_stop: Callable[[], bool] | None = None,
        **generate_kwargs,
    ) -> Reply:
        """Generate the bot reply to ``user_text``; the exchange joins the history (also when interrupted).

        ``stops`` are stop strings besides ``<human>:``; ``should_stop`` ends generation early when it turns
        true (a server client that went away); ``generate_kwargs`` go to ``model.generate`` as given, but
        ``max_length`` (prompt + reply tokens, as in transformers) becomes the reply's ``max_new_tokens``. With
        ``num_return_sequences`` N, ``last_replies`` holds the N replies (the first one is returned)."""
        stops = STOP_STRINGS + tuple(x for x in stops if x)
        ids = self.prompt_ids(user_text)
        s = self.sampling
        if s.seed is not None:
            torch.manual_seed(s.seed)
        kwargs = {
            **s.generate_kwargs(),
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.tokenizer.eos_token_id,
        }
        if generate_kwargs.get("max_length") is not None:
            generate_kwargs = dict(generate_kwargs)
            kwargs["max_new_tokens"] = reply_room(generate_kwargs.pop("max_length"), len(ids))
        kwargs.update(generate_kwargs)
        streaming = int(kwargs.get("num_beams", 1)) == 1 and int(kwargs.get("num_return_sequences", 1)) == 1
        streamer = ChatStreamer(self.tokenizer, trimmed(emit), stops)
        if streaming:
            kwargs.update(streamer=streamer, stopping_criteria=StoppingCriteriaList([_StopFlag(streamer, should_stop)]))
        cache, reused = self._reusable_cache(ids) if streaming else (None, 0)
        if streaming and cache is None:
            cache = growing_cache(self.model, self.context)
        self._cache, self._cache_ids = None, []  # dropped unless generation completes
        start = time.perf_counter()
        interrupted, out = False, None
        try:
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=torch.tensor([ids], device=self.device),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                    past_key_values=cache,
                    return_dict_in_generate=True,
                    **kwargs,
                )
        except KeyboardInterrupt:
            interrupted = True
        elapsed = time.perf_counter() - start
        if out is not None and streaming and out.past_key_values is not None:
            seq = out.sequences[0].tolist()
            self._cache, self._cache_ids = out.past_key_values, seq[: out.past_key_values.get_seq_length()]
        if streaming:
            eos = out is not None and out.sequences.shape[1] > len(ids) and int(out.sequences[0, -1]) == self.eos
            stop = "interrupted" if interrupted else "stop-string" if streamer.stopped else "eos" if eos else "length"
            first = streamer.first_token_at
            ttft = first - start if first else None
            found = [(streamer.text, len(streamer.ids), stop, ttft)]
        elif out is None:  # beam search or several sequences, interrupted
            found = [("", 0, "interrupted", None)]
        else:  # beam search or several sequences: no streamer; cut at a stop string afterwards
            found = [self._ended(row[len(ids) :].tolist(), stops) for row in out.sequences]
        self.last_replies = [
            Reply(text.strip(), n, stop, ttft, n / elapsed if elapsed > 0 and n else None, reused, len(ids))
            for text, n, stop, ttft in found
        ]
        self.exchanges.append(Exchange(user_text, self.last_replies[0]))
        return self.last_replies[0]

    @property
    def eos(self) -> int:
        return self.tokenizer.eos_token_id

    def _ended(self, new: list[int], stops: tuple[str, ...]) -> tuple[str, int, str, None]:
        """(text, tokens, stop, ttft) of one finished sequence: up to its end of turn or first stop string."""
        stop = "length"
        if self.eos in new:
            new, stop = new[: new.index(self.eos) + 1], "eos"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cut = min((i for i in (text.find(x) for x in stops) if i >= 0), default=-1)
        if cut >= 0:
            text, stop = text[:cut], "stop-string"
        return text, len(new), stop, None


def reply_room(max_length, prompt_tokens: int) -> int:
    """transformers' ``max_length`` (prompt + reply) as the reply's token budget; too small is a SettingError."""
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise SettingError(f"max_length: must be an integer (got {max_length!r})", "max_length")
    if max_length <= prompt_tokens:
        raise SettingError(
            f"max_length {max_length} leaves no room for a reply after the prompt's {prompt_tokens} tokens; "
            f"use more than {prompt_tokens}, or max_new_tokens for the reply alone",
            "max_length",
        )
    return max_length - prompt_tokens


def model_defaults(model) -> Sampling:
    """The model's own sampling defaults: its dir's ``generation_config.json`` (what the CLI and server read), else
    the settings its in-memory ``generation_config`` changes from transformers' defaults, else ours."""
    source = getattr(model, "name_or_path", "") or ""
    if source and (Path(source) / "generation_config.json").is_file():
        return Sampling.from_model_dir(source)
    config = getattr(model, "generation_config", None)
    raw = config.to_diff_dict() if config is not None else {}
    values = {k: raw[k] for k in Sampling.model_fields if raw.get(k) is not None}
    return Sampling.make(where="the model's generation_config: ", **values)


def generate_response(instruction: str, model, tokenizer, **kwargs) -> str | list[str]:
    """Dolly's API: one instruction in, the bot's reply out (our chat format, stops at end of turn).

    Defaults come from the model's generation config (``model_defaults``); sampling settings (temperature, top_p,
    top_k, min_p, repetition_penalty, presence_penalty, frequency_penalty, max_new_tokens, do_sample, seed) are
    validated. ``max_length`` counts prompt and reply tokens, as in transformers; ``stop_strings`` (a string or a
    list) end the reply as ``<human>:`` does. With ``num_return_sequences=N`` > 1 the result is a list of N replies
    (sampled, or the N best beams). Every other argument goes to ``model.generate`` unchanged."""
    if not isinstance(instruction, str):
        raise TypeError(f"generate_response: instruction must be a str, got {type(instruction).__name__}")
    names = set(Sampling.names())
    stops = kwargs.pop("stop_strings", None) or ()
    if isinstance(stops, str):
        stops = (stops,)
    if not isinstance(stops, (list, tuple)) or not all(isinstance(x, str) for x in stops):
        raise TypeError(f"generate_response: stop_strings must be a str or a list of str, got {stops!r}")
    session = ChatSession(model, tokenizer)
    sampling = model_defaults(model).updated(**{k: v for k, v in kwargs.items() if k in names})
    session.set_sampling(sampling)  # checked against the context
    reply = session.respond(instruction, stops=tuple(stops), **{k: v for k, v in kwargs.items() if k not in names})
    if int(kwargs.get("num_return_sequences") or 1) > 1:
        return [r.text for r in session.last_replies]
    return reply.text


def as_data_prep_line(history: list[Turn], conv_id: str) -> list[dict]:
    """The conversation as a data_prep pairs line (role tags escaped, as data_prep writes them)."""
    turns = [Turn(t.role, escape_role_tags(t.text)[0]) for t in history]
    return to_pairs(Conversation(turns, source="chat", id=conv_id))
