"""`centermask-serve`'s flags: every setting, with a help text in plain words.

pydantic-settings builds the parser from `Settings`; this module only rewrites what `--help` shows of
each flag: the value's kind (PATH, INTEGER, SECONDS ... instead of type names such as `{Path,null}`)
and "unset" instead of "null" for settings without a default value.
"""

from __future__ import annotations

import argparse
import enum
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr
from pydantic_settings import BaseSettings, CliSettingsSource

from model.inference.options import Metavar

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

# A number's unit, from the setting's name: the flag then says what the number counts.
_UNITS = (("_ms", "MILLISECONDS"), ("_s", "SECONDS"), ("_bytes", "BYTES"), ("_pixels", "PIXELS"))


def parse_settings(settings_cls: type[SettingsT], argv: Sequence[str]) -> SettingsT:
    """Settings from flags (`--max-batch-size 4`) over the environment over the defaults."""

    def add_argument(parser: Any, *names: str, **kwargs: Any) -> Any:
        field = settings_cls.model_fields.get(kwargs.get("dest", ""))
        if field is not None and "metavar" in kwargs:
            named = [item for item in field.metadata if isinstance(item, Metavar)]
            kwargs["metavar"] = named[0] if named else value_kind(kwargs["dest"], field.annotation)
            kwargs["help"] = kwargs.get("help", "").replace("(default: null)", "(default: unset)")
            if isinstance(field.default, enum.Enum):  # shown by its name otherwise (FP32 for fp32)
                default = field.default
                kwargs["help"] = kwargs["help"].replace(
                    f"(default: {default.name})", f"(default: {default.value})"
                )
            if field.default_factory is not None:
                kwargs["help"] = re.sub(
                    r"\(default factory: [^)]*\)",
                    f"(default: {field.get_default(call_default_factory=True)} here)",
                    kwargs["help"],
                )
        return parser.add_argument(*names, **kwargs)

    source: CliSettingsSource[Any] = CliSettingsSource(
        settings_cls, add_argument_method=add_argument, formatter_class=_HelpFormatter
    )
    return settings_cls(_cli_settings_source=source(args=list(argv)))


def value_kind(name: str, annotation: Any) -> str:
    """What a flag takes, for `--help`: {a,b} for choices, else an upper-case word."""
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(options) == 1:
        annotation = options[0]
    if typing.get_origin(annotation) is typing.Annotated:  # PositiveInt and other constrained types
        annotation = typing.get_args(annotation)[0]
    if annotation is bool:
        return "{true,false}"
    if typing.get_origin(annotation) is typing.Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(annotation)) + "}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "{" + ",".join(str(member.value) for member in annotation) + "}"
    if annotation is Path:
        return "PATH"
    if annotation is SecretStr:
        return "SECRET"
    if annotation in (int, float):
        unit = next((unit for suffix, unit in _UNITS if name.endswith(suffix)), None)
        return unit or ("INTEGER" if annotation is int else "NUMBER")
    return "TEXT"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout, and gives flag names room so that help texts line up."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=40, width=110)
