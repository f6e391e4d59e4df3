"""pyproject.toml declares the dependency ranges we support: the locked set satisfies every one, and the lowest
transformers we claim is the one CI tests (scripts/lowest_versions.sh)."""

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_declared_dependency_is_satisfied_by_the_lock():
    deps = [Requirement(r) for r in PROJECT["dependencies"]]
    names = {d.name.lower().replace("_", "-") for d in deps}
    assert {"torch", "transformers", "tokenizers", "deepspeed", "h5py", "numpy", "pyarrow", "pydantic", "peft"} <= names
    for dep in deps:
        try:
            have = version(dep.name)
        except PackageNotFoundError:
            raise AssertionError(f"{dep.name} is declared but not installed by Pipfile.lock") from None
        assert dep.specifier.contains(have, prereleases=True), f"{dep.name} {have} is outside {dep.specifier}"


def test_the_lowest_claimed_transformers_is_the_one_ci_runs():
    (spec,) = [Requirement(r) for r in PROJECT["dependencies"] if r.startswith("transformers")]
    lowest = {s.version for s in spec.specifier if s.operator == ">="}
    script = (ROOT / "scripts/lowest_versions.sh").read_text()
    ran = re.search(r"transformers==([\d.]+)", script).group(1)
    assert lowest == {ran.removesuffix(".0")} or lowest == {ran}, (lowest, ran)
