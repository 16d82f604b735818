"""Calibration: streamed statistics, calibrators against independent references, data sources, cache."""

from __future__ import annotations

import json
import logging
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from converter.backend_api import TensorSpec
from converter.calibration.arrays import NpySource, NpzSource, OnDisk
from converter.calibration.batching import rebatch
from converter.calibration.cache import (
    CalibrationCache,
    TensorRange,
    export_tensorrt,
    import_tensorrt,
    load_cache,
    load_json,
    save_json,
    to_tensorrt_text,
    trt_version_tag,
)
from converter.calibration.calibrators import Calibrator, entropy_amax, entropy_divergences, mse_amax, percentile_amax
from converter.calibration.collector import Collector
from converter.calibration.data import NO_DATA, open_source
from converter.calibration.stats import TensorStats
from converter.errors import UsageError
from tests.conftest import ROOT, parse

LOG = logging.getLogger("test.calibration")

SMALL = """
<ir_version: 8, opset_import: ["" : 17]>
small (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) <float[4, 3, 3, 3] w = {%s}> {
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    y = Relu(c)
}
"""


def small_model() -> onnx.ModelProto:
    w = np.random.default_rng(3).standard_normal(4 * 3 * 3 * 3).round(3)
    return parse(SMALL % ", ".join(map(str, w)))


X_SPEC = [TensorSpec("x", "float32", ("N", 3, 8, 8))]


def stats_of(values: np.ndarray, batches: int = 8) -> TensorStats:
    s = TensorStats("t")
    for part in np.array_split(values.astype(np.float32), batches):
        s.update(part)
    return s


# ---------------------------------------------------------------- streaming state


def test_histogram_state_does_not_grow_with_samples(tmp_path: Path) -> None:
    model = small_model()
    rng = np.random.default_rng(0)
    sizes = {}
    for n in (8, 256):
        path = tmp_path / f"cal{n}.npz"
        np.savez(path, x=rng.standard_normal((n, 3, 8, 8)).astype(np.float32))
        collector = Collector(model, ["x", "c", "y"], batch_size=8, log=LOG)
        result = collector.run(NpzSource(path))
        assert result.samples == n
        assert result.stats["c"].count == n * 4 * 8 * 8
        sizes[n] = {t: (s.hist.shape, s.state_bytes()) for t, s in result.stats.items()}
    assert sizes[8] == sizes[256]
    assert all(shape == (2048,) for shape, _ in sizes[8].values())


def test_histogram_growth_rebins_exactly() -> None:
    rng = np.random.default_rng(1)
    first = rng.uniform(-1.0, 1.0, 50_000).astype(np.float32)
    later = rng.uniform(-3.5, 3.5, 50_000).astype(np.float32)
    s = TensorStats("t")
    s.update(first)
    limit0 = s.limit
    s.update(later)
    assert s.limit == pytest.approx(4 * limit0)  # doubled twice to cover 3.5
    assert s.hist.size == 2048 and s.hist.sum() == 100_000
    expected, _ = np.histogram(np.abs(np.concatenate([first, later])).astype(np.float64), bins=2048, range=(0.0, s.limit))
    # Merging bins is exact; binning in float32 may put a value lying within rounding of an edge in the
    # neighbour bin (and the first batch's max sits in its last bin, right edge closed).
    moved = np.abs(s.hist - expected).sum() / 2
    assert moved <= 1e-4 * 100_000
    assert np.array_equal(np.flatnonzero(s.hist), np.flatnonzero(expected))


def test_nan_in_calibration_is_an_error_and_inf_is_left_out() -> None:
    s = TensorStats("t")
    with pytest.raises(ValueError, match="tensor 't' holds NaN"):
        s.update(np.array([1.0, np.nan], dtype=np.float32))
    masked = TensorStats("m")
    masked.update(np.array([-np.inf, -3.0, 2.0, -np.inf], dtype=np.float32))  # an attention mask's fill
    assert (masked.min, masked.max, masked.infinite, masked.count) == (-3.0, 2.0, 2, 2)


# ---------------------------------------------------------------- calibrators


