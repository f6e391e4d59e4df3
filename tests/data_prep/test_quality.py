"""The quality pass end to end (``data_prep/quality.py`` through the jobs): real Dolly records with planted
near-duplicates, PII, evaluation overlaps and a French record; every drop is counted, quarantined with its reason
and specifics, and the data card says what happened. Bad settings are one line before any work."""

import gzip
import json
import subprocess
import sys

import pytest

from common.errors import ConfigError, DataError
from data_prep.jobs import prepare_chat, prepare_oa_dolly
from tests.conftest import ROOT

DOLLY = ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz"
FRENCH = {
    "instruction": "Quelle est la capitale de la France et pourquoi est-elle si célèbre dans le monde entier ?",
    "context": "",
    "response": "La capitale de la France est Paris, connue pour la tour Eiffel, le Louvre et sa cuisine raffinée.",
    "category": "open_qa",
}


def chat_record(user: str, bot: str) -> str:
    """One OpenAI-style record, a JSONL line."""
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": bot}]}) + "\n"


def rows(path):
    return [json.loads(line) for line in path.open()]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """300 real Dolly records (40 and 41 with planted PII), then 5 near-copies of records 10-14 and a French one."""
    d = tmp_path_factory.mktemp("planted")
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        real = [json.loads(next(fh)) for _ in range(300)]
    extra = []
    for rec in real[10:15]:  # two words dropped and the case changed: still a near-copy
        words = rec["response"].split()
        extra.append(
            {**rec, "response": " ".join(words[:3] + words[5:]).upper() if len(words) > 40 else rec["response"]}
        )
    real[40] = {**real[40], "response": real[40]["response"] + " Write to jane.roe@example.com for more."}
    real[41] = {**real[41], "response": real[41]["response"] + " Or call +1 (650) 253-0000."}
    extra.append(FRENCH)
    src = d / "dolly_planted.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in real + extra))
    evals = d / "eval.jsonl"
    evals.write_text(
        "".join(json.dumps({"prompt": real[i]["instruction"] + " " + real[i]["context"]}) + "\n" for i in (20, 21, 22))
    )
    return {"src": src, "eval": evals, "real": real, "dir": d}


def test_every_filter_catches_its_plants_and_the_card_says_so(planted, tmp_path):
    out = tmp_path / "out.jsonl"
    res = prepare_oa_dolly(out, str(planted["src"]), None, quality={"decontaminate": [str(planted["eval"])]})
    s = res.report.sources["dolly"]
    assert s.read == 306 and s.balanced()
    rejects = [r for r in rows(out.with_name("out.jsonl.rejects.jsonl")) if r.get("filtered")]
    by_reason = {}
    for r in rejects:
        by_reason.setdefault(r["reason"], []).append(r)
    # near-duplicates: exactly the 5 near-copies, each naming the record it copies
    near = by_reason["near-duplicate"]
    assert len(near) == 5
    kept = {r["near_duplicate_of"] for r in near}
    assert {f"dolly/dolly-{i + 1}" for i in range(10, 15)} <= kept, kept
    assert all(r["similarity"] >= 0.8 for r in near)
    assert s.near_dup_clusters == len(kept)
    # evaluation overlap: exactly records 20-22, each naming its eval item
    overlap = by_reason["eval overlap"]
    assert sorted(r["id"] for r in overlap) == [f"dolly-{i + 1}" for i in (20, 21, 22)]
    assert sorted(r["eval_item"] for r in overlap) == [f"{planted['eval']}:{n}" for n in (1, 2, 3)]
    # PII: scrubbed in place (counted), so the French record and the rest are written
    assert s.pii["email"] >= 1 and s.pii["phone"] >= 1
    written = rows(out)
    assert all(p["license"] == "CC-BY-SA-3.0" and p["lang"] for conv in written for p in conv)
    assert {conv[0]["lang"] for conv in written} >= {"en", "fr"}
    text = "\n".join(p["completion"] for conv in written for p in conv)
    assert "jane.roe@example.com" not in text and "253-0000" not in text
    assert s.written == len(written) == 306 - 5 - 3
    # the card: license, counts after each filter, languages, share-alike
    card = json.loads(out.with_name("out.jsonl.data_card.json").read_text())
    assert "CC-BY-SA-3.0" in json.dumps(card)
    md = out.with_name("out.jsonl.DATA_CARD.md").read_text()
    assert "share" in md.lower() and "near-duplicate" in md and "fr" in md
    summary = json.loads(out.with_name("out.jsonl.summary.json").read_text())
    assert summary["sources"]["dolly"]["languages"]["fr"] == 1


