"""Calibration data held in numpy files: ``.npz`` (keys = input names) and ``.npy``.

Nothing is read whole when it need not be: members of an uncompressed ``.npz``
(what ``numpy.savez`` writes) and ``.npy`` files are memory-mapped, so a batch
reads only its samples; members of a compressed ``.npz`` (``savez_compressed``)
cannot be sliced on disk and are read array by array, one per input.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from converter.calibration.sources import CalibSource, Declared, Feeds, sha256_file, sha256_text
from converter.errors import UsageError

_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header (30 bytes)


def _npy_header(fh: object) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def _member_memmap(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """Map a stored (uncompressed) ``.npy`` member of a zip file without reading it."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
        if fields[0] != b"PK\x03\x04":
            raise ValueError(f"bad zip local header for {info.filename}")
        fh.seek(fields[-2] + fields[-1], 1)  # name and extra field
        shape, fortran, dtype = _npy_header(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class NpzSource(CalibSource):
    """An ``.npz`` whose keys are the model's input names and whose axis 0 is the samples."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)
        self._counts: dict[str, int] = {}
        try:
            with zipfile.ZipFile(path) as zf:
                self._members = {i.filename[: -len(".npy")]: i for i in zf.infolist() if i.filename.endswith(".npy")}
                self._declared = {k: self._declare(zf, i) for k, i in self._members.items()}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UsageError(f"--calib-data {path}: not a readable .npz ({exc}); save samples with numpy.savez(path, input_name=array)") from exc
        if not self._members:
            raise UsageError(f"--calib-data {path}: the .npz holds no arrays")
        counts = {k: self._counts[k] for k in self._members}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{k}: {n}" for k, n in counts.items())
            raise UsageError(f"--calib-data {path}: inputs hold different numbers of samples along axis 0 ({listed})")

    def _declare(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Declared:
        with zf.open(info) as fh:
            shape, _, dtype = _npy_header(fh)
        if not shape:
            raise UsageError(f"--calib-data {self.path}: '{info.filename}' is a scalar; axis 0 must hold the samples")
        self._counts[info.filename[: -len(".npy")]] = int(shape[0])
        return Declared(dtype, tuple(int(d) for d in shape[1:]))

    def declared(self) -> dict[str, Declared]:
        return dict(self._declared)

    def sample_count(self) -> int:
        return next(iter(self._counts.values()))

    def _arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, info in self._members.items():
            if info.compress_type == zipfile.ZIP_STORED:
                yield name, _member_memmap(self.path, info)
            else:
                with np.load(self.path, allow_pickle=False) as data:
                    yield name, data[name]

    def batches(self, size: int) -> Iterator[Feeds]:
        arrays = dict(self._arrays())
        for start in range(0, self.sample_count(), size):
            yield {k: np.array(a[start : start + size]) for k, a in arrays.items()}

    def fingerprint(self) -> str:
        return sha256_text("npz", sha256_file(self.path))


class NpySource(CalibSource):
    """One memory-mapped ``.npy`` per input: a file for a one-input model, or ``DIR/<input>.npy``."""

    def __init__(self, files: dict[str, Path], description: str) -> None:
        self.files = files
        self.description = description
        try:
            self._arrays = {k: np.load(p, mmap_mode="r", allow_pickle=False) for k, p in files.items()}
        except (OSError, ValueError) as exc:
            raise UsageError(f"--calib-data {description}: not a readable .npy ({exc})") from exc
        counts = {k: (a.shape[0] if a.ndim else -1) for k, a in self._arrays.items()}
        if any(n < 0 for n in counts.values()):
            raise UsageError(f"--calib-data {description}: a scalar array; axis 0 must hold the samples")
        if len(set(counts.values())) > 1:
            raise UsageError(f"--calib-data {description}: inputs hold different numbers of samples ({counts})")
        self._count = next(iter(counts.values()))

    def declared(self) -> dict[str, Declared]:
        return {k: Declared(a.dtype, tuple(a.shape[1:])) for k, a in self._arrays.items()}

    def sample_count(self) -> int:
        return self._count

    def batches(self, size: int) -> Iterator[Feeds]:
        for start in range(0, self._count, size):
            yield {k: np.array(a[start : start + size]) for k, a in self._arrays.items()}

    def fingerprint(self) -> str:
        return sha256_text("npy", *(f"{k}={sha256_file(p)}" for k, p in sorted(self.files.items())))
