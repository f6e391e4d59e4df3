"""OASST1's own labels, detoxify scores, review, deleted and synthetic flags as filters, on the bundled real exports."""

import json

import orjson
import pytest

from common.errors import ConfigError
from data_prep.accounting import Report
from data_prep.oasst import OasstConverter, OasstFilters, parse_detoxify, parse_labels
from data_prep.oasst_labels import (
    DEFAULT_DETOXIFY_MAX,
    DEFAULT_LABEL_MAX,
    DEFAULT_QUALITY_MIN,
    DETOXIFY_NAMES,
    parse_thresholds,
)
from tests.conftest import OASST_ROWS, OASST_TREES

DEFAULTS = OasstFilters((), True, True, True, DEFAULT_LABEL_MAX, DEFAULT_QUALITY_MIN, DEFAULT_DETOXIFY_MAX)
WALKS = ("unanswered prompt (no reply)", "not on selected path")  # counted by the path walk, not by the filters


def run(path, filters, mode="best"):
    """Convert ``path``; return (conversations, stats with written filled in, report)."""
    report = Report()
    conv = OasstConverter(report, mode=mode, filters=filters)
    conv.load(str(path))
    out = list(conv.conversations())
    stats = report.source("oasst")
    stats.written = sum(c.records for c in out)
    return out, stats, report


def filter_counts(stats) -> dict:
    return {k: v for k, v in sorted(stats.filtered.items()) if k not in WALKS}


def test_defaults_on_validation_export():
    """Measured on the 2,022 real messages: what the defaults drop (review and deleted first, then the labels)."""
    convs, stats, report = run(OASST_ROWS, DEFAULTS)
    assert filter_counts(stats) == {
        "ancestor filtered": 36,
        "deleted": 25,
        "detoxify toxicity >= 0.9": 1,
        "label not_appropriate >= 0.5": 14,
        "label pii >= 0.5": 1,
        "review_result not true": 43,
    }
    assert stats.balanced() and len(convs) == 187  # 188 with every filter off
    assert stats.rejected == {"orphan: parent message missing": 3}
    assert report.quarantined == sum(filter_counts(stats).values()) + 3  # each filtered message has its entry


def test_label_and_detoxify_filters_alone():
    _, labels, _ = run(OASST_ROWS, OasstFilters(label_max=DEFAULT_LABEL_MAX))
    assert filter_counts(labels) == {
        "ancestor filtered": 25,
        "label not_appropriate >= 0.5": 17,
        "label pii >= 0.5": 1,
        "label sexual_content >= 0.5": 1,
        "label spam >= 0.5": 37,
    }
    _, detox, _ = run(OASST_ROWS, OasstFilters(detoxify_max=DEFAULT_DETOXIFY_MAX))
    assert filter_counts(detox) == {"ancestor filtered": 1, "detoxify toxicity >= 0.9": 7}
    _, quality, _ = run(OASST_ROWS, OasstFilters(quality_min=0.2))
    assert filter_counts(quality) == {"ancestor filtered": 133, "label quality < 0.2": 91}
    assert labels.balanced() and detox.balanced() and quality.balanced()


def test_flagged_texts_are_gone_and_off_keeps_all():
    rows = [json.loads(line) for line in OASST_ROWS.read_text().splitlines()]
    means = [dict(zip(r["labels"]["name"], r["labels"]["value"])) if r["labels"] else {} for r in rows]
    spam = {r["text"] for r, m in zip(rows, means) if m.get("spam", 0) >= 0.5}
    convs, _, _ = run(OASST_ROWS, DEFAULTS, mode="all-leaves")
    assert spam and not spam & {t.text for c in convs for t in c.turns}
    kept, stats, report = run(OASST_ROWS, OasstFilters(), mode="all-leaves")
    assert len(spam & {t.text for c in kept for t in c.turns}) == 27  # the rest: unanswered prompts, orphans
    assert filter_counts(stats) == {} and report.quarantined == 3 and len(kept) == 957 and len(convs) == 890


def test_synthetic_on_trees_export():
    convs, stats, _ = run(OASST_TREES, DEFAULTS)
    assert filter_counts(stats) == {"ancestor filtered": 17, "synthetic": 5} and len(convs) == 95 and stats.balanced()


