"""The project's errors: one ``UserError`` base for everything a user can fix (bad input, settings, files).

Entry points catch ``UserError`` (and ``OSError``) and print its one line; anything else is a bug and shows its
traceback (``common.cli.guard``).
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix, said in one line that names the file, line or setting and what to do."""


class DataError(UserError):
    """Bad input data: the file, the line and the fix."""


class ConfigError(UserError):
    """A bad setting or config file: the file, the field, what is wrong."""


def first_line(exc: BaseException) -> str:
    """One line saying why a library refused: every field of a pydantic error, else the message's first line.

    >>> first_line(ValueError("bad value\\nmore detail"))
    'bad value'
    >>> first_line(KeyError())
    'KeyError'
    """
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
