"""Human-readable view of packed HDF5 sequences: prompt, completion, separator and padding marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenization_prep.articles import COMPLETION, PADDING, PROMPT, SEP

MARKS = {PROMPT: ("[PROMPT]", "[/PROMPT]"), COMPLETION: ("[COMPLETION]", "[/COMPLETION]")}


def decode_sequence(tokenizer, ids: np.ndarray, types: np.ndarray) -> str:
    """Group runs of equal token type; SEP tokens print as <|SEP|>, trailing padding as a count."""
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
            start, end = MARKS.get(t, (f"[TYPE {t}]", f"[/TYPE {t}]"))
            out.append(start + tokenizer.decode(ids[i:j].tolist()) + end)
        i = j
    return "".join(out)


def decode_file(path: Path, tokenizer, index: int | None = None) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        ids, types = f["input_ids"], f["token_type_ids"]
        rows = range(len(ids)) if index is None else [index]
        if index is not None and not 0 <= index < len(ids):
            raise IndexError(f"--index {index} out of range: {path} has {len(ids)} sequences")
        return [f"=== sequence {r} ===\n" + decode_sequence(tokenizer, ids[r], types[r]) for r in rows]
