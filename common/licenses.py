"""The licenses chat data comes under: a registry of SPDX ids with what each allows, the bundled sources' licenses
and attribution text, and the ``--commercial_only`` check. The data card (``common/data_card.py``) and every record's
``license`` key use these ids, so users can see what they may ship.

Facts per license: ``commercial`` (commercial use allowed), ``share_alike`` (what you distribute built from the data
must carry the same license), ``attribution`` (credit required). ``NOASSERTION`` (SPDX's word for "not stated")
means the terms are unknown: treated as neither commercial nor free of obligations.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass

from common.errors import ConfigError


@dataclass(frozen=True)
class License:
    """One license's SPDX id, full name, canonical text and the three facts a data user must know."""

    spdx: str
    name: str
    url: str
    commercial: bool
    share_alike: bool
    attribution: bool
    note: str = ""

    def as_dict(self) -> dict:
        """The card's view: ``id`` first, then the facts."""
        d = asdict(self)
        return {"id": d.pop("spdx"), **d}


_CC = "https://creativecommons.org/licenses"
_ALL = [
    License("CC0-1.0", "Creative Commons Zero v1.0 Universal", "https://creativecommons.org/publicdomain/zero/1.0/",
            True, False, False),
    License("CC-BY-3.0", "Creative Commons Attribution 3.0", f"{_CC}/by/3.0/", True, False, True),
    License("CC-BY-4.0", "Creative Commons Attribution 4.0", f"{_CC}/by/4.0/", True, False, True),
    License("CC-BY-SA-3.0", "Creative Commons Attribution-ShareAlike 3.0", f"{_CC}/by-sa/3.0/", True, True, True),
    License("CC-BY-SA-4.0", "Creative Commons Attribution-ShareAlike 4.0", f"{_CC}/by-sa/4.0/", True, True, True),
    License("CC-BY-ND-4.0", "Creative Commons Attribution-NoDerivatives 4.0", f"{_CC}/by-nd/4.0/", True, False, True,
            "no adapted material may be shared"),
    License("CC-BY-NC-3.0", "Creative Commons Attribution-NonCommercial 3.0", f"{_CC}/by-nc/3.0/", False, False, True),
    License("CC-BY-NC-4.0", "Creative Commons Attribution-NonCommercial 4.0", f"{_CC}/by-nc/4.0/", False, False, True),
    License("CC-BY-NC-SA-3.0", "Creative Commons Attribution-NonCommercial-ShareAlike 3.0", f"{_CC}/by-nc-sa/3.0/",
            False, True, True),
    License("CC-BY-NC-SA-4.0", "Creative Commons Attribution-NonCommercial-ShareAlike 4.0", f"{_CC}/by-nc-sa/4.0/",
            False, True, True),
    License("CC-BY-NC-ND-4.0", "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0", f"{_CC}/by-nc-nd/4.0/",
            False, False, True, "no adapted material may be shared"),
    License("Apache-2.0", "Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0", True, False, True),
    License("MIT", "MIT License", "https://opensource.org/license/mit", True, False, True),
    License("BSD-3-Clause", "BSD 3-Clause License", "https://opensource.org/license/bsd-3-clause", True, False, True),
    License("Unlicense", "The Unlicense", "https://unlicense.org/", True, False, False),
    License("ODC-BY-1.0", "Open Data Commons Attribution License v1.0", "https://opendatacommons.org/licenses/by/1-0/",
            True, False, True),
    License("ODbL-1.0", "Open Data Commons Open Database License v1.0",
            "https://opendatacommons.org/licenses/odbl/1-0/", True, True, True),
    License("PDDL-1.0", "Open Data Commons Public Domain Dedication and License v1.0",
            "https://opendatacommons.org/licenses/pddl/1-0/", True, False, False),
    License("CDLA-Permissive-1.0", "Community Data License Agreement Permissive 1.0", "https://cdla.dev/permissive-1-0/",
            True, False, True),
    License("CDLA-Permissive-2.0", "Community Data License Agreement Permissive 2.0", "https://cdla.dev/permissive-2-0/",
            True, False, True),
    License("CDLA-Sharing-1.0", "Community Data License Agreement Sharing 1.0", "https://cdla.dev/sharing-1-0/",
            True, True, True),
    License("OpenRAIL", "Open Responsible AI License (not an SPDX id; Hugging Face's name)",
            "https://huggingface.co/blog/open_rail", True, False, True,
            "use restrictions apply and must be passed on to downstream users"),
    License("NOASSERTION", "no license stated (terms unknown)", "https://spdx.org/licenses/", False, False, False,
            "find the data's license and pass it with --license"),
]  # fmt: skip
LICENSES: dict[str, License] = {lic.spdx: lic for lic in _ALL}
_BY_FOLDED = {spdx.casefold(): lic for spdx, lic in LICENSES.items()}

