"""Per-tensor calibration state that streams: min, max and a fixed-size histogram of |x|.

The histogram has ``bins`` equal bins over ``[0, limit]``. ``limit`` starts at
the first batch's max |x|; when a later batch goes past it, the limit doubles
(as often as needed) and each pair of neighbouring bins merges into one, so the
counts stay exact at the coarser width and the state never grows: its size is
``bins`` counters whatever the number of samples. (TensorRT and ONNX Runtime
grow the bin count instead; doubling keeps the memory fixed and, since the data
then spans more than half of the range, at least ``bins / 2`` bins resolve it.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 2048


class NaNFound(ValueError):
    """A tensor held NaN during calibration (the collector names the samples)."""

    def __init__(self, tensor: str) -> None:
        super().__init__(f"tensor '{tensor}' holds NaN")
        self.tensor = tensor


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
    """Upper edge of the histogram; 0 until a non-zero value is seen."""
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    infinite: int = 0
    """-inf/+inf values seen (attention masks fill with -inf): counted and left out of the range."""
    tolerate_nan: bool = False
    """Leave NaN out like ±inf instead of raising (tensors only observed, not quantized)."""

    def __post_init__(self) -> None:
        if self.bins < 2 or self.bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {self.bins}")
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
        if batch_amax == 0.0 and self.limit == 0.0:
            self.hist[0] += x.size
            return
        if self.limit == 0.0:
            self.limit = batch_amax
        while batch_amax > self.limit:
            self._double()
        t = np.abs(x.ravel().astype(np.float32, copy=False))  # float32, in place: values within float32
        t *= np.float32(self.bins / self.limit)  # rounding of a bin edge may land in the neighbour bin
        np.minimum(t, np.float32(self.bins - 1), out=t)
        self.hist += np.bincount(t.astype(np.intp), minlength=self.bins)

    def _double(self) -> None:
        """Twice the range, same bin count: bins 2k and 2k+1 merge into bin k."""
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        self.hist = np.concatenate([merged, np.zeros(self.bins - merged.size, dtype=np.int64)])
        self.limit *= 2.0

    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.limit, self.bins + 1)

    def state_bytes(self) -> int:
        """Memory the state holds (the histogram dominates): independent of the samples seen."""
        return int(self.hist.nbytes) + 64