def planted(tmp_path, **fields):
    """The real validation rows with the first prompt's first reply changed by ``fields``."""
    rows = [json.loads(line) for line in OASST_ROWS.read_text().splitlines()]
    reply = next(r for r in rows if r["parent_id"] == rows[0]["message_id"])
    reply.update(fields)
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path, reply["message_id"]


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"labels": {"name": ["spam"], "value": [0.67], "count": [3]}}, "label spam >= 0.5"),
        ({"labels": {"name": ["spam"], "value": [0.67], "count": [0]}}, None),  # count 0: absent
        ({"labels": {"name": ["spam", "pii"], "value": [1.0], "count": [3, 3]}}, None),  # malformed: absent
        ({"labels": {"name": ["spam"], "value": ["1.0"], "count": [3]}}, None),
        ({"labels": "spam"}, None),
        ({"detoxify": {"toxicity": 0.95}}, "detoxify toxicity >= 0.9"),
        ({"detoxify": {"toxicity": None, "insult": 0.91}}, "detoxify insult >= 0.9"),
        ({"detoxify": [0.99]}, None),
        ({"synthetic": True}, "synthetic"),
        ({"review_result": None}, "review_result not true"),
    ],
)
def test_planted_flags(tmp_path, fields, reason):
    path, mid = planted(tmp_path, **fields)
    _, stats, report = run(path, DEFAULTS)
    out = tmp_path / "rejects.jsonl"
    report.write_rejects(out)
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    mine = [e for e in entries if e.get("id") == mid]
    if reason is None:
        assert mine == []
    else:
        assert mine == [
            {
                "source": "oasst",
                "file": str(path),
                "line": mine[0]["line"],
                "id": mid,
                "reason": reason,
                "filtered": True,
            }
        ]
        below = [e for e in entries if e.get("ancestor") == mid]
        assert below and all(e["reason"] == "ancestor filtered" and e["ancestor_reason"] == reason for e in below)
    assert stats.balanced()


def test_parse_helpers_never_crash():
    assert parse_labels({"name": ["spam", "quality"], "value": [0.5, 0.25], "count": [2, 3]}) == {
        "spam": 0.5,
        "quality": 0.25,
    }
    assert parse_labels({"name": ["spam"], "value": [0.5]}) == {}  # no counts
    assert parse_labels({"name": ["spam", 3], "value": [float("nan"), 1], "count": [1, 1]}) == {}
    assert parse_detoxify({"toxicity": 0.5, "insult": True, "x": "1"}) == {"toxicity": 0.5}
    assert parse_detoxify(None) == {} and parse_labels(None) == {}


def test_parse_thresholds_merge():
    got = parse_thresholds(["spam=0.3", "pii=off,fails_task=0.8", "spam=0.4"], "--oasst_label_max", DEFAULT_LABEL_MAX)
    assert got == {"spam": 0.4, "not_appropriate": 0.5, "hate_speech": 0.5, "sexual_content": 0.5, "fails_task": 0.8}
    assert parse_thresholds(["threat=1"], "--oasst_detoxify_max", {}) == {"threat": 1.0}
    assert parse_thresholds([], "--oasst_label_max", DEFAULT_LABEL_MAX) == DEFAULT_LABEL_MAX


@pytest.mark.parametrize(
    "value, flag, says",
    [
        ("spamm=0.5", "--oasst_label_max", "unknown name 'spamm'; valid names: spam, fails_task"),
        ("spam=0", "--oasst_label_max", "(0, 1]"),
        ("spam=1.5", "--oasst_label_max", "(0, 1]"),
        ("spam=nan", "--oasst_label_max", "(0, 1]"),
        ("spam=high", "--oasst_label_max", "(0, 1]"),
        ("spam", "--oasst_label_max", "expected NAME=VALUE"),
        ("quality=0.5", "--oasst_label_max", "unknown name 'quality'"),
        ("spam=0.5", "--oasst_detoxify_max", "valid names: " + ", ".join(DETOXIFY_NAMES)),
    ],
)
def test_parse_thresholds_errors(value, flag, says):
    with pytest.raises(ConfigError) as err:
        parse_thresholds([value], flag, {})
    msg = str(err.value)
    assert says in msg and msg.startswith(f"{flag} {value!r}") and "\n" not in msg
