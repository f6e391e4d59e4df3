"""Near-duplicate texts by MinHash LSH: data_prep drops near-copies across its inputs, and tokenization_prep keeps dev
rows that nearly copy a training row out of dev, so both share this one index.

A text is the set of its word shingles: words are the casefolded ``\\w+`` runs, a shingle is ``shingle``
consecutive words (a text with fewer words is one shingle of them all; a text without words is one empty
shingle). A record may carry a second text, its ``part`` (data_prep passes the bot replies): two records match
when the estimated Jaccard is >= threshold on the full texts AND on the parts (when both have one). Dolly asks
many questions over one long Wikipedia passage ("how many words did BookCorpus have" / "985 million words." and
"when was the first GPT trained" / "2018."): the full texts nearly match, the answers do not, and both are kept.

Work is split for worker processes: ``sketch`` (pure, deterministic: text -> signatures and band keys) and
``check_add_sketch`` (the index's lookups and inserts, in the main process). Every hash is fixed (a polynomial
hash of each word's bytes mod 2**64, combined per shingle; datasketch's seeded affine32 permutations), never
Python's salted ``hash()``, so every process gives the same sketch. Hashes are computed for all words of a text in
a few numpy operations: xxh32 called once per word from Python cost ~20 us of a Dolly record.

The band layout is datasketch's optimizer for the threshold, weighted for recall (14 bands of 9 rows at 0.8 and
128 permutations). The band tables are our own, not ``MinHashLSH``: it cost ~30 us a record (a Python
byteswap and ``bytes`` key per band, per query and insert) and ~4.8 kB a record in dicts of sets. Here all band
keys of a signature are one numpy product (each band's 9 rows mixed into one 60-bit key, the band in the top 4
bits); new keys go to a dict, which is merged into one sorted numpy array (12 bytes a key) whenever it holds
more than half as many keys. Candidates (every indexed record sharing a band key) are verified on the stored
signatures (uint32, ``num_perm`` a text and a part), so a match really has estimated Jaccard >= threshold, and
the first-indexed verified match is returned.

Cost on all of Dolly-15k (text: instruction, context, response, ~133 words; part: the response, ~61 words) on
this 2-core VM, measured 2026-12: sketch ~119 us with a part (~92 without), check_add_sketch ~18 us, ~1.36 kB a
record indexed with a part (tracemalloc; 1 kB of it the two signatures; ~0.79 kB without). Before (MinHashLSH,
xxh32 a word, no part): ~130 us a record all told and 5.4 kB. Since, in batches of 16: ~66 us with a part (~55
without): the reply's signature is read off the text's last shingles when the reply ends the text, and texts whose
only non-ASCII characters are common punctuation (dashes, curly quotes, no-break spaces) take the ASCII path.

    >>> index = NearDupIndex()
    >>> index.check_add("a", "The quick brown fox jumps over the lazy dog near the river bank today")
    >>> index.check_add("b", "the QUICK brown fox jumps over the lazy dog, near the river bank today!")
    ('a', 1.0)
    >>> index.check_add("c", "An entirely different sentence about tokenizers and packing rows"), len(index)
    (None, 2)
"""

from __future__ import annotations

import re
import sys
from typing import NamedTuple

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from datasketch.minhash import _fmix  # the affine32 scheme's mix (datasketch 2.x)

_WORD = re.compile(r"\w+")
# ASCII text (most of it) takes a fast path with the same words: A-Z become a-z (casefold) and every other byte
# outside [0-9a-z_] a space
_ASCII = bytes(
    c + 32 if 65 <= c <= 90 else c if c > 127 or chr(c).isalnum() or c == 95 else 32 for c in range(256)
)  # 95: "_"
# datasketch's band optimizer weighs false positives 0.1 and false negatives 0.9: a candidate is verified on its
# signature, so a false positive costs one comparison, while a false negative is a near-copy missed. At 0.8 and
# 128 permutations: 14 bands of 9 rows, an LSH recall of 0.87 at Jaccard 0.8, 0.975 at 0.85, 0.999 at 0.9
# (equal weights: 9 bands of 13, 0.40 / 0.69 / 0.93).
LSH_WEIGHTS = (0.1, 0.9)
_U64 = np.uint64
_BASE = _U64(0x100000001B3)  # odd (FNV-64's prime): the shingles' polynomial base
_POW: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # odd base -> (base**i, base**-i) mod 2**64, grown on demand


