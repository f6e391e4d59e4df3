"""Every docstring example in the pipeline's modules runs as a test (the examples are the documentation)."""

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "data_prep", "tokenization_prep", "training", "inference")
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for pkg in PACKAGES
    for p in (ROOT / pkg).glob("*.py")
    if re.search(r"^\s*>>> ", p.read_text(encoding="utf-8"), re.M)
)


def test_modules_have_examples():
    assert "common.errors" in MODULES and "common.files" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{name}: {result.failed} docstring example(s) failed (run python -m doctest -v)"
