"""common/near_dup.py on real Dolly records: planted near-copies caught and naming the kept key, distinct records
left alone (false positives counted against the exact shingle Jaccard), determinism across processes, short
texts, the threshold's edge, the signature held equal to datasketch's own update, and the part (the reply): many
questions over one Wikipedia passage are kept, real copies are still caught."""

import gzip
import hashlib
import itertools
import pickle
import subprocess
import sys

import numpy as np
import orjson
import pytest
from datasketch import MinHash

from common.near_dup import NearDupIndex, Sketch, _canonical, shingle_hashes, signature, words
from tests.conftest import DOLLY, ROOT


@pytest.fixture(scope="module")
def dolly() -> list[str]:
    """The first 2,500 Dolly records rendered as the index sees them: instruction, context, response."""
    with gzip.open(DOLLY, "rb") as fh:
        recs = [orjson.loads(line) for line in itertools.islice(fh, 2500)]
    return [f"{r['instruction']}\n{r['context']}\n{r['response']}" for r in recs]


def jaccard(a: str, b: str) -> float:
    """The exact Jaccard of two texts' shingle-hash sets (what MinHash estimates)."""
    x, y = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    return len(x & y) / len(x | y)


def change_words(text: str, every: int) -> str:
    """Every ``every``-th word replaced: a light edit of a real record."""
    return " ".join("CHANGED" if i % every == every - 1 else w for i, w in enumerate(text.split(" ")))


def long_records(dolly, n, min_words=80):
    return [t for t in dolly if len(words(t)) >= min_words][:n]


def test_planted_near_copies_are_caught_and_name_the_kept_key(dolly):
    originals = long_records(dolly, 40, min_words=150)
    index = NearDupIndex()
    for i, text in enumerate(originals):
        assert index.check_add(f"orig:{i}", text) is None
    edits = {
        "a few words changed": lambda t: change_words(t, 80),
        "whitespace": lambda t: "  " + t.replace(" ", "\n  ").replace("\n", " \t\n") + "\n\n",
        "case and punctuation": lambda t: t.upper().replace(".", " ;").replace(",", "!"),
    }
    for name, edit in edits.items():
        for i, text in enumerate(originals):
            found = index.check_add(f"{name}:{i}", edit(text))
            assert found is not None and found[0] == f"orig:{i}", (name, i, found, jaccard(text, edit(text)))
            assert 0.8 <= found[1] <= 1.0
    assert len(index) == len(originals)  # a reject is not indexed


def test_first_come_is_kept():
    index = NearDupIndex()
    text = "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat by the door"
    assert index.check_add("first", text) is None
    assert index.add("second", text) is None and len(index) == 2  # add indexes without a check
    assert index.check_add("third", text.upper()) == ("first", 1.0)
    assert index.query(text) == ("first", 1.0) and len(index) == 2


def test_distinct_records_are_not_flagged(dolly):
    """Over 2,500 real records: every reported match is a real near-duplicate (exact Jaccard >= 0.7), and at most
    a few records (Dolly's own near-copies) are reported."""
    index = NearDupIndex()
    found = [(i, index.check_add(str(i), t)) for i, t in enumerate(dolly)]
    matches = [(i, int(f[0])) for i, f in found if f is not None]
    false = [(i, j, jaccard(dolly[i], dolly[j])) for i, j in matches if jaccard(dolly[i], dolly[j]) < 0.7]
    assert false == [] and len(matches) <= 40, (len(matches), false)


CHILD = """
import gzip, itertools, orjson
from common.near_dup import NearDupIndex
from tests.conftest import DOLLY
recs = [orjson.loads(x) for x in itertools.islice(gzip.open(DOLLY), 300)]
texts = [f"{r['instruction']}\\n{r['context']}\\n{r['response']}" for r in recs]
index = NearDupIndex(threshold=0.5)
print([index.check_add(str(i), t) for i, t in enumerate(texts + [t.upper() for t in texts[:30]])])
print(index._sigs[: len(index)].sum(axis=0).tolist())
"""


