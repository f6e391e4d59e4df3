"""The chat and serve commands' settings, declared once as typed fields (``common.settings`` generates their flags).

``ModelSettings`` (which model, on which device, in which dtype, quantized or not) is shared by both commands; each
adds its own fields. The chat's sampling flags are generated from ``Sampling``'s fields, which hold their checks.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from common.chat_format import SYSTEM_RULES
from common.settings import command_parser, parse_settings
from inference.sampling import Sampling

Dtype = Literal["auto", "bf16", "fp16", "fp32"]
Quantization = Literal["8bit", "4bit"]


class ModelSettings(BaseModel):
    """Which model to load and how: shared by ``chat`` and ``serve``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="save_pretrained dir, hub id, or LoRA adapter dir")
    device: str = Field("auto", description="auto (every GPU, else the CPU), cpu, cuda or cuda:N")
    dtype: Dtype = Field("auto", description="weights' dtype (auto: bf16 or fp16 on a GPU, fp32 on the CPU)")
    quantize: Quantization | None = Field(None, description="load in 8 or 4 bits (bitsandbytes, CUDA)")


def _not_none(annotation):
    """``int | None`` -> ``int``; any other type as it is."""
    return next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)


# One optional flag per sampling setting but do_sample (--greedy), with the setting's checks (a bad value fails before
# the model loads); unset means the model's generation_config.json.
SamplingFlags = create_model(
    "SamplingFlags",
    __config__=ConfigDict(extra="forbid", frozen=True),
    **{
        name: (
            Annotated[_not_none(field.annotation), *field.metadata] | None,
            Field(None, description=f"{field.description} (default: the model's generation_config.json)"),
        )
        for name, field in Sampling.model_fields.items()
        if name != "do_sample"
    },
)


class ChatSettings(SamplingFlags, ModelSettings):
    """``python -m inference chat``."""

    model: str = Field(
        "training/ckpt/stage2_oa_dolly/final", description="save_pretrained dir, hub id, or LoRA adapter dir"
    )
    greedy: bool = Field(False, description="deterministic replies (no sampling)")
    verbose: bool = Field(False, description="show time to first token and tokens/s per reply")
    history_file: str | None = Field(None, description="readline history (default under ~/.local/state; '' for none)")
    message: str | None = Field(None, description="send one message, print the reply, exit")

    def sampling_overrides(self) -> dict:
        """The sampling settings given on the command line (``--greedy`` is ``do_sample=False``)."""
        given = {name: getattr(self, name) for name in SamplingFlags.model_fields if getattr(self, name) is not None}
        return {**given, "do_sample": False} if self.greedy else given


class ServeSettings(ModelSettings):
    """``python -m inference serve``."""

    host: str = Field("127.0.0.1", description="address to listen on (loopback only by default)")
    port: int = Field(8000, description="TCP port (0: any free port)")
    name: str | None = Field(None, description="model id clients send (default: the stage or dir name)")
    system: Literal[SYSTEM_RULES] = Field(
        "reject",
        description="system messages: 400 (the format has none), or fold them into the first user message "
        "as python -m data_prep prepare_chat --system fold does",
    )
    max_batch: int = Field(
        16, ge=1, le=1024, description="the most requests decoded together (continuous batching; 1: one at a time)"
    )
    api_key: str | None = Field(
        None,
        description="require 'Authorization: Bearer KEY' on /v1 routes (401 otherwise); default: the "
        "INFERENCE_API_KEY environment variable, else no key",
    )
    cors_origin: list[str] = Field(
        [], description="origins allowed to call the API from a browser (CORS), e.g. http://localhost:3000; '*': any"
    )
    max_request_bytes: int = Field(1_000_000, ge=1024, description="the largest request body accepted (413 above it)")
    shutdown_timeout: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="on SIGINT/SIGTERM, seconds to let in-flight replies finish before cancelling them",
    )

    @field_validator("port")
    @classmethod
    def _a_port(cls, port: int) -> int:
        if not 0 <= port <= 65535:
            raise ValueError(f"{port!r} is not a port (0-65535)")
        return port


S = TypeVar("S", bound=ModelSettings)


def parse_command(command: str, doc: str, model: type[S], argv: Sequence[str] | None) -> S:
    """``model`` from ``argv`` (a YAML ``--config`` first, then the flags given); ``doc``'s first line is the help."""
    return parse_settings(command_parser(f"python -m inference {command}", doc, model, config=True), model, argv)