def test_languages_keeps_only_those_and_pii_drop_drops(planted, tmp_path):
    out = tmp_path / "en.jsonl"
    res = prepare_oa_dolly(out, str(planted["src"]), None, quality={"languages": ["en"], "pii": "drop"})
    s = res.report.sources["dolly"]
    assert s.filtered["language not in --languages"] == 1 and s.filtered["pii"] >= 2 and s.balanced()
    assert all(p["lang"] == "en" for conv in rows(out) for p in conv)


def test_passes_off_write_every_distinct_record_untouched(planted, tmp_path):
    out = tmp_path / "off.jsonl"
    res = prepare_oa_dolly(out, str(planted["src"]), None, quality={"near_dup": False, "pii": "off"})
    assert res.report.sources["dolly"].written == 306
    assert "jane.roe@example.com" in out.read_text()


def test_clean_real_records_are_not_filtered(tmp_path):
    """The false-positive count on clean records: the first 2,000 real Dolly records lose none to near-duplicates
    of each other at the default threshold (they are distinct questions)."""
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        src = tmp_path / "dolly2k.jsonl"
        src.write_text("".join(next(fh) for _ in range(2000)))
    res = prepare_oa_dolly(tmp_path / "o.jsonl", str(src), None)
    assert res.report.sources["dolly"].filtered.get("near-duplicate", 0) == 0


def test_user_data_license_and_commercial_only(tmp_path):
    chat = tmp_path / "held.jsonl"
    chat.write_text(chat_record("Hi there, how are you doing today?", "Fine, thank you for asking!"))
    res = prepare_chat(tmp_path / "a.jsonl", [f"mine={chat}"], license=["mine=CC-BY-4.0"])
    assert rows(tmp_path / "a.jsonl")[0][0]["license"] == "CC-BY-4.0"
    assert res.card is not None
    with pytest.raises(ConfigError, match="CC-BY-NC-4.0"):
        prepare_chat(tmp_path / "b.jsonl", [str(chat)], license=["CC-BY-NC-4.0"], quality={"commercial_only": True})
    with pytest.raises(ConfigError, match="NOASSERTION|license"):
        prepare_chat(tmp_path / "c.jsonl", [str(chat)], quality={"commercial_only": True})
    assert not (tmp_path / "b.jsonl").exists() and not (tmp_path / "c.jsonl").exists()


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--license", "NOT-A-LICENSE"], "--license"),
        (["--languages", "xx-nope"], "--languages"),
        (["--near_dup_threshold", "0"], "--near_dup_threshold"),
        (["--near_dup_threshold", "1.5"], "--near_dup_threshold"),
        (["--decontaminate", "/nonexistent/eval.jsonl"], "eval.jsonl"),
    ],
)
def test_bad_settings_are_one_line_before_any_work(tmp_path, flags, says):
    chat = tmp_path / "held.jsonl"
    chat.write_text(chat_record("Hi", "Yo"))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep", "prepare_chat", "--input", str(chat), "--output_path", str(out), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr
    assert not out.exists()


def test_oasst_defaults_drop_flagged_messages_and_keep_flagged_is_bloomchat(tmp_path):
    oasst = str(ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl")
    strict_run = prepare_oa_dolly(tmp_path / "a.jsonl", None, oasst, quality={"near_dup": False, "pii": "off"})
    kept_run = prepare_oa_dolly(
        tmp_path / "b.jsonl", None, oasst, oasst_keep_flagged=True, quality={"near_dup": False, "pii": "off"}
    )
    a, b = strict_run.report.sources["oasst"], kept_run.report.sources["oasst"]
    assert a.balanced() and b.balanced() and a.written < b.written
    flagged = {r for r in a.filtered if r.startswith(("label ", "detoxify ", "deleted", "review_result", "synthetic"))}
    assert flagged, a.filtered
    assert not {r for r in b.filtered if r in flagged}
    quarantined = [r for r in rows(tmp_path / "a.jsonl.rejects.jsonl") if r["reason"] in flagged]
    assert quarantined and all(r["id"] and r["line"] for r in quarantined)


def test_eval_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "fine"}\nnot json\n')
    with pytest.raises(DataError, match="eval.jsonl"):
        prepare_oa_dolly(tmp_path / "o.jsonl", str(DOLLY), None, quality={"decontaminate": [str(bad)]})
