"""OASST1 ranked sibling replies -> preference pairs (the data of stage 3), with every message accounted for.

Volunteers ranked the assistant replies to one prompter message against each other (``rank``: 0 is the best,
0-based within the siblings). For every prompter message with two or more usable ranked replies, the context is the
path from the root to that prompt and pairs come from the ranks (lower rank = chosen)::

    prompt P (context: root ... P)          --pairs best-vs-rest (default)   (A, B) (A, C)
      +- reply A  rank 0                    --pairs all                      (A, B) (A, C) (B, C)
      +- reply B  rank 1                    --pairs adjacent                 (A, B) (B, C)
      +- reply C  rank 2

A reply is usable when it is not deleted, is ranked, shares its rank with no sibling (ties: both quarantined) and
its text (stripped) differs from every better sibling's ("chosen equals rejected": the worse one is quarantined).
``adjacent`` pairs neighbours among the usable replies, so a gap left by a deleted reply is stepped over. A prompt
whose context holds a deleted message is skipped with its replies. Every message of the input ends as written (a
prompt or reply of a written pair), filtered (a prompt with no replies, or fewer than 2 usable ones) or rejected
(quarantined with its reason); pairs come out roots in input order, depth first, by (chosen rank, rejected rank).

The tree code (reading both export shapes, linking, orphans, cycles, non-alternating roles) is ``data_prep.oasst``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from common.chat_format import BOT, HUMAN, escape_role_tags
from data_prep.accounting import Report, SourceStats
from data_prep.oasst import Message, OasstConverter

PAIR_MODES = ("best-vs-rest", "all", "adjacent")
OPENAI_ROLES = {HUMAN: "user", BOT: "assistant"}


def rank_pairs(n: int, mode: str) -> list[tuple[int, int]]:
    """Index pairs (better, worse) over ``n`` replies sorted best first.

    >>> rank_pairs(3, "best-vs-rest"), rank_pairs(3, "all"), rank_pairs(3, "adjacent")
    ([(0, 1), (0, 2)], [(0, 1), (0, 2), (1, 2)], [(0, 1), (1, 2)])
    """
    if mode == "best-vs-rest":
        return [(0, j) for j in range(1, n)]
    if mode == "all":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if mode == "adjacent":
        return [(i, i + 1) for i in range(n - 1)]
    raise ValueError(f"unknown pairs mode {mode!r}; choose one of {', '.join(PAIR_MODES)}")


def escaped(text: str, stats: SourceStats) -> str:
    """``text`` with its role tags escaped as the SFT writer does, counting each escaped text."""
    out, n = escape_role_tags(text)
    if n:
        stats.notes["texts with a role tag (escaped)"] += 1
    return out


def pair_record(source: str, tree_id: str, record_id: str, prompt: list[dict], chosen: str, rejected: str, **meta):
    """One output line in the contract's form (the provenance fields null unless given)."""
    fields = ("prompt_id", "chosen_id", "rejected_id", "chosen_rank", "rejected_rank", "lang", "license")
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "source": source,
        "id": record_id,
        "tree_id": tree_id,
        **{k: meta.get(k) for k in fields},
    }


@dataclass
class PromptPairs:
    """The pairs of one prompt and the messages they were made from (for the written/filtered accounting)."""

    prompt: Message
    replies: list[Message]  # the usable replies, best first
    pairs: list[dict]


class OasstPreferences:
    """Reads an OASST1 source (flat rows or nested trees) and yields the pairs of each ranked prompt."""

    def __init__(self, report: Report, mode: str = "best-vs-rest", source: str = "oasst"):
        rank_pairs(2, mode)  # checks the mode
        self.report, self.mode, self.source = report, mode, source
        self.converter = OasstConverter(report, source=source)
        self.stats = self.converter.stats

    def load(self, spec: str, split: str = "train") -> None:
        self.converter.load(spec, split=split)

    def _reject(self, m: Message, reason: str) -> None:
        self.report.reject(self.source, m.file, m.line, reason)

    def prompts(self) -> Iterator[PromptPairs]:
        """Depth first over every tree, roots in input order: the pairs of each prompt with usable replies."""
        for root in self.converter.trees():
            stack: list[tuple[Message, list[Message]]] = [(root, [])]
            while stack:
                node, above = stack.pop()
                path = above + [node]
                if node.role == HUMAN:  # a reply's fate is settled with its prompt's (its siblings')
                    found = self._prompt(path)
                    if found is not None:
                        yield found
                stack.extend((child, path) for child in reversed(node.children))

    def _usable(self, replies: list[Message]) -> list[Message]:
        """The usable replies best first; the others quarantined with their reason."""
        ranked: dict[int, list[Message]] = {}
        for r in replies:
            if r.deleted:
                self._reject(r, "deleted reply")
            elif r.rank is None:
                self._reject(r, "unranked reply")
            else:
                ranked.setdefault(r.rank, []).append(r)
        usable: list[Message] = []
        for rank in sorted(ranked):
            group = ranked[rank]
            if len(group) > 1:
                for r in group:
                    self._reject(r, f"tie: rank {rank} shared with a sibling")
                continue
            r = group[0]
            better = next((b for b in usable if b.text.strip() == r.text.strip()), None)
            if better is not None:
                self._reject(r, f"chosen equals rejected (same text as the rank {better.rank} sibling)")
                continue
            usable.append(r)
        return usable

    def _prompt(self, path: list[Message]) -> PromptPairs | None:
        """Pairs for the prompt ``path[-1]``, or None (the prompt and its replies counted)."""
        prompt, replies = path[-1], path[-1].children
        if not replies:
            self.stats.filtered["prompt without replies"] += 1
            return None
        if any(m.deleted for m in path):
            for m in [prompt, *replies]:
                self._reject(m, "deleted message in the context (root to prompt)")
            return None
        usable = self._usable(replies)
        if len(usable) < 2:
            for r in usable:
                self._reject(r, "single ranked reply (no sibling to pair with)")
            self.stats.filtered["prompt with fewer than 2 usable ranked replies"] += 1
            return None
        context = [{"role": OPENAI_ROLES[m.role], "content": escaped(m.text, self.stats)} for m in path]
        texts = [escaped(r.text, self.stats) for r in usable]
        root = path[0].id
        pairs = []
        for i, j in rank_pairs(len(usable), self.mode):
            c, r = usable[i], usable[j]
            pairs.append(
                pair_record(
                    self.source,
                    root,
                    f"{root}:{prompt.id}:{c.id}:{r.id}",
                    context,
                    texts[i],
                    texts[j],
                    prompt_id=prompt.id,
                    chosen_id=c.id,
                    rejected_id=r.id,
                    chosen_rank=c.rank,
                    rejected_rank=r.rank,
                    lang=prompt.lang,
                )
            )
        return PromptPairs(prompt, usable, pairs)