def _powers(base: np.uint64, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``base**i`` and ``base**-i`` mod 2**64 for i < n (at least), cached and grown by doubling."""
    pw = _POW.get(int(base))
    if pw is None or len(pw[0]) < n:
        size = max(1024, 1 << int(n - 1).bit_length())
        pw = tuple(
            np.concatenate([[_U64(1)], np.cumprod(np.full(size - 1, b, _U64))])  # wraps mod 2**64
            for b in (base, _U64(pow(int(base), -1, 1 << 64)))
        )
        _POW[int(base)] = pw
    return pw


def words(text: str) -> list[bytes]:
    """The casefolded ``\\w+`` runs of ``text``, UTF-8 encoded (the fast path's bytes split; the regex only for
    pieces holding non-ASCII characters).

    >>> words("Don't STOP-me_now, café—au lait!")
    [b'don', b't', b'stop', b'me_now', b'caf\\xc3\\xa9', b'au', b'lait']
    """
    if text.isascii():
        return text.encode().translate(_ASCII).split()
    out: list[bytes] = []
    for piece in text.casefold().encode().translate(_ASCII).split():
        if piece.isascii():
            out.append(piece)
        else:
            out += [w.encode() for w in _WORD.findall(piece.decode())]
    return out


# non-word characters common in English text (Dolly: ~60% of its non-ASCII texts hold no other non-ASCII): made
# spaces first, such a text takes the ASCII path (the same words: \\w never matches them)
_NON_WORD = (
    "\xa0\u2009\u200a\u200b\u202f\u2010\u2011\u2013\u2014\u2018"
    "\u2019\u201c\u201d\u2022\u2026\u2032\u2033\u2044\u2212\xb0\xb7\xd7\xab\xbb"
)


def _canonical(text: str) -> bytes:
    """The text's words joined by single spaces: what the shingle hashes are computed on."""
    if not text.isascii():
        for c in _NON_WORD:
            if c in text:
                text = text.replace(c, " ")
        if not text.isascii():
            return b" ".join(words(text))
    return b" ".join(text.encode().translate(_ASCII).split())


def _shingles(texts: list[str], shingle: int) -> tuple[np.ndarray, list[int]]:
    """uint32 hashes of each text's shingles, all texts' in order, and each text's shingle count (see
    ``_canon_shingles``)."""
    return _canon_shingles([_canonical(t) for t in texts], shingle)


def _canon_shingles(canon: list[bytes], shingle: int) -> tuple[np.ndarray, list[int]]:
    """uint32 hashes of each canonical text's shingles, all texts' in order, and each text's shingle count. A
    shingle's hash is a polynomial in its bytes (words joined by single spaces) mod 2**64, read off one prefix sum
    over all texts (its top 32 bits); a text without words has one empty shingle (hash 0)."""
    buf = b" " + b" ".join(canon) + b" "
    c = np.frombuffer(buf, np.uint8)
    pw, inv = _powers(_BASE, len(c))
    prefix = np.cumsum(c * pw[: len(c)])  # uint8 * uint64 -> uint64, wrapping
    spaces = np.flatnonzero(c == 32)  # word i of buf lies between spaces[i] and spaces[i + 1]
    counts = [t.count(b" ") + 1 if t else 0 for t in canon]  # words of each text
    widths = [min(shingle, n) for n in counts]  # 0: no words, one empty shingle
    sizes = [max(1, n - w + 1) for n, w in zip(counts, widths)]
    starts = np.cumsum([0] + [n + (not n) for n in counts[:-1]])  # an empty text still has its separator
    ends = np.cumsum(sizes)
    first = np.arange(ends[-1]) + np.repeat(starts - (ends - sizes), sizes)  # each shingle's first word
    lo, hi = spaces[first], spaces[first + np.repeat(widths, sizes)]
    h = (prefix[hi] - prefix[lo]) * inv[lo]
    return (h >> _U64(32)).astype(np.uint32), sizes


def shingle_hashes(text: str, shingle: int = 5) -> np.ndarray:
    """uint32 hashes of the text's ``shingle``-word shingles (one shingle when it has fewer words), in order.

    >>> bool((shingle_hashes("one two three", 2) == shingle_hashes("ONE two, three!", 2)).all())
    True
    >>> len(shingle_hashes("one two three", 5)), len(shingle_hashes("", 5))
    (1, 1)
    """
    return _shingles([text], shingle)[0]


def signature(hashes: np.ndarray, permutations: np.ndarray, sizes: list[int] | None = None) -> np.ndarray:
    """The MinHash of the shingle hashes: datasketch's ``update_batch`` (affine32 scheme: fmix, then
    ``a * h + b`` mod 2**32, min per permutation) on an array, without its per-value Python loop (a test holds
    the two equal). With ``sizes``, the hashes are consecutive groups and one signature row is given per group.

    >>> m = MinHash(num_perm=16, hashfunc=int)
    >>> m.update_batch([1, 2, 3])
    >>> bool((signature(np.array([1, 2, 3], np.uint32), m.permutations) == m.hashvalues).all())
    True
    """
    mixed = _mixed(hashes, permutations)
    if sizes is None:
        return mixed.min(axis=0)
    ends = np.cumsum(sizes).tolist()
    return np.stack([mixed[e - n : e].min(axis=0) for e, n in zip(ends, sizes)])  # reduceat: 3x slower


def _mixed(hashes: np.ndarray, permutations: np.ndarray) -> np.ndarray:
    """The permuted hashes, a row per hash and a column per permutation (``signature`` takes column minima)."""
    a, b = permutations
    mixed = np.repeat(_fmix(hashes, 32), len(a)).reshape(-1, len(a))  # contiguous: 3x faster than broadcasting
    mixed *= a
    mixed += b
    return mixed


class Sketch(NamedTuple):
    """What ``NearDupIndex.sketch`` computes and ``check_add_sketch`` indexes: the text's and the part's MinHash
    signatures (uint32, ``num_perm``; ``part`` None without one) and the text's band keys (uint64, one a band)."""

    text: np.ndarray
    part: np.ndarray | None
    bands: np.ndarray


class _Rows:
    """A growing uint32 table of signature rows, in chunks (no doubling: at most one chunk unused)."""

    CHUNK = 512

    def __init__(self, width: int):
        self.width, self.chunks, self.n = width, [], 0

    def append(self, row: np.ndarray) -> None:
        if self.n == len(self.chunks) * self.CHUNK:
            self.chunks.append(np.zeros((self.CHUNK, self.width), np.uint32))
        self.chunks[-1][self.n % self.CHUNK] = row
        self.n += 1

    def take(self, ids: list[int]) -> np.ndarray:
        return np.stack([self.chunks[i // self.CHUNK][i % self.CHUNK] for i in ids])

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)


class NearDupIndex:
    """Texts indexed by key; ``check_add`` keeps the first of each near-duplicate group (first-come is kept)."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle: int = 5, seed: int = 1):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold {threshold}: must be in (0, 1]")
        if shingle < 1:
            raise ValueError(f"shingle {shingle}: must be at least 1")
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.bands, self.rows = _optimal_param(threshold, num_perm, *LSH_WEIGHTS)
        self._perms = MinHash(num_perm=num_perm, seed=seed).permutations
        rng = np.random.default_rng(seed)  # fixed: the band keys' row multipliers (odd)
        self._row_mix = rng.integers(0, 2**63, self.rows, dtype=np.uint64) * _U64(2) + _U64(1)
        self._band_tag = np.arange(self.bands, dtype=np.uint64) << _U64(60)
        self._text, self._part = _Rows(num_perm), _Rows(num_perm)
        self._has_part = bytearray()
        self._keys: list[str] = []
        self._new: dict[int, int | list[int]] = {}  # band key -> record id(s), not yet merged
        self._sorted_keys = np.empty(0, np.uint64)  # merged band keys, sorted, and their record ids
        self._sorted_ids = np.empty(0, np.int32)

    def __len__(self) -> int:
        return len(self._keys)

    def sketch(self, text: str, part: str | None = None) -> Sketch:
        """The text's (and part's) signatures and band keys: pure and deterministic, for worker processes."""
        return self.sketches([(text, part)])[0]

    def sketches(self, items: list[tuple[str, str | None]]) -> list[Sketch]:
        """``sketch(text, part)`` of each item, computed together (the same sketches; numpy's per-call cost paid once
        for the batch, so keep batches small, ~16: the shingle-by-permutation matrix grows with it). A part whose
        words end the text's words (a single reply, last) with at least ``shingle`` of them has the text's last
        shingles, so its signature is read off the text's rows (~30% of a Dolly record's hashing saved)."""
        canon: list[bytes] = []
        spans = []  # per item: the text's group, and the part's (group, shingles from its end; 0: all) or None
        for text, part in items:
            canon.append(_canonical(text))
            ct, at = canon[-1], len(canon) - 1
            if part is None:
                spans.append((at, None))
                continue
            cp = _canonical(part)
            k = cp.count(b" ") + 1 if cp else 0
            if k >= self.shingle and ct.endswith(cp) and (len(ct) == len(cp) or ct[-len(cp) - 1] == 32):
                spans.append((at, (at, k - self.shingle + 1)))
            else:
                canon.append(cp)
                spans.append((at, (at + 1, 0)))
        hashes, sizes = _canon_shingles(canon, self.shingle)
        mixed = _mixed(hashes, self._perms)
        ends = np.cumsum(sizes).tolist()
        texts, parts = [], []
        for t, p in spans:
            texts.append(mixed[ends[t] - sizes[t] : ends[t]].min(axis=0))
            if p is not None:
                g, tail = p
                parts.append(mixed[ends[g] - (tail or sizes[g]) : ends[g]].min(axis=0))
            else:
                parts.append(None)
        sigs = np.stack(texts)
        bands = sigs[:, : self.bands * self.rows].reshape(len(items), self.bands, self.rows)
        bands = ((bands.astype(np.uint64) @ self._row_mix) >> _U64(4)) | self._band_tag
        return [Sketch(t, p, b) for t, p, b in zip(sigs, parts, bands)]

    def _candidates(self, sk: Sketch) -> list[int]:
        """Ids of every indexed record sharing a band key with ``sk``, sorted, unique."""
        found: list[int] = []
        for v in map(self._new.get, sk.bands.tolist()):
            if v is not None:
                found += v if isinstance(v, list) else [v]
        keys = self._sorted_keys
        if len(keys):
            lo = np.searchsorted(keys, sk.bands)
            for b in np.flatnonzero(keys[np.minimum(lo, len(keys) - 1)] == sk.bands).tolist():
                hi = np.searchsorted(keys, sk.bands[b], "right")
                found += self._sorted_ids[lo[b] : hi].tolist()
        return sorted(set(found))

    def _match(self, sk: Sketch) -> tuple[str, float] | None:
        """The first-indexed record whose estimated Jaccard with ``sk`` is >= threshold on the text and on the part
        (when both have one), and the text's estimate."""
        ids = self._candidates(sk)
        if not ids:
            return None
        est = (self._text.take(ids) == sk.text).mean(axis=1)
        ok = est >= self.threshold
        if sk.part is not None and self._part.n:
            has = np.frombuffer(self._has_part, np.uint8)[ids].astype(bool)
            ok &= ~has | ((self._part.take(ids) == sk.part).mean(axis=1) >= self.threshold)
        hits = np.flatnonzero(ok)
        return (self._keys[ids[hits[0]]], float(est[hits[0]])) if len(hits) else None

    def _insert(self, key: str, sk: Sketch) -> None:
        i = len(self._keys)
        self._text.append(sk.text)
        if sk.part is not None or self._part.n:  # part rows only once a part was seen (zeros: none)
            while self._part.n < i:
                self._part.append(0)
            self._part.append(0 if sk.part is None else sk.part)
        self._has_part.append(sk.part is not None)
        self._keys.append(key)
        new = self._new
        for k in sk.bands.tolist():
            v = new.setdefault(k, i)
            if v != i:
                new[k] = (v if isinstance(v, list) else [v]) + [i]
        if len(new) > max(1 << 16, len(self._sorted_keys) // 2):
            self._merge()

    def _merge(self) -> None:
        """Move the dict's band keys into the sorted arrays (a stable sort keeps ids in index order)."""
        items = [(k, i) for k, v in self._new.items() for i in (v if isinstance(v, list) else [v])]
        keys = np.concatenate([self._sorted_keys, np.fromiter((k for k, _ in items), np.uint64, len(items))])
        ids = np.concatenate([self._sorted_ids, np.fromiter((i for _, i in items), np.int32, len(items))])
        order = np.argsort(keys, kind="stable")
        self._sorted_keys, self._sorted_ids = keys[order], ids[order]
        self._new = {}

    def check_add_sketch(self, key: str, sketch: Sketch) -> tuple[str, float] | None:
        """A near-duplicate of an indexed record? Return (its key, estimated Jaccard of the texts) and index
        nothing; else index ``sketch`` under ``key`` and return None."""
        if len(sketch.text) != self.num_perm or len(sketch.bands) != self.bands:
            raise ValueError(f"sketch of {len(sketch.text)} permutations: this index has {self.num_perm}")
        found = self._match(sketch)
        if found is None:
            self._insert(key, sketch)
        return found

    def query_sketch(self, sketch: Sketch) -> tuple[str, float] | None:
        """(key, estimated Jaccard) of the first-indexed near-duplicate of a sketched record, or None."""
        return self._match(sketch)

    def add_sketch(self, key: str, sketch: Sketch) -> None:
        """Index a sketched record under ``key`` without checking it."""
        self._insert(key, sketch)

    def query(self, text: str, part: str | None = None) -> tuple[str, float] | None:
        """(key, estimated Jaccard) of the first-indexed near-duplicate of ``text``, or None; indexes nothing."""
        return self._match(self.sketch(text, part))

    def add(self, key: str, text: str, part: str | None = None) -> None:
        """Index ``text`` under ``key`` without checking it (keys are returned as given; they need not be unique)."""
        self._insert(key, self.sketch(text, part))

    def check_add(self, key: str, text: str, part: str | None = None) -> tuple[str, float] | None:
        """``check_add_sketch(key, sketch(text, part))``."""
        return self.check_add_sketch(key, self.sketch(text, part))

    def nbytes_estimate(self) -> int:
        """Approximate memory of the index: signature chunks as allocated, keys, merged band arrays, and the dict of
        new band keys (~70 bytes a key: its int and its slot). Within ~10% of tracemalloc on Dolly."""
        keys = sum(map(sys.getsizeof, self._keys)) + 8 * len(self._keys)
        sorted_ = self._sorted_keys.nbytes + self._sorted_ids.nbytes
        return self._text.nbytes + self._part.nbytes + len(self._has_part) + keys + sorted_ + 70 * len(self._new)
