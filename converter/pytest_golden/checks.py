"""What a golden case asks to be checked: its manifest's ``checks``, read at collection time.

Only ``manifest.json`` is read here (no tensors, no model), so every xdist worker collects the
same items in the same order cheaply. A manifest that cannot be read becomes a spec with an
``error``: the case is collected as one item that fails with that line, the session goes on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.errors import ConverterError
from converter.pipeline_text import parse_pipeline

MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_CHECKS: tuple[dict[str, str], ...] = ({"passes": "infer_shapes,cleanup", "backend": "ort"},)
FIX = "fix the 'checks' list in manifest.json (each item: {\"passes\": \"...\", \"backend\": \"...\", \"precision\"?: \"fp32|fp16|int8\"})"


class BadChecks(Exception):
    """The manifest's ``checks`` list is malformed; ``str()`` names the item and how to fix it."""


@dataclass(frozen=True)
class Check:
    passes: str
    backend: str
    precision: str | None = None
    note: str | None = None

    @property
    def backend_name(self) -> str:
        """The backend without its options: ``ort{opt_level=all}`` -> ``ort``."""
        return self.backend.split("{", 1)[0].strip()

    def label(self) -> str:
        """``passes@backend``, plus ``:precision`` when the check names one; used in node ids."""
        text = f"{self.passes.strip() or 'no-passes'}@{self.backend.strip()}"
        return f"{text}:{self.precision}" if self.precision else text

    def describe(self) -> str:
        passes = f"passes '{self.passes}'" if self.passes.strip() else "no passes"
        return f"{passes} on backend '{self.backend}'" + (f" ({self.note})" if self.note else "")


@dataclass
class CaseSpec:
    path: Path
    name: str
    checks: list[Check] = field(default_factory=list)
    error: str | None = None


def _check(item: Any, i: int, where: Path) -> Check:
    if not isinstance(item, dict):
        raise BadChecks(f"{where}: checks[{i}] must be an object, not {type(item).__name__}; {FIX}")
    passes, backend, precision, note = item.get("passes", ""), item.get("backend"), item.get("precision"), item.get("note")
    if not isinstance(passes, str):
        raise BadChecks(f"{where}: checks[{i}].passes must be a pipeline text (a string), not {passes!r}; {FIX}")
    if not isinstance(backend, str) or not backend.strip():
        raise BadChecks(f"{where}: checks[{i}].backend must name a backend (a string such as \"ort\"), not {backend!r}; {FIX}")
    if precision is not None and precision not in PRECISIONS:
        raise BadChecks(f"{where}: checks[{i}].precision must be one of {', '.join(PRECISIONS)}, not {precision!r}; {FIX}")
    return Check(passes, backend, precision, None if note is None else str(note))


def read_spec(case_dir: Path) -> CaseSpec:
    where = case_dir / MANIFEST
    try:
        manifest = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return CaseSpec(case_dir, case_dir.name, error=f"{where} is not readable JSON: {exc}")
    if not isinstance(manifest, dict):
        return CaseSpec(case_dir, case_dir.name, error=f"{where}: the manifest must be a JSON object")
    name = manifest.get("name")
    spec = CaseSpec(case_dir, name if isinstance(name, str) and name else case_dir.name)
    raw = manifest.get("checks", list(DEFAULT_CHECKS))
    if not isinstance(raw, list) or not raw:
        spec.error = f"{where}: 'checks' must be a non-empty list; {FIX}"
        return spec
    try:
        spec.checks = [_check(item, i, where) for i, item in enumerate(raw)]
    except BadChecks as exc:
        spec.error = str(exc)
    return spec


def check_precision(check: Check, plugins: Any) -> str:
    """The precision a check is judged by: its own, else the lowest its passes produce (fp32 when unknown).

    The graph itself may still lower it at run time (a float16 model): the marker follows the manifest."""
    if check.precision:
        return check.precision
    found = ["fp32"]
    try:
        for step in parse_pipeline(check.passes):
            if step.name in plugins.passes:
                found.append(plugins.passes.get(step.name).cls.output_precision or "fp32")
    except ConverterError:  # a bad pipeline fails when the check runs, with the converter's own message
        pass
    return max(found, key=PRECISIONS.index)


def marker_name(text: str) -> str:
    """A marker name usable in ``-m`` expressions: word characters only."""
    return re.sub(r"\W", "_", text)


def unique_names(spec: CaseSpec, checks: list[Check]) -> list[str]:
    """``NAME[label]`` per check; a label seen twice gets ``#2``, ``#3`` so node ids stay distinct."""
    out: list[str] = []
    for check in checks:
        base = f"{spec.name}[{check.label()}]"
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base[:-1]}#{n}]"
        out.append(name)
    return out
