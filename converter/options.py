"""Typed options: a dataclass per pass or backend, parsed from the text users type.

Fields carry their help in ``metadata={"help": ...}``. Supported field types:
bool, int, float, str, ``Literal[...]`` (a choice), ``tuple[T, ...]`` (a list
written ``[a,b]`` or ``a|b``) and ``Optional`` of any of these (``none`` clears it).

Every numeric option has a documented range, ``metadata={"range": (low, high)}``
(inclusive; :func:`bounded` writes both): values outside it are usage errors, and
``convert passes`` shows it. A numeric field without one still gets the widest safe
range (int64, finite floats), but built-in options must declare theirs (a test checks).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from converter.errors import UsageError, shorten


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """For passes and backends without options."""


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    name: str
    type_text: str
    default: Any
    help: str
    range: tuple[float, float] | None = None


INT64 = (-(2**63), 2**63 - 1)


def bounded(low: float, high: float, help: str) -> dict[str, Any]:
    """Field metadata for a numeric option: its help and its inclusive range."""
    return {"help": help, "range": (low, high)}


def _numeric(tp: Any) -> type | None:
    _, inner = _is_optional(tp)
    if get_origin(inner) is tuple:
        inner = get_args(inner)[0]
    return inner if inner in (int, float) else None


def _check_range(value: Any, rng: tuple[float, float] | None, kind: type, where: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    low, high = rng if rng is not None else (INT64 if kind is int else (-math.inf, math.inf))
    for v in values:
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{where}: {v} is not a finite number")
        if not low <= v <= high:
            raise UsageError(f"{where}: {_short(v)} is outside its range [{low:g}, {high:g}]")


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 24 else text[:10] + "..." + text[-6:]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def type_text(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    if optional:
        return f"{type_text(inner)} | none"
    origin = get_origin(inner)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(inner))
    if origin is tuple:
        return f"list[{type_text(get_args(inner)[0])}]"
    return getattr(inner, "__name__", str(inner))


def _split_list(text: str) -> list[str]:
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
        parts = t.split(",")
    else:
        parts = t.split("|")
    return [p.strip() for p in parts if p.strip()]


def parse_value(tp: Any, text: str, where: str) -> Any:
    """Parse ``text`` as a value of type ``tp``; ``where`` names the option in errors."""
    optional, inner = _is_optional(tp)
    raw = text.strip()
    if optional and raw.lower() in {"none", "null", ""}:
        return None
    origin = get_origin(inner)
    if origin is Literal:
        choices = [str(a) for a in get_args(inner)]
        if raw not in choices:
            raise UsageError(f"{where}: '{shorten(raw, 60)}' is not one of {', '.join(choices)}")
        return get_args(inner)[choices.index(raw)]
    if origin is tuple:
        elem = get_args(inner)[0]
        return tuple(parse_value(elem, part, where) for part in _split_list(raw))
    if inner is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise UsageError(f"{where}: '{shorten(raw, 60)}' is not a boolean (use true or false)")
    if inner is int:
        try:
            return int(raw, 0)
        except ValueError:
            raise UsageError(f"{where}: '{shorten(raw, 60)}' is not an integer") from None
    if inner is float:
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"{where}: '{shorten(raw, 60)}' is not a number") from None
    if inner is str:
        return raw
    raise TypeError(f"unsupported option type {inner!r} for {where}")  # a bug in the plugin's options class


def parse_axis_entries(entries: Sequence[str]) -> dict[str, int | None]:
    """``["state:1", "sr:none"]`` → ``{"state": 1, "sr": None}`` (per-input batch axes); ValueError on anything else.

    The syntax of ``dynamic_batch{axes=[...]}`` and ``--calib-data feeds.npz?axes=...``.
    """
    out: dict[str, int | None] = {}
    for entry in entries:
        name, sep, text = entry.strip().rpartition(":")
        name, text = name.strip(), text.strip().lower()
        if not sep or not name or not text:
            raise ValueError(f"axes entry '{entry}' must be name:dim or name:none (e.g. axes=[state:1,sr:none])")
        if name in out:
            raise ValueError(f"axes names input '{name}' twice")
        if text == "none":
            out[name] = None
            continue
        try:
            axis = int(text)
        except ValueError:
            raise ValueError(f"axes entry '{entry}': '{text}' is neither a dim (0, 1, ...) nor none") from None
        if axis < 0:
            raise ValueError(f"axes entry '{entry}': the dim must be 0 or more")
        out[name] = axis
    return out


def option_infos(options_cls: type) -> list[OptionInfo]:
    hints = get_type_hints(options_cls)
    infos = []
    for f in dataclasses.fields(options_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        rng = f.metadata.get("range")
        text = type_text(hints[f.name]) + (f" in [{rng[0]:g}, {rng[1]:g}]" if rng else "")
        infos.append(OptionInfo(f.name, text, default, str(f.metadata.get("help", "")), rng))
    return infos


def build_options(options_cls: type, raw: Mapping[str, str], owner: str) -> Any:
    """Make an instance of ``options_cls`` from text values; unknown or bad options are usage errors."""
    if not dataclasses.is_dataclass(options_cls):
        raise TypeError(f"{owner}: options class {options_cls!r} is not a dataclass")
    hints = get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        valid = ", ".join(sorted(fields)) or "none (it takes no options)"
        raise UsageError(f"{owner}: unknown option '{shorten(unknown[0], 60)}'; valid options: {valid}")
    values = {k: parse_value(hints[k], v, f"{owner} option '{k}'") for k, v in raw.items()}
    for k, v in values.items():
        kind = _numeric(hints[k])
        if kind is not None:
            _check_range(v, fields[k].metadata.get("range"), kind, f"{owner} option '{k}'")
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UsageError(f"{owner}: option '{missing[0]}' is required")
    try:
        return options_cls(**values)
    except (ValueError, TypeError) as exc:  # __post_init__ validation of the options class
        raise UsageError(f"{owner}: {exc}") from exc


def options_as_dict(options: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


__all__ = [
    "NoOptions", "OptionInfo", "bounded", "build_options", "option_infos", "option_text", "options_as_dict", "parse_axis_entries", "parse_value", "type_text",
]


def option_text(value: Any) -> str:
    """A Python value as pipeline text: ``True`` -> ``true``, ``[1, 2]`` -> ``[1,2]``, paths and numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ",".join(option_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "[" + ",".join(f"{k}:{option_text(v)}" for k, v in value.items()) + "]"
    return str(value)