# the bundled sources (data_prep's source names) and the credit each asks for (see data/SOURCES.md)
SOURCE_LICENSES = {"dolly": "CC-BY-SA-3.0", "oasst": "Apache-2.0", "oig": "Apache-2.0"}
SOURCE_ATTRIBUTIONS = {
    "dolly": "databricks-dolly-15k, Copyright (c) 2023 Databricks, Inc., licensed under CC BY-SA 3.0 "
    "(https://creativecommons.org/licenses/by-sa/3.0/); parts of it are taken from Wikipedia (CC BY-SA 3.0). "
    "https://github.com/databrickslabs/dolly",
    "oasst": "OpenAssistant Conversations (OASST1) by OpenAssistant and LAION, licensed under Apache-2.0 "
    "(https://www.apache.org/licenses/LICENSE-2.0). https://huggingface.co/datasets/OpenAssistant/oasst1 "
    "(Kopf et al., 2023, arXiv:2304.07327)",
    "oig": "Open Instruction Generalist (OIG) by LAION with Together and Ontocord, licensed under Apache-2.0 "
    "(https://www.apache.org/licenses/LICENSE-2.0). https://huggingface.co/datasets/laion/OIG",
}
OIG_PREFIX = "unified_"  # every OIG file is unified_<task>.jsonl; the oig job names each source after its file
_EXAMPLES = "Apache-2.0, CC-BY-4.0, CC-BY-SA-3.0, MIT, CC0-1.0"


def lookup(spdx: str, flag: str = "--license") -> License:
    """The registry entry for an SPDX id, matched case-insensitively; one ConfigError line naming ``flag`` if unknown.

    >>> lookup("cc-by-sa-3.0").spdx, lookup("apache-2.0").commercial
    ('CC-BY-SA-3.0', True)
    """
    lic = _BY_FOLDED.get(str(spdx).strip().casefold())
    if lic is not None:
        return lic
    close = difflib.get_close_matches(str(spdx), list(LICENSES), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(
        f"{flag} {spdx}: unknown license; {hint}give an SPDX id such as {_EXAMPLES} "
        "(or NOASSERTION when the terms are unknown)"
    )


def bundled_source(source: str) -> str | None:
    """The bundled source a data_prep source name is (``dolly``, ``oasst``, ``oig`` for any OIG file), else None.

    >>> bundled_source("unified_joke_explanations"), bundled_source("dolly"), bundled_source("my_chats")
    ('oig', 'dolly', None)
    """
    if source in SOURCE_LICENSES:
        return source
    return "oig" if source.startswith(OIG_PREFIX) else None


def attribution(source: str, lic: License) -> str:
    """The credit to give for a source: the bundled sources' own text (when under their license), else what the
    card can say of user data."""
    bundled = bundled_source(source)
    if bundled is not None and SOURCE_LICENSES[bundled] == lic.spdx:
        return SOURCE_ATTRIBUTIONS[bundled]
    if lic.spdx == "NOASSERTION":
        return f"{source}: license not stated; find its terms and credit its authors as they ask"
    need = "credit its authors as the license asks" if lic.attribution else "no attribution required"
    return f"{source}: licensed under {lic.spdx} ({lic.url}); {need}"


def check_commercial(licenses: dict[str, str]) -> None:
    """``--commercial_only``: one ConfigError line naming the first input (in order) whose license forbids commercial
    use or is not stated (NOASSERTION: unknown terms are refused too)."""
    for name, spdx in licenses.items():
        lic = lookup(spdx, "--license")
        if lic.spdx == "NOASSERTION":
            raise ConfigError(
                f"--commercial_only: input {name} is NOASSERTION (license unknown); give its license with "
                f"--license {name}=SPDX, remove it, or drop --commercial_only"
            )
        if not lic.commercial:
            raise ConfigError(
                f"--commercial_only: input {name} is {lic.spdx} (non-commercial); remove it or drop --commercial_only"
            )


def checked_licenses(licenses: dict[str, str], commercial_only: bool, flag: str = "--license") -> dict[str, str]:
    """Every input's SPDX id in its registry spelling (an unknown id is one ConfigError line naming ``flag``); with
    ``commercial_only``, ``check_commercial`` on them. What every data_prep command does before reading any input."""
    checked = {name: lookup(spdx, flag).spdx for name, spdx in licenses.items()}
    if commercial_only:
        check_commercial(checked)
    return checked
