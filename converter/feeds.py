"""Input feeds: load them from .npz, check them against a model, or make seeded ones."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from converter.backend_api import TensorSpec
from converter.errors import UsageError

Feeds = dict[str, np.ndarray]


def parse_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """Parse ``name:1x3x224x224,other:4x16`` into a mapping."""
    shapes: dict[str, tuple[int, ...]] = {}
    if not text:
        return shapes
    for item in text.split(","):
        if ":" not in item:
            raise UsageError(f"input shape '{item}' must be written name:DxDxD (e.g. x:1x3x224x224)")
        name, dims = item.rsplit(":", 1)
        try:
            shapes[name.strip()] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise UsageError(f"input shape '{item}': dimensions must be integers joined by 'x'") from None
        if any(d <= 0 for d in shapes[name.strip()]):
            raise UsageError(f"input shape '{item}': dimensions must be positive")
    return shapes


def load_npz(path: str | Path) -> Feeds:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"inputs file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{p} is not a readable .npz of input arrays ({exc}); save feeds with numpy.savez") from exc


def check_feeds(feeds: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], where: str = "inputs") -> None:
    """Names, dtypes, ranks and static dims must match the model; otherwise a one-line error."""
    wanted = {s.name: s for s in specs}
    missing = [n for n in wanted if n not in feeds]
    extra = [n for n in feeds if n not in wanted]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise UsageError(f"{where}: {'; '.join(parts)} (model inputs: {', '.join(wanted)})")
    for name, spec in wanted.items():
        arr = feeds[name]
        if spec.dtype != "unknown" and str(arr.dtype) != spec.dtype:
            raise UsageError(f"{where}: input '{name}' has dtype {arr.dtype}, the model wants {spec.dtype}")
        if spec.shape and len(spec.shape) != arr.ndim:
            raise UsageError(f"{where}: input '{name}' has shape {list(arr.shape)}, the model wants rank {len(spec.shape)} {list(spec.shape)}")
        for i, (want, got) in enumerate(zip(spec.shape, arr.shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise UsageError(f"{where}: input '{name}' has shape {list(arr.shape)}, dim {i} must be {want} (model shape {list(spec.shape)})")


def concrete_shape(spec: TensorSpec, overrides: Mapping[str, tuple[int, ...]], batch: int = 1, other: int = 32) -> tuple[int, ...]:
    """Resolve symbolic dims: an override wins; else dim 0 is ``batch`` and other dims are ``other``."""
    if spec.name in overrides:
        return overrides[spec.name]
    return tuple(d if isinstance(d, int) and d > 0 else (batch if i == 0 else other) for i, d in enumerate(spec.shape))


MAX_FEED_BYTES = 2 << 30
"""Generated sample inputs (``--verify``, ``golden record --random-inputs``) are refused above this, before allocation."""


def check_feed_size(planned: Sequence[tuple[str, tuple[int, ...], np.dtype]], limit: int = MAX_FEED_BYTES) -> None:
    """Refuse (exit 2) feeds whose arrays would not fit, naming the input and its shape, before any allocation."""
    total = 0
    for name, shape, dtype in planned:
        if any(d < 0 for d in shape):
            raise UsageError(f"input '{name}': shape {list(shape)} has a negative dim; give --input-shapes")
        size = math.prod(shape) * max(dtype.itemsize, 1)
        total += size
        if total > limit:
            raise UsageError(f"input '{name}' of shape {list(shape)} needs {size / 2**30:.1f} GiB of sample data (limit {limit / 2**30:g} GiB); give smaller --input-shapes or --inputs FEEDS.npz")


def seeded_feeds(specs: Sequence[TensorSpec], seed: int, overrides: Mapping[str, tuple[int, ...]] | None = None, batch: int = 1) -> Feeds:
    """Deterministic sample inputs: floats ~ N(0, 1), integers in {0, 1}, booleans at random."""
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    planned = [(spec, concrete_shape(spec, overrides or {}, batch=batch)) for spec in specs]
    check_feed_size([(s.name, shape, np.dtype(s.dtype) if s.dtype != "unknown" else np.dtype("float32")) for s, shape in planned])
    for spec, shape in planned:
        dtype = np.dtype(spec.dtype) if spec.dtype != "unknown" else np.dtype("float32")
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise UsageError(f"cannot make sample data for input '{spec.name}' of dtype {dtype}; pass --inputs FEEDS.npz")
    return feeds
