"""Settings declared once: a pydantic model's fields (default, description, choices) generate the command line.

As TRL derives its parsers from dataclass fields, a stage declares each setting once, as a field of a typed model,
and ``add_settings`` turns the fields into flags: the flag is ``--FIELD_NAME``, its help is the field's
``description`` plus its default, its choices come from a ``Literal``, a ``bool`` is a switch, and a ``list`` takes
several values. ``parse_settings`` builds the model from ``--config FILE.yaml`` (when the parser has one) overlaid
with the flags given on the command line, so a YAML recipe and the flags mean the same thing, and a bad value is
one ``ConfigError`` line naming the flag.

>>> from typing import Literal
>>> from pydantic import BaseModel, Field
>>> class Job(BaseModel):
...     output_path: str = Field(description="where to write")
...     shuffle: Literal["on_RAM", "large_file", "False"] = Field("False", description="how to shuffle")
...     overwrite: bool = Field(False, description="replace an existing output")
>>> parser = argparse.ArgumentParser()
>>> add_settings(parser, Job)
>>> parse_settings(parser, Job, ["--output_path", "out", "--overwrite"])
Job(output_path='out', shuffle='False', overwrite=True)
>>> parse_settings(parser, Job, ["--output_path", "out", "--shuffle", "nope"])
Traceback (most recent call last):
...
SystemExit: 2

A field whose type is a model is flattened: its fields are flags of their own (``--prompt_keyword``, not
``--article.prompt_keyword``), and ``nest`` puts them back under the field, for flags and YAML alike.
``json_schema_extra`` tunes a flag: ``{"cli": False}`` keeps a field off the command line,
``{"aliases": ["--input_file_path"]}`` adds spellings, ``{"positional": True}`` makes it an argument, and
``metavar``, ``nargs`` and ``const`` go to argparse as given. A field's ``alias`` is its flag (pydantic reserves
some names, such as ``model_config``).
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from pydantic import BaseModel, ValidationError

from common.errors import ConfigError

CONFIG = "config"  # the flag that reads settings from a YAML file: ``--config FILE.yaml``


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False); ``Annotated[X, ...]`` counts as X."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap_optional(args[0])[0], True
    return annotation, False


def _extra(field) -> dict:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _nested(field) -> type[BaseModel] | None:
    """The model class of a field whose type is a model (its fields become flags), else None."""
    annotation, _ = _unwrap_optional(field.annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _flag_kwargs(name: str, field) -> dict:
    """argparse keyword arguments for one pydantic field."""
    annotation, _ = _unwrap_optional(field.annotation)
    extra = _extra(field)
    required = field.is_required()
    default = None if required else field.get_default(call_default_factory=True)
    helptext = field.description or ""
    if not required and default not in (None, False, [], (), ""):
        helptext += f" (default: {default})"
    kwargs: dict = {"help": helptext, "default": argparse.SUPPRESS}
    if not extra.get("positional"):
        kwargs["dest"] = name
    kwargs.update({k: extra[k] for k in ("metavar", "nargs", "const") if k in extra})
    origin = typing.get_origin(annotation)
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
        return kwargs
    if origin is Literal:
        kwargs["choices"] = [str(c) for c in typing.get_args(annotation)]
    elif origin in (list, tuple):
        kwargs["nargs"] = "+"
        if not extra.get("positional"):
            kwargs["action"] = "extend"  # a repeated flag adds its values: --input a --input b == --input a b
        item = (typing.get_args(annotation) or (str,))[0]
        if item in (int, float):
            kwargs["type"] = item
    elif annotation in (int, float):
        kwargs["type"] = annotation
    return kwargs


def cli_fields(model: type[BaseModel], exclude: Sequence[str] = ()) -> Iterator[tuple[str, Any]]:
    """(flag name, field) of every field on the command line, a nested model's fields flattened in place."""
    for name, field in model.model_fields.items():
        if name in exclude or _extra(field).get("cli") is False:
            continue
        sub = _nested(field)
        if sub is not None:
            yield from cli_fields(sub, exclude)
        else:
            yield field.alias or name, field


