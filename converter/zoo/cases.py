"""What ``zoo check`` runs: the golden cases under the given folders, each crossed with its manifest's checks.

A unit is one case x one check, numbered in discovery order (folders in the order given, cases
sorted by path inside each, checks in manifest order); reports list units in that order whatever
order they finish in. Only ``manifest.json`` is read here (:func:`converter.pytest_golden.checks.read_spec`),
so discovery is cheap; a case whose manifest or ``checks`` cannot be read is one unit that errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from converter.errors import UsageError
from converter.pytest_golden.checks import MANIFEST, CaseSpec, Check, read_spec, unique_names

_GPU_BACKEND = re.compile(r"tensorrt|cuda", re.IGNORECASE)


@dataclass(frozen=True)
class Unit:
    """One case x check; picklable (it travels to worker processes and Ray tasks)."""

    index: int
    case: str
    """The case's name (its manifest's ``name``, else its folder's)."""
    case_dir: str
    """The case folder as found (absolute)."""
    check: Check | None
    """None for a case whose manifest cannot be read: the unit then errors with ``spec_error``."""
    label: str
    """``passes@backend[:precision]``, with ``#2``... when a case lists the same check twice."""
    spec_error: str | None = None

    @property
    def needs_gpu(self) -> bool:
        """A TensorRT check, or one whose backend text names CUDA/TensorRT (``ort{providers=[CUDAExecutionProvider]}``)."""
        return self.check is not None and bool(_GPU_BACKEND.search(self.check.backend))

    def key(self) -> tuple[str, str]:
        return self.case, self.label


def _case_dirs(root: Path) -> list[Path]:
    """``root`` itself when it is a case, else every case below it (hidden folders skipped: staging copies)."""
    if (root / MANIFEST).is_file():
        return [root]
    found = []
    for manifest in sorted(root.rglob(MANIFEST)):
        rel = manifest.parent.relative_to(root)
        if not any(part.startswith(".") for part in rel.parts):
            found.append(manifest.parent)
    return found


def _labels(spec: CaseSpec, checks: list[Check]) -> list[str]:
    prefix = f"{spec.name}["
    return [name[len(prefix):-1] for name in unique_names(spec, checks)]


def discover(roots: list[Path], backend: str | None = None) -> list[Unit]:
    """Every unit under ``roots``; ``backend`` keeps only checks on that backend (by name, options aside).

    A folder that does not exist, or holds no case, is a :class:`UsageError`; so is a filter that leaves nothing."""
    dirs: dict[Path, None] = {}
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"{root} is not a folder; give golden case folders or folders that hold them")
        cases = _case_dirs(root)
        if not cases:
            raise UsageError(f"{root} holds no golden case (no {MANIFEST} below it); record one with 'convert golden record'")
        for case_dir in cases:
            dirs.setdefault(case_dir.absolute(), None)
    units: list[Unit] = []
    for case_dir in dirs:
        spec = read_spec(case_dir)
        if spec.error is not None:
            units.append(Unit(len(units), spec.name, str(case_dir), None, "manifest", spec.error))
            continue
        checks = [c for c in spec.checks if backend is None or c.backend_name == backend]
        for label, check in zip(_labels(spec, checks), checks):
            units.append(Unit(len(units), spec.name, str(case_dir), check, label))
    if not units:
        raise UsageError(f"no check on backend '{backend}' in {', '.join(map(str, roots))}; drop --backend or name another one")
    return units
