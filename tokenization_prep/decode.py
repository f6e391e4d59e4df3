"""``python -m tokenization_prep decode FILE [--index N] [--explain]``: packed HDF5 rows, human-readable.

Prompt, completion, separator and padding are marked; with ``--explain``, where each article came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from common.cli import guard
from common.errors import DataError
from common.settings import add_settings, parse_settings
from tokenization_prep.provenance import has_provenance, name_tables, row_pieces
from tokenization_prep.schema import CHOSEN, COMPLETION, PADDING, PROMPT, REJECTED, SEP
from tokenization_prep.tokenizer_io import load_tokenizer

MARKS = {PROMPT: ("[PROMPT]", "[/PROMPT]"), COMPLETION: ("[COMPLETION]", "[/COMPLETION]")}
# a preference row (it holds rejected tokens): the completion is the chosen reply
PREFERENCE_MARKS = {**MARKS, CHOSEN: ("[CHOSEN]", "[/CHOSEN]"), REJECTED: ("[REJECTED]", "[/REJECTED]")}


def decode_sequence(tokenizer, ids: np.ndarray, types: np.ndarray) -> str:
    """Group runs of equal token type; SEP tokens print as <|SEP|>, trailing padding as a count."""
    marks = PREFERENCE_MARKS if (types == REJECTED).any() else MARKS
    out, i, n = [], 0, len(ids)
    while i < n:
        t = int(types[i])
        j = i
        while j < n and int(types[j]) == t:
            j += 1
        if t == PADDING:
            out.append(f"[PADDING x{j - i}]")
        elif t == SEP:
            out.append("<|SEP|>" * (j - i))
        else:
            start, end = marks.get(t, (f"[TYPE {t}]", f"[/TYPE {t}]"))
            out.append(start + tokenizer.decode(ids[i:j].tolist()) + end)
        i = j
    return "".join(out)


def explain_row(tokenizer, f, row: int, tables: dict | None = None) -> str:
    """Each article piece of a row: its origin (``INPUT_FILE:LINE``, source, id, category, token range), then its
    text with token types marked; trailing padding as a count."""
    ids, types = f["input_ids"][row], f["token_type_ids"][row]
    out, end = [], 0
    for k, p in enumerate(row_pieces(f, row, tables)):
        end = p.row_position + p.token_end - p.token_start
        part = (
            ""
            if (p.token_start, p.token_end) == (0, p.article_tokens)
            else f" tokens {p.token_start}-{p.token_end} of {p.article_tokens}"
        )
        out.append(
            f"--- article {k + 1}: {p.origin}  source={p.source or '-'} id={p.record_id or '-'} "
            f"category={p.category or '-'}{part}{' TRUNCATED' if p.truncated else ''}"
        )
        out.append(decode_sequence(tokenizer, ids[p.row_position : end], types[p.row_position : end]))
    if end < len(ids):
        out.append(decode_sequence(tokenizer, ids[end:], types[end:]))
    return "\n".join(out)


def decode_file(path: Path, tokenizer, index: int | None = None, explain: bool = False) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        ids, types = f["input_ids"], f["token_type_ids"]
        rows = range(len(ids)) if index is None else [index]
        if index is not None and not 0 <= index < len(ids):
            raise DataError(f"--index {index} out of range: {path} has {len(ids)} sequences")
        if explain and not has_provenance(f):
            raise DataError(
                f"{path} has no provenance (written by generative_data_prep or an older "
                "tokenization_prep); re-tokenize it with python -m tokenization_prep to use --explain"
            )
        if explain:
            tables = name_tables(f)
            return [f"=== sequence {r} ===\n" + explain_row(tokenizer, f, r, tables) for r in rows]
        return [f"=== sequence {r} ===\n" + decode_sequence(tokenizer, ids[r], types[r]) for r in rows]


class DecodeSettings(BaseModel):
    """The ``decode`` command's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str = Field(description="an HDF5 file of a tokenized output", json_schema_extra={"positional": True})
    index: int | None = Field(None, description="the row to print (default: every row)")
    pretrained_tokenizer: str | None = Field(None, description="default: the tokenizer/ saved beside the file")
    explain: bool = Field(
        False, description="print each article's origin (INPUT_FILE:LINE, source, id, category), then its text"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenization_prep decode", description=__doc__.splitlines()[0])
    add_settings(parser, DecodeSettings)
    s = parse_settings(parser, DecodeSettings, argv)
    tok = load_tokenizer(s.pretrained_tokenizer or str(Path(s.file).resolve().parent / "tokenizer"))
    for block in decode_file(Path(s.file), tok, s.index, s.explain):
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