def add_settings(parser: argparse.ArgumentParser, model: type[BaseModel], exclude: Sequence[str] = ()) -> None:
    """One ``--FIELD`` flag per field of ``model`` (fields with ``json_schema_extra={"cli": False}`` and those in
    ``exclude`` are left out; the fields of a nested model are flags of their own)."""
    for name, field in cli_fields(model, exclude):
        extra = _extra(field)
        flags = [name] if extra.get("positional") else [f"--{name}", *extra.get("aliases", ())]
        parser.add_argument(*flags, **_flag_kwargs(name, field))


def nest(model: type[BaseModel], values: dict) -> dict:
    """Flat settings (flags, a YAML recipe) in the model's shape: a nested model's fields go under its field
    (``{"path": "x", "keyword": "q"}`` -> ``{"path": "x", "inner": {"keyword": "q"}}``); a nested mapping given as
    such is kept, the flat values overriding it."""
    out = dict(values)
    for name, field in model.model_fields.items():
        sub = _nested(field)
        if sub is None:
            continue
        key = field.alias or name
        inner = nest(sub, {k: out.pop(k) for k in list(out) if k in sub.model_fields})
        given = out.get(key)
        if isinstance(given, dict):
            out[key] = {**given, **inner}
        elif inner:
            out[key] = inner
    return out


def read_config(path: str | Path, label: str | None = None) -> dict:
    """A YAML mapping of settings; one ``ConfigError`` line, starting with ``label`` (default ``--config PATH``),
    when the file cannot be read or is not a mapping."""
    import yaml

    label = label or f"--config {path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: must be a mapping of setting: value")
    return data


def _why(error: dict) -> str:
    """One pydantic error in words: the bound or the choices it broke, with the value given."""
    ctx = error.get("ctx") or {}
    why = {
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be above {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be below {ctx.get('lt')}",
        "literal_error": f"choose one of {ctx.get('expected')}",
    }.get(error["type"])
    return error["msg"] if why is None else f"{why} (got {error.get('input')!r})"


def _flag(loc: tuple) -> str:
    """The flag of an error location: its last name (a nested model's field is a flag of its own)."""
    names = [str(x) for x in loc if not isinstance(x, int)]
    return f"--{names[-1]}" if names else "settings"


def build(model: type[BaseModel], values: dict, source: str = "") -> BaseModel:
    """``model(**values)`` (flat values nested first); a validation error becomes one ``ConfigError`` line naming
    each bad setting as a flag. A validator that raises a ``UserError`` is not caught: its line is already the one.

    >>> from pydantic import Field
    >>> class Splits(BaseModel):
    ...     num_training_splits: int = Field(1, ge=1)
    >>> build(Splits, {"num_training_splits": 0})
    Traceback (most recent call last):
    ...
    common.errors.ConfigError: --num_training_splits: must be at least 1 (got 0)
    """
    try:
        return model(**nest(model, values))
    except ValidationError as exc:
        why = "; ".join(f"{_flag(e['loc'])}: {_why(e)}" for e in exc.errors())
        raise ConfigError(f"{source}{why}") from None


def command_parser(
    prog: str, doc: str, model: type[BaseModel] | None = None, config: bool = False, exclude: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """The parser of one command (``prog``: ``python -m STAGE COMMAND``): ``doc``'s first line as its description,
    no abbreviated flags (an old spelling is refused, not guessed), ``--config FILE.yaml`` when ``config``, and one
    flag per setting of ``model``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.strip().splitlines()[0], allow_abbrev=False)
    if config:
        parser.add_argument(
            f"--{CONFIG}", metavar="FILE.yaml", help="settings from a YAML file; flags given override it"
        )
    if model is not None:
        add_settings(parser, model, exclude)
    return parser


def parse_settings(
    parser: argparse.ArgumentParser, model: type[BaseModel], argv: Sequence[str] | None = None, **fixed
) -> BaseModel:
    """Parse ``argv`` into ``model``: the YAML of ``--config`` (if the parser has the flag and it is given) first,
    then every flag given on the command line, then ``fixed`` values. Flags not given keep the model's defaults."""
    given = vars(parser.parse_args(argv))
    values: dict = {}
    source = ""
    config = given.pop(CONFIG, None)
    if config:
        values.update(read_config(config))
        source = f"--config {config}: "
    values.update(given)
    values.update(fixed)
    return build(model, values, source)
