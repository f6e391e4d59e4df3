"""Sampling settings: one typed, validated object for the CLI flags, ``/set``, the Python API and the server.

Defaults come from the model's ``generation_config.json`` (training writes BLOOMChat's there). Every change is
validated before it is used, so a bad value is one line (``SettingError``) and the session goes on.
``temperature 0`` means greedy decoding, as in the OpenAI API.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from common.chat_format import GENERATION_DEFAULTS
from common.errors import UserError

MIN_PROMPT_TOKENS = 16  # what a reply may never take from the context


class SettingError(UserError):
    """A sampling setting that cannot be used, said in one line; ``field`` names it when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Sampling(BaseModel):
    """How replies are sampled (BLOOMChat's defaults unless the model's generation config says otherwise)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(
        GENERATION_DEFAULTS["temperature"], ge=0, le=100, allow_inf_nan=False, description="0: greedy decoding"
    )
    top_p: float = Field(
        GENERATION_DEFAULTS["top_p"], gt=0, le=1, allow_inf_nan=False, description="nucleus sampling: keep this mass"
    )
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens (0: all)")
    repetition_penalty: float = Field(
        GENERATION_DEFAULTS["repetition_penalty"],
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="divide the scores of tokens already in the text (1: none)",
    )
    min_p: float = Field(
        0.0, ge=0, le=1, allow_inf_nan=False, description="drop tokens under this fraction of the top one's probability"
    )
    presence_penalty: float = Field(
        0.0, ge=-2, le=2, allow_inf_nan=False, description="subtract from the logits of tokens already in the reply"
    )
    frequency_penalty: float = Field(
        0.0,
        ge=-2,
        le=2,
        allow_inf_nan=False,
        description="subtract this times each token's count in the reply from its logit",
    )
    max_new_tokens: int = Field(
        GENERATION_DEFAULTS["max_new_tokens"], ge=1, le=1_000_000, description="the longest reply, in tokens"
    )
    do_sample: bool = Field(True, description="sample (false: greedy decoding)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="seed of each reply's sampling (none: random)")

    @classmethod
    def names(cls) -> list[str]:
        return list(cls.model_fields)

    @classmethod
    def make(cls, where: str = "", **values) -> Sampling:
        """Validated settings from keyword values; a bad one raises SettingError naming it."""
        try:
            return cls(**values)
        except ValidationError as exc:
            loc = exc.errors()[0]["loc"] if exc.errors() else ()
            raise SettingError(f"{where}{why(exc)}", str(loc[0]) if loc else None) from None

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> Sampling:
        """Defaults from ``generation_config.json`` when the model dir has one (a hub id has none here; unknown
        keys ignored)."""
        path = Path(model_dir) / "generation_config.json"
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SettingError(f"{path}: not readable JSON ({exc})") from None
        values = {k: raw[k] for k in cls.model_fields if raw.get(k) is not None}
        return cls.make(where=f"{path}: ", **values)

    def with_value(self, name: str, text: str) -> Sampling:
        """A copy with ``name`` set from typed text (``/set NAME VALUE``); ``seed none`` clears the seed."""
        if name not in type(self).model_fields:
            raise SettingError(f"unknown setting {name!r}; one of {', '.join(self.names())}")
        text = text.strip()
        value: object = None if (name == "seed" and text.lower() == "none") else text
        return self.updated(**{name: value})

    def updated(self, **values) -> Sampling:
        unknown = set(values) - set(type(self).model_fields)
        if unknown:
            raise SettingError(f"unknown setting {sorted(unknown)[0]!r}; one of {', '.join(self.names())}")
        return self.make(**{**self.model_dump(), **values})

    def check_context(self, context: int) -> None:
        """max_new_tokens must leave room for a prompt in the model's context."""
        room = context - MIN_PROMPT_TOKENS
        if self.max_new_tokens > room:
            raise SettingError(
                f"max_new_tokens {self.max_new_tokens} leaves no room for a prompt in this model's "
                f"{context}-token context; use at most {room}",
                "max_new_tokens",
            )

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def generate_kwargs(self) -> dict:
        """Arguments for ``model.generate`` (sampling ones only when sampling). transformers has no presence or
        frequency penalty: they go in as a logits processor, which ``generate`` runs after the repetition penalty
        and before temperature, top_k, top_p and min_p (the order ``processors`` uses for the server)."""
        kw = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": not self.greedy,
            "repetition_penalty": self.repetition_penalty,
        }
        if not self.greedy:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
            if self.min_p > 0:
                kw["min_p"] = self.min_p
        if self.presence_penalty or self.frequency_penalty:
            kw["logits_processor"] = LogitsProcessorList(
                [PresenceFrequencyPenalty(self.presence_penalty, self.frequency_penalty)]
            )
        return kw

    def processors(self, prompt_len: int, repetition: bool = True) -> LogitsProcessorList:
        """The chain ``model.generate`` builds from ``generate_kwargs`` for one reply to a ``prompt_len``-token
        prompt (transformers' own processors, same order), so the batched server samples as the CLI does.
        ``repetition=False`` leaves out the repetition penalty (the engine applies it to the whole batch at once)."""
        out = LogitsProcessorList()
        if repetition and self.repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.presence_penalty or self.frequency_penalty:
            out.append(PresenceFrequencyPenalty(self.presence_penalty, self.frequency_penalty, prompt_len))
        if not self.greedy:
            if self.temperature != 1.0:
                out.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k != 0:
                out.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                out.append(TopPLogitsWarper(self.top_p))
            if self.min_p > 0:
                out.append(MinPLogitsWarper(self.min_p))
        return out

    def show(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.model_dump().items())


class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI's presence and frequency penalties: subtract ``presence`` from the logit of every token already in
    the reply and ``frequency`` times its count there (generated tokens only, never the prompt).

    Without ``prompt_len`` the first call's input is taken as the prompt, so use one instance per ``generate``."""

    def __init__(self, presence: float, frequency: float, prompt_len: int | None = None):
        self.presence, self.frequency, self.prompt_len = presence, frequency, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def why(exc: ValidationError) -> str:
    """Each failing field with pydantic's reason and the value given, in one line."""
    parts = []
    for e in exc.errors():
        field = ".".join(map(str, e["loc"])) or "settings"
        given = e.get("input")
        shown = f" (got {given!r})" if isinstance(given, (str, int, float)) and not isinstance(given, bool) else ""
        if isinstance(given, float) and not math.isfinite(given):
            shown = f" (got {given})"
        parts.append(f"{field}: {e['msg']}{shown}")
    return "; ".join(parts)
