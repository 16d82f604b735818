from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converter.convert_job import ConvertRequest, convert
from converter.errors import PassError, VerifyDrift
from converter.hookspecs import hookimpl
from converter.pass_api import Effect, Pass, PassContext, PassResult
from converter.pass_manager import build_passes, run_pipeline
from converter.pipeline_text import parse_pipeline
from converter.plugin_manager import load_plugins
from converter.registry import PassRegistry


@dataclass(frozen=True)
class ScaleOptions:
    factor: float = 1.001


class ScaleWeights(Pass[ScaleOptions]):
    """Multiplies every float initializer: a pass that silently breaks accuracy."""

    name = "scale_weights"
    summary = "test pass: scales weights"
    Options = ScaleOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        for i, t in enumerate(model.graph.initializer):
            arr = numpy_helper.to_array(t)
            if arr.dtype == np.float32:
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr * np.float32(self.options.factor), t.name))
        return PassResult(model, True)


class BreakGraph(Pass[ScaleOptions]):
    """Produces an invalid model (a dangling input)."""

    name = "break_graph"
    summary = "test pass: invalid output"
    Options = ScaleOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        model.graph.node[0].input[0] = "does_not_exist"
        return PassResult(model, True)


class TestPlugin:
    @hookimpl
    def converter_register_passes(self, registry: PassRegistry) -> None:
        registry.add(ScaleWeights)
        registry.add(BreakGraph)


def _plugins():  # type: ignore[no-untyped-def]
    return load_plugins(entry_points_enabled=False, extra={"test": TestPlugin()})


def test_verify_names_the_first_drifting_pass(tiny_path: Path, tmp_path: Path) -> None:
    req = ConvertRequest(model=tiny_path, pipeline="infer_shapes,scale_weights{factor=1.0000001},cleanup,scale_weights{factor=1.01}", output=tmp_path / "o.onnx", verify=True, input_shapes="x:8x4")
    with pytest.raises(VerifyDrift) as info:
        convert(req, _plugins())
    assert "pass 'scale_weights' changed the outputs beyond fp32 tolerance (y)" in str(info.value)
    assert "passes before it: infer_shapes, scale_weights, cleanup" in str(info.value)
    records = info.value.report.records  # type: ignore[attr-defined]
    assert [bool(r.verify) for r in records] == [True, True, True, False]
    assert not (tmp_path / "o.onnx").exists()


def test_invalid_result_names_the_pass_and_history(tiny_model: onnx.ModelProto) -> None:
    passes = build_passes(parse_pipeline("cleanup,break_graph"), _plugins().passes)
    with pytest.raises(PassError, match=r"pass 'break_graph' failed: it produced an invalid model: .*\(passes run before it: cleanup\)"):
        run_pipeline(tiny_model, passes)


def test_report_records_time_nodes_and_op_delta(tiny_model: onnx.ModelProto) -> None:
    passes = build_passes(parse_pipeline("infer_shapes,cleanup"), _plugins().passes)
    _, report = run_pipeline(tiny_model, passes)
    cleanup = report.records[1]
    assert (cleanup.nodes_before, cleanup.nodes_after) == (6, 3)
    assert cleanup.op_delta == {"Identity": -2, "Relu": -1}
    assert cleanup.seconds >= 0 and cleanup.modified
    js = report.to_json()
    assert js[1]["name"] == "cleanup" and js[1]["options"]["sort"] is True
    assert "Identity-2" in report.table()


RESHAPE_B1 = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 4] x) => (float[1, 12] y) <int64[2] shape = {1, 12}> {
    r = Reshape(x, shape)
    y = Relu(r)
}
"""


class RenameBatchOnly(Pass[ScaleOptions]):
    """The naive 'edit the input dim and hope' that real tools do: must be caught by --verify."""

    name = "rename_batch_only"
    summary = "test pass: renames dim 0 without fixing the graph"
    Options = ScaleOptions
    effects = frozenset({Effect.BATCH})

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        for vi in [*model.graph.input, *model.graph.output]:
            vi.type.tensor_type.shape.dim[0].dim_param = "batch"
        del model.graph.value_info[:]
        return PassResult(model, True)


class BatchPlugin:
    @hookimpl
    def converter_register_passes(self, registry: PassRegistry) -> None:
        registry.add(RenameBatchOnly)


def test_verify_proves_dynamic_batch_by_stacking(tmp_path: Path) -> None:
    import onnx.parser

    src = tmp_path / "b1.onnx"
    onnx.save_model(onnx.parser.parse_model(RESHAPE_B1), str(src))
    plugins = load_plugins(entry_points_enabled=False, extra={"batch": BatchPlugin()})
    ok = convert(ConvertRequest(model=src, pipeline="dynamic_batch", output=tmp_path / "o.onnx", verify=True), plugins)
    check = ok.report.records[0].batch_check
    assert check is not None and check and [r.batch for r in check.runs] == [1, 2, 7]
    assert ok.report.to_json()[0]["batch_check"]["passed"] is True
    with pytest.raises(VerifyDrift, match="after pass 'rename_batch_only' batch N differs from N stacked batch-1 runs"):
        convert(ConvertRequest(model=src, pipeline="rename_batch_only", output=tmp_path / "bad.onnx", verify=True, check=False), plugins)
    assert not (tmp_path / "bad.onnx").exists()
