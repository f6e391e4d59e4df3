"""Token-budget mixing (``--mix``): choose how much of each source the training split holds, by the supervised
(completion and end-of-article) tokens that will actually be trained, not by lines.

``--mix dolly=0.7,oasst=0.3`` asks for those shares of a budget (``--mix_tokens``: ``input``, the split's own
supervised tokens, the default; ``upsample``, the smallest budget at which no named source loses data; or a token
count). ``--mix oig=x1001,dolly=x1`` asks for repeat factors instead (BLOOMChat repeated one OIG file 1001 times).
A source below its target is repeated whole ``floor(f)`` times plus a seeded sample for the rest; one above it is
sampled without replacement. Records without a ``source`` are the source ``-``; a source not named is left out.
Tokens an article loses to ``max_seq_length`` do not count, so the realized shares match the requested ones.
The ``--mix`` text is parsed once, into a ``settings.MixSpec``, when the settings are built.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from common.errors import DataError
from tokenization_prep.hdf5_io import TokenStore
from tokenization_prep.packing import PackingConfig
from tokenization_prep.schema import COMPLETION, SEP
from tokenization_prep.settings import MixSpec


def trainable_supervised(store: TokenStore, max_len: int, config: PackingConfig) -> np.ndarray:
    """Per article, the supervised tokens that survive ``max_seq_length`` (dropped: 0; truncated: the kept side)."""
    counts = np.frombuffer(store.type_counts, dtype=np.int32).reshape(-1, 4)
    sup = counts[:, COMPLETION].astype(np.int64) + counts[:, SEP]
    if config.overflow is None or config.style == "full":
        return sup
    lengths = np.frombuffer(store.lengths, dtype=np.int32)
    for a in np.flatnonzero(lengths > max_len).tolist():
        if config.overflow == "drop":
            sup[a] = 0
        else:
            s = 0 if config.overflow == "truncate_right" else lengths[a] - max_len
            c = store.range_counts(a, s, s + max_len)
            sup[a] = int(c[COMPLETION] + c[SEP])
    return sup


def _sample(articles: np.ndarray, sup: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """A seeded sample without replacement whose supervised tokens come closest to ``target``."""
    if target <= 0 or not len(articles):
        return articles[:0]
    perm = rng.permutation(articles)
    cum = np.cumsum(sup[perm])
    k = int(np.searchsorted(cum, target))  # first prefix reaching the target: k + 1 articles
    if k >= len(perm):
        return perm
    under = cum[k - 1] if k else 0
    return perm[: k + 1] if cum[k] - target <= target - under else perm[:k]


def select(store: TokenStore, spec: MixSpec, sup: np.ndarray, seed: int) -> tuple[np.ndarray, dict, list[str]]:
    """The mixed training articles (store indices, repeats included, in a seeded order), each source's requested
    share, and warnings. Deterministic for a seed."""
    names = store.names(store.source_names)
    codes = np.frombuffer(store.sources, dtype=np.int32)
    by_source = {("-" if c < 0 else names[c]): np.flatnonzero(codes == c).astype(np.int32) for c in np.unique(codes)}
    missing = [s for s in spec.weights if s not in by_source]
    if missing:
        raise DataError(
            f"--mix: source {', '.join(repr(s) for s in missing)} is not in the training split "
            f"(its sources: {', '.join(sorted(by_source))}); a record's source is its 'source' field"
        )
    totals = {s: int(sup[a].sum()) for s, a in by_source.items()}
    for s, w in spec.weights.items():
        if w > 0 and totals[s] == 0:
            raise DataError(
                f"--mix: source '{s}' has no supervised tokens within max_seq_length to mix; give it "
                "weight 0 or leave it out"
            )
    if spec.repeat:
        targets = {s: w * totals[s] for s, w in spec.weights.items()}
    else:
        budget = (
            sum(totals.values())
            if spec.budget == "input"
            else max(totals[s] / w for s, w in spec.weights.items() if w > 0)
            if spec.budget == "upsample"
            else spec.budget
        )
        targets = {s: w * budget for s, w in spec.weights.items()}
    chosen = []
    for s in sorted(targets):
        f = targets[s] / totals[s] if totals[s] else 0.0
        whole = math.floor(f + 1e-9)  # f within rounding of an integer is that many whole repeats
        rest = max(0.0, targets[s] - whole * totals[s]) if abs(f - round(f)) > 1e-9 else 0.0
        rng = np.random.default_rng([seed, zlib.crc32(s.encode())])
        chosen += [np.tile(by_source[s], whole), _sample(by_source[s], sup, rest, rng)]
    order = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int32)
    order = order[np.random.default_rng([seed, 1]).permutation(len(order))].astype(np.int32)
    left_out = sorted(set(by_source) - set(spec.weights))
    warnings = (
        [
            f"warning: --mix leaves out source(s) {', '.join(left_out)} of the training split (not named); "
            "name them with a weight to keep them"
        ]
        if left_out
        else []
    )
    grand = sum(targets.values())
    return order, {s: targets.get(s, 0.0) / grand for s in by_source}, warnings


def realized(store: TokenStore, trained: dict, copies: np.ndarray, kept: np.ndarray, requested: dict | None) -> dict:
    """Per source: requested share (None without ``--mix``), realized share of the supervised tokens in the written
    rows, those tokens, articles written (copies counted) and repeats (copies per input article)."""
    names = store.names(store.source_names)
    codes = np.frombuffer(store.sources, dtype=np.int32)
    total = sum(trained.values()) or 1
    out = {}
    for c in np.unique(codes).tolist():
        name = "-" if c < 0 else names[c]
        mine = codes == c
        written = int((copies[mine] * (kept[mine] > 0)).sum())
        out[name] = {
            "requested": None if requested is None else round(requested.get(name, 0.0), 6),
            "realized": round(trained.get(c, 0) / total, 6),
            "supervised_tokens": int(trained.get(c, 0)),
            "articles": written,
            "repeats": round(float(copies[mine].sum()) / int(mine.sum()), 4),
        }
    return out
