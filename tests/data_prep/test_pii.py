"""PiiScrubber: planted PII of every type (several spellings) in real Dolly records is replaced and counted; the
real Dolly-15k and OASST texts, full of years, prices, versions and dates, change only where a reader agrees."""

import gzip
import json
from collections import Counter

import pytest

from data_prep.pii import PII_MODES, PiiScrubber, iban_ok, luhn_ok
from tests.conftest import DOLLY, OASST_ROWS

PLANTED = {
    "email": ["jane.doe@example.com", "J.Smith+news@mail.co.uk", "first_last@sub.domain.org"],
    "phone": ["(415) 555-2671", "+44 20 7946 0958", "415.555.2671", "+1-212-555-0123", "0410 787 999"],
    "ip_address": ["8.8.8.8", "81.2.69.160", "2a00:1450:4001:82b::200e", "2606:4700:4700::1111"],
    "credit_card": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    "ssn": ["078-05-1120", "219 09 9999", "SSN: 536221234"],
    "iban": ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "NL91ABNA0417164300"],
}
PLACEHOLDER = {"email": "<EMAIL>", "phone": "<PHONE>", "ip_address": "<IP_ADDRESS>"}
PLACEHOLDER |= {"credit_card": "<CREDIT_CARD>", "ssn": "<SSN>", "iban": "<IBAN>"}
# look like PII to a careless pattern; none of them is (9780743273565, an ISBN-13, even passes Luhn)
NOT_PII = [
    "version 3.10.0.1", "v1.2.3.4", "Python 3.11.4", "192.168.1.1", "127.0.0.1", "::1", "ISBN 978-0-13-110362-7",
    "ISBN 9780743273565", "in 1999", "$1,299.99", "2023-01-15", "12:30:45", "000-12-3456", "900-12-3456",
    "4111 1111 1111 1112",
    "GB82 WEST 1234 5698 7654 33", "pop. 8 336 817", "1914-1918", "3.14159265", "11/16/1902", "account 536221234",
]  # fmt: skip

# Every item PiiScrubber finds in all 15,015 Dolly-15k records (34,628 non-empty fields), each read by eye: the
# e-mail addresses and phone numbers people wrote into prompts and answers (some made up, like 123-456-7890, but
# written as contact details). (line, field, type, text)
DOLLY_FINDINGS = [
    (905, "response", "email", "lorem.ipsum@dolor.com"),
    (1983, "instruction", "email", "joesmith9999@gmail.com"),
    (1983, "response", "email", "joesmith9999@gmail.com"),
    (6086, "instruction", "email", "joesmith9999@gmail.com"),
    (6086, "response", "email", "joesmith9999@gmail.com"),
    (6086, "response", "email", "joesmith9999@gmail.com"),
    (6272, "instruction", "phone", "0410787999"),
    (6272, "instruction", "email", "iratecustomer@hotmail.com"),
    (6272, "response", "phone", "0410787999"),
    (6272, "response", "email", "iratecustomer@hotmail.com"),
    (7356, "response", "phone", "123-345-3883"),
    (8638, "response", "email", "jdoe@somecompany.com"),
    (8638, "response", "email", "rsmith@somecompany.com"),
    (8638, "response", "email", "tjenkins@somecompany.com"),
    (8638, "response", "email", "nparsons@somecompany.com"),
    (9367, "response", "email", "Jane.Carter8085@gmail.com"),
    (9367, "response", "phone", "727-326-0913"),
    (10270, "response", "phone", "123-456-7890"),
    (10270, "response", "email", "123@gmail.com"),
]


@pytest.fixture(scope="module")
def dolly():
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def scrubber():
    return PiiScrubber()


def _plant(record: dict, item: str) -> str:
    """The item written into the middle of a real Dolly response."""
    words = record["response"].split(" ")
    half = len(words) // 2
    return " ".join(words[:half] + [f"(contact: {item})"] + words[half:])


@pytest.mark.parametrize("kind", PLANTED)
def test_planted_pii_is_replaced_and_counted(dolly, scrubber, kind):
    for i, item in enumerate(PLANTED[kind]):
        record = dolly[100 + i]
        text = _plant(record, item)
        scrubbed, counts = scrubber.scrub(text)
        assert counts == Counter({kind: 1}), (item, counts)
        assert scrubbed == text.replace(item.removeprefix("SSN: "), PLACEHOLDER[kind])
        assert item.removeprefix("SSN: ") not in scrubbed


def test_all_types_in_one_text_are_counted_per_type(dolly, scrubber):
    items = [v for values in PLANTED.values() for v in values]
    text = dolly[7]["response"] + " " + " ; ".join(items)
    scrubbed, counts = scrubber.scrub(text)
    assert counts == Counter({k: len(v) for k, v in PLANTED.items()})
    assert scrubbed.startswith(dolly[7]["response"]) and not any(c.isdigit() for c in scrubbed.split(" <")[-1])


def test_look_alikes_are_left(dolly, scrubber):
    for item in NOT_PII:
        text = _plant(dolly[200], item)
        assert scrubber.scrub(text) == (text, Counter()), item


def test_dolly_changes_only_where_verified(dolly, scrubber):
    found = []
    for line, record in enumerate(dolly, 1):
        for field in ("instruction", "context", "response"):
            text = record[field]
            scrubbed, counts = scrubber.scrub(text)
            spans = scrubber.find(text)
            found += [(line, field, kind, text[a:b]) for a, b, kind in spans]
            assert sum(counts.values()) == len(spans) and (scrubbed == text) == (not spans)
    assert found == DOLLY_FINDINGS  # 19 items in 11 records: 14 e-mails, 5 phones; no card, SSN, IP or IBAN


def test_oasst_rows_change_only_where_verified(scrubber):
    found = []
    for line in OASST_ROWS.open(encoding="utf-8"):
        text = json.loads(line)["text"]
        found += [text[a:b] for a, b, _ in scrubber.find(text)]
    assert found == ["keath.mueller.music@gmail.com"]  # a real-looking address pasted into a prompt


def test_mode_off_returns_text_untouched(dolly):
    text = _plant(dolly[3], "jane.doe@example.com (415) 555-2671")
    assert PiiScrubber("off").scrub(text) == (text, Counter())
    assert PiiScrubber("drop").scrub(text)[1] == Counter({"email": 1, "phone": 1})
    assert PII_MODES == ("scrub", "drop", "off")
    with pytest.raises(ValueError):
        PiiScrubber("mask")


def test_checksums():
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005") and not luhn_ok("4111111111111121")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001") and not iban_ok("DE89")