def test_same_answers_in_two_indexes_and_in_other_processes(dolly):
    texts = dolly[:300] + [change_words(t, 40) for t in dolly[:50]]
    a, b = NearDupIndex(), NearDupIndex()
    assert [a.check_add(str(i), t) for i, t in enumerate(texts)] == [
        b.check_add(str(i), t) for i, t in enumerate(texts)
    ]
    env = {"PATH": "/usr/bin:/bin"}
    out = [
        subprocess.run(
            [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, env={**env, "PYTHONHASHSEED": h}
        ).stdout
        for h in ("1", "2")
    ]
    assert out[0] == out[1] and out[0].count("(") >= 30, out  # the 30 upper-cased copies at least


def test_short_texts():
    index = NearDupIndex()
    assert index.check_add("hi", "Hi there") is None
    assert index.check_add("hi2", "hi,   THERE!") == ("hi", 1.0)  # fewer words than a shingle: one shingle of all
    assert index.check_add("other", "Hi you") is None
    assert index.check_add("one", "Yes") is None and index.query("yes.") == ("one", 1.0)
    assert index.check_add("empty", "") is None and index.query("  ...  ") == ("empty", 1.0)  # no words at all
    assert index.query("Hi there you") is None  # 3 words vs 2: different single shingles


def test_the_threshold_is_inclusive(dolly):
    """A candidate whose estimated Jaccard equals the threshold is a match; one permutation more is not (records
    where the LSH bands at that threshold propose no candidate are skipped: recall below 1 is the LSH's)."""
    checked = 0
    for text in long_records(dolly, 20):
        edited = change_words(text, 25)
        probe = NearDupIndex(threshold=0.5)
        probe.add("orig", text)
        _, est = probe.query(edited)
        assert 0.6 < est < 0.95, est  # a real partial overlap
        at = NearDupIndex(threshold=est)
        at.add("orig", text)
        if at._candidates(at.sketch(edited)):
            assert at.query(edited) == ("orig", est)
            checked += 1
        above = NearDupIndex(threshold=est + 1 / 128)
        above.add("orig", text)
        assert above.query(edited) is None
    assert checked >= 5, checked


def test_signature_equals_datasketch_update_batch(dolly):
    for text in dolly[:20]:
        hashes = shingle_hashes(text)
        m = MinHash(num_perm=128, seed=1, hashfunc=int)
        m.update_batch(hashes.tolist())
        assert np.array_equal(signature(hashes, m.permutations), m.hashvalues)


def test_words_match_the_regex_on_every_dolly_record(dolly):
    import re

    for text in dolly:
        assert words(text) == [w.encode() for w in re.findall(r"\w+", text.casefold())]


def test_nbytes_estimate_grows_with_the_index(dolly):
    index = NearDupIndex()
    for i, t in enumerate(dolly[:2000]):
        index.add(str(i), t)
    per = index.nbytes_estimate() / len(index)
    assert 600 < per < 2_000, per  # one signature, band keys (still in the dict), key strings: no part


@pytest.fixture(scope="module")
def llm_passage() -> list[dict]:
    """Dolly's questions over one Wikipedia passage on large language models (BookCorpus, GPT, ...)."""
    with gzip.open(DOLLY, "rb") as fh:
        recs = [orjson.loads(line) for line in fh]
    same = [r for r in recs if r["instruction"].startswith("Given these paragraphs about Large language models")]
    assert len(same) >= 10 and len({r["context"][:500] for r in same}) == 1  # 3 near-identical versions of it
    return same


def full(r: dict) -> str:
    return f"{r['instruction']}\n{r['context']}\n{r['response']}"


def test_questions_over_one_passage_are_kept_with_the_part(llm_passage):
    """ "how many words did the BookCorpus have" / "985 million words." and "when was the first GPT trained" /
    "2018.": the full texts nearly match (one is a near-duplicate without a part), the answers do not."""
    book = next(r for r in llm_passage if "BookCorpus have" in r["instruction"])
    others = [r for r in llm_passage if r is not book]
    plain = NearDupIndex()
    plain.add("book", full(book))
    assert sum(plain.query(full(r)) is not None for r in others) >= len(others) // 2  # the old behaviour
    with_part = NearDupIndex()
    assert with_part.check_add("book", full(book), book["response"]) is None
    for i, r in enumerate(others):
        assert with_part.check_add(str(i), full(r), r["response"]) is None, (r["instruction"], r["response"])
    assert len(with_part) == len(llm_passage)


def test_real_copies_are_still_caught_with_the_part(dolly, llm_passage):
    index = NearDupIndex()
    recs = [(t, t.rsplit("\n", 1)[-1]) for t in long_records(dolly, 40, min_words=150)]
    recs += [(full(r), r["response"]) for r in llm_passage[:3]]
    for i, (text, part) in enumerate(recs):
        assert index.check_add(str(i), text, part) is None
    for i, (text, part) in enumerate(recs):
        found = index.check_add(f"copy{i}", text.upper().replace(".", " ;"), part.upper().replace(".", " ;"))
        assert found is not None and found[0] == str(i), (i, found)
        assert index.query(change_words(text, 80), part) is not None or len(words(part)) < 40  # light edits
    assert index.query(recs[0][0]) == ("0", 1.0)  # no part on one side: the full text decides


def test_check_add_equals_check_add_sketch(dolly):
    a, b = NearDupIndex(), NearDupIndex()
    texts = dolly[:300] + [change_words(t, 40) for t in dolly[:60]]
    for i, t in enumerate(texts):
        part = t.rsplit("\n", 1)[-1] if i % 2 else None
        assert a.check_add(str(i), t, part) == b.check_add_sketch(str(i), b.sketch(t, part))
    assert len(a) == len(b) < len(texts)


def test_sketch_is_picklable_and_equal_across_processes(dolly):
    index = NearDupIndex()
    sk = index.sketch(dolly[0], dolly[0].rsplit("\n", 1)[-1])
    back = pickle.loads(pickle.dumps(sk))
    assert isinstance(back, Sketch) and all(np.array_equal(x, y) for x, y in zip(sk, back))
    assert len(pickle.dumps(sk)) < 1_500
    mine = [hashlib.sha256(b"".join(x.tobytes() for x in index.sketch(t, t[-50:]))).hexdigest() for t in dolly[:100]]
    code = (
        "import gzip, itertools, orjson, hashlib\nfrom common.near_dup import NearDupIndex\n"
        "from tests.conftest import DOLLY\nindex = NearDupIndex()\n"
        "recs = [orjson.loads(x) for x in itertools.islice(gzip.open(DOLLY), 100)]\n"
        "texts = [f\"{r['instruction']}\\n{r['context']}\\n{r['response']}\" for r in recs]\n"
        "print([hashlib.sha256(b''.join(x.tobytes() for x in index.sketch(t, t[-50:]))).hexdigest() for t in texts])"
    )
    for seed in ("1", "2"):
        run = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={"PYTHONHASHSEED": seed}
        )
        assert run.stdout.strip() == str(mine), run.stderr


