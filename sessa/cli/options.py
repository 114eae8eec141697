"""Command-line options built from typed config dataclasses: one ``--flag`` per field, typed from its
annotation, its help text from the field's comment, its valid values listed; values not given on the command
line stay absent so a command can tell them from defaults (and layer them over a ``--config`` file)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import re
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from sessa.validation import did_you_mean


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``sessa train: error: ... (see sessa train --help)``), exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: the comment after its definition} for a dataclass whose fields read ``name: T = v  # doc``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^\s{4}(\w+):[^#\n]*#\s*(.+)$", source, re.MULTILINE):
            docs[match.group(1)] = match.group(2).strip()
    return docs


def unwrap_optional(kind: Any) -> Any:
    """``float | None`` -> float; anything else unchanged."""
    args = typing.get_args(kind)
    rest = [a for a in args if a is not type(None)]
    return rest[0] if len(rest) == 1 and type(None) in args else kind


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_config_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: Iterable[str] = (),
    choices: Mapping[str, Iterable[str]] | None = None,
    positional: Iterable[str] = (),
) -> None:
    """One option per field of dataclass ``cls`` (``--snake-case``; names in ``positional`` are positional).

    bool -> ``--x/--no-x``; list[T] -> ``--x A B ...``; tuple -> fixed count; dict fields are skipped
    (commands give them as repeatable KEY=VALUE options). The help shows the default and the valid values."""
    hints = typing.get_type_hints(cls)
    docs, choices, positional = field_docs(cls), dict(choices or {}), set(positional)
    for f in dataclasses.fields(cls):
        if f.name in set(skip):
            continue
        kind = unwrap_optional(hints[f.name])
        origin = typing.get_origin(kind)
        if origin is dict or kind is dict:
            continue
        valid = [str(c) for c in choices[f.name]] if f.name in choices else None
        text = docs.get(f.name, "")
        if f.name not in positional:
            text += f" (default: {_default(f)})"
        if valid:
            text += f"; valid: {', '.join(valid)}"
        kw: dict[str, Any] = {"help": text.strip().replace("%", "%%")}  # argparse %-formats help
        if f.name in positional:
            parser.add_argument(f.name, type=_scalar(kind), **kw)
            continue
        kw["default"] = argparse.SUPPRESS
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif origin in (list, tuple):
            args = typing.get_args(kind)
            nargs = len(args) if origin is tuple and Ellipsis not in args else "+"
            parser.add_argument(flag, type=_scalar(args[0]), nargs=nargs, metavar=f.name.upper(), **kw)
        else:
            parser.add_argument(
                flag, type=_scalar(kind), choices=valid, metavar=f.name.upper() if not valid else None, **kw
            )


def _scalar(kind: Any) -> Any:
    if kind is float:
        return finite_float
    return kind if kind in (int, str) else str


def finite_float(text: str) -> float:
    """argparse type: a finite float (``inf``/``nan`` are refused with a clear message)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that were given on the command line (or are positional)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def parse_kv(items: list[str] | None, flag: str, valid: Iterable[str] | None = None) -> dict[str, Any]:
    """["a=1", "b=x"] -> {"a": 1, "b": "x"} (values as Python literals when they parse, else strings).

    With ``valid``, an unknown key is a ValueError naming the closest valid one."""
    out: dict[str, Any] = {}
    names = sorted(valid) if valid is not None else None
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} must look like KEY=VALUE, got {item!r}")
        key, raw = (part.strip() for part in item.split("=", 1))
        if names is not None and key not in names:
            raise ValueError(unknown_key_message(flag, key, names))
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def unknown_key_message(what: str, key: str, valid: Iterable[str]) -> str:
    names = sorted(valid)
    return f"{what}: unknown key {key!r}{did_you_mean(key, names)} (valid: {', '.join(names)})"
