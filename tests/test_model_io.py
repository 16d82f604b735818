from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from converter.errors import ModelError, UsageError
from converter.model_io import load_model, save_model


def _big_weight_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096, "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_load_reports_hash_and_roundtrips(tmp_path: Path, tiny_path: Path) -> None:
    loaded = load_model(tiny_path)
    assert len(loaded.sha256) == 64 and not loaded.has_external_data
    out = tmp_path / "copy.onnx"
    save_model(loaded.proto, out, protect=[tiny_path])
    assert load_model(out).sha256 == loaded.sha256 or onnx.load(str(out)) == loaded.proto
    assert not list(tmp_path.glob(".converter-tmp-*")), "staging folder left behind"


def test_external_data_stays_external(tmp_path: Path) -> None:
    src = tmp_path / "ext.onnx"
    onnx.save_model(_big_weight_model(), str(src), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    loaded = load_model(src)
    assert loaded.has_external_data and loaded.external_data_files == [tmp_path / "ext.onnx.data"]
    assert numpy_helper.to_array(loaded.proto.graph.initializer[0]).shape == (64, 64)
    out_dir = tmp_path / "out"
    written = save_model(loaded.proto, out_dir / "m.onnx", external_data=True)
    assert sorted(p.name for p in written) == ["m.onnx", "m.onnx.data"]
    again = load_model(out_dir / "m.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(again.proto.graph.initializer[0]), numpy_helper.to_array(loaded.proto.graph.initializer[0]))
    # the in-memory model still holds its weights after saving
    assert loaded.proto.graph.initializer[0].raw_data


def test_missing_external_data_is_a_model_error(tmp_path: Path) -> None:
    src = tmp_path / "ext.onnx"
    onnx.save_model(_big_weight_model(), str(src), save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelError, match="missing: .*w.bin"):
        load_model(src)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "model file not found"),
        (b"", "is empty"),
        (b"this is a text file, not a model\n", "not a valid ONNX model|does not contain an ONNX graph"),
    ],
)
def test_bad_files_are_model_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    p = tmp_path / "bad.onnx"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(p)


def test_truncated_model_is_a_model_error(tmp_path: Path, tiny_path: Path) -> None:
    data = tiny_path.read_bytes()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        load_model(p)


def test_save_refuses_to_overwrite_input(tiny_path: Path) -> None:
    before = tiny_path.read_bytes()
    with pytest.raises(UsageError, match="is the input file"):
        save_model(load_model(tiny_path).proto, tiny_path, protect=[tiny_path])
    assert tiny_path.read_bytes() == before
