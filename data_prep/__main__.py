"""``python -m data_prep COMMAND [flags]``: public chat data -> ``<human>:``/``<bot>:`` chat JSONL.

python -m data_prep prepare_oa_dolly [--dolly ...] [--oasst ...] [--output_path data_prep/oasst1_dolly.jsonl]
python -m data_prep subsample_openchatkit [--oig DIR] [--output_path data_prep/bloom_ock_100K_each.jsonl]
python -m data_prep prepare_chat --input [NAME=]SPEC ... --output_path chat.jsonl
python -m data_prep prepare_preferences [--oasst SPEC] [--input [NAME=]SPEC ...] --output_path pairs.jsonl
"""

import sys

from common.cli import dispatch

COMMANDS = {
    "prepare_oa_dolly": ("data_prep.prepare_oa_dolly", "Dolly-15k + OASST1 -> stage 2 chat JSONL (BLOOMChat's)"),
    "subsample_openchatkit": ("data_prep.subsample_openchatkit", "OIG files -> stage 1 chat JSONL (BLOOMChat's)"),
    "prepare_chat": ("data_prep.prepare_chat", "OpenAI messages / ShareGPT conversations -> chat JSONL"),
    "prepare_preferences": ("data_prep.prepare_preferences", "OASST1 ranked replies / preference records -> pairs"),
}

if __name__ == "__main__":
    sys.exit(dispatch("data_prep", COMMANDS))
