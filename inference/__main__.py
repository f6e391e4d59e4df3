"""``python -m inference COMMAND [flags]``: chat with a trained model, or serve it.

python -m inference chat --model training/ckpt/stage2_oa_dolly/final [--greedy] [--message TEXT]
python -m inference serve --model training/ckpt/stage2_oa_dolly/final [--host 127.0.0.1] [--port 8000]
"""

import sys

from common.cli import dispatch

COMMANDS = {
    "chat": ("inference.chat", "interactive chat in the terminal (or one --message)"),
    "serve": ("inference.serve", "OpenAI-compatible chat API and a web page"),
}

if __name__ == "__main__":
    sys.exit(dispatch("inference", COMMANDS))