def _reference_kl(hist: np.ndarray, i: int, levels: int) -> float:
    """TensorRT's divergence for candidate i, written as the GTC 2017 slides describe it (loops, no tricks)."""
    p = hist[:i].astype(np.float64).copy()
    p[i - 1] += hist[i:].sum()
    q = np.zeros(i)
    for j in range(levels):
        a, b = j * i // levels, (j + 1) * i // levels
        chunk = hist[a:b].astype(np.float64)
        nonzero = chunk > 0
        if nonzero.any():
            q[a:b][nonzero] = chunk.sum() / nonzero.sum()
    p, q = p / p.sum(), q / q.sum()
    if np.any((p > 0) & (q == 0)):
        return np.inf
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def test_entropy_divergence_matches_the_reference_algorithm() -> None:
    rng = np.random.default_rng(2)
    hist = np.histogram(np.abs(rng.standard_t(3, 20_000)), bins=300)[0]
    candidates = np.arange(16, 301)
    ours = entropy_divergences(hist, candidates, levels=16)
    ref = np.array([_reference_kl(hist, int(i), 16) for i in candidates])
    finite = np.isfinite(ref)
    assert np.array_equal(finite, np.isfinite(ours))
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-9, atol=1e-12)


def test_entropy_picks_a_threshold_below_the_max_on_a_long_tail() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, size=400_000)  # Student's t, 3 degrees of freedom: a long tail
    s = stats_of(x)
    amax = entropy_amax(s)
    assert amax < 0.5 * s.amax  # clips the long tail...
    assert amax > np.percentile(np.abs(x), 99.5)  # ...but keeps the bulk


