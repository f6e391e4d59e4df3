"""Every data_prep command's settings, declared once as typed fields: the flags (``common.settings`` generates them),
the defaults, the choices and the checks all come from these models, for the CLI, ``--config FILE.yaml`` and Python.

``JobSettings`` holds what every command shares (output, overwrite, seed, format, strict, dedup); each command adds
its own fields. Unknown keys and bad choices are one ``ConfigError`` line naming the flag.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.chat_format import SYSTEM_RULES
from data_prep.dolly import DOLLY_HUB_ID
from data_prep.oasst import MODES, OASST_HUB_ID, OasstFilters
from data_prep.oig import BLOOMCHAT_OIG_FILES, DEFAULT_SAMPLE, OIG_HUB_ID
from data_prep.preferences import PAIR_MODES
from data_prep.writer import FORMATS


class JobSettings(BaseModel):
    """What every data_prep command shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_path: str = Field(description="output JSONL path")
    overwrite_output_path: bool = Field(False, description="replace an existing --output_path (refused otherwise)")
    seed: int = Field(42, description="seed for sampling and shuffling")
    format: Literal[FORMATS] = Field(
        "pairs",
        description="pairs: gdp list of prompt/completion pairs (trains on bot replies only); "
        "bloomchat: BLOOMChat's exact {'prompt': '', 'completion': text} records",
    )
    strict: bool = Field(
        False, description="stop at the first bad record (or missing OIG file) instead of quarantining it"
    )
    dedup: bool = Field(False, description="drop exact duplicates (normalized text hash) within and across sources")


def split_commas(values: list[str]) -> list[str]:
    """``["en,de", "fr"]`` -> ``["en", "de", "fr"]``: a list flag also takes comma-separated values."""
    return [x for v in values for x in v.split(",") if x]


class OaDollySettings(JobSettings):
    """``prepare_oa_dolly``: Dolly-15k + OASST1 -> BLOOMChat's stage 2 chat JSONL."""

    output_path: str = Field("data_prep/oasst1_dolly.jsonl", description="output JSONL path")
    dolly: str = Field(DOLLY_HUB_ID, description="hub id, file or directory ('' to skip)")
    oasst: str = Field(OASST_HUB_ID, description="hub id, file or directory ('' to skip)")
    oasst_split: str = Field("train", description="hub split to read (BLOOMChat: train)")
    oasst_mode: Literal[MODES] = Field(
        "best",
        description="best: highest net emoji score per level (BLOOMChat); rank: best rank; "
        "all-leaves: every root-to-leaf path",
    )
    oasst_lang: list[str] = Field([], description="languages to keep, e.g. en de (default: all)")
    oasst_drop_deleted: bool = Field(False, description="drop deleted messages")
    oasst_require_review: bool = Field(False, description="keep only review_result=true")

    @field_validator("oasst_lang")
    @classmethod
    def _split_langs(cls, langs: list[str]) -> list[str]:
        return split_commas(langs)

    def oasst_filters(self) -> OasstFilters:
        return OasstFilters(tuple(self.oasst_lang), self.oasst_drop_deleted, self.oasst_require_review)


class OigSettings(JobSettings):
    """``subsample_openchatkit``: LAION OIG files -> BLOOMChat's stage 1 chat JSONL."""

    output_path: str = Field("data_prep/bloom_ock_100K_each.jsonl", description="output JSONL path")
    oig: str = Field(OIG_HUB_ID, description="hub id, directory of OIG files, or one file")
    sample_size: int = Field(
        DEFAULT_SAMPLE, ge=1, description="lines sampled per file (seeded reservoir sample, not the head)"
    )
    upweight_basic: bool = Field(False, description="BLOOMChat's x1001 repetition of unified_basic.jsonl lines")
    keep_prosocial: bool = Field(False, description="keep lines whose source is 'prosocial'")
    files: list[str] = Field(
        list(BLOOMCHAT_OIG_FILES),
        description="OIG file names to read from a directory or the hub",
        json_schema_extra={"metavar": "NAME"},
    )

    @field_validator("files")
    @classmethod
    def _split_files(cls, files: list[str]) -> list[str]:
        return split_commas(files)


class ChatRecordsSettings(JobSettings):
    """``prepare_chat``: OpenAI ``messages`` / ShareGPT ``conversations`` records -> chat JSONL."""

    output_path: str = Field("data_prep/chat.jsonl", description="output JSONL path")
    input: list[str] = Field(
        min_length=1,
        description="files, directories or hub ids of chat records, one source each (NAME= sets its summary name)",
        json_schema_extra={"metavar": "[NAME=]SPEC"},
    )
    system: Literal[SYSTEM_RULES] = Field(
        "reject", description="system messages: reject the record, or fold the text into the first user message"
    )
    split: str = Field("train", description="hub split to read")


class PreferenceSettings(BaseModel):
    """``prepare_preferences``: OASST1 ranked sibling replies and held preference records -> preference pairs JSONL.

    Not a ``JobSettings``: ``--format`` and ``--dedup`` do not apply (one output form; exact duplicate pairs are
    always dropped) and nothing is sampled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_path: str = Field("data_prep/preferences.jsonl", description="output JSONL path")
    overwrite_output_path: bool = Field(False, description="replace an existing --output_path (refused otherwise)")
    oasst: str = Field(OASST_HUB_ID, description="OASST1 hub id, file or directory ('' to skip)")
    oasst_split: str = Field("train", description="hub split to read")
    input: list[str] = Field(
        [],
        description="files, directories or hub ids of preference records (prompt or messages, chosen, rejected), "
        "one source each (NAME= sets its source name)",
        json_schema_extra={"metavar": "[NAME=]SPEC"},
    )
    input_split: str = Field("train", description="hub split to read for --input hub ids")
    pairs: Literal[PAIR_MODES] = Field(
        "best-vs-rest",
        description="which ranked siblings to pair: best-vs-rest (the best against each other), all (every better "
        "against every worse), adjacent (each against the next rank)",
    )
    strict: bool = Field(False, description="stop at the first bad record instead of quarantining it")
