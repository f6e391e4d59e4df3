"""The data card carried into a trained model, so a final model knows its data's licenses: ``lineage.json`` gets
``data_licenses`` (this stage's data and every earlier stage's: stage 2 trained from stage 1 inherits OIG's) and
``data_card`` (the tokenized dir's ``data_card.json``), and the final dir gets the data's ``DATA_CARD.md``.

Data with no card (gdp's outputs, older ones) counts as ``NOASSERTION``: its terms are unknown, and a model trained on
it must not look as if they were known. A base model that was not trained here (no lineage) adds nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common.errors import ConfigError, DataError
from tokenization_prep.data_card import CARD_MD, read_output_card
from tokenization_prep.schema import TokenizedDir

UNKNOWN = "NOASSERTION"


def check_data_card(data: TokenizedDir) -> dict | None:
    """The data dir's card, checked before training starts (one ConfigError line); None when it has none."""
    try:
        return read_output_card(data.path)
    except DataError as exc:
        raise ConfigError(f"data_dir {exc}") from None


def merged_licenses(data_licenses: list[str] | None, parent: dict | None) -> list[str]:
    """Sorted union of this data's licenses and the parent model's lineage ``data_licenses`` (unknown: NOASSERTION).

    >>> merged_licenses(["CC-BY-SA-3.0", "Apache-2.0"], {"data_licenses": ["Apache-2.0"]})
    ['Apache-2.0', 'CC-BY-SA-3.0']
    >>> merged_licenses(None, None), merged_licenses(["MIT"], {"stage": "older run, no data_licenses"})
    (['NOASSERTION'], ['MIT', 'NOASSERTION'])
    """
    ours = set(data_licenses) if data_licenses is not None else {UNKNOWN}
    if parent is None:
        return sorted(ours)
    theirs = parent.get("data_licenses")
    return sorted(ours | (set(theirs) if isinstance(theirs, list) and theirs else {UNKNOWN}))


def carry_data_card(data: TokenizedDir, parent: dict | None, final_dir: Path) -> dict:
    """lineage.json's ``data_licenses`` and ``data_card``; copies the data's ``DATA_CARD.md`` into ``final_dir``."""
    card = check_data_card(data)
    md = data.path / CARD_MD
    if md.is_file():
        shutil.copyfile(md, Path(final_dir) / CARD_MD)
    return {"data_licenses": merged_licenses(data.meta.data_licenses, parent), "data_card": card}
