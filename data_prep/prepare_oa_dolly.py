"""Dolly-15k + OASST1 -> ``data_prep/oasst1_dolly.jsonl`` (BLOOMChat's stage 2 data).

Usage (hub ids are the defaults; local files or directories work the same):
    python -m data_prep prepare_oa_dolly
    python -m data_prep prepare_oa_dolly --dolly data/samples/dolly/databricks-dolly-15k.jsonl.gz \\
        --oasst data/samples/oasst1/oasst1_validation_en.jsonl --format bloomchat
"""

import sys

from common.cli import guard
from data_prep.cli import parse_command, run_job
from data_prep.jobs import oa_dolly_job
from data_prep.settings import OaDollySettings


def main(argv=None) -> int:
    return run_job(oa_dolly_job, parse_command("prepare_oa_dolly", __doc__, OaDollySettings, argv))


if __name__ == "__main__":
    sys.exit(guard(main))
