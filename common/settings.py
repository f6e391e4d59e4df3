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
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ValidationError

from common.errors import ConfigError

CONFIG = "config"  # the flag that reads settings from a YAML file: ``--config FILE.yaml``


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _flag_kwargs(name: str, field) -> dict:
    """argparse keyword arguments for one pydantic field."""
    annotation, _ = _unwrap_optional(field.annotation)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    required = field.is_required()
    default = None if required else field.get_default(call_default_factory=True)
    helptext = field.description or ""
    if not required and default not in (None, False, [], ()):
        helptext += f" (default: {default})"
    kwargs: dict = {"dest": name, "help": helptext, "default": argparse.SUPPRESS}
    if extra.get("metavar"):
        kwargs["metavar"] = extra["metavar"]
    origin = typing.get_origin(annotation)
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
        return kwargs
    if origin is Literal:
        kwargs["choices"] = [str(c) for c in typing.get_args(annotation)]
    elif origin in (list, tuple):
        kwargs["nargs"] = "+"
        item = (typing.get_args(annotation) or (str,))[0]
        if item in (int, float):
            kwargs["type"] = item
    elif annotation in (int, float):
        kwargs["type"] = annotation
    return kwargs


def add_settings(parser: argparse.ArgumentParser, model: type[BaseModel], exclude: Sequence[str] = ()) -> None:
    """One ``--FIELD`` flag per field of ``model`` (fields with ``json_schema_extra={"cli": False}`` are left out)."""
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if name in exclude or extra.get("cli") is False:
            continue
        parser.add_argument(f"--{name}", **_flag_kwargs(name, field))


def read_config(path: str | Path) -> dict:
    """A YAML mapping of settings; one ``ConfigError`` line when the file cannot be read or is not a mapping."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must be a mapping of setting: value")
    return data


def build(model: type[BaseModel], values: dict, source: str = "") -> BaseModel:
    """``model(**values)``; a validation error becomes one ``ConfigError`` line naming each bad setting as a flag."""
    try:
        return model(**values)
    except ValidationError as exc:
        why = "; ".join(
            f"{'--' + '.'.join(map(str, e['loc'])) if e['loc'] else 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{source}{why}") from None


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
