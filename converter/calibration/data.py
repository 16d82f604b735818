"""Open ``--calib-data`` as a calibration source, checked against the model before any work.

``--calib-data`` takes:

- ``FEEDS.npz``: keys = input names, each holding its samples on its own axis: the
  model's batch axis as the ``dynamic_batch`` analysis finds it (axis 0, a recurrent
  state's axis 1; none for scalars, stored once and fed to every run), or as declared
  with ``FEEDS.npz?axes=state:1,sr:none`` (``numpy.savez``: read on demand);
- ``X.npy`` (one-input models) or a folder of ``<input>.npy`` files (``?axes=`` too);
- a folder of images, with a preprocessing spec after ``?`` or in ``preprocess.json``
  (see :mod:`converter.calibration.images`);
- ``module:function``: a function (no arguments) returning an iterable of feed
  dicts; it is called again for each pass over the data. When the model's layout is
  known (``axes``), each dict is one run, fed exactly as yielded, and checked against
  the model it runs on (names, dtypes, ranks, static dims).

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
from converter.calibration.axes import Axes, axis_of, parse_axes_text, parse_options
from converter.calibration.images import ImageFolderSource
from converter.calibration.sources import CalibSource, Declared, Feeds, _dims_text, check_declared, declared_of, sha256_file, sha256_text, validate
from converter.errors import UsageError
from converter.feeds import concrete_shape

_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
NO_DATA = (
    "quantization needs calibration data: pass --calib-data FEEDS.npz (keys = input names, axis 0 = samples), "
    "a folder of images with a spec (DIR?resize=256,crop=224,...), or module:function; "
    "--calib-random allows seeded random data (rarely good scales)"
)


def check_run(feeds: Feeds, specs: Sequence[TensorSpec], axes: Axes, where: str) -> None:
    """One feed dict fed as it is: names, dtypes, ranks and static dims of the model it runs on; errors name the key."""
    wanted = {s.name: s for s in specs}
    missing = [n for n in wanted if n not in feeds]
    extra = [n for n in feeds if n not in wanted]
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected key {', '.join(extra)}"] if extra else [])
        raise UsageError(f"{where}: {'; '.join(parts)} (model inputs: {', '.join(wanted)})")
    for name, spec in wanted.items():
        value = feeds[name]
        if spec.dtype != "unknown" and value.dtype != np.dtype(spec.dtype):
            raise UsageError(f"{where}: key '{name}' has dtype {value.dtype}, the model wants {spec.dtype}")
        if (spec.shape or axis_of(axes, name) is None) and value.ndim != len(spec.shape):
            raise UsageError(f"{where}: key '{name}' has shape {list(value.shape)} ({value.ndim} dims), the model wants {_dims_text(spec.shape)} ({len(spec.shape)} dims)")
        for d, (w, g) in enumerate(zip(spec.shape, value.shape)):
            if isinstance(w, int) and w > 0 and w != g:
                raise UsageError(f"{where}: key '{name}' dim {d} is {g}, the model wants {w} (model shape {_dims_text(spec.shape)})")


class FunctionSource(CalibSource):
    """``module:function`` returning an iterable of feed dicts; every dict is checked as it arrives.

    With ``axes`` (the model's layout known), each dict is one run, fed exactly as yielded and
    checked against ``run_specs`` (the inputs of the model it runs on); without, the dicts hold
    samples on axis 0 and are cut into batches.
    """

    def __init__(self, target: str, specs: Sequence[TensorSpec], axes: Axes | None = None, run_specs: Sequence[TensorSpec] | None = None) -> None:
        self.target = target
        self.description = target
        self.specs = list(specs)
        self.axes = dict(axes or {})
        self.as_yielded = axes is not None
        self.run_specs = list(run_specs if run_specs is not None else specs)
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
            for index, item in enumerate(produced):
                if not isinstance(item, dict):
                    raise UsageError(f"--calib-data {self.target}: it yielded a {type(item).__name__}, not a dict of input name -> array")
                feeds = {str(k): np.asarray(v) for k, v in item.items()}
                where = f"--calib-data {self.target}"
                if self.as_yielded:
                    check_run(feeds, self.run_specs, self.axes, f"{where}: dict {index}")
                check_declared(declared_of(feeds, where, self.axes), self.specs, where, self.axes)
                yield feeds
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"--calib-data {self.target}: the function raised {type(exc).__name__}: {exc}") from exc

    def batches(self, size: int) -> Iterator[Feeds]:
        if self.as_yielded:
            yield from self._items()
            return
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

    def __init__(self, specs: Sequence[TensorSpec], samples: int, seed: int, axes: Axes | None = None) -> None:
        self.specs, self.samples, self.seed = list(specs), samples, seed
        self.axes = dict(axes or {})
        self.description = f"random (seed {seed}, {samples} samples)"
        for s in self.specs:
            dtype = np.dtype("float32" if s.dtype == "unknown" else s.dtype)
            if dtype.kind not in "fiub":
                raise UsageError(f"--calib-random: cannot make random data for input '{s.name}' of dtype {dtype}")

    def _shape(self, spec: TensorSpec, n: int) -> tuple[int, ...]:
        shape = list(concrete_shape(spec, {}, batch=1))
        axis = axis_of(self.axes, spec.name)
        if axis is not None and axis < len(shape):
            shape[axis] = n
        return tuple(shape)

    def _sample_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        axis = axis_of(self.axes, spec.name)
        shape = self._shape(spec, 1)
        return shape if axis is None else shape[:axis] + shape[axis + 1 :]

    def declared(self) -> dict[str, Declared]:
        return {s.name: Declared(np.dtype("float32" if s.dtype == "unknown" else s.dtype), self._sample_shape(s)) for s in self.specs}

    def sample_count(self) -> int:
        return self.samples

    def batches(self, size: int) -> Iterator[Feeds]:
        rng = np.random.default_rng(self.seed)
        declared = self.declared()
        once: Feeds = {}
        for start in range(0, self.samples, size):
            n = min(size, self.samples - start)
            feeds = {}
            for spec in self.specs:
                d = declared[spec.name]
                if axis_of(self.axes, spec.name) is None and spec.name in once:
                    feeds[spec.name] = once[spec.name]
                    continue
                shape = (n, *d.sample_shape) if axis_of(self.axes, spec.name) == 0 else self._shape(spec, n)
                feeds[spec.name] = (rng.standard_normal(shape) if d.dtype.kind == "f" else rng.integers(0, 2, size=shape)).astype(d.dtype)
                if axis_of(self.axes, spec.name) is None:
                    once[spec.name] = feeds[spec.name]
            yield feeds

    def fingerprint(self) -> str:
        return sha256_text("random", str(self.seed), str(self.samples))


def _npy_folder(folder: Path, names: list[str]) -> dict[str, Path] | None:
    files = {n: folder / f"{n}.npy" for n in names}
    return files if all(p.is_file() for p in files.values()) else None


def declared_axes(text: str | None, specs: Sequence[TensorSpec]) -> dict[str, int | None]:
    """The sample axes ``--calib-data FEEDS.npz?axes=state:1,sr:none`` declares (checked against the model's inputs)."""
    if not text or not _is_array_path(text, specs):
        return {}
    path_text, _, spec_text = text.partition("?")
    where = f"--calib-data {text}"
    options = parse_options(spec_text, ["axes"], where)
    axes = parse_axes_text(options.get("axes", []), where)
    names = {s.name: s for s in specs}
    for name, axis in axes.items():
        if name not in names:
            raise UsageError(f"{where}: axes names '{name}', not an input of the model (inputs: {', '.join(names)})")
        rank = len(names[name].shape)
        if axis is not None and rank and axis >= rank:
            raise UsageError(f"{where}: axes gives input '{name}' sample axis {axis}, but it has {rank} dims (model shape {_dims_text(names[name].shape)})")
    return axes


def _is_array_path(text: str, specs: Sequence[TensorSpec]) -> bool:
    """``.npz``/``.npy`` files and folders of ``<input>.npy`` (the sources ``?axes=`` applies to)."""
    path = Path(text.partition("?")[0]).expanduser()
    if path.is_file():
        return path.suffix.lower() in (".npz", ".npy")
    return path.is_dir() and _npy_folder(path, [s.name for s in specs]) is not None and (not text.partition("?")[2] or text.partition("?")[2].strip().startswith("axes="))


def _from_path(text: str, specs: Sequence[TensorSpec], axes: Axes) -> CalibSource | None:
    names = [s.name for s in specs]
    folder_text, _, spec_text = text.partition("?")
    path = Path(folder_text).expanduser()
    arrays = _is_array_path(text, specs)
    if (spec_text or path.is_dir()) and not arrays:
        if not path.is_dir():
            raise UsageError(f"--calib-data {text}: '{folder_text}' is not a folder of images")
        return ImageFolderSource(path, spec_text or None, names, {s.name: s.dtype for s in specs})
    if path.is_dir():
        return NpySource(_npy_folder(path, names) or {}, text, axes)
    if not path.is_file():
        return None
    if path.suffix.lower() == ".npz":
        return NpzSource(path, axes, text)
    if path.suffix.lower() == ".npy":
        if len(names) != 1:
            raise UsageError(f"--calib-data {path}: one .npy feeds a one-input model; this model has inputs {', '.join(names)} (use an .npz or a folder of <input>.npy)")
        return NpySource({names[0]: path}, text, axes)
    raise UsageError(f"--calib-data {path}: unknown kind of file (expected .npz, .npy, a folder of images, or module:function)")


def open_source(
    text: str | None,
    specs: Sequence[TensorSpec],
    *,
    allow_random: bool,
    samples: int,
    seed: int,
    log: logging.Logger,
    axes: Axes | None = None,
    run_specs: Sequence[TensorSpec] | None = None,
) -> CalibSource:
    """The source ``--calib-data`` names, checked against ``specs`` (the model inputs) before any work.

    ``axes``: each input's sample axis in the model (the ``dynamic_batch`` analysis; None for
    batch-free inputs); ``?axes=`` in ``text`` overrides it. With ``axes``, a ``module:function``
    source is run dict by dict as yielded, each dict checked against ``run_specs`` (the inputs of
    the model it runs on; default ``specs``). Without, every input holds its samples on axis 0.
    """
    layout = {**(axes or {}), **declared_axes(text, specs)}
    if not text:
        if not allow_random:
            raise UsageError(NO_DATA)
        log.warning("calibrating on seeded random data (--calib-random): scales from random inputs rarely fit real data")
        source: CalibSource = RandomSource(specs, samples, seed, layout)
    else:
        found = _from_path(text, specs, layout)
        if found is None:
            if not _FUNCTION.match(text):
                raise UsageError(f"--calib-data {text}: no such file or folder, and not module:function")
            found = FunctionSource(text, specs, layout if axes is not None else None, run_specs)
        source = found
    validate(source, specs)
    return source
