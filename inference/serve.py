"""``python -m inference.serve --model DIR``: the OpenAI-compatible chat API and a web chat page.

python -m inference.serve --model training/ckpt/stage2_oa_dolly/final [--host 127.0.0.1] [--port 8000]
then: the page at http://127.0.0.1:8000/ ; the API at http://127.0.0.1:8000/v1 (any OpenAI client)
"""

import argparse
import socket
import sys
from pathlib import Path

from common.chat_format import SYSTEM_RULES
from common.cli import guard

PROG = "python -m inference serve"


def port_number(text: str) -> int:
    """A TCP port for argparse: 0-65535 (0: any free port)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return n


def model_name(path: str) -> str:
    """The id clients use: a stage's name for ``.../<stage>/final``, else the dir name or the hub id."""
    p = Path(path)
    if not p.is_dir():
        return path
    p = p.resolve()
    return p.parent.name if p.name == "final" else p.name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="save_pretrained dir, hub id, or LoRA adapter dir")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    ap.add_argument("--port", type=port_number, default=8000)
    ap.add_argument("--name", default=None, help="model id clients send (default: the stage or dir name)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--quantize", choices=["8bit", "4bit"])
    ap.add_argument(
        "--system",
        choices=SYSTEM_RULES,
        default="reject",
        help="system messages: 400 (the format has none), or fold them into the first user message "
        "as data_prep/prepare_chat.py --system fold does",
    )
    args = ap.parse_args(argv)

    import uvicorn

    from inference.loading import LoadError, load_for_chat
    from inference.sampling import Sampling, SettingError
    from inference.server import create_app

    try:  # before the model loads: a taken port or a bad address is one line, not a traceback after a minute
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as exc:
        print(
            f"error: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); use --port or --host",
            file=sys.stderr,
        )
        return 2
    try:
        loaded = load_for_chat(args.model, args.device, args.dtype, args.quantize)
        defaults = Sampling.from_model_dir(loaded.source)
    except (LoadError, SettingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.name or model_name(args.model)
    app = create_app(loaded, defaults, name, args.system)
    print(
        f"serving {loaded.source} as {name!r} on {loaded.device} ({loaded.dtype}): chat page "
        f"http://{args.host}:{args.port}/ , OpenAI API http://{args.host}:{args.port}/v1",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