def test_sketches_of_a_batch_equal_one_by_one():
    index = NearDupIndex()
    texts = [
        ("The quick brown fox jumps over the lazy dog near the river bank today", "near the river bank today"),
        ("An entirely different sentence about tokenizers and packing rows", None),
        ("", ""),
        ("short", "short"),
    ]
    for one, batched in zip([index.sketch(t, p) for t, p in texts], index.sketches(texts)):
        assert (one.text == batched.text).all() and (one.bands == batched.bands).all()
        assert (one.part is None and batched.part is None) or (one.part == batched.part).all()


def test_reply_part_read_off_the_text_equals_its_own_sketch():
    """A reply that ends the text has its signature read off the text's last shingles: the same as the reply's own
    signature, on real Dolly records (about a fifth hold non-ASCII words or punctuation), at every shingle size,
    and for parts that do not end the text or are too short to (computed on their own); the
    non-ASCII punctuation shortcut gives ``words``' words."""
    with gzip.open(DOLLY, "rb") as fh:
        rows = [orjson.loads(line) for line in itertools.islice(fh, 1500)]
    items = [(f"{r['instruction']}\n{r['context']}\n{r['response']}", r["response"]) for r in rows]
    items += [(f"{r['response']}\n{r['instruction']}", r["response"]) for r in rows[:200]]  # not at the end
    items += [("Ask me. Café—crème, OK?", "café—CRÈME ok"), ("one two", "two"), ("x", ""), ("", "")]
    non_ascii = sum(not text.isascii() for text, _ in items)
    assert non_ascii > 250
    for shingle in (5, 2, 1):
        index = NearDupIndex(shingle=shingle)
        together = [sk for at in range(0, len(items), 16) for sk in index.sketches(items[at : at + 16])]
        alone = index.sketches([(part, None) for _, part in items])
        texts = index.sketches([(text, None) for text, _ in items])
        for (text, part), sk, own, whole in zip(items, together, alone, texts, strict=True):
            assert (sk.part == own.text).all() and (sk.text == whole.text).all(), (shingle, text)
    for text, part in items:  # the punctuation shortcut finds ``words``' words
        assert _canonical(text) == b" ".join(words(text)) and _canonical(part) == b" ".join(words(part))
