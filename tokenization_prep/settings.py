"""Every tokenization setting, typed and validated in one place (pydantic): built by keyword from the CLI flags
(gdp's snake_case names, so a field is its flag) or from Python, and refused with one line naming the flag."""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import DataError

BOUNDARIES = ("jsonl", "prompt_completion_pair")
SHUFFLES = ("False", "on_RAM", "large_file")


class ArticleSettings(BaseModel):
    """The gdp flags that change how a line becomes tokens."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    prompt_keyword: str = Field("prompt", min_length=1)
    completion_keyword: str = Field("completion", min_length=1)
    disable_space_separator: bool = False
    keep_prompt_only_sequences: bool = False
    packing_boundary: Literal["jsonl", "prompt_completion_pair"] = "jsonl"
    attention_boundary: Literal["jsonl", "prompt_completion_pair"] = "jsonl"
    is_text: bool = False  # plain text lines (.txt input): the whole line is completion
    prompt_prefix: str = ""  # gdp: put around every non-empty prompt, after the space-separator rule
    prompt_postfix: str = ""
    chat_render: Callable[[list[dict]], str] | None = Field(None, exclude=True)  # --apply_chat_template

    @field_validator("prompt_prefix", "prompt_postfix", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return "" if v is None else v


class PipelineConfig(BaseModel):
    """Every pipeline setting (gdp's flag names and meanings; ``seed``, ``model_config``, ``mix`` are ours)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    input_path: str
    output_path: str
    pretrained_tokenizer: str
    max_seq_length: int = Field(2048, ge=1)
    input_packing_config: str = "full"
    article: ArticleSettings = Field(default_factory=ArticleSettings)
    shuffle: Literal["False", "on_RAM", "large_file"] = "False"
    seed: int = Field(42, ge=0)
    num_training_splits: int | None = Field(None, ge=1)
    num_dev_splits: int | None = Field(None, ge=0)
    num_test_splits: int | None = Field(None, ge=0)
    dev_ratio: float | None = Field(None, ge=0, lt=1)
    test_ratio: float | None = Field(None, ge=0, lt=1)
    ignore_input_format_error: bool = False
    overwrite_output_path: bool = False
    categories_path: str | None = None
    do_not_balance_hdf5: bool = False
    keep_split_jsonls: bool = False
    special_tokens_dict: str | None = None
    model_config_path: str | None = Field(None, alias="model_config")  # pydantic reserves the name
    log_file_path: str | None = None  # default: logs.log in the output dir
    apply_chat_template: bool = False
    mix: str | None = None  # SOURCE=WEIGHT,... token-budget mixing of the training split (mixing.py)
    mix_tokens: str | int = "input"

    @field_validator("input_packing_config")
    @classmethod
    def _packing(cls, v: str) -> str:
        from tokenization_prep.packing import PackingConfig

        PackingConfig.parse(v)  # raises DataError with gdp's spelling
        return v

    @model_validator(mode="after")
    def _mix(self):
        if self.mix:
            from tokenization_prep.mixing import MixSpec

            MixSpec.parse(self.mix, self.mix_tokens)
        return self


def build(cls, **values):
    """``cls(**values)``, any invalid value refused as one DataError line naming its flag (``--field: why``)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        e = exc.errors()[0]
        flag = ([str(x) for x in e["loc"] if not isinstance(x, int)] or ["settings"])[-1]
        ctx = e.get("ctx", {})
        why = {
            "greater_than_equal": f"must be at least {ctx.get('ge')}",
            "less_than": f"must be below {ctx.get('lt')}",
            "literal_error": f"choose one of {ctx.get('expected')}",
        }.get(e["type"], e["msg"])
        if e["type"] == "value_error" and str(ctx.get("error", "")).startswith("--"):
            raise DataError(str(ctx["error"])) from None  # a validator's own one line, naming the flag
        raise DataError(f"--{flag} {e.get('input')}: {why}") from None
