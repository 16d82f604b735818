"""Sharded calibration (``--ray``): histograms that merge exactly, shards on a local Ray cluster, the same scales as one process.

One local Ray cluster (2 CPUs) serves the whole module: started by the fixture, stopped at the end.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.calibration.arrays import NpzSource
from converter.calibration.calibrators import Calibrator
from converter.calibration.images import ImageFolderSource
from converter.calibration.ray_runner import collect_sharded, import_ray
from converter.calibration.shards import CollectorSettings, ShardSource, check_shardable, collect_local, plan_shards
from converter.calibration.stats import TensorStats, merge_stats
from converter.errors import EXIT_BACKEND_UNAVAILABLE, BackendUnavailable, UsageError
from tests.conftest import Cli

LOG = logging.getLogger("test.calibration.shards")
CALIBRATORS = [Calibrator("minmax"), Calibrator("percentile", 99.0), Calibrator("percentile", 99.99), Calibrator("entropy"), Calibrator("mse")]


def same(a: TensorStats, b: TensorStats) -> bool:
    return (a.limit, a.count, a.min, a.max, a.infinite, a.at_limit) == (b.limit, b.count, b.min, b.max, b.infinite, b.at_limit) and np.array_equal(a.hist, b.hist)


def stats_over(parts: list[np.ndarray], histogram: bool = True) -> TensorStats:
    s = TensorStats("t", histogram=histogram)
    for p in parts:
        s.update(p)
    return s


# ---------------------------------------------------------------- histograms: any order, any split


def _cases(rng: np.random.Generator) -> list[np.ndarray]:
    f32 = np.finfo(np.float32)
    cases = [(rng.standard_normal(4000) * scale).astype(np.float32) for scale in (1e-3, 1.0, 300.0, 1e30)]
    cases += [
        np.zeros(500, np.float32),  # max |x| == 0: limit stays 0, everything in bin 0
        -np.abs(rng.standard_normal(3000)).astype(np.float32),  # negative only
        np.concatenate([np.zeros(200), rng.uniform(-1, 1, 2000), [1.0, -1.0, 0.5, 2.0, -2.0]]).astype(np.float32),  # values exactly at powers of two
        np.concatenate([rng.standard_normal(2000), [np.inf, -np.inf] * 20]).astype(np.float32),  # ±inf left out
        (np.arange(1, 400) * f32.smallest_subnormal).astype(np.float32),  # subnormal only: the float32 factor would overflow
        np.array([f32.max, -f32.max, 1.0, -3.5, 0.0] * 50, np.float32),  # the largest float32: limit 2**128
        rng.standard_t(2, 5000).astype(np.float16),
        rng.standard_normal(3000) * 1e200,  # float64 beyond float32
        rng.integers(-1000, 1000, 3000),
    ]
    return cases


def _reference(x: np.ndarray, bins: int = 2048) -> tuple[float, np.ndarray]:
    """The histogram at the canonical limit, computed directly in float64 (exact for these ranges)."""
    a = np.abs(x[np.isfinite(x)].astype(np.float64))
    amax = float(a.max()) if a.size else 0.0
    if amax == 0.0:
        return 0.0, np.bincount(np.zeros(a.size, int), minlength=bins)
    mantissa, e = math.frexp(amax)
    e -= mantissa == 0.5
    t = np.minimum(np.floor(a * math.ldexp(1.0, int(math.log2(bins)) - e)), bins - 1)
    return math.ldexp(1.0, e), np.bincount(t.astype(int), minlength=bins)


def test_histograms_are_the_same_whatever_the_order_or_the_split() -> None:
    rng = np.random.default_rng(0)
    for x in _cases(rng):
        limit, hist = _reference(x)
        whole = stats_over([x])
        assert whole.limit == limit and np.array_equal(whole.hist, hist), x.dtype
        for _ in range(12):
            y = x[rng.permutation(x.size)]
            cuts = np.unique(rng.integers(1, y.size, size=rng.integers(0, 9)))
            streamed = stats_over(np.split(y, cuts))
            shards = [{"t": stats_over(np.array_split(part, 3))} for part in np.split(y, np.unique(rng.integers(1, y.size, size=4)))]
            merged = merge_stats(shards[::-1])["t"]  # any order of the shards
            assert same(streamed, whole) and same(merged, whole), (x.dtype, float(np.abs(x[np.isfinite(x)]).max(initial=0)))
            assert same(merge_stats([{"t": stats_over(np.split(y, cuts), histogram=False)}])["t"], stats_over([x], histogram=False))


def test_values_at_the_limit_move_to_the_middle_bin_when_it_doubles() -> None:
    first = stats_over([np.array([1.0, 0.25], np.float32)])  # 1.0 == limit: the last bin, closed on the right
    second = stats_over([np.array([3.0], np.float32)])
    merged = merge_stats([{"t": first}, {"t": second}])["t"]
    direct = stats_over([np.array([1.0, 0.25, 3.0], np.float32)])
    assert first.limit == 1.0 and first.hist[-1] == 1 and first.at_limit == 1
    assert same(merged, direct) and direct.limit == 4.0 and direct.hist[512] == 1 and direct.at_limit == 0
    assert stats_over([np.array([2.0, 1.0], np.float32)]).at_limit == 1  # only values at the final limit stay counted there
    merged.merge(TensorStats("t"))  # merging nothing changes nothing
    assert same(merged, direct)


def test_merge_refuses_different_binnings() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        TensorStats("t").merge(TensorStats("t", bins=1024))
    with pytest.raises(ValueError, match="power of two"):
        TensorStats("t", bins=1000)


# ---------------------------------------------------------------- shards of real sources


def conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 8, 3, 3)) * 0.2).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Sigmoid", ["c2"], ["s"]),
        helper.make_node("Add", ["c2", "s"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 12, 12])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 seeded samples whose scale grows along the file: every shard sees a different max, so merging re-bins."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 3, 12, 12)) * 2.0 ** (np.arange(64) / 12)[:, None, None, None]
    path = tmp_path_factory.mktemp("shards") / "feeds.npz"
    np.savez(path, x=x.astype(np.float32))
    return path


TENSORS = ("x", "c1", "r1", "c2", "y")


def test_shards_start_on_batch_boundaries() -> None:
    assert plan_shards(64, 5, 2) == [(0, 35), (35, 64)]
    assert plan_shards(10, 8, 4) == [(0, 8), (8, 10)]  # no more shards than batches
    assert plan_shards(3, 8, 4) == [(0, 3)]
    assert all(a % 5 == 0 for a, _ in plan_shards(1000, 5, 7)) and plan_shards(1000, 5, 7)[-1][1] == 1000


@pytest.mark.parametrize("exact", [False, True])
def test_any_number_of_shards_gives_the_single_process_statistics(feeds: Path, exact: bool) -> None:
    model, source = conv_model(), NpzSource(feeds)
    settings = CollectorSettings(TENSORS, batch_size=5, exact_batch=exact)
    single = settings.collector(model, LOG).run(source)
    for workers in (1, 2, 3, 13):
        shards = plan_shards(64, 5, workers)
        results = collect_local(model, settings, source, shards)
        merged = merge_stats(r.stats for r in results)
        assert sum(r.samples for r in results) == single.samples and sum(r.batches for r in results) == single.batches
        assert all(same(merged[t], single.stats[t]) for t in TENSORS), workers
    assert len({r.stats["c2"].limit for r in results}) > 1  # the shards' histograms had different limits: merging re-binned them


def test_image_folders_and_random_data_are_read_from_a_sample_on(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    images = ImageFolderSource(tmp_path, None, ["x"], {"x": "float32"})
    whole = np.concatenate([f["x"] for f in images.batches(3)])
    part = np.concatenate([f["x"] for f in ShardSource(images, 3, 7).batches(3)])
    assert np.array_equal(part, whole[3:7])
    from converter.backend_api import TensorSpec
    from converter.calibration.data import RandomSource

    random = RandomSource([TensorSpec("x", "float32", ("N", 3, 4, 4))], 20, seed=5)
    whole = np.concatenate([f["x"] for f in random.batches(4)])
    assert np.array_equal(np.concatenate([f["x"] for f in ShardSource(random, 8, 20).batches(4)]), whole[8:])


def test_a_generator_cannot_be_sharded(tmp_path: Path) -> None:
    from converter.backend_api import TensorSpec
    from converter.calibration.data import FunctionSource

    (tmp_path / "gen_feeds.py").write_text("def gen():\n    return []\n")
    sys.path.insert(0, str(tmp_path))
    try:
        source = FunctionSource("gen_feeds:gen", [TensorSpec("x", "float32", ("N", 3))])
    finally:
        sys.path.remove(str(tmp_path))
    with pytest.raises(UsageError, match=r"^--ray: --calib-data gen_feeds:gen cannot be split into shards .*\.npz") as info:
        check_shardable(source)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- on a local Ray cluster


def test_ray_shards_give_every_calibrator_the_single_process_amax(ray_cluster, feeds: Path) -> None:
    model, source = conv_model(), NpzSource(feeds)
    for histogram in (True, False):
        settings = CollectorSettings(TENSORS, histogram=histogram, extremes_only=("y",) if histogram else (), batch_size=5)
        single = settings.collector(model, LOG).run(source, limit=61)
        sharded, facts = collect_sharded(model, settings, source, limit=61, address="auto", log=LOG)
        assert facts["ray_shards"] == 2 and facts["ray_cpus"] == 2
        assert (sharded.samples, sharded.batches) == (single.samples, single.batches) == (61, 13)
        for t in TENSORS:
            assert same(sharded.stats[t], single.stats[t]), t
            if sharded.stats[t].histogram:
                assert [c.amax(sharded.stats[t]) for c in CALIBRATORS] == [c.amax(single.stats[t]) for c in CALIBRATORS], t


def test_a_worker_error_is_the_users_one_line(ray_cluster, tmp_path: Path) -> None:
    x = np.ones((20, 3, 12, 12), np.float32)
    x[13, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    with pytest.raises(UsageError, match=r"\[samples 10:20\]: input 'x' holds NaN in sample 3; .* \(sample 0 of this shard is sample 10 of the data\)"):
        collect_sharded(conv_model(), CollectorSettings(TENSORS, batch_size=5), NpzSource(tmp_path / "nan.npz"), limit=None, address="auto", log=LOG)


def _scales(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    scales = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in scales}


def test_cli_ray_gives_the_same_scales_as_one_process(ray_cluster, cli: Cli, rapid_model: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        from photos import CALIBRATION_PHOTOS, orientation_batch
    finally:
        sys.path.pop(0)
    x, _ = orientation_batch(list(CALIBRATION_PHOTOS[:5]), rotations=(0, 90, 180))  # 15 real samples: 4 batches of 4, the last partial
    np.savez(tmp_path / "photos.npz", x=x)
    address = ray_cluster.get_runtime_context().gcs_address  # this module's cluster, even if others run on the machine
    common = ["-p", "qdq{calibrator=entropy,batch_size=4}", "--calib-data", tmp_path / "photos.npz", "-b", "onnx", "--json"]
    one = cli(rapid_model, *common, "-o", tmp_path / "one.onnx", cwd=tmp_path)
    sharded = cli(rapid_model, *common, "-o", tmp_path / "sharded.onnx", "--ray", address, cwd=tmp_path)
    assert one.returncode == 0 and sharded.returncode == 0, (one.stderr[-1500:], sharded.stderr[-1500:])
    a, b = _scales(tmp_path / "one.onnx"), _scales(tmp_path / "sharded.onnx")
    assert len(a) > 50 and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a), [k for k in a if not np.array_equal(a[k], b[k])]
    assert '"ray_shards": 2' in sharded.stdout and '"batches": 4' in sharded.stdout


def test_cli_ray_refuses_a_generator_in_one_line(cli: Cli, tmp_path: Path) -> None:
    onnx.save(conv_model(), str(tmp_path / "m.onnx"))
    (tmp_path / "gen_feeds.py").write_text("import numpy as np\ndef gen():\n    yield {'x': np.ones((2, 3, 12, 12), np.float32)}\n")
    res = cli(tmp_path / "m.onnx", "-p", "qdq", "--calib-data", "gen_feeds:gen", "--ray", "auto", "-b", "onnx", "-o", tmp_path / "o.onnx", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be split into shards" in lines[0] and ".npz" in lines[0], res.stderr


def test_debug_accuracy_ray_gives_the_same_report(ray_cluster, feeds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import converter
    from converter.cli import main

    onnx.save(conv_model(), str(tmp_path / "m.onnx"))
    converter.convert(tmp_path / "m.onnx", "qdq", "onnx", output=tmp_path / "q.onnx", calib_data=str(feeds))
    for data in (["--data", str(feeds), "--batch-size", "5"], ["--random", "30", "--batch-size", "4"]):  # 4 samples left over; 8 seeded batches
        args = ["debug", "accuracy", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), *data, "--chunk-size", "3", "--json"]
        reports = []
        for extra in ([], ["--ray", "auto"]):  # in this process: the module's cluster
            assert main([*args, *extra]) == 0
            reports.append(capsys.readouterr().out)
        assert reports[0] == reports[1] and '"tensors"' in reports[0]  # every digit: the sums are exact, so the shards merge into one pass's numbers


def test_exact_error_sums_do_not_depend_on_the_order() -> None:
    from converter.debug.accuracy import Stats

    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal(50) * 10.0 ** rng.integers(-8, 8), rng.standard_normal(50)) for _ in range(40)]
    batches = [(f.astype(np.float32), (f + e * 1e-3).astype(np.float32)) for f, e in batches]
    whole = Stats()
    for f, q in batches:
        whole.update(f, q, q * 1.01)
    halves = [Stats(), Stats()]
    for i in rng.permutation(len(batches)):
        halves[i % 2].update(*batches[i], batches[i][1] * 1.01)
    merged = halves[1].merge(halves[0])
    assert [merged.ff, merged.qq, merged.fq, merged.dd, merged.own_ff, merged.own_dd, merged.max_abs, merged.elements] == \
        [whole.ff, whole.qq, whole.fq, whole.dd, whole.own_ff, whole.own_dd, whole.max_abs, whole.elements]


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'converter\[ray\]'") as info:
        import_ray()
    assert info.value.exit_code == EXIT_BACKEND_UNAVAILABLE == 3


def test_debug_accuracy_without_ray_exits_3(monkeypatch: pytest.MonkeyPatch, feeds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from converter.cli import main

    onnx.save(conv_model(), str(tmp_path / "m.onnx"))
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["debug", "accuracy", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--data", str(feeds), "--ray", "auto"])
    err = capsys.readouterr().err
    assert code == 3 and "pip install 'converter[ray]'" in err and len(err.strip().splitlines()) == 1, err


def test_cli_ray_missing_exits_3(monkeypatch: pytest.MonkeyPatch, feeds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from converter.cli import main

    onnx.save(conv_model(), str(tmp_path / "m.onnx"))
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main([str(tmp_path / "m.onnx"), "-p", "qdq", "--calib-data", str(feeds), "--ray", "auto", "-b", "onnx", "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert "pip install 'converter[ray]'" in err and len(err.strip().splitlines()) == 1
    assert code == 3
