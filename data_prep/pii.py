"""PII scrubbing: find e-mail addresses, phone numbers, IP addresses, card numbers, US SSNs and IBANs in a text and
replace each with a typed placeholder (``<EMAIL>``, ``<PHONE>`` ...), counted per type, so that chat data can ship.

Phone numbers are found by ``phonenumbers`` (Google's libphonenumber, maintained, offline) at its ``VALID``
leniency; the other types are patterns confirmed by a checksum or a parser (Luhn, ISO 13616 mod-97, ``ipaddress``,
the SSA's SSN ranges). presidio needs spaCy models and scrubadub is unmaintained, so neither is used; no library
in the lock checks Luhn or IBAN (python-stdnum is not in it), so those checks are the few lines below.

Speed: every type has a cheap regex that must match before its exact check runs, and ``phonenumbers`` only sees
runs of 7-15 digits: about 87,000 PII-free Dolly fields/s on one core (CPU time; 343 characters on average).

What is deliberately NOT scrubbed (each would ruin useful instruction data and identifies no one):
- IP addresses outside the public internet: private (10.x, 192.168.x), loopback, link-local, documentation and
  reserved ranges (``ipaddress``'s ``is_global`` is False); dotted numbers inside a longer dotted run
  (``3.10.0.1.2``) or after ``v``/``version`` (``version 3.10.0.1``), which are software versions;
- bare 9-digit runs as SSNs unless "SSN" or "social security" comes shortly before them;
- digit runs that ``phonenumbers`` does not accept as a valid number in any of ``PHONE_REGIONS`` (years, ranges,
  prices, dates, populations written with spaces) and 13-digit ISBNs, even those that pass Luhn.

``drop`` and ``scrub`` find the same items: the caller drops a conversation whose counts are not empty.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

import phonenumbers

PII_MODES = ("scrub", "drop", "off")
PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ip_address": "<IP_ADDRESS>",
    "credit_card": "<CREDIT_CARD>",
    "ssn": "<SSN>",
    "iban": "<IBAN>",
}

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b"
)
_IPV4 = re.compile(r"(?<![\w.])(?<!version )(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)", re.IGNORECASE)
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
_CARD = re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)")
_SSN = re.compile(r"(?<![\w.,-])(\d{3})([ -]?)(\d{2})\2(\d{4})(?![\w-]|[.,]\d)")
_SSN_CONTEXT = re.compile(r"(?:\bSSN|social security)\b[^\n\d]{0,30}$", re.IGNORECASE)
_IBAN = re.compile(r"\b([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)\b")
_DIGITS = re.compile(r"\d[\d .:()/-]{5,}\d")  # the gate of every type but e-mail and IPv6: 7+ chars of digits
_PHONE_RUN = re.compile(r"\+?\(?\d[\d ().\-/]{5,}\d")  # what phonenumbers is shown: a run with 7 to 15 digits
_IPV6_GATE = re.compile(r":[0-9A-Fa-f]{0,4}:")
# written as a North American number (415-555-2671, (415) 555-2671, 415.555.2671) even where phonenumbers knows
# the area code is not assigned (123-456-7890): a layout no year, price, date or ISBN takes
_NANP_LAYOUT = re.compile(r"(?<![\w.-])(?:\(\d{3}\) ?|\d{3}([-.]))\d{3}(?(1)\1|[-.])\d{4}(?![\w-]|[.,]\d)")
# regions whose national numbers (0410 787 999, 020 7946 0958) are looked for besides the international +CC form;
# they met no false positive on Dolly-15k and the OASST samples (DE, with its variable-length numbers, flags
# years and log values; IN flags Unix timestamps)
PHONE_REGIONS = ("US", "GB", "AU", "FR")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries.

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, the number mod 97 must be 1.

    >>> iban_ok("GB82 WEST 1234 5698 7654 32"), iban_ok("GB82 WEST 1234 5698 7654 33")
    (True, False)
    """
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """The SSA never issues area 000, 666 or 900-999, group 00 or serial 0000."""
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _card_ok(raw: str) -> bool:
    """13-19 digits with one kind of separator (or none), a Luhn checksum, not all one digit and not an ISBN-13
    (978/979 Bookland prefix: no card issuer uses it; one ISBN in ten passes Luhn)."""
    if " " in raw and "-" in raw:
        return False
    digits = re.sub(r"[ -]", "", raw)
    if len(digits) == 13 and digits[:3] in ("978", "979"):
        return False
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


