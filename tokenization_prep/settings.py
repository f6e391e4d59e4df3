"""Every tokenization setting, declared once as a typed field (gdp's flag names and meanings; ``seed``,
``model_config``, ``mix`` are ours): ``common.settings`` generates the flags from these fields, and
``--config FILE.yaml`` (``tokenization_prep/configs/``) gives the same settings as a recipe.

Fields hold parsed values: the packing config is a ``PackingConfig`` and the mix a ``MixSpec``, parsed once when
the settings are built; a bad value is one ``ConfigError`` line naming its flag. Nothing changes them afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from common.errors import ConfigError
from tokenization_prep.packing import PackingConfig

BOUNDARY = Literal["jsonl", "prompt_completion_pair"]
BUDGETS = ("input", "upsample")
PIPELINE_ONLY = (  # pipeline fields that gdp's one-file data_prep command does not take
    "shuffle",
    "seed",
    "num_training_splits",
    "num_dev_splits",
    "num_test_splits",
    "dev_ratio",
    "test_ratio",
    "do_not_balance_hdf5",
    "keep_split_jsonls",
    "model_config_path",
    "mix",
    "mix_tokens",
    "dev_trees_from",
    "preference_overflow",
    "dev_leakage",
    "engine",
    "ray_address",
)


@dataclass(frozen=True)
class MixSpec:
    """``--mix`` parsed (``tokenization_prep/mixing.py``): weights (shares, normalized) or repeat factors, the token
    budget for shares, and the text as given (what metadata.yaml records).

    >>> MixSpec.parse("dolly=3,oasst=1").weights
    {'dolly': 0.75, 'oasst': 0.25}
    >>> MixSpec.parse("oig=x1001", "upsample")
    MixSpec(weights={'oig': 1001.0}, repeat=True, budget='upsample', text='oig=x1001')
    """

    weights: dict[str, float]
    repeat: bool = False
    budget: str | int = "input"
    text: str = ""

    @classmethod
    def parse(cls, text: str, budget: str | int = "input") -> "MixSpec":
        weights, kinds = {}, set()
        for item in (x.strip() for x in text.split(",")):
            name, sep, value = item.rpartition("=")
            repeat = value.strip().lower().startswith("x")
            try:
                number = float(value.strip()[1:] if repeat else value)
            except ValueError:
                number = math.nan
            if not sep or not name.strip() or not math.isfinite(number) or number < 0:
                raise ConfigError(
                    f"--mix {text}: '{item}' is not SOURCE=WEIGHT (a share such as dolly=0.7, or a repeat "
                    "factor such as oig=x1001, never negative)"
                )
            if name.strip() in weights:
                raise ConfigError(f"--mix {text}: source '{name.strip()}' is named twice")
            weights[name.strip()] = number
            kinds.add(repeat)
        if len(kinds) > 1:
            raise ConfigError(f"--mix {text}: give all weights as shares (0.7) or all as repeat factors (x2), not both")
        if not sum(weights.values()) > 0:
            raise ConfigError(f"--mix {text}: the weights sum to zero; give at least one source a positive weight")
        repeat = kinds == {True}
        total = sum(weights.values())
        shares = {k: v if repeat else v / total for k, v in weights.items()}
        return cls(shares, repeat, parse_budget(budget), text)

    def __str__(self) -> str:
        return self.text


def parse_budget(text: str | int) -> str | int:
    """``--mix_tokens``: ``input``, ``upsample`` or a positive number of supervised tokens (``1_000`` allowed)."""
    if isinstance(text, int) or str(text) in BUDGETS:
        return text
    try:
        n = int(str(text).replace("_", ""))
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--mix_tokens {text}: give 'input', 'upsample' or a positive number of supervised tokens")
    return n


class ArticleSettings(BaseModel):
    """The gdp flags that change how a line becomes tokens (``tokenization_prep/articles.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt_keyword: str = Field("prompt", min_length=1, description="the prompt's key in each pair")
    completion_keyword: str = Field("completion", min_length=1, description="the completion's key in each pair")
    disable_space_separator: bool = Field(
        False,
        description="keep the text as is (gdp's default: strip the prompt's trailing spaces, one before the "
        "completion)",
    )
    keep_prompt_only_sequences: bool = Field(
        False, description="keep pairs with an empty completion and rows without completion tokens"
    )
    packing_boundary: BOUNDARY = Field("jsonl", description="the unit packed whole: a line or each pair")
    attention_boundary: BOUNDARY = Field("jsonl", description="where the end-of-article token goes")
    # is_text and chat_render are facts of the run, not settings: the command sets them from the input and tokenizer
    is_text: bool = Field(False, json_schema_extra={"cli": False})  # .txt input: the whole line is completion
    prompt_prefix: str = Field("", description="text put before every non-empty prompt")
    prompt_postfix: str = Field("", description="text put after every non-empty prompt")
    chat_render: Callable[[list[dict]], str] | None = Field(  # --apply_chat_template
        None, exclude=True, json_schema_extra={"cli": False}
    )

    @field_validator("prompt_prefix", "prompt_postfix", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return "" if v is None else v


class PipelineConfig(BaseModel):
    """Every setting of ``pipeline`` (and of ``data_prep``, which takes all but ``PIPELINE_ONLY``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    input_path: str = Field(
        description="JSONL (pairs, prompt/completion) or .txt file; pipeline also takes a directory",
        json_schema_extra={"aliases": ["--input_file_path"]},
    )
    output_path: str = Field(description="output directory (pipeline) or .hdf5 file (data_prep)")
    pretrained_tokenizer: str = Field(description="hub id or local tokenizer dir")
    max_seq_length: int = Field(2048, ge=1, description="tokens per row")
    input_packing_config: PackingConfig = Field(
        PackingConfig("full"),
        description="full, or greedy|single|bfd :: drop|truncate_left|truncate_right",
        validate_default=True,
    )
    article: ArticleSettings = Field(default_factory=ArticleSettings)
    shuffle: Literal["False", "on_RAM", "large_file"] = Field(
        "False",
        description="False: gdp's round robin, line k to split k %% splits; on_RAM/large_file: our seeded shuffle "
        "(both shuffle line offsets, out of core)",
        json_schema_extra={"nargs": "?", "const": "False"},
    )
    seed: int = Field(42, ge=0, description="ours: the shuffle's seed (gdp's is unseeded)")
    num_training_splits: int | None = Field(
        None, ge=1, description="default as gdp: 32 under 10 GiB of input, 128 under 100 GiB, else 256"
    )
    num_dev_splits: int | None = Field(None, ge=0, description="dev files (with the other two counts)")
    num_test_splits: int | None = Field(None, ge=0, description="test line files (with the other two counts)")
    dev_ratio: float | None = Field(None, ge=0, lt=1, description="share of the lines for dev files")
    test_ratio: float | None = Field(None, ge=0, lt=1, description="share of the lines for test line files")
    ignore_input_format_error: bool = Field(
        False, description="skip bad lines (logged to skipped_lines.jsonl) instead of stopping"
    )
    overwrite_output_path: bool = Field(False, description="replace a finished output")
    categories_path: str | None = Field(
        None, description="JSON file with the list of category names; each record's 'category' -> category_ids"
    )
    do_not_balance_hdf5: bool = Field(
        False, description="keep each file's own rows (default: equal row counts within one, as gdp)"
    )
    keep_split_jsonls: bool = Field(False, description="keep splits/ with each file's input lines")
    special_tokens_dict: str | None = Field(
        None, description='special tokens to add, as a JSON dict, e.g. \'{"sep_token": "[SEP]"}\''
    )
    model_config_path: str | None = Field(  # pydantic reserves the name model_config: the flag is its alias
        None,
        alias="model_config",
        description="ours: model dir or hub id for metadata's tokenizer_model_type (default: the tokenizer's)",
    )
    log_file_path: str | None = Field(
        None, description="log file (pipeline default: logs.log in the output dir; data_prep: none unless given)"
    )
    apply_chat_template: bool = Field(False, description="render pairs with the tokenizer's chat template (gdp's rule)")
    mix: MixSpec | None = Field(
        None,
        description="ours: SOURCE=SHARE,... of the training split's supervised tokens (dolly=0.7,oasst=0.3), or "
        "SOURCE=xN repeat factors (oig=x1001); sources from each record's 'source'",
    )
    mix_tokens: str | int = Field(
        "input",
        description="ours: the supervised-token budget of share weights: input (the split's own), upsample (no "
        "named source loses data) or a number",
    )
    dev_trees_from: str | None = Field(
        None,
        description="preference input: dev = the pairs whose tree_id is a record id of this stage-2 tokenized dir's "
        "dev rows (default: the seeded tree rule with --dev_ratio)",
    )
    preference_overflow: Literal["truncate_prompt", "drop"] = Field(
        "truncate_prompt",
        description="preference input: a pair longer than max_seq_length loses tokens from the prompt's start "
        "(dropped when the replies leave no prompt token), or is dropped",
    )
    dev_leakage: Literal["move", "drop", "off"] = Field(
        "move",
        description="ours: dev and test lines that nearly copy a training line (MinHash, estimated Jaccard >= 0.8 "
        "on 5-word shingles of their prompts and completions) move to that line's training file, or are dropped; "
        "off: no check (SFT input only)",
    )
    num_workers: int | None = Field(
        None,
        ge=1,
        exclude=True,
        description="worker processes that read, tokenize and write (default: every core; the output is the same "
        "bytes for any number)",
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        exclude=True,
        description="local: this machine's processes; ray: Ray tasks on a cluster (the optional extra: "
        "bash scripts/install_ray.sh), same bytes out",
    )
    ray_address: str | None = Field(
        None,
        exclude=True,
        description="--engine ray: the cluster to use (HOST:PORT of `ray start --head`, or auto); default: a "
        "local one started for the run",
    )

    @field_validator("input_packing_config", mode="before")
    @classmethod
    def _packing(cls, v):
        return PackingConfig.parse(v) if isinstance(v, str) else v  # a ConfigError with gdp's spelling

    @field_validator("shuffle", mode="before")
    @classmethod
    def _yaml_false(cls, v):
        return "False" if v is False else v  # YAML reads `shuffle: False` as a bool

    @model_validator(mode="before")
    @classmethod
    def _mix(cls, values):
        if isinstance(values, dict) and isinstance(values.get("mix"), str):  # "" as not given, as gdp's flags
            mix = values["mix"] and MixSpec.parse(values["mix"], values.get("mix_tokens", "input"))
            values = {**values, "mix": mix or None}
        return values

    @field_serializer("input_packing_config", "mix")
    def _as_given(self, v):
        return None if v is None else str(v)
