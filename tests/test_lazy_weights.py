"""Weights left in their files (converter.lazy_weights): the same artifacts as loading them, in bounded memory.

``CONVERTER_LAZY_WEIGHTS_BYTES=0`` makes every model with external data load lazily, so a small model
exercises the path a model over 2 GB takes (bench/bench_big_model.py measures that one).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter import lazy_weights
from converter.errors import ModelError
from converter.model_io import load_model, save_model
from converter.onnx_calls import check_model
from converter.ort_session import make_session, run_session

ENV = lazy_weights.THRESHOLD_ENV


def _model() -> onnx.ModelProto:
    """An MLP with fp32, fp16 and bf16 weights, a fixed batch (Reshape [1, -1]) and an int64 table."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(3):
        inits += [numpy_helper.from_array((rng.standard_normal((128, 128)) * 0.08).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(128) * 0.1).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        x = f"r{i}"
    half = (rng.standard_normal((128, 64)) * 0.08).astype(np.float16)
    bf_bits = ((rng.standard_normal(64 * 32) * 0.1).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    bf = helper.make_tensor("wbf", TensorProto.BFLOAT16, [64, 32], bf_bits.tobytes(), raw=True)
    inits += [numpy_helper.from_array(half, "wh"), bf, numpy_helper.from_array(np.arange(32 * 8, dtype=np.int64).reshape(32, 8) % 7, "table"),
              numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]
    nodes += [helper.make_node("Cast", ["wh"], ["whf"], to=TensorProto.FLOAT), helper.make_node("MatMul", [x, "whf"], ["h"]),
              helper.make_node("Cast", ["wbf"], ["wbff"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["h", "wbff"], ["g"]),
              helper.make_node("Reshape", ["g", "shape"], ["y"]),
              helper.make_node("Gather", ["table", "ids"], ["t"], axis=0)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128]),
                                             helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32]),
                               helper.make_tensor_value_info("t", TensorProto.INT64, [1, 4, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    src = tmp_path / "in" / "mlp.onnx"
    src.parent.mkdir()
    onnx.save_model(_model(), str(src), save_as_external_data=True, location="mlp.onnx.data", size_threshold=1024)
    return src


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _feeds(n: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"x": rng.standard_normal((n, 128)).astype(np.float32), "ids": rng.integers(0, 32, (n, 4)).astype(np.int64)}


def test_lazy_load_leaves_weights_in_their_file(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eager = load_model(model_path)
    monkeypatch.setenv(ENV, "0")
    lazy = load_model(model_path)
    data = model_path.parent / "mlp.onnx.data"
    assert eager.lazy_bytes == 0 and lazy.lazy_bytes > 0.95 * data.stat().st_size
    assert lazy.proto.ByteSize() * 10 < eager.proto.ByteSize()
    for e, lz in zip(eager.proto.graph.initializer, lazy.proto.graph.initializer):
        assert lazy_weights.is_lazy(lz) == (len(e.raw_data) >= 1024), e.name
        a, b = numpy_helper.to_array(e), lazy_weights.to_array(lz)
        assert a.dtype == b.dtype and a.shape == b.shape, e.name
        np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64), err_msg=e.name)
        assert lazy_weights.nbytes(lz) == a.nbytes
    check_model(lazy.proto)  # the checker sees placeholders of the data file, never the weights


def test_private_key_in_a_model_file_is_refused(tmp_path: Path, cli) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(128 * 128, dtype=np.float32).tobytes())
    inside = tmp_path / "in"
    inside.mkdir()
    (inside / "w.bin").write_bytes(b"\0" * (128 * 128 * 4))
    model = _model()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), (lazy_weights.LAZY_KEY, str(secret))):
        e = w.external_data.add()
        e.key, e.value = k, v
    onnx.save_model(model, str(inside / "m.onnx"))
    proc = cli(inside / "m.onnx", "-p", "cleanup", "-b", "onnx", "-o", tmp_path / "out" / "m.onnx")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"unknown external_data key '{lazy_weights.LAZY_KEY}'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_lazy_tensor_whose_range_disagrees_with_its_dims_is_refused(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proto = onnx.load(str(model_path), load_external_data=False)
    for e in proto.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = str(int(e.value) - 4)
    onnx.save_model(proto, str(model_path))
    monkeypatch.setenv(ENV, "0")
    with pytest.raises(ModelError, match=r"'w0'.* bytes of external data, expected 65536"):
        load_model(model_path)


def test_session_reads_lazy_weights_from_the_model_folder_and_matches(model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eager = load_model(model_path)
    monkeypatch.setenv(ENV, "0")
    lazy = load_model(model_path)
    assert lazy_weights.folder(lazy.proto) == str(model_path.parent.resolve())
    monkeypatch.chdir(tmp_path)  # not the model's folder: ONNX Runtime is told where the weights are
    sess = make_session(lazy.proto)
    got, want = run_session(sess, _feeds()), run_session(make_session(eager.proto), _feeds())
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)  # no pre-packing: sums in another order


