"""``python -m tokenization_prep verify DIR``: check a tokenized dir, every file re-hashed.

The one verifier (``schema.load_tokenized_dir``), the same that training runs before it starts.

    python -m tokenization_prep verify tokenization_prep/oasst1_dolly_out [--max_seq_length 2048]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from common.cli import guard
from common.settings import add_settings, parse_settings
from tokenization_prep.schema import FILES_METADATA, MANIFEST, load_tokenized_dir


class VerifySettings(BaseModel):
    """The ``verify`` command's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    output_path: str = Field(description="a tokenized output directory", json_schema_extra={"positional": True})
    max_seq_length: int | None = Field(None, ge=1, description="refuse data of another sequence length")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenization_prep verify", description=__doc__.splitlines()[0])
    add_settings(parser, VerifySettings)
    s = parse_settings(parser, VerifySettings, argv)
    tdir = load_tokenized_dir(Path(s.output_path), full=True, max_seq_length=s.max_seq_length)
    rows = "; every row is prompt, chosen, rejected, padding" if tdir.meta.kind == "preference" else ""
    print(
        f"{s.output_path}: metadata.yaml is gdp's DatasetMetadata; every file matches {FILES_METADATA} and "
        f"{MANIFEST}; HDF5 shapes match{rows}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
