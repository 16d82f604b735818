"""Build the conformance kit's golden zoo (``converter/testing/zoo/``) deterministically.

    python tools/make_conformance_zoo.py            # rewrite the zoo in place
    python tools/make_conformance_zoo.py --check    # exit 1 when the shipped zoo differs from what this script builds

Every case is a golden case folder (``converter.golden`` layout: ``manifest.json``, ``model.onnx``,
``test_data_set_N/input_K.pb``/``output_K.pb``), so ``convert MODEL --golden CASE`` reads it too.
Models are written with ``onnx.helper`` (opset 17, IR 8) from seeded numpy weights; reference
outputs come from ``onnx.reference`` (exact ONNX semantics) and are cross-checked against ONNX
Runtime at the case's precision before anything is written. The manifest adds three keys the kit
reads: ``precision`` (the tolerance policy that applies), ``description`` and ``batch_sizes``
(the batch of each data set).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from converter.compare import DEFAULT_TOLERANCES, compare
from converter.model_io import sha256_of_files

ZOO = Path(__file__).resolve().parent.parent / "converter" / "testing" / "zoo"
OPSET, IR_VERSION = 17, 8
RECIPE = "python tools/make_conformance_zoo.py"


@dataclass
class Built:
    model: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]
    precision: str
    description: str
    batch_sizes: list[int]
    external_data: bool = False


def _model(name: str, nodes: list, inputs: list, outputs: list, inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="converter-conformance-zoo", producer_version="1")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _t(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(arr, order="C"), name)  # not ascontiguousarray: it makes scalars 1-D


def _vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def fp32_mlp(rng: np.random.Generator) -> Built:
    inits = [_t("w1", rng.standard_normal((16, 32)).astype(np.float32) * 0.3), _t("b1", rng.standard_normal(32).astype(np.float32) * 0.1),
             _t("w2", rng.standard_normal((32, 10)).astype(np.float32) * 0.3), _t("b2", rng.standard_normal(10).astype(np.float32) * 0.1)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"), helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"), helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
             helper.make_node("Add", ["h3", "b2"], ["h4"], name="fc2_bias"), helper.make_node("Softmax", ["h4"], ["probs"], name="softmax", axis=-1)]
    model = _model("fp32_mlp", nodes, [_vi("x", F32, [2, 16])], [_vi("probs", F32, [2, 10])], inits)
    return Built(model, [{"x": rng.standard_normal((2, 16)).astype(np.float32)}], "fp32", "fp32 MLP: MatMul, Add, Relu, Softmax; static shapes", [2])


def _conv_weights(rng: np.random.Generator, name: str, cout: int, cin: int) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
    return _t(f"{name}_w", w), _t(f"{name}_b", rng.standard_normal(cout).astype(np.float32) * 0.1)


def fp32_conv(rng: np.random.Generator) -> Built:
    inits = [*_conv_weights(rng, "conv1", 4, 3), *_conv_weights(rng, "conv2", 8, 4),
             _t("fc_w", rng.standard_normal((5, 8)).astype(np.float32) * 0.5), _t("fc_b", rng.standard_normal(5).astype(np.float32) * 0.1)]
    nodes = [helper.make_node("Conv", ["x", "conv1_w", "conv1_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    model = _model("fp32_conv", nodes, [_vi("x", F32, [1, 3, 8, 8])], [_vi("logits", F32, [1, 5])], inits)
    return Built(model, [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}], "fp32", "fp32 CNN: Conv, Relu, MaxPool, GlobalAveragePool, Flatten, Gemm", [1])


def fp16_io(rng: np.random.Generator) -> Built:
    inits = [_t("w", (rng.standard_normal((8, 8)) * 0.3).astype(np.float16)), _t("b", (rng.standard_normal(8) * 0.1).astype(np.float16))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"), helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
             helper.make_node("Tanh", ["a"], ["y"], name="tanh")]
    model = _model("fp16_io", nodes, [_vi("x", F16, [2, 8])], [_vi("y", F16, [2, 8])], inits)
    return Built(model, [{"x": rng.standard_normal((2, 8)).astype(np.float16)}], "fp16", "float16 inputs, weights and outputs: MatMul, Add, Tanh", [2])


def fp16_casts(rng: np.random.Generator) -> Built:
    inits = [_t("w", (rng.standard_normal((8, 4)) * 0.3).astype(np.float16))]
    nodes = [helper.make_node("Cast", ["x"], ["x16"], name="to_fp16", to=F16), helper.make_node("MatMul", ["x16", "w"], ["m"], name="fc"),
             helper.make_node("Relu", ["m"], ["r"], name="relu"), helper.make_node("Cast", ["r"], ["y"], name="to_fp32", to=F32)]
    model = _model("fp16_casts", nodes, [_vi("x", F32, [2, 8])], [_vi("y", F32, [2, 4])], inits)
    return Built(model, [{"x": rng.standard_normal((2, 8)).astype(np.float32)}], "fp16", "float32 I/O around a float16 body (Cast in, MatMul in fp16, Cast out)", [2])


def _qdq_weight(rng: np.random.Generator, name: str, cout: int, cin: int) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
    scale = (np.abs(w).reshape(cout, -1).max(axis=1) / 127.0).astype(np.float32)
    q = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
    inits = [_t(f"{name}_wq", q), _t(f"{name}_ws", scale), _t(f"{name}_wz", np.zeros(cout, np.int8)), _t(f"{name}_b", rng.standard_normal(cout).astype(np.float32) * 0.1)]
    node = helper.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_ws", f"{name}_wz"], [f"{name}_w"], name=f"{name}_w_dq", axis=0)
    return inits, node


def _act_qdq(name: str, src: str, dst: str) -> list[onnx.NodeProto]:
    return [helper.make_node("QuantizeLinear", [src, f"{name}_s", f"{name}_z"], [f"{name}_q"], name=f"{name}_q"),
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [dst], name=f"{name}_dq")]


def int8_qdq(rng: np.random.Generator) -> Built:
    w1, w1_dq = _qdq_weight(rng, "conv1", 4, 3)
    w2, w2_dq = _qdq_weight(rng, "conv2", 4, 4)
    acts = [_t("in_s", np.array(0.03, np.float32)), _t("in_z", np.array(0, np.int8)), _t("mid_s", np.array(0.02, np.float32)), _t("mid_z", np.array(0, np.int8))]
    nodes = [*_act_qdq("in", "x", "x_dq"), w1_dq,
             helper.make_node("Conv", ["x_dq", "conv1_w", "conv1_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), *_act_qdq("mid", "r1", "r1_dq"), w2_dq,
             helper.make_node("Conv", ["r1_dq", "conv2_w", "conv2_b"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    model = _model("int8_qdq", nodes, [_vi("x", F32, [1, 3, 8, 8])], [_vi("y", F32, [1, 4, 8, 8])], [*w1, *w2, *acts])
    x = np.clip(rng.standard_normal((1, 3, 8, 8)), -3.5, 3.5).astype(np.float32)
    return Built(model, [{"x": x}], "int8", "int8 Q/DQ (zero point 0): per-tensor activations, per-channel weights, two Convs", [1])


def dynamic_batch(rng: np.random.Generator) -> Built:
    inits = [*_conv_weights(rng, "conv", 4, 3), _t("fc_w", rng.standard_normal((6, 4)).astype(np.float32)), _t("fc_b", rng.standard_normal(6).astype(np.float32) * 0.1)]
    nodes = [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), helper.make_node("GlobalAveragePool", ["r"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    model = _model("dynamic_batch", nodes, [_vi("x", F32, ["batch", 3, 8, 8])], [_vi("logits", F32, ["batch", 6])], inits)
    sizes = [1, 3, 8]
    feeds = [{"x": rng.standard_normal((n, 3, 8, 8)).astype(np.float32)} for n in sizes]
    return Built(model, feeds, "fp32", "dynamic batch dim 'batch', one data set per batch size", sizes)


def multi_io(rng: np.random.Generator) -> Built:
    inits = [_t("table", rng.standard_normal((4, 8)).astype(np.float32)), _t("axes", np.array([1], np.int64))]
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"], name="add"), helper.make_node("Gather", ["table", "index"], ["rows"], name="gather", axis=0),
             helper.make_node("Add", ["ab", "rows"], ["sum"], name="add_rows"), helper.make_node("Mul", ["a", "b"], ["prod"], name="mul"),
             helper.make_node("ReduceSum", ["prod", "axes"], ["dot"], name="dot", keepdims=1), helper.make_node("Sub", ["a", "b"], ["diff"], name="sub"),
             helper.make_node("ArgMax", ["diff"], ["argmax"], name="argmax", axis=1, keepdims=0)]
    inputs = [_vi("a", F32, [2, 8]), _vi("b", F32, [2, 8]), _vi("index", TensorProto.INT64, [2])]
    outputs = [_vi("sum", F32, [2, 8]), _vi("dot", F32, [2, 1]), _vi("argmax", TensorProto.INT64, [2])]
    model = _model("multi_io", nodes, inputs, outputs, inits)
    feeds = {"a": rng.standard_normal((2, 8)).astype(np.float32), "b": rng.standard_normal((2, 8)).astype(np.float32), "index": np.array([3, 1], np.int64)}
    return Built(model, [feeds], "fp32", "three inputs (float32, float32, int64) and three outputs (float32, float32, int64 ArgMax)", [2])


def external_data(rng: np.random.Generator) -> Built:
    inits = [_t("w1", rng.standard_normal((32, 64)).astype(np.float32) * 0.2), _t("b1", rng.standard_normal(64).astype(np.float32) * 0.1),
             _t("w2", rng.standard_normal((64, 8)).astype(np.float32) * 0.2)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"), helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    model = _model("external_data", nodes, [_vi("x", F32, [2, 32])], [_vi("y", F32, [2, 8])], inits)
    return Built(model, [{"x": rng.standard_normal((2, 32)).astype(np.float32)}], "fp32", "weights in model.onnx.data beside the model (external data)", [2], external_data=True)


CASES: dict[str, Callable[[np.random.Generator], Built]] = {
    "fp32_mlp": fp32_mlp, "fp32_conv": fp32_conv, "fp16_io": fp16_io, "fp16_casts": fp16_casts, "int8_qdq": int8_qdq,
    "dynamic_batch": dynamic_batch, "multi_io": multi_io, "external_data": external_data,
}


def _ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _for_reference(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at opset 21 for onnx.reference, which no longer implements Q/DQ before opset 19.

    Every op in the zoo means the same at 17 and 21 for the types used (Q/DQ 19/21 added float8 and
    int4 types and blocking, Cast 19 float8 saturation); the shipped model stays at opset 17."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.opset_import[0].version = 21
    copy.ir_version = 10
    return copy


def _write_tensor(arr: np.ndarray, name: str, path: Path) -> None:
    path.write_bytes(_t(name, arr).SerializeToString())


def build_case(name: str, folder: Path) -> None:
    built = CASES[name](np.random.default_rng(sum(map(ord, name))))
    model, names_in = built.model, [i.name for i in built.model.graph.input]
    names_out = [o.name for o in model.graph.output]
    folder.mkdir(parents=True)
    ref = ReferenceEvaluator(_for_reference(model))
    for k, feeds in enumerate(built.feeds):
        outputs = dict(zip(names_out, ref.run(None, feeds)))
        check = compare(_ort_outputs(model, feeds), outputs, precision=built.precision)
        if not check:
            raise SystemExit(f"{name}: ONNX Runtime disagrees with onnx.reference on data set {k}:\n{check.table()}")
        ds = folder / f"test_data_set_{k}"
        ds.mkdir()
        for i, n in enumerate(names_in):
            _write_tensor(feeds[n], n, ds / f"input_{i}.pb")
        for i, n in enumerate(names_out):
            _write_tensor(np.asarray(outputs[n]), n, ds / f"output_{i}.pb")
    path = folder / "model.onnx"
    if built.external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    files = [path] + ([folder / "model.onnx.data"] if built.external_data else [])
    manifest = {
        "format": 1,
        "name": name,
        "description": built.description,
        "precision": built.precision,
        "batch_sizes": built.batch_sizes,
        "model": {"sha256": sha256_of_files(files), "source": {"kind": "file", "path": "model.onnx"}, "recipe": RECIPE},
        "inputs": names_in,
        "outputs": names_out,
        "tolerances": {p: t.to_json() for p, t in DEFAULT_TOLERANCES.items()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def build_zoo(out: Path) -> None:
    for name in CASES:
        build_case(name, out / name)


def _same_tree(a: Path, b: Path) -> list[str]:
    diffs: list[str] = []

    def walk(cmp: filecmp.dircmp) -> None:
        diffs.extend(str(Path(cmp.left) / n) for n in (*cmp.left_only, *cmp.right_only, *cmp.diff_files, *cmp.funny_files))
        for sub in cmp.subdirs.values():
            walk(sub)

    walk(filecmp.dircmp(a, b, ignore=["__pycache__"]))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the shipped zoo with a fresh build instead of writing it")
    parser.add_argument("--out", type=Path, default=ZOO, help=f"zoo folder (default {ZOO})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "zoo"
        build_zoo(fresh)
        if args.check:
            diffs = _same_tree(args.out, fresh) if args.out.is_dir() else [str(args.out)]
            if diffs:
                print(f"the zoo differs from a fresh build ({RECIPE}): {', '.join(diffs[:10])}", file=sys.stderr)
                return 1
            print(f"{args.out}: up to date ({len(CASES)} cases)")
            return 0
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(fresh, args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(CASES)} cases to {args.out} ({size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
