"""Open ``--calib-data`` as a calibration source, checked against the model before any work.

``--calib-data`` takes:

- ``FEEDS.npz``: keys = input names, axis 0 = samples (``numpy.savez``: memory-mapped);
- ``X.npy`` (one-input models, memory-mapped) or a folder of ``<input>.npy`` files;
- a folder of images, with a preprocessing spec after ``?`` or in ``preprocess.json``
  (see :mod:`converter.calibration.images`);
- ``module:function``: a function (no arguments) returning an iterable of feed
  dicts, axis 0 = samples; it is called again for each pass over the data.

Without ``--calib-data``, seeded random data is used only when the user allowed it
(``--calib-random``), with a warning.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from converter.backend_api import TensorSpec
from converter.calibration.arrays import NpySource, NpzSource
from converter.calibration.images import ImageFolderSource
from converter.calibration.sources import CalibSource, Declared, Feeds, check_declared, declared_of, sha256_file, sha256_text, validate
from converter.errors import UsageError
from converter.feeds import concrete_shape

_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
NO_DATA = (
    "quantization needs calibration data: pass --calib-data FEEDS.npz (keys = input names, axis 0 = samples), "
    "a folder of images with a spec (DIR?resize=256,crop=224,...), or module:function; "
    "--calib-random allows seeded random data (rarely good scales)"
)


class FunctionSource(CalibSource):
    """``module:function`` returning an iterable of feed dicts; every dict is checked as it arrives."""

    def __init__(self, target: str, specs: Sequence[TensorSpec]) -> None:
        self.target = target
        self.description = target
        self.specs = list(specs)
        module_name, func_name = target.split(":")
        module = _import(module_name, target)
        self.func = getattr(module, func_name, None)
        if not callable(self.func):
            raise UsageError(f"--calib-data {target}: module '{module_name}' has no function '{func_name}'")
        self.module_file = getattr(module, "__file__", None)

    def _items(self) -> Iterator[Feeds]:
        try:
            produced = self.func()
            if not isinstance(produced, Iterable):
                raise UsageError(f"--calib-data {self.target}: the function must return an iterable of feed dicts, got {type(produced).__name__}")
            for item in produced:
                if not isinstance(item, dict):
                    raise UsageError(f"--calib-data {self.target}: it yielded a {type(item).__name__}, not a dict of input name -> array")
                feeds = {str(k): np.asarray(v) for k, v in item.items()}
                check_declared(declared_of(feeds, f"--calib-data {self.target}"), self.specs, f"--calib-data {self.target}")
                yield feeds
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"--calib-data {self.target}: the function raised {type(exc).__name__}: {exc}") from exc

    def batches(self, size: int) -> Iterator[Feeds]:
        for feeds in self._items():
            n = next(iter(feeds.values())).shape[0] if feeds else 0
            for start in range(0, n, size):
                yield {k: v[start : start + size] for k, v in feeds.items()}

    def fingerprint(self) -> str:
        source = self.module_file and Path(self.module_file).is_file()
        return sha256_text("function", self.target, sha256_file(self.module_file) if source else inspect.getsource(self.func))


def _import(module_name: str, target: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] or str(Path.cwd()) in sys.path:
            raise UsageError(f"--calib-data {target}: cannot import '{module_name}' ({exc})") from exc
    sys.path.insert(0, str(Path.cwd()))  # the console script does not put the working folder on sys.path
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"--calib-data {target}: cannot import '{module_name}' ({type(exc).__name__}: {exc})") from exc
    finally:
        sys.path.remove(str(Path.cwd()))


class RandomSource(CalibSource):
    """Seeded N(0, 1) floats (integers in {0, 1}); only with --calib-random."""

    def __init__(self, specs: Sequence[TensorSpec], samples: int, seed: int) -> None:
        self.specs, self.samples, self.seed = list(specs), samples, seed
        self.description = f"random (seed {seed}, {samples} samples)"
        for s in self.specs:
            dtype = np.dtype("float32" if s.dtype == "unknown" else s.dtype)
            if dtype.kind not in "fiub":
                raise UsageError(f"--calib-random: cannot make random data for input '{s.name}' of dtype {dtype}")

    def _sample_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        return concrete_shape(spec, {}, batch=1)[1:]

    def declared(self) -> dict[str, Declared]:
        return {s.name: Declared(np.dtype("float32" if s.dtype == "unknown" else s.dtype), self._sample_shape(s)) for s in self.specs}

    def sample_count(self) -> int:
        return self.samples

    def batches(self, size: int) -> Iterator[Feeds]:
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.samples, size):
            n = min(size, self.samples - start)
            feeds = {}
            for name, d in self.declared().items():
                shape = (n, *d.sample_shape)
                feeds[name] = (rng.standard_normal(shape) if d.dtype.kind == "f" else rng.integers(0, 2, size=shape)).astype(d.dtype)
            yield feeds

    def fingerprint(self) -> str:
        return sha256_text("random", str(self.seed), str(self.samples))


def _npy_folder(folder: Path, names: list[str]) -> dict[str, Path] | None:
    files = {n: folder / f"{n}.npy" for n in names}
    return files if all(p.is_file() for p in files.values()) else None


def _from_path(text: str, specs: Sequence[TensorSpec]) -> CalibSource | None:
    names = [s.name for s in specs]
    folder_text, _, spec_text = text.partition("?")
    path = Path(folder_text).expanduser()
    if spec_text or path.is_dir():
        if not path.is_dir():
            raise UsageError(f"--calib-data {text}: '{folder_text}' is not a folder of images")
        npy = None if spec_text else _npy_folder(path, names)
        if npy is not None:
            return NpySource(npy, str(path))
        return ImageFolderSource(path, spec_text or None, names, {s.name: s.dtype for s in specs})
    if not path.is_file():
        return None
    if path.suffix.lower() == ".npz":
        return NpzSource(path)
    if path.suffix.lower() == ".npy":
        if len(names) != 1:
            raise UsageError(f"--calib-data {path}: one .npy feeds a one-input model; this model has inputs {', '.join(names)} (use an .npz or a folder of <input>.npy)")
        return NpySource({names[0]: path}, str(path))
    raise UsageError(f"--calib-data {path}: unknown kind of file (expected .npz, .npy, a folder of images, or module:function)")


def open_source(text: str | None, specs: Sequence[TensorSpec], *, allow_random: bool, samples: int, seed: int, log: logging.Logger) -> CalibSource:
    """The source ``--calib-data`` names, checked against ``specs`` (the model inputs) before any work."""
    if not text:
        if not allow_random:
            raise UsageError(NO_DATA)
        log.warning("calibrating on seeded random data (--calib-random): scales from random inputs rarely fit real data")
        source: CalibSource = RandomSource(specs, samples, seed)
    else:
        found = _from_path(text, specs)
        if found is None:
            if not _FUNCTION.match(text):
                raise UsageError(f"--calib-data {text}: no such file or folder, and not module:function")
            found = FunctionSource(text, specs)
        source = found
    validate(source, specs)
    return source
