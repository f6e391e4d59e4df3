"""The quality pass every chat job runs on each conversation before it is written, streaming and in input order:
license tag -> PII (scrub or drop) -> language tag (and ``--languages`` filter) -> decontamination against
evaluation prompts -> exact duplicates (``--dedup``) -> MinHash near-duplicates.

Filters that can drop a conversation come before both dedups, so a kept representative is always a written one.
Every drop is counted per source and quarantined with its reason and specifics (the eval item, the kept record);
nothing here stops a run, ``--strict`` or not. ``QualityPass.build`` checks every setting and reads the eval files
before any input is read, so bad settings are one line before any work.

The work is split in two so it scales with cores: ``Analyzer.analyze`` (PII, language, n-grams, the MinHash sketch)
is a pure function of a conversation's texts and runs in worker processes (``data_prep/workers.py``);
``QualityPass.decide`` (counts, quarantine, the near-duplicate index) runs in the main process in input order, so
the output is the same bytes for any number of workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.chat_format import BOT, Conversation, Turn
from common.licenses import checked_licenses, lookup
from common.near_dup import NearDupIndex, Sketch
from data_prep.accounting import Report
from data_prep.decontaminate import Decontaminator
from data_prep.language import LanguageTagger, check_language_codes
from data_prep.pii import PiiScrubber

if TYPE_CHECKING:
    from data_prep.settings import QualitySettings


@dataclass(slots=True)
class Analysis:
    """What the pure half found in one conversation."""

    texts: list[str] | None  # the turns' texts after PII scrubbing (None: unchanged)
    pii: dict[str, int]  # PII items found, by type
    lang: str
    eval_item: str | None  # the evaluation item it overlaps, if any
    sketch: object  # the near-duplicate sketch (None when near_dup is off)


def pack(found: list[Analysis]) -> tuple:
    """Analyses as plain tuples plus one array per sketch field: what a worker sends back (pickling a dataclass and
    three small arrays a conversation cost ~25 us of it)."""
    meta = [(a.texts, a.pii, a.lang, a.eval_item) for a in found]
    have = [i for i, a in enumerate(found) if a.sketch is not None]
    if not have:
        return meta, have, None
    sks = [found[i].sketch for i in have]
    text = np.stack([sk.text for sk in sks])
    part_of = [i for i, sk in enumerate(sks) if sk.part is not None]
    part = np.stack([sks[i].part for i in part_of]) if part_of else None
    return meta, have, (text, part_of, part, np.stack([sk.bands for sk in sks]))


def unpack(packed: tuple) -> list[Analysis]:
    """The analyses ``pack`` packed (the sketches' arrays are rows of the packed ones)."""
    meta, have, arrays = packed
    found = [Analysis(texts, pii, lang, eval_item, None) for texts, pii, lang, eval_item in meta]
    if arrays is not None:
        text, part_of, part, bands = arrays
        parts = dict(zip(part_of, part)) if part_of else {}
        for j, i in enumerate(have):
            found[i].sketch = Sketch(text[j], parts.get(j), bands[j])
    return found


class Analyzer:
    """The pure, per-conversation half of the pass; built once per process (a worker inherits it by fork)."""

    def __init__(self, settings: QualitySettings, decontaminator: Decontaminator | None, near_dup: NearDupIndex | None):
        self.pii_mode = settings.pii
        self.pii = PiiScrubber(settings.pii)
        self.tagger = LanguageTagger()
        self.decontaminator = decontaminator
        self.near_dup = near_dup

    def analyze_many(self, payload: list[tuple[list[str], list[str]]]) -> list[Analysis]:
        """``analyze`` of each (texts, roles), the near-duplicate sketches made 16 at a time (numpy's per-call cost
        paid once per batch: ~1.5x faster than one by one, the same sketches)."""
        found = [self.analyze(texts, roles, sketch=False) for texts, roles in payload]
        if self.near_dup is not None:
            todo = [i for i, a in enumerate(found) if a.eval_item is None]
            for start in range(0, len(todo), 16):
                batch = todo[start : start + 16]
                pairs = []
                for i in batch:
                    texts = found[i].texts or payload[i][0]
                    replies = "\n".join(t for t, r in zip(texts, payload[i][1]) if r == BOT)
                    pairs.append(("\n".join(texts), replies))
                for i, sk in zip(batch, self.near_dup.sketches(pairs)):
                    found[i].sketch = sk
        return found

    def analyze(self, texts: list[str], roles: list[str], sketch: bool = True) -> Analysis:
        found: Counter = Counter()
        scrubbed = None
        if self.pii_mode != "off":
            out = []
            for text in texts:
                new, counts = self.pii.scrub(text)
                found.update(counts)
                out.append(new)
            scrubbed = out if found else None
        texts = scrubbed or texts
        whole = "\n".join(texts)
        eval_item = self.decontaminator.match(whole) if self.decontaminator is not None else None
        sk = None
        if sketch and self.near_dup is not None and eval_item is None:
            replies = "\n".join(t for t, r in zip(texts, roles) if r == BOT)  # a copy needs the same replies too
            sk = self.near_dup.sketch(whole, replies)
        return Analysis(scrubbed, dict(found), self.tagger.detect(whole), eval_item, sk)


class QualityPass:
    """Applies ``QualitySettings``: ``decide`` returns the conversation to write, or None (counted, quarantined)."""

    def __init__(self, settings: QualitySettings, report: Report, licenses: dict[str, str], default_license: str):
        self.settings, self.report = settings, report
        self.licenses, self.default_license = dict(licenses), default_license  # source -> SPDX id
        self.keep_langs = set(check_language_codes(settings.languages))
        decontaminator = (
            Decontaminator.from_files(settings.decontaminate, settings.decontaminate_ngram)
            if settings.decontaminate
            else None
        )
        self.near_dup = (
            NearDupIndex(settings.near_dup_threshold, settings.near_dup_num_perm, settings.near_dup_shingle)
            if settings.near_dup
            else None
        )
        self.analyzer = Analyzer(settings, decontaminator, self.near_dup)
        self.clusters: set[str] = set()  # kept records that had a near-duplicate dropped

    @classmethod
    def build(
        cls, settings: QualitySettings, report: Report, licenses: dict[str, str], default_license: str = "NOASSERTION"
    ) -> "QualityPass":
        """Check the licenses (known SPDX ids; ``--commercial_only``) and every setting, read the eval files; then
        build. ``licenses`` maps input names to SPDX ids; any other source gets ``default_license``."""
        checked = checked_licenses(licenses or {"input": default_license}, settings.commercial_only)
        default_license = lookup(default_license, "--license").spdx
        return cls(settings, report, checked if licenses else {}, default_license)

    def decide(self, conv: Conversation, found: Analysis) -> Conversation | None:
        """Tag and filter one conversation with its analysis, before the exact dedup."""
        stats = self.report.source(conv.source)
        conv.license = self.licenses.setdefault(conv.source, self.default_license)
        conv.lang = found.lang
        if found.pii:
            stats.pii.update(found.pii)
            if self.settings.pii == "drop":
                kinds = ",".join(sorted(found.pii))
                self.report.quarantine(conv.source, "pii", id=conv.id, count=conv.records, pii=kinds)
                return None
            conv.turns = [Turn(t.role, text) for t, text in zip(conv.turns, found.texts)]
        if self.keep_langs and conv.lang not in self.keep_langs:
            self.report.quarantine(
                conv.source, "language not in --languages", id=conv.id, count=conv.records, lang=conv.lang
            )
            return None
        if found.eval_item is not None:
            self.report.quarantine(
                conv.source, "eval overlap", id=conv.id, count=conv.records, eval_item=found.eval_item
            )
            return None
        return conv

    def dedup(self, conv: Conversation, found: Analysis) -> bool:
        """After the exact dedup: True to write, False for a near-duplicate of a kept conversation (quarantined)."""
        if self.near_dup is None:
            return True
        key = f"{conv.source}/{conv.id}"
        hit = self.near_dup.check_add_sketch(key, found.sketch)
        if hit is None:
            return True
        kept, similarity = hit
        self.report.quarantine(
            conv.source,
            "near-duplicate",
            id=conv.id,
            count=conv.records,
            near_duplicate_of=kept,
            similarity=round(similarity, 3),
        )
        if kept not in self.clusters:
            self.clusters.add(kept)
            # the kept record's source is its key's prefix (the longest source name that is one: names may hold "/");
            # no per-record map, so memory grows only by the index itself
            source = max((s for s in self.report.sources if kept.startswith(s + "/")), key=len)
            self.report.source(source).near_dup_clusters += 1
        return False

    def written(self, conv: Conversation) -> None:
        """Count a written conversation's language."""
        self.report.source(conv.source).languages[conv.lang or "und"] += 1

    def summary(self) -> dict:
        """What the summary and the data card record of this pass besides the per-source counts."""
        out = {"settings": self.settings.model_dump(), "licenses": dict(self.licenses)}
        if self.analyzer.decontaminator is not None:
            out["eval_items"] = self.analyzer.decontaminator.items
        if self.near_dup is not None:
            out["near_dup_index"] = {"records": len(self.near_dup), "bytes_estimate": self.near_dup.nbytes_estimate()}
        return out