def test_ort_entropy_with_defaults_returns_the_max(tmp_path: Path) -> None:
    """ONNX Runtime's Entropy calibration (defaults: 128 bins, 128 quantized bins) gives minmax's range."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    model = parse('<ir_version: 8, opset_import: ["" : 17]> m (float[N, 1000] x) => (float[N, 1000] y) { y = Relu(x) }')
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(4).standard_t(3, size=(40, 1000)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": x[i : i + 8]} for i in range(0, 40, 8)])

        def get_next(self):  # noqa: ANN201
            return next(self.items, None)

    cal = create_calibrator(str(path), ["Relu"], augmented_model_path=str(tmp_path / "aug.onnx"), calibrate_method=CalibrationMethod.Entropy)
    cal.collect_data(Reader())
    ort_range = cal.compute_data()["y"].range_value
    relu = np.maximum(x, 0)
    assert float(ort_range[1]) == pytest.approx(float(relu.max()), rel=1e-6)
    ours = entropy_amax(stats_of(relu))
    assert ours < 0.5 * float(relu.max())


def test_minmax_is_the_largest_magnitude() -> None:
    x = np.random.default_rng(5).normal(0.3, 2.0, 100_000)
    assert Calibrator("minmax").amax(stats_of(x)) == pytest.approx(float(np.abs(x).max()), rel=1e-6)


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_matches_numpy(p: float) -> None:
    x = np.random.default_rng(6).uniform(-1.0, 1.0, 400_000)
    s = stats_of(x)
    expected = float(np.percentile(np.abs(x), p))
    assert abs(percentile_amax(s, p) - expected) <= 2 * s.bin_width


def _direct_quant_mse(x: np.ndarray, t: float) -> float:
    step = t / 127.0
    q = np.clip(np.round(x / step), -127, 127) * step
    return float(np.mean((x - q) ** 2))


@pytest.mark.parametrize("dist", ["laplace", "normal"])
def test_mse_matches_a_direct_search_on_the_samples(dist: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.laplace(size=200_000) if dist == "laplace" else rng.standard_normal(200_000)
    s = stats_of(x)
    amax = mse_amax(s)
    grid = np.linspace(0.2, 1.0, 161) * np.abs(x).max()
    best = grid[int(np.argmin([_direct_quant_mse(x, t) for t in grid]))]
    assert amax == pytest.approx(best, rel=0.05)
    assert _direct_quant_mse(x, amax) <= 1.02 * _direct_quant_mse(x, best)


def test_calibrator_options_are_checked() -> None:
    with pytest.raises(ValueError, match="not one of"):
        Calibrator("kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percentile"):
        Calibrator("percentile", 0.0)


# ---------------------------------------------------------------- data sources


def test_npz_members_are_read_row_range_by_row_range(tmp_path: Path) -> None:
    x = np.random.default_rng(8).standard_normal((10, 3, 8, 8)).astype(np.float32)
    plain, packed, fortran = tmp_path / "plain.npz", tmp_path / "packed.npz", tmp_path / "fortran.npz"
    np.savez(plain, x=x)
    np.savez_compressed(packed, x=x)
    np.savez(fortran, x=np.asfortranarray(x))
    assert isinstance(NpzSource(plain).arrays()["x"], OnDisk)  # located on disk, not loaded
    assert isinstance(NpzSource(packed).arrays()["x"], np.ndarray)  # compressed: read whole, per input
    for path in (plain, packed, fortran):
        got = np.concatenate([b["x"] for b in NpzSource(path).batches(4)])
        np.testing.assert_array_equal(got, x)
    with zipfile.ZipFile(packed) as zf:
        assert zf.getinfo("x.npy").compress_type == zipfile.ZIP_DEFLATED


def test_npy_is_read_row_range_by_row_range(tmp_path: Path) -> None:
    x = np.random.default_rng(9).standard_normal((6, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    src = open_source(str(tmp_path / "x.npy"), X_SPEC, allow_random=False, samples=8, seed=0, log=LOG)
    assert isinstance(src, NpySource) and isinstance(src.arrays()["x"], OnDisk)
    np.testing.assert_array_equal(src.arrays()["x"].rows(2, 5), x[2:5])
    folder = open_source(str(tmp_path), X_SPEC, allow_random=False, samples=8, seed=0, log=LOG)  # DIR/<input>.npy
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in folder.batches(4)]), x)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"image": np.zeros((4, 3, 8, 8), np.float32)}, "missing x; unexpected image"),
        ({"x": np.zeros((4, 3, 8, 8), np.float64)}, "dtype float64, the model wants float32"),
        ({"x": np.zeros((4, 3, 8, 9), np.float32)}, "dim 3 is 9, the model wants 8"),
        ({"x": np.zeros((4, 8, 8), np.float32)}, "samples of shape"),
    ],
)
def test_npz_mismatches_are_one_line_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match=message) as err:
        open_source(str(path), X_SPEC, allow_random=False, samples=8, seed=0, log=LOG)
    assert "\n" not in str(err.value)


def test_unknown_source_and_missing_data(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or folder"):
        open_source(str(tmp_path / "nope.npz"), X_SPEC, allow_random=False, samples=8, seed=0, log=LOG)
    with pytest.raises(UsageError, match="--calib-data") as err:
        open_source(None, X_SPEC, allow_random=False, samples=8, seed=0, log=LOG)
    assert str(err.value) == NO_DATA


def test_random_data_only_when_allowed_and_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        src = open_source(None, X_SPEC, allow_random=True, samples=5, seed=1, log=LOG)
    assert "random" in caplog.text
    a = np.concatenate([b["x"] for b in src.batches(2)])
    b = np.concatenate([b["x"] for b in src.batches(3)])
    assert a.shape == (5, 3, 8, 8)
    np.testing.assert_array_equal(a[:2], b[:2])  # seeded


def _photo_dir() -> Path:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from photos import photo_path
    finally:
        sys.path.pop(0)
    return photo_path("page").parent


def test_image_folder_matches_the_reference_preprocessing(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from photos import load_rgb, orientation_input
    finally:
        sys.path.pop(0)
    for name in ("astronaut", "coffee"):
        Image.fromarray(load_rgb(name)).save(tmp_path / f"{name}.png")
    spec = "resize=256,crop=224,order=bgr,mean=0.485|0.456|0.406,std=0.229|0.224|0.225,interp=lanczos"
    specs = [TensorSpec("x", "float32", ("N", 3, 224, 224))]
    src = open_source(f"{tmp_path}?{spec}", specs, allow_random=False, samples=8, seed=0, log=LOG)
    got = next(iter(src.batches(2)))["x"]
    ref = np.concatenate([orientation_input(load_rgb(n)) for n in ("astronaut", "coffee")])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    (tmp_path / "preprocess.json").write_text(json.dumps({"resize": 256, "crop": 224, "order": "bgr", "interp": "lanczos", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    from_file = open_source(str(tmp_path), specs, allow_random=False, samples=8, seed=0, log=LOG)
    np.testing.assert_allclose(next(iter(from_file.batches(2)))["x"], ref, atol=1e-5)


def test_image_spec_errors_come_before_any_work(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "a.png")
    specs = [TensorSpec("x", "float32", ("N", 3, 224, 224))]
    with pytest.raises(UsageError, match="dim 2 is 200, the model wants 224"):
        open_source(f"{tmp_path}?crop=200", specs, allow_random=False, samples=8, seed=0, log=LOG)
    with pytest.raises(UsageError, match="unknown key 'size'"):
        open_source(f"{tmp_path}?size=3", specs, allow_random=False, samples=8, seed=0, log=LOG)
    with pytest.raises(UsageError, match="crop 224x224 is larger"):
        open_source(f"{tmp_path}?crop=224", specs, allow_random=False, samples=8, seed=0, log=LOG)


def test_module_function_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "calib_feeds_mod.py").write_text(
        "import numpy as np\n"
        "def good():\n"
        "    rng = np.random.default_rng(0)\n"
        "    for _ in range(3):\n"
        "        yield {'x': rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}\n"
        "def bad():\n"
        "    yield {'x': np.zeros((2, 3, 8, 8), np.float64)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    src = open_source("calib_feeds_mod:good", X_SPEC, allow_random=False, samples=8, seed=0, log=LOG)
    batches = list(rebatch(src, 4))
    assert [len(b["x"]) for b in batches] == [4, 2]
    with pytest.raises(UsageError, match="dtype float64"):
        open_source("calib_feeds_mod:bad", X_SPEC, allow_random=False, samples=8, seed=0, log=LOG)
    with pytest.raises(UsageError, match="has no function 'nope'"):
        open_source("calib_feeds_mod:nope", X_SPEC, allow_random=False, samples=8, seed=0, log=LOG)


def test_rebatch_cuts_joins_limits_and_drops(tmp_path: Path) -> None:
    x = np.arange(11 * 3 * 8 * 8, dtype=np.float32).reshape(11, 3, 8, 8)
    np.savez(tmp_path / "a.npz", x=x)
    src = NpzSource(tmp_path / "a.npz")
    sizes = [len(b["x"]) for b in rebatch(src, 4)]
    assert sizes == [4, 4, 3]
    assert [len(b["x"]) for b in rebatch(src, 4, limit=6)] == [4, 2]
    assert [len(b["x"]) for b in rebatch(src, 4, exact=True)] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in rebatch(src, 3)]), x)


def test_collector_chunks_tensors_under_a_memory_budget(tmp_path: Path) -> None:
    model = small_model()
    np.savez(tmp_path / "a.npz", x=np.random.default_rng(10).standard_normal((12, 3, 8, 8)).astype(np.float32))
    one = Collector(model, ["c", "y"], batch_size=4).run(NpzSource(tmp_path / "a.npz"))
    split = Collector(model, ["c", "y"], batch_size=4, budget_mib=4 * 4 * 8 * 8 * 4 / 2**20).run(NpzSource(tmp_path / "a.npz"))
    assert (one.chunks, split.chunks) == (1, 2)
    for t in ("c", "y"):
        np.testing.assert_array_equal(one.stats[t].hist, split.stats[t].hist)
        assert one.stats[t].max == split.stats[t].max


# ---------------------------------------------------------------- cache


def test_json_cache_roundtrip(tmp_path: Path) -> None:
    cache = CalibrationCache("entropy", {"x": TensorRange(2.5, -1.0, 2.5), "y": TensorRange(0.75, 0.0, 3.0)}, "m" * 64, "d" * 64, 24)
    save_json(cache, tmp_path / "c.json")
    back = load_json(tmp_path / "c.json")
    assert back.tensors == cache.tensors and back.samples == 24
    assert back.mismatch("entropy", "m" * 64, "d" * 64) is None
    assert "calibrator entropy, not mse" in str(back.mismatch("mse", "m" * 64, "d" * 64))
    assert "model changed" in str(back.mismatch("entropy", "x" * 64, "d" * 64))
    assert "data" in str(back.mismatch("entropy", "m" * 64, "x" * 64))


def test_tensorrt_cache_text_format(tmp_path: Path) -> None:
    # IEEE-754 float32 1.0 is 0x3f800000: amax 127 -> scale 1.0
    text = to_tensorrt_text({"input": 127.0, "conv/out": 0.5}, trt_version_tag("8.6.1"))
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert lines[1] == "input: 3f800000"
    assert lines[2] == "conv/out: " + struct.pack(">f", 0.5 / 127).hex()
    assert trt_version_tag("10.3.0") == "100300"
    cache = CalibrationCache("entropy", {"input": TensorRange(127.0), "a:b": TensorRange(3.25)})
    export_tensorrt(cache, tmp_path / "calib.cache", "100300")
    back = load_cache(tmp_path / "calib.cache")
    assert back.origin == "tensorrt" and back.header == "TRT-100300-EntropyCalibration2"
    assert back.tensors["input"].amax == pytest.approx(127.0)
    assert back.tensors["a:b"].amax == pytest.approx(3.25, rel=1e-6)  # names may hold colons


def test_tensorrt_cache_errors(tmp_path: Path) -> None:
    (tmp_path / "a.cache").write_text("TRT-8601-EntropyCalibration2\nx: zz\n")
    with pytest.raises(UsageError, match="line 2"):
        import_tensorrt(tmp_path / "a.cache")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(UsageError, match="not a converter-calibration-cache"):
        load_cache(tmp_path / "b.json")
