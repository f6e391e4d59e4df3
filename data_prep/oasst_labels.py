"""OASST1's own moderation signals as filters: the volunteers' label means and the detoxify scores of each message.

The export gives every message ``labels`` {name, value (mean of the volunteers' 0..1 answers), count} and
``detoxify`` scores (0..1). The defaults below were chosen on the bundled samples (oasst1_validation_en.jsonl:
2,022 messages; figures in docs and in the report of issue 24):

- the yes/no flags a volunteer raises against harm (spam, pii, not_appropriate, hate_speech, sexual_content) drop a
  message once at least half its reviewers raised them (``>= 0.5``; one of three is kept, two of three is dropped);
- fails_task, lang_mismatch and the Likert scales (toxicity, violence, humor, helpfulness, creativity, ...) are
  known but off: they judge quality or style, and --languages handles language;
- quality (``--oasst_quality_min``) is off: the best-reply path already avoids most low-rated replies;
- detoxify: toxicity, severe_toxicity, obscene, identity_attack, insult, threat and sexual_explicit at ``>= 0.9``
  (the model is near-certain; at 0.5 it flags heated but fine messages).
"""

from __future__ import annotations

from common.errors import ConfigError

# Every label name OASST1's export can carry (Open-Assistant's TextLabel enum), less "quality" (its own minimum).
LABEL_NAMES = (
    "spam",
    "fails_task",
    "lang_mismatch",
    "pii",
    "not_appropriate",
    "hate_speech",
    "sexual_content",
    "moral_judgement",
    "political_content",
    "excessive_harm",
    "toxicity",
    "violence",
    "humor",
    "helpfulness",
    "creativity",
)
DETOXIFY_NAMES = (
    "toxicity",
    "severe_toxicity",
    "obscene",
    "identity_attack",
    "insult",
    "threat",
    "sexual_explicit",
)

DEFAULT_LABEL_MAX = {"spam": 0.5, "pii": 0.5, "not_appropriate": 0.5, "hate_speech": 0.5, "sexual_content": 0.5}
DEFAULT_DETOXIFY_MAX = dict.fromkeys(DETOXIFY_NAMES, 0.9)
DEFAULT_QUALITY_MIN = 0.0  # off


def _names_for(flag: str) -> tuple[str, ...]:
    """The valid names of a threshold flag: detoxify's scores for a flag naming detoxify, else the label names."""
    return DETOXIFY_NAMES if "detoxify" in flag else LABEL_NAMES


def parse_thresholds(
    values: list[str], flag: str, defaults: dict[str, float], names: tuple[str, ...] | None = None
) -> dict[str, float]:
    """``["spam=0.3", "pii=off"]`` merged over ``defaults`` (later wins; ``off`` removes a name; commas split).

    ``names`` are the valid names (default: by ``flag``, see ``_names_for``). An unknown name, a missing ``=`` or a
    value that is not a number in (0, 1] is one ``ConfigError`` line naming the flag and the valid names.

    >>> parse_thresholds(["spam=0.3,pii=off"], "--oasst_label_max", {"spam": 0.5, "pii": 0.5})
    {'spam': 0.3}
    """
    valid = names or _names_for(flag)
    out = dict(defaults)
    for item in (part.strip() for v in values for part in v.split(",")):
        if not item:
            continue
        name, eq, raw = (s.strip() for s in item.partition("="))
        if name not in valid or not eq:
            what = f"unknown name {name!r}" if name not in valid else "expected NAME=VALUE or NAME=off"
            raise ConfigError(f"{flag} {item!r}: {what}; valid names: {', '.join(valid)}")
        if raw.lower() == "off":
            out.pop(name, None)
            continue
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:  # nan fails too
            raise ConfigError(f"{flag} {item!r}: VALUE must be a number in (0, 1] or 'off'")
        out[name] = value
    return out
