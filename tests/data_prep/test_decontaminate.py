"""Decontamination against evaluation prompts made from real Dolly records: exactly their sources go, nothing else."""

import gzip
import json
import re

import pytest

from common.errors import DataError
from data_prep.decontaminate import Decontaminator, _WindowHasher, words
from data_prep.dolly import dolly_conversation
from tests.conftest import DOLLY, OASST_ROWS

EXTRA = {1355: 12007, 2890: 5257, 13476: 6007}  # records that share a 13-gram with a picked one (same passage)


@pytest.fixture(scope="module")
def dolly():
    """(raw rows, conversation texts as data_prep writes them: instruction, context, response)."""
    rows = [json.loads(line) for line in gzip.open(DOLLY, "rt")]
    texts = ["\n".join(t.text for t in dolly_conversation(r, str(i))[0].turns) for i, r in enumerate(rows)]
    return rows, texts


def item_text(row) -> str:
    return f"{row['instruction']}\n{row['context']}"


def picks(rows) -> list[int]:
    """20 records spread over the file, each with at least 8 words of instruction + context."""
    out = []
    for start in range(7, len(rows), 750):
        out.append(next(i for i in range(start, len(rows)) if len(words(item_text(rows[i]))) >= 8))
    return out[:20]


def paraphrase(text: str) -> str:
    """Every 6th word replaced: no 13 words in a row survive."""
    return " ".join("something" if k % 6 == 3 else w for k, w in enumerate(text.split()))


def naive_match(items: list[tuple[str, list[str]]], text: str, n: int = 13) -> str | None:
    """The reference: shared n-grams (or a whole short item) by plain tuple sets, no hashing."""
    ws = words(text)
    for item_id, iw in items:
        k = n if len(iw) >= n else len(iw)
        if k < 8:
            continue
        if {tuple(iw[i : i + k]) for i in range(len(iw) - k + 1)} & {tuple(ws[i : i + k]) for i in range(len(ws))}:
            return item_id
    return None


