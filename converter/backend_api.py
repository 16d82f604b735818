"""The Backend contract: emit a runnable artifact, load it into a Runner.

``emit(model, ctx)`` writes files into ``ctx.staging`` (a temporary folder the
core renames into place only when everything succeeded) and returns an
:class:`Artifact`; ``load(artifact)`` gives a :class:`Runner` whose
``run(feeds)`` takes and returns numpy arrays.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import onnx

from converter.options import NoOptions

OptionsT = TypeVar("OptionsT")

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here, and if not, why."""

    ok: bool
    reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


class Severity(StrEnum):
    """How bad a lint finding is."""

    ERROR = "error"
    """The backend will reject the model."""
    WARNING = "warning"
    """It will run, slower or with a cast."""


@dataclass(frozen=True)
class Finding:
    """One lint finding: what a backend will reject or run slowly, and where."""

    rule: str
    severity: Severity
    node: str
    """The node (or tensor / "model") the finding is about."""
    message: str

    def line(self) -> str:
        return f"{self.severity}: {self.rule}: {self.node}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity.value, "node": self.node, "message": self.message}


@dataclass
class Artifact:
    """Files a backend emitted: the main file, its manifest, and the rest."""

    backend: str
    path: Path
    manifest: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        return manifest_path_for(self.path)

    def write_manifest(self) -> Path:
        path = self.manifest_path
        path.write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
        if path not in self.files:
            self.files.append(path)
        return path

    def moved_to(self, directory: Path) -> Artifact:
        return Artifact(self.backend, directory / self.path.name, self.manifest, [directory / f.name for f in self.files])


def manifest_path_for(path: Path) -> Path:
    return path.with_name(path.name + MANIFEST_SUFFIX)


@dataclass
class EmitContext:
    """Where to write and what to record: the staging folder, the final file name, provenance."""

    staging: Path
    file_name: str
    log: logging.Logger
    source_sha256: str = ""
    pipeline: str = ""
    external_data: bool = False
    """The source kept its weights in external files: keep them external in the artifact too."""


class Runner(ABC):
    """Runs an artifact: numpy in, numpy out, keyed by tensor name."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on ``feeds`` and return every output."""


class Backend(ABC, Generic[OptionsT]):
    """Base class of every backend; subclasses set ``name``, ``summary``, ``Options``, ``suffix``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    suffix: ClassVar[str] = ".onnx"
    """File suffix of the main artifact."""

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Ok, or the reason this backend cannot run here. Must not raise."""

    def lint(self, model: onnx.ModelProto) -> list[Finding]:
        """Pure-ONNX checks of what this backend will reject or run slowly; needs no device."""
        return []

    def preflight(self) -> None:
        """Check the options against this machine before any work starts (raise BackendUnavailable)."""

    @abstractmethod
    def emit(self, model: onnx.ModelProto, ctx: EmitContext) -> Artifact:
        """Write the artifact into ``ctx.staging`` and describe it."""

    @abstractmethod
    def load(self, artifact: Artifact) -> Runner:
        """Open an emitted artifact for running."""
