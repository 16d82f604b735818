"""Calibration for int8 quantization: data sources, streamed statistics, calibrators, cache.

- :mod:`~converter.calibration.data`: ``--calib-data`` opened and checked against the model
  (``.npz``/``.npy`` memory-mapped, image folders with a preprocessing spec, ``module:function``,
  seeded random data only when allowed);
- :mod:`~converter.calibration.collector`: runs the model on ONNX Runtime batch by batch and
  streams per-tensor statistics (:mod:`~converter.calibration.stats`), in chunks of tensors;
- :mod:`~converter.calibration.calibrators`: minmax, percentile, entropy (TensorRT's KL search), mse;
- :mod:`~converter.calibration.cache`: our JSON cache and TensorRT's calibration-cache text;
- :mod:`~converter.calibration.shards` and :mod:`~converter.calibration.ray_runner`: the same
  statistics collected in shards of samples on a Ray cluster (``--ray``), merged exactly.
"""

from converter.calibration.cache import CalibrationCache, TensorRange, load_cache, model_hash
from converter.calibration.calibrators import METHODS, Calibrator, scale_of
from converter.calibration.collector import Collector, CollectResult
from converter.calibration.data import open_source
from converter.calibration.sources import CalibSource
from converter.calibration.stats import TensorStats
from converter.flags import PassInput

CALIB_DATA: PassInput[str | None] = PassInput(
    key="calib_data", flag="--calib-data", default=None, metavar="SRC", group="calibration (for quantization passes)",
    help="FEEDS.npz (first axis = samples), a folder of images with a preprocessing spec, or module:function yielding feed dicts",
)
"""``--calib-data``: an .npz, a folder of images with a preprocessing spec, or ``module:function``."""
CALIB_RANDOM: PassInput[bool] = PassInput(
    key="calib_random", flag="--calib-random", default=False, switch=True, group="calibration (for quantization passes)",
    help="allow seeded random calibration data (a warning: scales from random data are rarely right)",
)
"""``--calib-random``: the user explicitly allowed seeded random calibration data."""
RAY: PassInput[str | None] = PassInput(
    key="ray", flag="--ray", default=None, metavar="auto|ADDRESS", group="calibration (for quantization passes)",
    help="calibrate in shards on a Ray cluster (same result as one process): auto = the local cluster, started when none runs; "
    "ADDRESS = a running cluster (HOST:6379 or ray://HOST:10001) whose workers see --calib-data at the same path; needs pip install 'converter[ray]'",
)
"""``--ray``: collect the calibration statistics in shards on a Ray cluster (:mod:`~converter.calibration.ray_runner`)."""

__all__ = [
    "CALIB_DATA",
    "CALIB_RANDOM",
    "METHODS",
    "RAY",
    "CalibSource",
    "CalibrationCache",
    "Calibrator",
    "CollectResult",
    "Collector",
    "TensorRange",
    "TensorStats",
    "load_cache",
    "model_hash",
    "open_source",
    "scale_of",
]