@pytest.fixture(scope="module")
def eval_jsonl(dolly, tmp_path_factory):
    rows, _ = dolly
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    lines = [json.dumps({"instruction": rows[i]["instruction"], "context": rows[i]["context"]}) for i in picks(rows)]
    lines += [json.dumps({"prompt": paraphrase(item_text(rows[i]))}) for i in (300, 4000, 9000)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_drops_exactly_the_source_records(dolly, eval_jsonl):
    rows, texts = dolly
    d = Decontaminator.from_files([str(eval_jsonl)])
    assert (d.items, d.too_short) == (23, 0)
    hits = {i: m for i, t in enumerate(texts) if (m := d.match(t))}
    picked = picks(rows)
    assert {i: hits[i] for i in picked} == {i: f"{eval_jsonl}:{k}" for k, i in enumerate(picked, start=1)}
    false_positives = {i: m for i, m in hits.items() if i not in picked}
    # 3 of the 14,994 other records: each repeats a picked record's passage (a real overlap, not a hash collision)
    assert false_positives == {i: f"{eval_jsonl}:{picked.index(src) + 1}" for i, src in EXTRA.items()}
    assert not {300, 4000, 9000} & hits.keys()  # paraphrased: no 13 words in a row left


def test_matches_the_plain_reference(dolly, eval_jsonl):
    """Every Dolly record gets the same answer as the naive tuple-set check (hashing loses and invents nothing)."""
    _, texts = dolly
    d = Decontaminator.from_files([str(eval_jsonl)])
    lines = eval_jsonl.read_text().splitlines()
    items = [(f"{eval_jsonl}:{k}", words("\n".join(json.loads(line).values()))) for k, line in enumerate(lines, 1)]
    for t in texts[::7]:
        assert d.match(t) == naive_match(items, t)


def test_txt_items_short_rule_and_file_order(dolly, tmp_path):
    rows, texts = dolly
    nine = next(i for i, r in enumerate(rows) if not r["context"] and len(words(r["instruction"])) == 9)
    path = tmp_path / "eval.txt"
    path.write_text(
        "\n".join(
            [
                "Who gave the UN",  # 4 words: too short to match
                "",  # blank: skipped
                rows[nine]["instruction"].upper(),  # 9 words: the whole sequence must appear; case is ignored
                rows[2257]["context"].replace("\n", " "),  # in record 2257 after its instruction, but first in file
                item_text(rows[2257]).replace("\n", " "),  # matches from the record's first word
            ]
        )
        + "\n"
    )
    d = Decontaminator.from_files([str(path)])
    assert (d.items, d.too_short) == (3, 1)
    assert "3 eval items from 1 file(s), 13-word n-grams; 1 items under 8 words too short" in d.summary_line()
    assert d.match(texts[nine]) == f"{path}:3"
    assert d.match(texts[2257]) == f"{path}:4"
    assert d.match(" ".join(words(rows[nine]["instruction"])[:8])) is None  # 8 of its 9 words: no match
    assert d.match(texts[7]) is None  # "Who gave the UN the land ..." holds the 4-word item


def test_messages_key_and_several_files(dolly, tmp_path):
    rows, texts = dolly
    a, b = tmp_path / "a.jsonl", tmp_path / "b.txt"
    a.write_text(json.dumps({"messages": [{"role": "user", "content": rows[3757]["context"]}]}) + "\n")
    b.write_text(rows[12757]["context"] + "\n")
    d = Decontaminator.from_files([str(b), str(a)])
    assert d.match(texts[3757]) == f"{a}:1" and d.match(texts[12757]) == f"{b}:1" and d.match(texts[0]) is None


def test_word_boundaries_equal_the_regex():
    """The numpy word splitter finds the same words as ``\\w+`` on text full of Unicode edge cases."""
    hasher = _WindowHasher()
    rows = [json.loads(line)["text"] for line in OASST_ROWS.read_text().splitlines()]
    tricky = ["Straße’s ﬁne_x2 — 日本語テキスト, ١٢٣ İstanbul ǅ 𝔘𝔫𝔦 🙂🙂 a_b", "", "  ", "__", "x"]
    for text in tricky + [r for r in rows if not r.isascii()]:
        assert len(hasher.prefix(text)) - 1 == len(re.findall(r"\w+", text.casefold())), text


@pytest.mark.parametrize(
    "name, content, says",
    [
        ("missing.jsonl", None, "missing.jsonl: cannot read the eval file"),
        ("empty.jsonl", "", "empty.jsonl: no evaluation items"),
        ("blank.txt", "\n  \n", "blank.txt: no evaluation items"),
        ("bad.jsonl", '{"prompt": "a b c"}\n{"prompt": "a b\n', "bad.jsonl:2: not JSON"),
        ("array.jsonl", '{"prompt": "a"}\n["a"]\n', "array.jsonl:2: JSON value is a list, not an object"),
        ("int.jsonl", '{"prompt": 5}\n', "int.jsonl:1: field 'prompt' is a int, not a string"),
        ("nokey.jsonl", '{"answer": "x"}\n', "nokey.jsonl:1: no prompt text: give one of the keys prompt, question"),
        ("msg.jsonl", '{"messages": [{"role": "user"}]}\n', "msg.jsonl:1: messages[0] has no string 'content'"),
        ("eval.csv", "a,b\n", "eval.csv: unknown eval file type"),
    ],
)
def test_bad_files(tmp_path, name, content, says):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as err:
        Decontaminator.from_files([str(path)])
    assert str(err.value).startswith(f"{tmp_path}/{says}") and "\n" not in str(err.value)


def test_a_thousand_real_eval_items_flag_only_the_real_overlaps(dolly, tmp_path):
    """1,000 OASST texts as eval items against all of Dolly: the 2 records that quote one (speed is measured by
    benchmarks/bench_data_quality.py, not here)."""
    _, texts = dolly
    path = tmp_path / "eval.jsonl"
    oasst = [json.loads(line)["text"] for line in OASST_ROWS.read_text().splitlines()][:1000]
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in oasst))
    d = Decontaminator.from_files([str(path)])
    assert d.items + d.too_short == 1000
    assert sum(1 for t in texts if d.match(t)) == 2
