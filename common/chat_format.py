"""The chat format: the one place that knows role tags, rendering, pairs and the next-turn prompt.

Every stage imports this module (data_prep writes with it, tokenization reads what it wrote,
inference builds prompts with it, training saves its Jinja ``chat_template``), so training and
chat cannot drift.

Rendered text is BLOOMChat's::

    <human>: {text}\\n<bot>: {text}\\n<human>: {text}\\n<bot>: {text}

The default JSONL form is generative_data_prep's list of prompt/completion pairs. Each pair's
prompt holds one human turn with its tags and ends with ``<bot>:``; its completion is the bot
reply. gdp tokenizes each pair as ``prompt`` + `` completion`` + EOS, so the end of every bot
turn is a trained EOS token::

    [{"prompt": "<human>: Hi\\n<bot>:", "completion": "Hello!"},
     {"prompt": "\\n<human>: Bye\\n<bot>:", "completion": "See you."}]

Role-tag policy: a message text must never forge a turn. Any ``<human>:`` or ``<bot>:`` inside a
message is rewritten to ``<human> :`` / ``<bot> :`` (visible, tokenizes differently, never parsed
as a tag) and counted. The same rule applies to what a user types into the chat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal

# BLOOMChat's sampling settings: written into every final model's generation_config.json by training, and the
# chat's defaults when a model has none (inference.sampling)
GENERATION_DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": 512}

HUMAN = "human"
BOT = "bot"
HUMAN_TAG = "<human>:"
BOT_TAG = "<bot>:"
Role = Literal["human", "bot"]
TAGS: dict[str, str] = {HUMAN: HUMAN_TAG, BOT: BOT_TAG}

# Bot-tag spellings seen in real OIG files (unified_joke_explanations uses "Rosey:").
OIG_BOT_ALIASES: tuple[str, ...] = ("<bot>:", "Rosey:")

_ROLE_TAG_RE = re.compile(r"<(human|bot)>:")
# A line that starts with an angle-bracket tag, e.g. "<system>:", in text we parse.
_ANY_TAG_LINE_RE = re.compile(r"^<([A-Za-z_][\w-]*)>:", re.MULTILINE)


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: who said it and what."""

    role: Role
    text: str


@dataclass
class Conversation:
    """A list of turns plus where it came from (metadata rides along, never rendered)."""

    turns: list[Turn]
    source: str
    id: str
    category: str | None = None
    records: int = 1  # input records this conversation accounts for as written (OASST: its messages)
    license: str | None = None  # SPDX id of its source's license (data_prep's data card)
    lang: str | None = None  # detected language code (data_prep's quality pass)


def escape_role_tags(text: str) -> tuple[str, int]:
    """Rewrite every ``<human>:``/``<bot>:`` in ``text`` so it cannot forge a turn; return (text, count)."""
    return _ROLE_TAG_RE.subn(r"<\1> :", text)


def validate_turns(turns: list[Turn]) -> str | None:
    """Return why ``turns`` is not a well-formed conversation, or None if it is."""
    if not turns:
        return "no turns"
    if turns[0].role != HUMAN:
        return "first turn is not human"
    for i, turn in enumerate(turns):
        if not isinstance(turn.text, str) or not turn.text.strip():
            return "empty or blank text"
        if i and turn.role == turns[i - 1].role:
            return "non-alternating roles"
    if turns[-1].role != BOT:
        return "no bot reply"
    return None


# The one rule for system messages (the format has no system role), shared by data_prep and the server:
# "reject" refuses the conversation; "fold" puts the system text at the start of the first human turn,
# followed by a blank line.
SYSTEM_RULES = ("reject", "fold")


def apply_system_rule(system_text: str, turns: list[Turn], rule: str) -> tuple[list[Turn], str | None]:
    """(turns with the system text applied, None) or (turns, why the conversation is refused)."""
    if rule == "reject":
        return (
            turns,
            "system message (the chat format has no system role; --system fold puts it at the start "
            "of the first user message)",
        )
    if not turns:
        return turns, "a system message but no user message to fold it into"
    if turns[0].role != HUMAN:
        return turns, "first turn is not human"
    if not system_text.strip():
        return turns, None
    return [Turn(HUMAN, f"{system_text.strip()}\n\n{turns[0].text}")] + list(turns[1:]), None


def render_text(turns: Iterable[Turn]) -> str:
    """BLOOMChat's rendering: one ``<tag>: text`` per turn, joined by newlines."""
    return "\n".join(f"{TAGS[t.role]} {t.text}" for t in turns)


