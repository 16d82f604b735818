"""``--report PATH``: write a report document as one self-contained HTML page, atomically.

The page is rendered by :mod:`converter.html_report` from the same document ``--json`` prints.
It is written to a temporary file beside PATH and renamed into place, so a failed or killed run
leaves either the old file or the new one, never half of one; PATH may not be one of the inputs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from converter.errors import UsageError
from converter.model_io import ensure_not_input


def add_report_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, metavar="PAGE.html", help="also write the report as a self-contained HTML page")


def check_output_path(path: Path | None, flag: str, example: str, protected: Iterable[Path] = ()) -> None:
    """Refuse, before any work, an output path (``flag``'s) that is a folder, has no folder to go in, or is an input."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file path such as {example}")
    if not path.absolute().parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {path.absolute().parent} does not exist")
    ensure_not_input(path, protected)


def check_report_path(path: Path | None, protected: Iterable[Path] = ()) -> None:
    """Refuse, before any work, a report path that is a folder, has no folder to go in, or is an input."""
    check_output_path(path, "--report", "report.html", protected)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename: the old file or the new, never half."""
    target = path.absolute()
    fd, tmp = tempfile.mkstemp(prefix=".converter-out-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_page(path: Path, doc: dict[str, Any], protected: Iterable[Path] = ()) -> Path:
    """Render ``doc`` and write it to ``path`` (temporary file + rename); returns the path."""
    from converter.html_report import render

    check_report_path(path, protected)
    return write_atomic(path, render(doc).encode("utf-8"))
