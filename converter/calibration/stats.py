"""Per-tensor calibration state that streams and merges: min, max and a fixed-size histogram of |x|.

The histogram has ``bins`` equal bins over ``[0, limit]`` (``bins`` a power of two). ``limit``
is canonical: the smallest power of two >= the largest |x| seen so far. When a later batch goes
past it, the limit doubles (as often as needed) and each pair of neighbouring bins merges into
one, so the counts stay exact at the coarser width and the state never grows: its size is
``bins`` counters whatever the number of samples. (TensorRT and ONNX Runtime grow the bin count
instead; doubling keeps the memory fixed and, since the data then spans more than half of the
range, at least ``bins / 2`` bins resolve it.)

Why the result does not depend on the order or the split of the data:

- the final limit is the canonical limit of the largest |x| over all the data, whatever came first;
- a value's bin is ``floor(|x| * bins / limit)`` computed exactly: ``bins / limit`` is a power of
  two, and multiplying by a power of two is exact in binary floating point (float32 for float16/32
  data, float64 for the rest and wherever float32 could not hold the factor: subnormal ranges);
  a product that underflows is below 1, in bin 0 either way;
- doubling maps bin ``b`` to ``b // 2``, and ``floor(floor(y) / 2) == floor(y / 2)``: the bin a
  value reaches by doublings is the bin it would have had at the final limit directly;
- the one value that is not binned by that floor is |x| == limit (the closed right edge of the
  last bin): such values are also counted apart (``at_limit``), and a doubling moves them to bin
  ``bins / 2``, where ``|x| * bins / (2 * limit)`` puts them.

So two states over any partition of the data :meth:`TensorStats.merge` (the one with the smaller
limit re-binned up to the larger, counts added) into exactly the state of one pass over all of it.
Exact zeros (max |x| == 0) stay in bin 0 with the limit left at 0; ±inf are counted and left out,
and NaN raises (or, with ``tolerate_nan``, is left out like ±inf). The limit is kept within
2**-960 .. 2**1023 (float64 data only: beyond, values are clipped into the edge bins, the same way
for every split).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 2048
_MIN_EXPONENT, _MAX_EXPONENT = -960, 1023
"""Range of the limit's exponent: the float64 factor ``bins / limit`` stays a normal number."""


class NaNFound(ValueError):
    """A tensor held NaN during calibration (the collector names the samples)."""

    def __init__(self, tensor: str) -> None:
        super().__init__(f"tensor '{tensor}' holds NaN")
        self.tensor = tensor


def limit_exponent(amax: float) -> int:
    """``e`` of the canonical limit ``2**e``: the smallest power of two >= ``amax`` (> 0, finite), clamped to the supported range."""
    mantissa, exponent = math.frexp(amax)  # amax = mantissa * 2**exponent, 0.5 <= mantissa < 1
    e = exponent - 1 if mantissa == 0.5 else exponent
    return min(max(e, _MIN_EXPONENT), _MAX_EXPONENT)


def _exponent_of(limit: float) -> int:
    return math.frexp(limit)[1] - 1


def _rebinned(hist: np.ndarray, at_limit: int, shift: int) -> np.ndarray:
    """``hist`` (with ``at_limit`` values exactly at its limit) at ``2**shift`` times the limit: bin ``b`` goes to ``b >> shift``."""
    bins = hist.size
    if shift <= 0:
        return hist.copy()
    out = np.zeros(bins, dtype=np.int64)
    merged = hist.reshape(-1, min(1 << shift, bins)).sum(axis=1)
    out[: merged.size] = merged
    if at_limit:  # they sat in the last bin, closed at the limit; |x| * bins / new_limit == bins >> shift exactly
        out[(bins - 1) >> shift] -= at_limit
        out[bins >> shift] += at_limit
    return out


