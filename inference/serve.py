"""``python -m inference serve --model DIR``: the OpenAI-compatible API (batched generation) and a web chat page.

python -m inference serve --model training/ckpt/stage2_oa_dolly/final [--host 127.0.0.1] [--port 8000]
    [--max_batch 16] [--api_key KEY] [--cors_origin URL] [--max_request_bytes N] [--shutdown_timeout S]
then: the page at http://127.0.0.1:8000/ ; the API at http://127.0.0.1:8000/v1 (any OpenAI client).
``--port 0`` takes a free port and prints it. SIGINT/SIGTERM stop accepting, let replies in flight finish for up to
``--shutdown_timeout`` seconds, cancel the rest, and exit 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from common.cli import guard
from common.errors import ConfigError, UserError
from inference.sampling import Sampling
from inference.settings import ServeSettings, parse_command


def model_name(path: str) -> str:
    """The id clients use: a stage's name for ``.../<stage>/final``, else the dir name or the hub id."""
    p = Path(path)
    if not p.is_dir():
        return path
    p = p.resolve()
    return p.parent.name if p.name == "final" else p.name


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a taken port or a bad address is one line then, and
    ``--port 0`` has its real port to print."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        why = str(exc.strerror or exc).split(" (while attempting")[0]
        raise ConfigError(f"cannot listen on {host}:{port} ({why}); use another --port or --host") from None


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def make_server(app, settings: ServeSettings):
    """A uvicorn server whose SIGINT/SIGTERM begin our graceful shutdown (``server.begin_shutdown``) and which
    exits normally afterwards (uvicorn's own handling re-raises the signal at the end)."""
    import uvicorn

    from inference.server import begin_shutdown

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:
                begin_shutdown(app, settings.shutdown_timeout)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=settings.shutdown_timeout + 5
    )
    return Server(config)


def main(argv=None) -> int:
    settings = parse_command("serve", __doc__, ServeSettings, argv)
    sock = listen(settings.host, settings.port)
    api_key = settings.api_key or os.environ.get("INFERENCE_API_KEY") or None
    # torch, transformers and the web stack load here, after the flags and the port are checked
    from inference.loading import load_for_chat
    from inference.server import create_app

    loaded = load_for_chat(settings.model, settings.device, settings.dtype, settings.quantize)
    defaults = Sampling.from_model_dir(loaded.source)
    name = settings.name or model_name(settings.model)
    app = create_app(
        loaded,
        defaults,
        name,
        settings.system,
        max_batch=settings.max_batch,
        api_key=api_key,
        cors_origin=settings.cors_origin,
        max_request_bytes=settings.max_request_bytes,
        shutdown_timeout=settings.shutdown_timeout,
    )
    server = make_server(app, settings)
    base = url(sock)
    print(
        f"serving {loaded.source} as {name!r} on {loaded.device} ({loaded.dtype}), up to {settings.max_batch} "
        f"requests at once{', API key required' if api_key else ''}: chat page {base}/ , OpenAI API {base}/v1",
        flush=True,
    )
    server.run(sockets=[sock])
    if not server.started:
        raise UserError("the server did not start; see the error above")
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
