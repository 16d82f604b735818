"""Parse the textual pipeline: ``fold_constants,dynamic_batch{dim=1},qdq{calibrator=entropy}``.

Grammar: items separated by commas; an item is ``name`` or ``name{key=value,...}``.
Values may be bracketed lists ``[a,b]`` or double-quoted strings (for commas).
The same syntax names a backend with options: ``ort{opt_level=all,threads=2}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from converter.errors import UsageError, shorten

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Step:
    """One pipeline item as typed: a name and its raw option texts."""

    name: str
    options: dict[str, str] = field(default_factory=dict)


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside braces, brackets and double quotes."""
    parts, depth, quoted, cur = [], 0, False, []
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "{[":
            depth += 1
        elif not quoted and ch in "}]":
            depth -= 1
            if depth < 0:
                raise UsageError(f"pipeline '{shorten(text, 80)}': unbalanced '{ch}'")
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0 or quoted:
        raise UsageError(f"pipeline '{shorten(text, 80)}': unclosed brace, bracket or quote")
    parts.append("".join(cur))
    return parts


def _unquote(value: str) -> str:
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def parse_step(text: str) -> Step:
    item = text.strip()
    if not item:
        raise UsageError("pipeline has an empty item (two commas in a row?)")
    if "{" in item:
        if not item.endswith("}"):
            raise UsageError(f"pipeline item '{shorten(item, 80)}': options must be written name{{key=value,...}}")
        name, body = item[: item.index("{")].strip(), item[item.index("{") + 1 : -1]
    else:
        name, body = item, ""
    if not _NAME.match(name):
        raise UsageError(f"pipeline item '{shorten(item, 80)}': '{shorten(name, 60)}' is not a valid name")
    options: dict[str, str] = {}
    for pair in _split_top(body, ","):
        if not pair.strip():
            continue
        if "=" not in pair:
            raise UsageError(f"pipeline item '{shorten(item, 80)}': option '{shorten(pair.strip(), 60)}' must be key=value")
        key, value = pair.split("=", 1)
        key = key.strip()
        if key in options:
            raise UsageError(f"pipeline item '{shorten(item, 80)}': option '{key}' given twice")
        options[key] = _unquote(value)
    return Step(name, options)


def parse_pipeline(text: str | None) -> list[Step]:
    """Parse a whole pipeline; an empty or missing text is an empty pipeline."""
    if text is None or not text.strip():
        return []
    return [parse_step(part) for part in _split_top(text.strip(), ",")]


def format_step(step: Step) -> str:
    if not step.options:
        return step.name
    return step.name + "{" + ",".join(f"{k}={_quote(v)}" for k, v in step.options.items()) + "}"


def _quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ",{}") and not (value.startswith("[") and value.endswith("]")) else value
