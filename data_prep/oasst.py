"""OpenAssistant OASST1 converter: message rows (or the nested ``*.trees.jsonl`` export) -> conversations.

Trees are rebuilt from ``parent_id``. Paths:
- ``best`` (BLOOMChat): from the root, at each level the child with the highest net emoji score
  (``+1`` count minus ``-1`` count, missing = 0), ties to the first in input order;
- ``rank``: at each level the child with the best (lowest) ``rank``, unranked last;
- ``all-leaves``: every root-to-leaf path.
Orphans (parent missing), cycles, non-alternating roles and bad rows are rejected with their
subtree and counted. ``OasstFilters`` (all off by default, as in BLOOMChat; prepare_oa_dolly turns them on) drops a
message on lang, deleted, review_result, synthetic, its volunteers' label means and its detoxify scores
(``data_prep/oasst_labels.py``); a filtered message is quarantined with its reason and its subtree under
"ancestor filtered". Conversations come out in the input order of their roots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from common.chat_format import BOT, HUMAN, Conversation, Turn
from data_prep.accounting import Report, SourceStats
from data_prep.readers import RawRecord, iter_source

OASST_HUB_ID = "OpenAssistant/oasst1"
MODES = ("best", "rank", "all-leaves")
ROLES = {"prompter": HUMAN, "assistant": BOT}


@dataclass
class OasstFilters:
    """Optional message filters (all off by default, as in BLOOMChat). ``label_max``: drop when the mean of a
    volunteers' label reaches the value; ``quality_min``: drop when the mean 'quality' is below it (0: off; a message
    without a quality label is kept); ``detoxify_max``: drop when a detoxify score reaches the value."""

    langs: tuple[str, ...] = ()
    drop_deleted: bool = False
    require_review: bool = False
    drop_synthetic: bool = False
    label_max: dict[str, float] = field(default_factory=dict)
    quality_min: float = 0.0
    detoxify_max: dict[str, float] = field(default_factory=dict)

    def reason(self, m: "Message") -> str | None:
        """Why ``m`` is filtered (a fixed short string: it is a summary key), or None to keep it."""
        if self.langs and m.lang not in self.langs:
            return f"lang not in {','.join(self.langs)}"
        if self.drop_deleted and m.deleted:
            return "deleted"
        if self.require_review and m.review is not True:
            return "review_result not true"
        if self.drop_synthetic and m.synthetic:
            return "synthetic"
        for name, limit in self.label_max.items():
            if m.labels.get(name, 0.0) >= limit:
                return f"label {name} >= {limit}"
        quality = m.labels.get("quality")
        if self.quality_min > 0 and quality is not None and quality < self.quality_min:
            return f"label quality < {self.quality_min}"
        for name, limit in self.detoxify_max.items():
            if m.detoxify.get(name, 0.0) >= limit:
                return f"detoxify {name} >= {limit}"
        return None


@dataclass(slots=True)
class Message:
    id: str
    parent: str | None
    role: str
    text: str
    score: int
    rank: int | None
    lang: str | None
    deleted: bool
    review: bool | None
    file: str
    line: int
    children: list = field(default_factory=list)
    synthetic: bool = False
    labels: dict[str, float] = field(default_factory=dict)  # label name -> mean of the volunteers' answers
    detoxify: dict[str, float] = field(default_factory=dict)


def emoji_score(emojis) -> int:
    """Net thumbs: count of '+1' minus count of '-1'; missing or malformed emojis score 0."""
    if not isinstance(emojis, dict):
        return 0
    names, counts = emojis.get("name") or [], emojis.get("count") or []
    if not isinstance(names, list) or not isinstance(counts, list) or len(names) != len(counts):
        return 0
    score = 0
    for name, count in zip(names, counts):
        if isinstance(count, int):
            score += count if name == "+1" else -count if name == "-1" else 0
    return score


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # not NaN


def parse_labels(labels) -> dict[str, float]:
    """``{name: [...], value: [...], count: [...]}`` -> {name: mean}; a label with count 0 is absent. A malformed
    block (not a dict, a list missing or of another length) is absent as a whole, an entry of a wrong type alone."""
    if not isinstance(labels, dict):
        return {}
    names, values, counts = labels.get("name"), labels.get("value"), labels.get("count")
    if not all(isinstance(x, list) for x in (names, values, counts)) or not len(names) == len(values) == len(counts):
        return {}
    return {
        n: float(v)
        for n, v, c in zip(names, values, counts)
        if isinstance(n, str) and _number(v) and _number(c) and c > 0
    }


def parse_detoxify(scores) -> dict[str, float]:
    """``{toxicity: 0.01, ...}`` -> the numeric scores; anything else is absent."""
    if not isinstance(scores, dict):
        return {}
    return {k: float(v) for k, v in scores.items() if isinstance(k, str) and _number(v)}


def parse_message(obj: dict, file: str, line: int, parent: str | None) -> tuple[Message | None, str | None]:
    """Validate one message dict; ``parent`` comes from nesting in the trees export, else from parent_id."""
    mid = obj.get("message_id")
    if not isinstance(mid, str) or not mid:
        return None, "missing or invalid field 'message_id'"
    if parent is None:
        parent = obj.get("parent_id")
        if parent is not None and not isinstance(parent, str):
            return None, "field 'parent_id' is not a string or null"
    role = obj.get("role")
    if role not in ROLES:
        return None, f"field 'role' is {role!r}, not 'prompter' or 'assistant'"
    text = obj.get("text")
    if not isinstance(text, str):
        return None, "missing field 'text'" if text is None else "field 'text' is not a string"
    if not text.strip():
        return None, "empty or blank text"
    rank = obj.get("rank")
    rank = rank if isinstance(rank, int) and not isinstance(rank, bool) else None
    return Message(
        mid,
        parent or None,
        ROLES[role],
        text,
        emoji_score(obj.get("emojis")),
        rank,
        obj.get("lang"),
        bool(obj.get("deleted")),
        obj.get("review_result"),
        file,
        line,
        synthetic=obj.get("synthetic") is True,
        labels=parse_labels(obj.get("labels")),
        detoxify=parse_detoxify(obj.get("detoxify")),
    ), None


def _flatten(rec: RawRecord) -> Iterator[tuple[dict | None, str | None, str | None]]:
    """Yield (message dict, nesting parent id, error) from one row: a message, or a whole nested tree."""
    obj = rec.obj
    if isinstance(obj.get("prompt"), dict) and "message_id" not in obj:
        stack = [(obj["prompt"], None)]
        while stack:
            msg, parent = stack.pop()
            if not isinstance(msg, dict):
                yield None, parent, "reply is not an object"
                continue
            yield msg, parent, None
            replies = msg.get("replies") or []
            if not isinstance(replies, list):
                yield None, parent, "field 'replies' is not a list"
                continue
            stack.extend((r, msg.get("message_id")) for r in reversed(replies))
    else:
        yield obj, None, None


class OasstConverter:
    """Reads every message of a source, then yields conversations root by root."""

    def __init__(
        self,
        report: Report,
        mode: str = "best",
        filters: OasstFilters | None = None,
        keep_trailing_human: bool = False,
        source: str = "oasst",
    ):
        if mode not in MODES:
            raise ValueError(f"unknown OASST mode {mode!r}; choose one of {', '.join(MODES)}")
        self.report, self.mode, self.source = report, mode, source
        self.filters = filters or OasstFilters()
        self.keep_trailing_human = keep_trailing_human
        self.stats: SourceStats = report.source(source)
        self.messages: dict[str, Message] = {}

    def _reject(self, file: str, line: int, reason: str, count: int = 1) -> None:
        self.report.reject(self.source, file, line, reason, count)

    def load(self, spec: str, split: str = "train") -> None:
        for rec in iter_source(spec, split=split):
            if rec.error:
                self.stats.read += 1
                self._reject(rec.file, rec.line, rec.error)
                continue
            for obj, parent, err in _flatten(rec):
                self.stats.read += 1
                msg, err = (None, err) if err else parse_message(obj, rec.file, rec.line, parent)
                if msg is None:
                    self._reject(rec.file, rec.line, err)
                elif msg.id in self.messages:
                    self._reject(rec.file, rec.line, f"duplicate message_id {msg.id}")
                else:
                    self.messages[msg.id] = msg

    def _subtree(self, root: Message) -> list[Message]:
        out, stack = [], [root]
        while stack:
            m = stack.pop()
            out.append(m)
            stack.extend(reversed(m.children))
        return out

    def _filter_subtree(self, root: Message, reason: str) -> None:
        """Quarantine a filtered message under ``reason`` and each of its descendants under "ancestor filtered"."""
        q = self.report.quarantine
        q(self.source, reason, file=root.file, line=root.line, id=root.id)
        for m in self._subtree(root)[1:]:
            q(
                self.source,
                "ancestor filtered",
                file=m.file,
                line=m.line,
                id=m.id,
                ancestor=root.id,
                ancestor_reason=reason,
            )

    def _drop_subtree(self, root: Message, reason: str) -> None:
        """Quarantine every message of a subtree with one reason."""
        for m in self._subtree(root):
            self._reject(m.file, m.line, reason)

    def _link(self) -> list[Message]:
        """Attach children in input order; reject orphans and cycles; return the roots in input order."""
        roots = []
        for m in self.messages.values():
            if m.parent is None:
                roots.append(m)
            elif m.parent in self.messages:
                self.messages[m.parent].children.append(m)
        reached = set()
        for root in roots:
            reached.update(id(m) for m in self._subtree(root))
        for m in self.messages.values():
            if id(m) in reached:
                continue
            seen, cur = set(), m
            while cur.parent is not None and cur.parent in self.messages and cur.id not in seen:
                seen.add(cur.id)
                cur = self.messages[cur.parent]
            reason = "cycle in parent links" if cur.id in seen else "orphan: parent message missing"
            self._reject(m.file, m.line, reason)
        return roots

    def _prune(self, node: Message) -> None:
        """Drop filtered and non-alternating children (with their subtrees), top-down."""
        stack = [node]
        while stack:
            parent = stack.pop()
            kept = []
            for child in parent.children:
                why = self.filters.reason(child)
                if why:
                    self._filter_subtree(child, why)
                elif child.role == parent.role:
                    self._drop_subtree(child, "non-alternating roles")
                else:
                    kept.append(child)
            parent.children = kept
            stack.extend(kept)

    def _paths(self, root: Message) -> Iterator[list[Message]]:
        if self.mode == "all-leaves":
            stack = [[root]]
            while stack:
                path = stack.pop()
                kids = path[-1].children
                if not kids:
                    yield path
                stack.extend(path + [k] for k in reversed(kids))
            return
        path = [root]
        while path[-1].children:
            kids = path[-1].children
            if self.mode == "best":
                path.append(max(kids, key=lambda k: k.score))  # max keeps the first of equals
            else:
                path.append(min(kids, key=lambda k: (k.rank is None, k.rank or 0)))
        yield path

    def trees(self) -> Iterator[Message]:
        """The usable roots in input order, children linked in input order and pruned (filters, non-alternating
        roles); orphans, cycles, filtered roots and non-prompter roots are counted here, with their subtrees."""
        for root in self._link():
            why = self.filters.reason(root)
            if why:
                self._filter_subtree(root, why)
                continue
            if root.role != HUMAN:
                self._drop_subtree(root, "root is not a prompter message")
                continue
            self._prune(root)
            yield root

    def conversations(self) -> Iterator[Conversation]:
        """Yield one conversation per selected path, roots in input order, counting every message."""
        for root in self.trees():
            used: set[str] = set()
            for path in self._paths(root):
                truncated = path[-1].role == HUMAN and not self.keep_trailing_human
                if truncated:
                    if path[-1].id not in used:
                        self.stats.filtered["unanswered prompt (no reply)"] += 1
                        used.add(path[-1].id)
                    path = path[:-1]
                new = [m for m in path if m.id not in used]
                if not path or (truncated and not new):
                    continue
                used.update(m.id for m in new)
                turns = [Turn(m.role, m.text) for m in path]
                yield Conversation(turns, source=self.source, id=root.id, records=len(new))
            self.stats.filtered["not on selected path"] += len(self._subtree(root)) - len(used)
