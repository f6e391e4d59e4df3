"""``python -m STAGE COMMAND [flags]``: the one way every stage is run, and the one place user errors become
one line.

``guard`` runs a command's ``main``: a ``UserError`` or ``OSError`` prints ``error: ...`` and exits 2, Ctrl-C
exits 130, and anything else is a bug: its traceback is shown with a line asking to report it (exit 1).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Callable, Sequence

from common.errors import UserError

REPORT = "this is a bug in bloomchat-pipeline, not in your input: please report it with the traceback above"


def guard(main: Callable[[list[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; return its exit status, 2 for a user error (one line on stderr), 130 on Ctrl-C, and 1
    for a bug (traceback plus ``REPORT``)."""
    try:
        return main(None if argv is None else list(argv)) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(REPORT, file=sys.stderr)
        return 1


def dispatch(stage: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None) -> int:
    """Run COMMAND's module ``main(flags)`` under ``guard``; ``commands``: name -> (module, one-line help). Each
    command's module also runs on its own (``python -m training.run``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # the deepspeed launcher puts --local_rank=N before the command: hand it to the command instead
    launcher = [a for a in argv[:2] if a.startswith("--local_rank")]
    if launcher and "=" not in launcher[0] and len(argv) > 1:
        launcher.append(argv[1])
    argv = argv[len(launcher) :] + launcher if launcher and len(argv) > len(launcher) else argv
    if not argv or argv[0] not in commands:
        width = max(map(len, commands))
        lines = [f"usage: python -m {stage} COMMAND [flags]   (COMMAND --help for its flags)", "commands:"]
        lines += [f"  {name:<{width}}  {why}" for name, (_, why) in commands.items()]
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(commands)}", file=sys.stderr)
            return 2
        print("\n".join(lines), file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    return guard(lambda args: importlib.import_module(commands[argv[0]][0]).main(args), argv[1:])
