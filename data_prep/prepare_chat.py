"""Chat data you already hold (OpenAI ``messages`` or ShareGPT ``conversations`` records) -> chat JSONL.

Usage (files, directories or hub ids; ``name=`` sets the source name in the summary):
    python data_prep/prepare_chat.py --input my_chats.jsonl --output data_prep/my_chats.jsonl
    python data_prep/prepare_chat.py --input support=exports/support.jsonl --input sharegpt.json --system fold

System messages: the chat format has no system role. ``--system reject`` (default) quarantines such a record
with its reason; ``--system fold`` puts the system text, then a blank line, at the start of the first user
message. Tool/function/unknown roles and non-text content are quarantined with the reason.
"""

import sys

from common.chat_format import SYSTEM_RULES
from common.cli import guard
from data_prep.cli import base_parser, run_main
from data_prep.pipeline import prepare_chat


def make_parser():
    parser = base_parser(__doc__.splitlines()[0], "data_prep/chat.jsonl")
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="[NAME=]SPEC",
        help="file, directory or hub id of chat records; repeat for several sources",
    )
    parser.add_argument(
        "--system",
        choices=SYSTEM_RULES,
        default="reject",
        help="system messages: reject the record, or fold the text into the first user message",
    )
    parser.add_argument("--split", default="train", help="hub split to read")
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    return run_main(
        lambda: prepare_chat(
            args.output,
            args.input,
            system=args.system,
            fmt=args.format,
            strict=args.strict,
            dedup=args.dedup,
            split=args.split,
        ),
        args,
    )


if __name__ == "__main__":
    sys.exit(guard(main))
