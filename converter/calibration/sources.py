"""The calibration-data source contract, and checking a source against the model before any work.

A source yields feed dicts whose arrays hold the samples along each input's own
sample axis (``axes``: axis 0 unless the model or the user says otherwise, e.g. a
recurrent state on axis 1; none for scalars, given once and fed to every run),
any number of samples per dict. ``declared()`` gives each input's dtype and
per-sample shape where the source knows them without reading the data (array
headers, an image spec with a crop); otherwise the first item is read and
checked before calibration starts. A source ``as_yielded`` (``module:function``)
is run dict by dict, exactly as yielded.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from converter.backend_api import TensorSpec
from converter.calibration.axes import Axes, axis_of, axis_text, without_axis
from converter.errors import UsageError

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Declared:
    """What a source says about one input: dtype and the shape of one sample (its sample axis left out; all of it when it has none)."""

    dtype: np.dtype
    sample_shape: tuple[int, ...]


class CalibSource(ABC):
    """Calibration samples; iterable several times (the collector may run in several chunks)."""

    description: str = "calibration data"
    axes: Axes = {}
    """Each input's sample axis (missing: axis 0; None: no sample axis, one array fed to every run)."""
    as_yielded: bool = False
    """Each item is one run, fed as it is (no cutting or joining)."""
    read_first: bool = False
    """Validation also reads the first item (image decoding and cropping can fail where headers cannot)."""

    @abstractmethod
    def batches(self, size: int) -> Iterator[Feeds]:
        """Feed dicts of at most ``size`` samples each (along each input's sample axis)."""

    def sample_count(self) -> int | None:
        """Samples available, when known without reading them."""
        return None

    def declared(self) -> dict[str, Declared] | None:
        """Per-input dtype and sample shape, when known without reading data."""
        return None

    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 of what the samples are (file contents, spec, seed), for the calibration cache."""


def sha256_text(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def sha256_file(path: object, digest: hashlib._Hash | None = None) -> str:
    d = digest or hashlib.sha256()
    with open(str(path), "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            d.update(chunk)
    return d.hexdigest()


def _dims_text(shape: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_declared(declared: Mapping[str, Declared], specs: Sequence[TensorSpec], where: str, axes: Axes | None = None) -> None:
    """Names, dtypes and the static dims other than each input's sample axis must match the model's inputs; one-line errors."""
    axes = axes or {}
    wanted = {s.name: s for s in specs}
    missing = [n for n in wanted if n not in declared]
    extra = [n for n in declared if n not in wanted]
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(extra)}"] if extra else [])
        raise UsageError(f"{where}: {'; '.join(parts)} (model inputs: {', '.join(wanted)})")
    for name, spec in wanted.items():
        got = declared[name]
        axis = axis_of(axes, name)
        if spec.dtype != "unknown" and got.dtype != np.dtype(spec.dtype):
            raise UsageError(f"{where}: input '{name}' has dtype {got.dtype}, the model wants {spec.dtype}")
        if axis is not None and spec.shape and axis >= len(spec.shape):
            raise UsageError(f"{where}: input '{name}' has {len(spec.shape)} dims (model shape {_dims_text(spec.shape)}), so it has no sample axis {axis}")
        want = without_axis(spec.shape, axis) if spec.shape else ()
        if (spec.shape or axis is None) and len(want) != len(got.sample_shape):
            raise UsageError(
                f"{where}: input '{name}' has samples of shape {list(got.sample_shape)}, the model wants {_dims_text(want)} per sample "
                f"(model shape {_dims_text(spec.shape)}; {axis_text(axis)})"
            )
        dims = [i for i in range(len(spec.shape or ())) if i != axis]
        for d, w, g in zip(dims, want, got.sample_shape):
            if isinstance(w, int) and w > 0 and w != g:
                raise UsageError(f"{where}: input '{name}' dim {d} is {g}, the model wants {w} (model shape {_dims_text(spec.shape)}; {axis_text(axis)})")


def declared_of(feeds: Mapping[str, np.ndarray], where: str, axes: Axes | None = None) -> dict[str, Declared]:
    axes = axes or {}
    out = {}
    for name, arr in feeds.items():
        a = np.asarray(arr)
        axis = axis_of(axes, name)
        if axis is not None and a.ndim <= axis:
            if a.ndim == 0:
                raise UsageError(f"{where}: input '{name}' is a scalar; axis {axis} must hold the samples (or declare {name}:none)")
            raise UsageError(f"{where}: input '{name}' has shape {list(a.shape)}, no axis {axis} to hold the samples")
        out[name] = Declared(a.dtype, without_axis(a.shape, axis))
    return out


def validate(source: CalibSource, specs: Sequence[TensorSpec]) -> None:
    """Check ``source`` against the model inputs before calibration starts (reads at most one item)."""
    where = f"--calib-data {source.description}"
    declared = source.declared()
    if declared is not None:
        check_declared(declared, specs, where, source.axes)
    if declared is None or source.read_first:
        first = next(iter(source.batches(1)), None)
        if first is None:
            raise UsageError(f"{where}: it yields no samples")
        check_declared(declared_of(first, where, source.axes), specs, where, source.axes)
    count = source.sample_count()
    if count == 0:
        raise UsageError(f"{where}: it holds no samples")
