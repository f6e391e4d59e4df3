"""Chat data you already hold (OpenAI ``messages`` or ShareGPT ``conversations`` records) -> chat JSONL.

Usage (files, directories or hub ids; ``name=`` sets the source name in the summary):
    python -m data_prep prepare_chat --input my_chats.jsonl --output_path data_prep/my_chats.jsonl
    python -m data_prep prepare_chat --input support=exports/support.jsonl sharegpt.json --system fold

System messages: the chat format has no system role. ``--system reject`` (default) quarantines such a record
with its reason; ``--system fold`` puts the system text, then a blank line, at the start of the first user
message. Tool/function/unknown roles and non-text content are quarantined with the reason.
"""

import sys

from common.cli import guard
from data_prep.cli import parse_command, run_job
from data_prep.jobs import chat_records_job
from data_prep.settings import ChatRecordsSettings


def main(argv=None) -> int:
    return run_job(chat_records_job, parse_command("prepare_chat", __doc__, ChatRecordsSettings, argv))


if __name__ == "__main__":
    sys.exit(guard(main))