def _ip_ok(raw: str) -> bool:
    """A public IPv4/IPv6 address (``ipaddress``'s ``is_global``)."""
    try:
        return ipaddress.ip_address(raw).is_global
    except ValueError:
        return False


class PiiScrubber:
    """Replace PII in texts by typed placeholders; ``mode`` is one of ``PII_MODES``.

    ``scrub`` and ``drop`` both return the scrubbed text and the counts: dropping a conversation whose counts are
    not empty is the caller's business (``data_prep/quality.py``). ``off`` returns the text untouched.

    >>> PiiScrubber().scrub("Mail jane.doe@example.com or call (415) 555-2671.")
    ('Mail <EMAIL> or call <PHONE>.', Counter({'email': 1, 'phone': 1}))
    """

    def __init__(self, mode: str = "scrub", phone_regions: tuple[str, ...] = PHONE_REGIONS):
        if mode not in PII_MODES:
            raise ValueError(f"pii mode {mode!r} is not one of {PII_MODES}")
        self.mode = mode
        self.phone_regions = phone_regions
        # a national number starts with its region's trunk prefix (0 in GB, AU, FR): the first region is always
        # tried, each other one only on runs that start with its prefix; +CC numbers parse under any region
        self._trunk = [phonenumbers.PhoneMetadata.metadata_for_region(r).national_prefix for r in phone_regions]

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Spans ``(start, end, type)`` of the PII in text, sorted, not overlapping (earlier types win)."""
        spans: list[tuple[int, int, str]] = []
        finders = [("email", self._emails)] if "@" in text else []
        if _DIGITS.search(text):
            finders += [("iban", self._ibans), ("credit_card", self._cards), ("ssn", self._ssns)]
            finders += [("ip_address", self._ipv4s), ("phone", self._phones)]
        if _IPV6_GATE.search(text):
            finders.append(("ip_address", self._ipv6s))
        for kind, found in finders:
            for start, end in found(text):
                if not any(start < e and s < end for s, e, _ in spans):
                    spans.append((start, end, kind))
        return sorted(spans)

    def scrub(self, text: str) -> tuple[str, Counter]:
        """``(text with each PII item replaced by its placeholder, Counter of types found)``."""
        counts: Counter = Counter()
        if self.mode == "off":
            return text, counts
        spans = self.find(text)
        if not spans:
            return text, counts
        parts, pos = [], 0
        for start, end, kind in spans:
            parts += [text[pos:start], PLACEHOLDERS[kind]]
            counts[kind] += 1
            pos = end
        parts.append(text[pos:])
        return "".join(parts), counts

    @staticmethod
    def _emails(text: str):
        return (m.span() for m in _EMAIL.finditer(text))

    @staticmethod
    def _ibans(text: str):
        return (m.span(1) for m in _IBAN.finditer(text) if iban_ok(m.group(1)))

    @staticmethod
    def _cards(text: str):
        return (m.span() for m in _CARD.finditer(text) if _card_ok(m.group()))

    @staticmethod
    def _ssns(text: str):
        for m in _SSN.finditer(text):
            if not ssn_ok(m.group(1), m.group(3), m.group(4)):
                continue
            if m.group(2) or _SSN_CONTEXT.search(text, max(0, m.start() - 40), m.start()):
                yield m.span()

    @staticmethod
    def _ipv4s(text: str):
        return (m.span() for m in _IPV4.finditer(text) if _ip_ok(m.group()))

    @staticmethod
    def _ipv6s(text: str):
        return (m.span() for m in _IPV6.finditer(text) if _ip_ok(m.group()))

    def _phones(self, text: str):
        """phonenumbers' matcher on each run of 7 to 15 digits (plus one character each side, which it checks for
        letters): on the whole text it would cost about a millisecond."""
        for run in _PHONE_RUN.finditer(text):
            digits = re.sub(r"\D", "", run.group())
            if not 7 <= len(digits) <= 15:  # E.164: at most 15 digits
                continue
            lo = max(0, run.start() - 1)
            window = text[lo : run.end() + 1]
            for i, region in enumerate(self.phone_regions):
                if i and (run.group()[0] == "+" or not digits.startswith(self._trunk[i] or "+")):
                    continue
                for m in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.VALID):
                    yield lo + m.start, lo + m.end
        yield from (m.span() for m in _NANP_LAYOUT.finditer(text))
