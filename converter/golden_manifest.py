"""Validation of a golden case's ``manifest.json`` and folder layout (private to :mod:`converter.golden`).

A golden check must be able to fail. So a manifest whose tolerances are not numbers (or null),
a data set without reference outputs, an output the manifest lists without a file, or a
``test_data_set_*`` folder that is not numbered is a :class:`UsageError` (exit 2) naming what
is wrong, never a silently looser check or a crash.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.compare import DEFAULT_TOLERANCES, Tolerance
from converter.errors import UsageError

PRECISIONS = ("fp32", "fp16", "int8")
TOLERANCE_KEYS = ("atol", "rtol", "min_cosine", "min_top1")
DATA_SET_PREFIX = "test_data_set_"
RERECORD = "fix manifest.json or record the case again with 'convert golden record'"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_format(manifest: Any, where: Path, current: int) -> dict[str, Any]:
    """The manifest as a dict, after checking the types of the keys the checker reads."""
    if not isinstance(manifest, dict):
        raise UsageError(f"{where}: the manifest must be a JSON object, not {_kind(manifest)}; {RERECORD}")
    if "format" in manifest:
        fmt = manifest["format"]
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            raise UsageError(f"{where}: 'format' must be an integer, not {_kind(fmt)} ({fmt!r}); {RERECORD}")
        if not 1 <= fmt <= current:
            raise UsageError(f"{where}: 'format' {fmt} is not supported (this converter reads format 1 to {current}); upgrade converter or {RERECORD}")
    if "name" in manifest and not isinstance(manifest["name"], str):
        raise UsageError(f"{where}: 'name' must be a string, not {_kind(manifest['name'])}; {RERECORD}")
    if "model" in manifest and not isinstance(manifest["model"], dict):
        raise UsageError(f"{where}: 'model' must be an object, not {_kind(manifest['model'])}; {RERECORD}")
    for key in ("inputs", "outputs"):
        names(manifest, key, where)
    tolerances(manifest, where)
    return manifest


def names(manifest: Mapping[str, Any], key: str, where: Path) -> list[str]:
    """``manifest[key]`` (``inputs`` or ``outputs``): a list of distinct strings, or [] when absent."""
    value = manifest.get(key, [])
    if not isinstance(value, list):
        raise UsageError(f"{where}: '{key}' must be a list of tensor names, not {_kind(value)} ({value!r}); {RERECORD}")
    seen: set[str] = set()
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise UsageError(f"{where}: '{key}'[{i}] must be a tensor name (a string), not {_kind(name)} ({name!r}); {RERECORD}")
        if name in seen:
            raise UsageError(f"{where}: '{key}' lists {name!r} twice; {RERECORD}")
        seen.add(name)
    return list(value)


def _policy(precision: str, policy: Any, where: Path) -> Tolerance:
    shape = "an object with atol, rtol, min_cosine, min_top1 (numbers or null)"
    if not isinstance(policy, dict):
        raise UsageError(f"{where}: tolerances.{precision} must be {shape}, not {_kind(policy)} ({policy!r}); {RERECORD}")
    values: dict[str, float | None] = {}
    for key, value in policy.items():
        at = f"tolerances.{precision}.{key}"
        if key not in TOLERANCE_KEYS:
            raise UsageError(f"{where}: {at} is not a tolerance key (known: {', '.join(TOLERANCE_KEYS)}); {RERECORD}")
        if value is None:
            values[key] = None
            continue
        if not _number(value):
            raise UsageError(f"{where}: {at} must be a number or null, not {_kind(value)} ({value!r}); {RERECORD}")
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{where}: {at} must be a finite number >= 0, not {value!r}; {RERECORD}")
        if key in ("min_cosine", "min_top1") and value > 1:
            raise UsageError(f"{where}: {at} must be <= 1 (it is a fraction), not {value!r}; {RERECORD}")
        values[key] = float(value)
    # keys left out keep this precision's defaults (never the looser class defaults)
    tol = dataclasses.replace(DEFAULT_TOLERANCES[precision], **values)
    if tol.atol is None and tol.rtol is None and tol.min_cosine is None:
        raise UsageError(f"{where}: tolerances.{precision} turns atol, rtol and min_cosine all off, so the check could not fail on float outputs; {RERECORD}")
    return tol


def tolerances(manifest: Mapping[str, Any], where: Path) -> dict[str, Tolerance]:
    """The manifest's tolerance policies, checked; precisions it leaves out are not in the result."""
    if "tolerances" not in manifest:
        return {}
    raw = manifest["tolerances"]
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: 'tolerances' must be an object keyed by precision ({', '.join(PRECISIONS)}), not {_kind(raw)}; {RERECORD}")
    out = {}
    for precision, policy in raw.items():
        if precision not in PRECISIONS:
            raise UsageError(f"{where}: tolerances.{precision} is not a precision (known: {', '.join(PRECISIONS)}); {RERECORD}")
        out[precision] = _policy(precision, policy, where)
    return out


def data_set_folders(case: Path) -> list[Path]:
    """The case's ``test_data_set_N`` folders in order of N; any other suffix is an error."""
    numbered: dict[int, Path] = {}
    for d in case.glob(f"{DATA_SET_PREFIX}*"):
        if not d.is_dir():
            continue
        suffix = d.name[len(DATA_SET_PREFIX):]
        if not (suffix.isascii() and suffix.isdigit()):
            raise UsageError(f"golden case {case}: folder {d.name!r} is not named {DATA_SET_PREFIX}N (N a number); rename or remove it")
        n = int(suffix)
        if n in numbered:
            raise UsageError(f"golden case {case}: folders {numbered[n].name!r} and {d.name!r} are both data set {n}; remove one")
        numbered[n] = d
    return [numbered[n] for n in sorted(numbered)]


def numbered_files(folder: Path, prefix: str) -> list[tuple[int, Path]]:
    """``prefix_N.pb`` files of a data set, by N; a ``prefix_*.pb`` file without a number is an error."""
    found: dict[int, Path] = {}
    for p in folder.glob(f"{prefix}_*.pb"):
        suffix = p.stem[len(prefix) + 1:]
        if not (suffix.isascii() and suffix.isdigit()):
            raise UsageError(f"golden data set {folder}: file {p.name!r} is not named {prefix}_N.pb (N a number); rename or remove it")
        n = int(suffix)
        if n in found:
            raise UsageError(f"golden data set {folder}: files {found[n].name!r} and {p.name!r} are both {prefix} {n}; remove one")
        found[n] = p
    return sorted(found.items())


def check_data_set(case: Path, name: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                   input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """A data set must hold reference outputs, and a file for every input and output the manifest lists."""
    if not outputs:
        raise UsageError(f"golden case {case}: data set {name} has no reference outputs (no output_N.pb), so nothing would be compared; {RERECORD}")
    for kind, listed, held in (("output", output_names, outputs), ("input", input_names, inputs)):
        missing = [n for n in listed if n not in held]
        if missing:
            raise UsageError(
                f"golden case {case}: data set {name} has no {kind} file for {', '.join(map(repr, missing))} "
                f"(listed in manifest.json '{kind}s'; it holds: {', '.join(map(repr, held)) or 'none'}); {RERECORD}"
            )
