"""The quality pass in worker processes (``data_prep/workers.py``) gives the same bytes as in one process: the
output, the rejects file (its order too) and the counts, on real Dolly and OASST records with planted copies."""

import gzip
import json
import os
import pickle

import pytest

from common.chat_format import BOT, HUMAN
from common.errors import DataError
from data_prep import workers
from data_prep.accounting import Report
from data_prep.jobs import prepare_oa_dolly
from data_prep.quality import QualityPass, pack, unpack
from data_prep.settings import QualitySettings
from tests.conftest import DOLLY, OASST_ROWS


def test_any_number_of_workers_gives_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "CHUNK", 200)  # several chunks from a small input
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        real = [json.loads(next(fh)) for _ in range(900)]
    planted = real + [dict(r, instruction=r["instruction"] + " Mail a.b@example.com") for r in real[:60]]
    src = tmp_path / "dolly.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in planted))
    runs = {}
    for n in (1, 2, 3):
        out = tmp_path / f"w{n}.jsonl"
        res = prepare_oa_dolly(out, str(src), str(OASST_ROWS), quality={"num_workers": n})
        runs[n] = (
            out.read_bytes(),
            out.with_name(out.name + ".rejects.jsonl").read_bytes(),
            {k: v.as_dict() for k, v in res.report.sources.items()},
        )
    dolly = runs[1][2]["dolly"]
    assert dolly["filtered"]["near-duplicate"] > 30 and dolly["pii"]["email"] >= 60  # the plants were seen
    assert runs[1] == runs[2] == runs[3]


def test_packed_analyses_come_back_equal(tmp_path):
    """What a worker sends back (``pack``, pickled, ``unpack``) is the analyses it made: texts, PII, language, eval
    item and every sketch array, the reply's part included (a multi-turn record has one, a dropped record none)."""
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        real = [json.loads(next(fh)) for _ in range(300)]
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"prompt": real[7]["instruction"] + " " + real[7]["response"]}) + "\n")
    payload = [([r["instruction"] + " mail a.b@example.com", r["response"]], [HUMAN, BOT]) for r in real[:100]]
    roles = [HUMAN, BOT, HUMAN, BOT]
    payload += [([r["instruction"], r["response"], "And?", r["context"] or "no"], roles) for r in real]
    settings = QualitySettings(decontaminate=[str(evals)])
    found = QualityPass.build(settings, Report(), {}).analyzer.analyze_many(payload)
    back = unpack(pickle.loads(pickle.dumps(pack(found))))
    assert sum(a.eval_item is not None for a in found) >= 1 and sum(bool(a.pii) for a in found) == 100
    assert sum(a.sketch is not None and a.sketch.part is not None for a in found) == len(found) - 1
    for a, b in zip(found, back, strict=True):
        assert (a.texts, a.pii, a.lang, a.eval_item) == (b.texts, b.pii, b.lang, b.eval_item)
        assert (a.sketch is None) == (b.sketch is None)
        if a.sketch is not None:
            assert (a.sketch.text == b.sketch.text).all() and (a.sketch.bands == b.sketch.bands).all()
            assert (a.sketch.part is None) == (b.sketch.part is None)
            assert a.sketch.part is None or (a.sketch.part == b.sketch.part).all()


def _die(payload):
    os._exit(9)  # a worker killed mid-chunk (kill -9, the OOM killer)


def test_a_dead_worker_stops_the_run_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "CHUNK", 50)
    monkeypatch.setattr(workers, "_analyze_chunk", _die)
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        src = tmp_path / "dolly.jsonl"
        src.write_text("".join(next(fh) for _ in range(300)))
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match="worker process died.*--num_workers 1"):
        prepare_oa_dolly(out, str(src), None, quality={"num_workers": 2})
    assert not out.exists() and not list(tmp_path.glob("out.jsonl*"))


def test_one_conversation_alone_is_analyzed_as_in_a_batch():
    settings = QualitySettings()
    qp = QualityPass(settings, Report(), {}, "NOASSERTION")
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        rec = json.loads(next(fh))
    texts, roles = [rec["instruction"], rec["response"]], [HUMAN, BOT]
    alone, batched = qp.analyzer.analyze(texts, roles), qp.analyzer.analyze_many([(texts, roles)])[0]
    assert alone.sketch is not None and (alone.sketch.text == batched.sketch.text).all()
    assert (alone.lang, alone.pii, alone.eval_item) == (batched.lang, batched.pii, batched.eval_item)