@dataclass
class TensorStats:
    """What calibration knows about one tensor after the batches seen so far."""

    name: str
    bins: int = DEFAULT_BINS
    histogram: bool = True
    """False for methods that need only min/max (minmax): no histogram is kept."""
    count: int = 0
    min: float = np.inf
    max: float = -np.inf
    limit: float = 0.0
    """Upper edge of the histogram, a power of two; 0 until a non-zero value is seen."""
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    infinite: int = 0
    """-inf/+inf values seen (attention masks fill with -inf): counted and left out of the range."""
    tolerate_nan: bool = False
    """Leave NaN out like ±inf instead of raising (tensors only observed, not quantized)."""
    at_limit: int = 0
    """Values with |x| == limit: in the last bin (closed on the right), and counted here so a doubling moves them exactly."""

    def __post_init__(self) -> None:
        if self.bins < 2 or self.bins & (self.bins - 1) or self.bins > 2**30:
            raise ValueError(f"bins must be a power of two from 2 to 2**30, got {self.bins}")
        if self.histogram and self.hist.size == 0:
            self.hist = np.zeros(self.bins, dtype=np.int64)

    @property
    def amax(self) -> float:
        """Largest |x| seen (0 when nothing was seen)."""
        if self.count == 0:
            return 0.0
        return float(max(abs(self.min), abs(self.max)))

    @property
    def bin_width(self) -> float:
        return self.limit / self.bins if self.limit > 0 else 0.0

    def update(self, values: np.ndarray) -> None:
        """Add one batch of values (any shape, float); ±inf are counted and left out, NaN raises :class:`NaNFound`."""
        x = np.asarray(values)
        if x.size == 0:
            return
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(x)
            if not self.tolerate_nan and np.isnan(x).any():
                raise NaNFound(self.name)
            self.infinite += int(x.size - np.count_nonzero(finite))
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = float(np.min(x)), float(np.max(x))
        self.count += int(x.size)
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        if self.histogram:
            self._add_to_histogram(x, max(abs(lo), abs(hi)))

    def _add_to_histogram(self, x: np.ndarray, batch_amax: float) -> None:
        if batch_amax == 0.0:  # exact zeros: bin 0 at any limit
            self.hist[0] += x.size
            return
        self._grow_to(math.ldexp(1.0, limit_exponent(batch_amax)))
        shift = self.bins.bit_length() - 1 - _exponent_of(self.limit)  # bins / limit == 2**shift
        small = x.dtype in (np.float16, np.float32)  # binned in float32: exact for these, half the memory
        t = np.abs(x.ravel().astype(np.float32 if small else np.float64, copy=False))
        if small and not -126 <= shift <= 127:  # the factor is no normal float32 (subnormal data): float64 keeps the product exact
            t = t.astype(np.float64)
        t *= t.dtype.type(math.ldexp(1.0, shift))  # exact: a power of two
        np.minimum(t, t.dtype.type(self.bins), out=t)  # == bins only at |x| == limit (or beyond the clamped float64 range)
        counts = np.bincount(t.astype(np.intp), minlength=self.bins + 1)
        self.hist += counts[: self.bins]
        self.hist[-1] += counts[self.bins]
        self.at_limit += int(counts[self.bins])

    def _grow_to(self, limit: float) -> None:
        """Raise the limit to ``limit`` (a power of two) when it is larger: the bins merge exactly."""
        if limit <= self.limit:
            return
        if self.limit > 0.0:
            self.hist = _rebinned(self.hist, self.at_limit, _exponent_of(limit) - _exponent_of(self.limit))
            self.at_limit = 0
        self.limit = limit

    def merge(self, other: TensorStats) -> TensorStats:
        """Add ``other`` (the same tensor over other samples) into this state, exactly; returns ``self``."""
        if other.bins != self.bins or other.histogram != self.histogram:
            raise ValueError(f"tensor '{self.name}': cannot merge statistics with {other.bins} bins (histogram {other.histogram}) "
                             f"into {self.bins} bins (histogram {self.histogram})")
        self.count += other.count
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.infinite += other.infinite
        if not self.histogram:
            return self
        self._grow_to(other.limit)
        shift = _exponent_of(self.limit) - _exponent_of(other.limit) if other.limit > 0.0 else 0
        self.hist = self.hist + (_rebinned(other.hist, other.at_limit, shift) if shift else other.hist)
        if not shift:
            self.at_limit += other.at_limit
        return self

    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.limit, self.bins + 1)

    def state_bytes(self) -> int:
        """Memory the state holds (the histogram dominates): independent of the samples seen."""
        return int(self.hist.nbytes) + 64


def merge_stats(parts: Iterable[Mapping[str, TensorStats]]) -> dict[str, TensorStats]:
    """One collection of statistics from several over disjoint samples (tensor by tensor; the inputs are left unchanged).

    Exact: the result equals the statistics of one pass over all the samples, in any order.
    """
    out: dict[str, TensorStats] = {}
    for part in parts:
        for name, stats in part.items():
            if name in out:
                out[name].merge(stats)
            else:
                out[name] = copy.deepcopy(stats)
    return out