def test_writing_copies_file_to_file_aligned_and_leaves_the_model_as_it_was(model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "0")
    lazy = load_model(model_path)
    before = lazy.proto.SerializeToString()
    written = save_model(lazy.proto, tmp_path / "out" / "m.onnx", external_data=False)  # lazy weights are written external anyway
    assert sorted(p.name for p in written) == ["m.onnx", "m.onnx.data"]
    assert lazy.proto.SerializeToString() == before
    text = (tmp_path / "out" / "m.onnx").read_bytes()
    assert lazy_weights.LAZY_KEY.encode() not in text and str(model_path.parent).encode() not in text
    back = onnx.load(str(tmp_path / "out" / "m.onnx"), load_external_data=False)
    for t in back.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            assert int({e.key: e.value for e in t.external_data}["offset"]) % lazy_weights.ALIGNMENT == 0
    onnx.checker.check_model(str(tmp_path / "out" / "m.onnx"), full_check=True)
    monkeypatch.delenv(ENV)
    again = load_model(tmp_path / "out" / "m.onnx")
    for a, b in zip(load_model(model_path).proto.graph.initializer, again.proto.graph.initializer):
        assert a.SerializeToString() == b.SerializeToString() or np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


PIPELINES = [
    ("cleanup,infer_shapes,fold_constants,dynamic_batch", "ort", 0.0),
    ("cleanup,infer_shapes,fold_constants,dynamic_batch,qdq", "ort", 1e-5),
    ("cleanup,infer_shapes,fold_constants,dynamic_batch,qdq", "onnx", 1e-5),
    ("cleanup,infer_shapes,fold_constants,dynamic_batch,fp16", "onnx", 0.0),
]


@pytest.mark.parametrize(("pipeline", "backend", "atol"), PIPELINES, ids=["fp32-ort", "int8-ort", "int8-onnx", "fp16-onnx"])
def test_convert_lazily_gives_the_same_artifact(model_path: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch,
                                               pipeline: str, backend: str, atol: float) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, **_feeds(16))
    inputs = _digest(model_path.parent)
    outs = {}
    for mode in ("eager", "lazy"):
        if mode == "lazy":
            monkeypatch.setenv(ENV, "0")
        out = tmp_path / mode / "m.onnx"
        proc = cli(model_path, "-p", pipeline, "-b", backend, "-o", out, "--calib-data", calib, "--verify", "-q")
        assert proc.returncode == 0, proc.stderr
        assert lazy_weights.LAZY_KEY.encode() not in out.read_bytes()
        assert sorted(f.name for f in out.parent.iterdir()) == ["m.onnx", "m.onnx.data", "m.onnx.manifest.json"]  # no spill file left
        onnx.checker.check_model(str(out), full_check=True)
        outs[mode] = out
    assert _digest(model_path.parent) == inputs, "the input model or its data changed"
    ops = [[n.op_type for n in onnx.load(str(outs[m]), load_external_data=False).graph.node] for m in ("eager", "lazy")]
    assert ops[0] == ops[1]
    feeds = _feeds(3)  # dynamic_batch made the batch symbolic
    got = [ort.InferenceSession(str(outs[m]), providers=["CPUExecutionProvider"]).run(None, feeds) for m in ("eager", "lazy")]
    for a, b in zip(*got):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def test_passes_results_leave_memory_between_passes(model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a pass computes (fp16 weights here) moves to the spill file; the caller's message is not grown."""
    from converter.pass_manager import build_passes, run_pipeline
    from converter.pipeline_text import parse_pipeline
    from converter.plugin_manager import load_plugins

    monkeypatch.setenv(ENV, "0")
    lazy = load_model(model_path)
    before = lazy.proto.SerializeToString()
    spill = tmp_path / "staging" / "spill.bin"
    model, _ = run_pipeline(lazy.proto, build_passes(parse_pipeline("fp16{keep_io_types=true}"), load_plugins().passes), spill=spill)
    assert lazy.proto.SerializeToString() == before
    fp16 = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16 and np.prod(t.dims) * 2 >= 1024]
    assert fp16 and all(lazy_weights.is_lazy(t) for t in fp16)
    converted = {t.name: lazy_weights.source(t)[0] for t in fp16 if t.name.startswith("w") and t.name[1:].isdigit()}
    assert sorted(converted) == ["w0", "w1", "w2"] and set(converted.values()) == {str(spill.resolve())}
    assert lazy_weights.folder(model) == str(tmp_path.resolve())  # above the model's folder and the spill's
    got = run_session(make_session(model), _feeds())
    want = run_session(make_session(load_model(model_path).proto), _feeds())
    np.testing.assert_allclose(got["y"], want["y"], rtol=0, atol=2e-2)
    np.testing.assert_array_equal(got["t"], want["t"])
