"""The quality pass in worker processes (``data_prep/workers.py``) gives the same bytes as in one process: the
output, the rejects file (its order too) and the counts, on real Dolly and OASST records with planted copies."""

import gzip
import json

from data_prep import workers
from data_prep.jobs import prepare_oa_dolly
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
