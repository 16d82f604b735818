"""A folder of images as calibration data, preprocessed by a small spec.

The spec is ``key=value`` pairs joined by commas, given after the folder with a
``?`` (``--calib-data 'photos/?resize=256,crop=224,mean=0.485|0.456|0.406,std=0.229|0.224|0.225'``)
or as a JSON object in ``preprocess.json`` inside the folder (the string wins
key by key). Keys, applied in this order:

``resize``   ``N``: scale the short side to N (aspect kept); ``WxH``: exactly W by H
``crop``     ``N`` or ``WxH``: centre crop
``order``    ``rgb`` (default), ``bgr`` or ``gray`` (one channel)
``scale``    multiply pixel values (0..255) by this; default ``1/255``
``mean``     subtract per channel (``a|b|c`` or one value), after ``scale``; default 0
``std``      divide per channel, after ``mean``; default 1
``layout``   ``nchw`` (default) or ``nhwc``
``interp``   ``bilinear`` (default), ``bicubic``, ``lanczos`` or ``nearest``
``input``    the model input the images feed (default: the model's only input)

Images are read in file-name order (png, jpg/jpeg, bmp, tif/tiff, webp, ppm)
and cast to the input's dtype. Pillow is needed (``pip install pillow``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.calibration.sources import CalibSource, Declared, Feeds, sha256_file, sha256_text
from converter.errors import UsageError, describe_exception

SPEC_FILE = "preprocess.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
_KEYS = ("resize", "crop", "order", "scale", "mean", "std", "layout", "interp", "input")


@dataclass(frozen=True)
class Preprocess:
    resize: tuple[int, ...] | None = None
    """(N,) short side, or (W, H)."""
    crop: tuple[int, int] | None = None
    """(W, H)."""
    order: str = "rgb"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "nchw"
    interp: str = "bilinear"
    input: str | None = None

    @property
    def channels(self) -> int:
        return 1 if self.order == "gray" else 3

    def sample_shape(self) -> tuple[int, ...] | None:
        size = self.crop or (self.resize if self.resize and len(self.resize) == 2 else None)
        if size is None:
            return None
        w, h = size
        return (self.channels, h, w) if self.layout == "nchw" else (h, w, self.channels)

    def text(self) -> str:
        return json.dumps({k: getattr(self, k) for k in _KEYS}, sort_keys=True)


def _size(value: Any, key: str) -> tuple[int, ...]:
    text = str(value).lower()
    try:
        dims = tuple(int(d) for d in text.split("x"))
    except ValueError:
        raise UsageError(f"image spec: {key}={value} must be N or WxH") from None
    if len(dims) not in (1, 2) or any(d <= 0 for d in dims):
        raise UsageError(f"image spec: {key}={value} must be N or WxH with positive sizes")
    return dims


def _floats(value: Any, key: str) -> tuple[float, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split("|")
    try:
        return tuple(float(v) for v in items)
    except ValueError:
        raise UsageError(f"image spec: {key}={value} must be numbers joined by '|'") from None


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    text = str(value).lower()
    if text not in choices:
        raise UsageError(f"image spec: {key}={value} is not one of {', '.join(choices)}")
    return text


def build_preprocess(raw: Mapping[str, Any]) -> Preprocess:
    unknown = [k for k in raw if k not in _KEYS]
    if unknown:
        raise UsageError(f"image spec: unknown key '{unknown[0]}'; keys: {', '.join(_KEYS)}")
    kw: dict[str, Any] = {}
    if "resize" in raw:
        kw["resize"] = _size(raw["resize"], "resize")
    if "crop" in raw:
        c = _size(raw["crop"], "crop")
        kw["crop"] = (c[0], c[0]) if len(c) == 1 else c
    if "order" in raw:
        kw["order"] = _choice(raw["order"], "order", ("rgb", "bgr", "gray"))
    if "layout" in raw:
        kw["layout"] = _choice(raw["layout"], "layout", ("nchw", "nhwc"))
    if "interp" in raw:
        kw["interp"] = _choice(raw["interp"], "interp", ("bilinear", "bicubic", "lanczos", "nearest"))
    if "scale" in raw:
        kw["scale"] = _floats(raw["scale"], "scale")[0]
    for key in ("mean", "std"):
        if key in raw:
            kw[key] = _floats(raw[key], key)
    if "input" in raw:
        kw["input"] = str(raw["input"])
    spec = Preprocess(**kw)
    for key in ("mean", "std"):
        if len(getattr(spec, key)) not in (1, spec.channels):
            raise UsageError(f"image spec: {key} needs 1 or {spec.channels} values for order={spec.order}")
    if any(s == 0 for s in spec.std):
        raise UsageError("image spec: std values must not be 0")
    return spec


def parse_spec_text(text: str) -> dict[str, str]:
    raw: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise UsageError(f"image spec: '{item}' must be key=value (e.g. resize=256,crop=224)")
        key, value = item.split("=", 1)
        raw[key.strip().lower()] = value.strip()
    return raw


def _read_spec_file(folder: Path) -> dict[str, Any]:
    path = folder / SPEC_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: must hold a JSON object of preprocessing keys")
    return data


def _open_image(path: Path, mode: str) -> Any:
    """The decoded image; a corrupt, truncated or non-image file, or a decompression bomb, is exit 2 naming it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UsageError(f"--calib-data {path}: refused as a decompression bomb ({describe_exception(exc, 120)})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UsageError(f"--calib-data {path}: not a readable image ({describe_exception(exc, 120)})") from exc


def preprocess_image(path: Path, spec: Preprocess, dtype: np.dtype) -> np.ndarray:
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "nearest": Image.NEAREST}[spec.interp]
    img = _open_image(path, "L" if spec.order == "gray" else "RGB")
    if spec.resize is not None:
        if len(spec.resize) == 2:
            size = spec.resize
        else:
            f = spec.resize[0] / min(img.size)
            size = (max(1, round(img.width * f)), max(1, round(img.height * f)))
        img = img.resize(size, resample)
    if spec.crop is not None:
        w, h = spec.crop
        if w > img.width or h > img.height:
            raise UsageError(f"{path}: crop {w}x{h} is larger than the resized image {img.width}x{img.height}; set resize")
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    arr = np.asarray(img, dtype=np.float32).reshape(img.height, img.width, -1)
    if spec.order == "bgr":
        arr = arr[..., ::-1]
    arr = (arr * np.float32(spec.scale) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "nchw":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr).astype(dtype, copy=False)


