"""``python -m inference serve --model DIR``: the OpenAI-compatible chat API and a web chat page.

python -m inference serve --model training/ckpt/stage2_oa_dolly/final [--host 127.0.0.1] [--port 8000]
then: the page at http://127.0.0.1:8000/ ; the API at http://127.0.0.1:8000/v1 (any OpenAI client)
"""

import socket
import sys
from pathlib import Path

from common.cli import guard
from common.errors import ConfigError
from inference.sampling import Sampling
from inference.settings import ServeSettings, parse_command


def model_name(path: str) -> str:
    """The id clients use: a stage's name for ``.../<stage>/final``, else the dir name or the hub id."""
    p = Path(path)
    if not p.is_dir():
        return path
    p = p.resolve()
    return p.parent.name if p.name == "final" else p.name


def check_can_listen(host: str, port: int) -> None:
    """Before the model loads: a taken port or a bad address is one line, not a traceback after a minute."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); use --port or --host") from None


def main(argv=None) -> int:
    settings = parse_command("serve", __doc__, ServeSettings, argv)
    check_can_listen(settings.host, settings.port)
    # torch, transformers and the web stack load here, after the flags and the port are checked
    import uvicorn

    from inference.loading import load_for_chat
    from inference.server import create_app

    loaded = load_for_chat(settings.model, settings.device, settings.dtype, settings.quantize)
    defaults = Sampling.from_model_dir(loaded.source)
    name = settings.name or model_name(settings.model)
    app = create_app(loaded, defaults, name, settings.system)
    host, port = settings.host, settings.port
    print(
        f"serving {loaded.source} as {name!r} on {loaded.device} ({loaded.dtype}): chat page "
        f"http://{host}:{port}/ , OpenAI API http://{host}:{port}/v1",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
