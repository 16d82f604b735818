"""Plain-text tables for the CLI's reports."""

from __future__ import annotations

from collections.abc import Sequence


def table_lines(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, header first; trailing spaces stripped."""
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [list(head), *rows]]


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), 0x7F] if c not in (0x09,)}


def printable(text: object) -> str:
    """Text from a model or manifest, safe to print: control characters (escape sequences, newlines) escaped."""
    return str(text).translate(_CONTROL)
