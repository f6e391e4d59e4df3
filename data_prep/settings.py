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
from data_prep.oasst_labels import DEFAULT_DETOXIFY_MAX, DEFAULT_LABEL_MAX, DEFAULT_QUALITY_MIN, parse_thresholds
from data_prep.oig import BLOOMCHAT_OIG_FILES, DEFAULT_SAMPLE, OIG_HUB_ID
from data_prep.pii import PII_MODES
from data_prep.preferences import PAIR_MODES
from data_prep.writer import FORMATS


def split_commas(values: list[str]) -> list[str]:
    """``["en,de", "fr"]`` -> ``["en", "de", "fr"]``: a list flag also takes comma-separated values."""
    return [x for v in values for x in v.split(",") if x]


def license_field():
    """``--license``, declared once for every command that reads data users hold."""
    return Field(
        [],
        description="SPDX id of the inputs' license (e.g. CC-BY-4.0, Apache-2.0), written on every record and in "
        "the data card; NAME=SPDX sets one input's (default: NOASSERTION, which --commercial_only refuses)",
        json_schema_extra={"metavar": "[NAME=]SPDX"},
    )


def commercial_only_field():
    """``--commercial_only``, declared once."""
    return Field(
        False,
        description="refuse any input whose license does not allow commercial use (e.g. CC-BY-NC-4.0)",
        json_schema_extra={"aliases": ["--commercial-only"]},
    )


class QualitySettings(BaseModel):
    """The quality pass every chat job runs on each conversation, in this order: PII, language, exact duplicates,
    decontamination, near-duplicates (``data_prep/quality.py``). Every drop is counted and quarantined."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pii: Literal[PII_MODES] = Field(
        "scrub",
        description="e-mail addresses, phone numbers, IP addresses, card numbers (Luhn-checked) ...: scrub them to "
        "typed placeholders like <EMAIL>, drop the conversation, or off",
    )
    languages: list[str] = Field(
        [],
        description="keep only conversations detected as these languages (codes as en fr de, commas work too); "
        "default: keep all (each record is tagged with its language either way)",
        json_schema_extra={"metavar": "CODE"},
    )
    decontaminate: list[str] = Field(
        [],
        description="evaluation prompt files (JSONL or text, one item a line): drop every conversation that shares "
        "a word n-gram with any item (the rejects name the item)",
        json_schema_extra={"metavar": "FILE"},
    )
    decontaminate_ngram: int = Field(
        13, ge=1, description="n of the shared word n-gram (13, as GPT-3 and open-instruct)"
    )
    near_dup: bool = Field(
        True,
        description="drop near-duplicate conversations (MinHash LSH over word shingles, within and across all inputs; "
        "the first in output order is kept and named in each reject)",
    )
    near_dup_threshold: float = Field(
        0.8, gt=0, le=1, description="estimated Jaccard similarity of word shingles from which two are near-duplicates"
    )
    near_dup_shingle: int = Field(5, ge=1, le=50, description="words per shingle")
    near_dup_num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: sharper, slower)")
    commercial_only: bool = commercial_only_field()
    num_workers: int = Field(
        0, ge=0, description="processes for the quality pass (0: one per core); the output is the same for any number"
    )

    @field_validator("languages", "decontaminate")
    @classmethod
    def _split(cls, values: list[str]) -> list[str]:
        return split_commas(values)


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
    quality: QualitySettings = Field(default_factory=QualitySettings)


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
    oasst_drop_deleted: bool = Field(True, description="drop messages OASST1 marks deleted (BLOOMChat kept them)")
    oasst_require_review: bool = Field(
        True, description="keep only messages whose review_result is true (BLOOMChat kept all)"
    )
    oasst_drop_synthetic: bool = Field(True, description="drop messages OASST1 marks synthetic (BLOOMChat kept them)")
    oasst_label_max: list[str] = Field(
        [],
        description="drop a message whose volunteers' mean label NAME reaches VALUE (0 < VALUE <= 1), over the "
        "defaults " + ", ".join(f"{k}={v}" for k, v in DEFAULT_LABEL_MAX.items()) + "; NAME=off turns one off",
        json_schema_extra={"metavar": "NAME=VALUE"},
    )
    oasst_quality_min: float = Field(
        DEFAULT_QUALITY_MIN, ge=0, le=1, description="drop a message whose mean 'quality' label is below this (0: off)"
    )
    oasst_detoxify_max: list[str] = Field(
        [],
        description="drop a message whose detoxify score NAME reaches VALUE, over the defaults "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_DETOXIFY_MAX.items())
        + "; NAME=off turns one off",
        json_schema_extra={"metavar": "NAME=VALUE"},
    )
    oasst_keep_flagged: bool = Field(
        False,
        description="BLOOMChat's choice: keep deleted, unreviewed, synthetic and flagged messages (every label, "
        "detoxify, review, deleted and synthetic filter off)",
    )

    @field_validator("oasst_lang")
    @classmethod
    def _split_langs(cls, langs: list[str]) -> list[str]:
        return split_commas(langs)

    @field_validator("oasst_label_max", "oasst_detoxify_max")
    @classmethod
    def _check_thresholds(cls, values: list[str], info) -> list[str]:
        parse_thresholds(split_commas(values), f"--{info.field_name}", {})  # a UserError line names flag and value
        return split_commas(values)

    def oasst_filters(self) -> OasstFilters:
        if self.oasst_keep_flagged:
            return OasstFilters(tuple(self.oasst_lang))
        return OasstFilters(
            tuple(self.oasst_lang),
            self.oasst_drop_deleted,
            self.oasst_require_review,
            drop_synthetic=self.oasst_drop_synthetic,
            label_max=parse_thresholds(self.oasst_label_max, "--oasst_label_max", DEFAULT_LABEL_MAX),
            quality_min=self.oasst_quality_min,
            detoxify_max=parse_thresholds(self.oasst_detoxify_max, "--oasst_detoxify_max", DEFAULT_DETOXIFY_MAX),
        )


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
    license: list[str] = license_field()


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
    license: list[str] = license_field()
    commercial_only: bool = commercial_only_field()
