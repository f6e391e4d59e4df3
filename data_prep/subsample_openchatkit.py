"""LAION OIG -> ``data_prep/bloom_ock_100K_each.jsonl`` (BLOOMChat's stage 1 data).

Usage (the hub id is the default; a directory of OIG files or one file works the same):
    python -m data_prep subsample_openchatkit
    python -m data_prep subsample_openchatkit --oig data/samples/oig --sample_size 1000 --seed 7
"""

import sys

from common.cli import guard
from data_prep.cli import parse_command, run_job
from data_prep.jobs import oig_job
from data_prep.settings import OigSettings


def main(argv=None) -> int:
    return run_job(oig_job, parse_command("subsample_openchatkit", __doc__, OigSettings, argv))


if __name__ == "__main__":
    sys.exit(guard(main))
