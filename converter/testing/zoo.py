"""The golden zoo shipped with the conformance kit: small models every backend must convert and run.

Each case is a golden case folder (``converter.golden`` layout, so ``convert MODEL -b NAME --golden
CASE`` reads it too) built by ``tools/make_conformance_zoo.py``: ``model.onnx`` (and
``model.onnx.data`` for the external-data case), ``manifest.json`` and one ``test_data_set_N``
folder per batch size, holding the inputs and the reference outputs (from ``onnx.reference``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


@dataclass(frozen=True)
class ZooCase:
    """One shipped case: where it is, the tolerance policy that applies, and what it covers."""

    name: str
    path: Path
    precision: str
    """fp32, fp16 or int8: which of ``converter.compare.DEFAULT_TOLERANCES`` the outputs are held to."""
    description: str
    batch_sizes: tuple[int, ...]
    """The batch of each data set, in data set order."""
    external_data: bool

    @property
    def model_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def model_files(self) -> list[Path]:
        """The model and its external data file, if any: what a copy of the model must take along."""
        return [self.model_path, *([self.path / "model.onnx.data"] if self.external_data else [])]

    def golden(self):  # -> converter.golden.GoldenCase (imported here: reading the zoo's index stays cheap)
        from converter.golden import load_case

        return load_case(self.path)


def _case(folder: Path) -> ZooCase:
    manifest = json.loads((folder / "manifest.json").read_text())
    return ZooCase(
        name=folder.name,
        path=folder,
        precision=str(manifest["precision"]),
        description=str(manifest.get("description", "")),
        batch_sizes=tuple(int(b) for b in manifest.get("batch_sizes", [])),
        external_data=(folder / "model.onnx.data").is_file(),
    )


@functools.cache
def zoo_cases() -> tuple[ZooCase, ...]:
    """Every shipped case, by name."""
    return tuple(_case(p.parent) for p in sorted(ZOO_DIR.glob("*/manifest.json")))


def zoo_case(name: str) -> ZooCase:
    for case in zoo_cases():
        if case.name == name:
            return case
    raise KeyError(f"no zoo case {name!r} (have: {', '.join(c.name for c in zoo_cases())})")