class ImageFolderSource(CalibSource):
    read_first = True
    def __init__(self, folder: Path, spec_text: str | None, input_names: list[str], input_dtypes: Mapping[str, str]) -> None:
        raw = {**_read_spec_file(folder), **parse_spec_text(spec_text or "")}
        self.spec = build_preprocess(raw)
        self.folder = folder
        self.description = f"{folder}" + (f"?{spec_text}" if spec_text else "")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise UsageError(f"--calib-data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        if self.spec.input is None and len(input_names) != 1:
            raise UsageError(f"--calib-data {folder}: the model has inputs {', '.join(input_names)}; name the one the images feed with input=NAME")
        self.input = self.spec.input or input_names[0]
        dtype = input_dtypes.get(self.input, "float32")
        self.dtype = np.dtype("float32" if dtype == "unknown" else dtype)

    def sample_count(self) -> int:
        return len(self.files)

    def declared(self) -> dict[str, Declared] | None:
        shape = self.spec.sample_shape()
        return None if shape is None else {self.input: Declared(self.dtype, shape)}

    def batches(self, size: int) -> Iterator[Feeds]:
        for start in range(0, len(self.files), size):
            arrays = [preprocess_image(p, self.spec, self.dtype) for p in self.files[start : start + size]]
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                raise UsageError(f"--calib-data {self.folder}: images give different shapes {sorted(shapes)}; set crop (or resize=WxH)")
            yield {self.input: np.stack(arrays)}

    def fingerprint(self) -> str:
        return sha256_text("images", self.spec.text(), *(f"{p.name}={sha256_file(p)}" for p in self.files))