def human_prompt(text: str, first: bool) -> str:
    """The prompt half of a pair: the human turn with its tags, ending with the bot tag."""
    return f"{'' if first else chr(10)}{HUMAN_TAG} {text}\n{BOT_TAG}"


def to_pairs(conv: Conversation) -> list[dict]:
    """gdp's list-of-pairs form; a trailing unanswered human turn is left out."""
    meta = {"source": conv.source, "id": conv.id}
    for key in ("category", "license", "lang"):
        if getattr(conv, key) is not None:
            meta[key] = getattr(conv, key)
    pairs = []
    turns = conv.turns
    for i in range(0, len(turns) - 1, 2):
        pairs.append(
            {
                "prompt": human_prompt(turns[i].text, first=(i == 0)),
                "completion": turns[i + 1].text,
                **meta,
            }
        )
    return pairs


def to_bloomchat(conv: Conversation, trailing_newline: bool = False) -> dict:
    """BLOOMChat's exact record: the rendered text as a completion with an empty prompt.

    BLOOMChat's OIG records end with a newline (``text.strip() + "\\n"``); its Dolly/OASST ones do not.
    """
    return {"prompt": "", "completion": render_text(conv.turns) + ("\n" if trailing_newline else "")}


def join_pairs(pairs: list[dict], space_separator: bool = True) -> str:
    """Read pairs back as text with gdp's separator rule (prompt rstrip, one space before completion)."""
    out = []
    for pair in pairs:
        prompt, completion = pair.get("prompt", ""), pair["completion"]
        if space_separator:
            prompt = prompt.rstrip(" ")
            completion = " " + completion.lstrip(" ") if completion else completion
        out.append(prompt + completion)
    return "".join(out)


def parse_text(text: str, bot_aliases: tuple[str, ...] = OIG_BOT_ALIASES) -> tuple[list[Turn] | None, str | None]:
    """Parse ``<human>:``/``<bot>:`` text back into turns: (turns, None) or (None, reason).

    A tag counts only at the start of a line; ``bot_aliases`` are alternative bot tags (OIG's
    ``Rosey:``). Any other ``<name>:`` at a line start is reported as an unknown role tag.
    """
    tags = [(HUMAN_TAG, HUMAN)] + [(alias, BOT) for alias in bot_aliases]
    for match in _ANY_TAG_LINE_RE.finditer(text):
        if f"<{match.group(1)}>:" not in (HUMAN_TAG, BOT_TAG):
            return None, f"unknown role tag <{match.group(1)}>:"
    turns: list[Turn] = []
    role: Role | None = None
    buf: list[str] = []
    for line in text.strip().split("\n"):
        for tag, tag_role in tags:
            if line.startswith(tag):
                if role is not None:
                    turns.append(Turn(role, "\n".join(buf).strip()))
                role, buf = tag_role, [line[len(tag) :]]
                break
        else:
            if role is None:
                return None, "text does not start with a role tag"
            buf.append(line)
    if role is not None:
        turns.append(Turn(role, "\n".join(buf).strip()))
    return turns, None


# ---- inference side: the prompt for the next bot turn, and the same thing as a Jinja template ----


def prompt_for_next_bot_turn(history: list[Turn], user_text: str, eos_token: str) -> str:
    """The exact text training saw before a bot reply: past pairs each closed by EOS, then the new turn.

    ``history`` alternates human/bot and ends with a bot turn (or is empty). Human and bot texts are
    role-tag escaped as in training data, so a typed or generated ``\\n<bot>:`` stays text.
    """
    parts = []
    for i in range(0, len(history) - 1, 2):
        parts.append(human_prompt(escape_role_tags(history[i].text)[0], first=(i == 0)))
        parts.append(" " + escape_role_tags(history[i + 1].text)[0].lstrip(" ") + eos_token)
    parts.append(human_prompt(escape_role_tags(user_text)[0], first=not history))
    return "".join(parts)


# Jinja chat template (roles user/assistant) that renders exactly what ``prompt_for_next_bot_turn``
# and the pairs form give; ``add_generation_prompt`` appends the bot tag. No system role in this format.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<human>: ' + message['content'].replace('<human>:', '<human> :').replace('<bot>:', '<bot> :') }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '\\n<bot>: ' + message['content'].replace('<human>:', '<human> :').replace('<bot>:', '<bot> :').lstrip(' ')"
    " + eos_token }}"
    "{% else %}{{ raise_exception('the BLOOMChat format has only user and assistant roles') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n<bot>:' }}{% endif %}"
)
