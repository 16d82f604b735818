"""infer_shapes: annotate every tensor with its type and shape (value_info).

Two engines: ONNX's own shape inference (with data propagation, so shapes
computed by Shape→Gather→Concat chains resolve), and ONNX Runtime's symbolic
shape inference, which carries symbolic dims (``batch``, ``seq``) through
Reshape/Concat arithmetic and knows ORT's contrib ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import onnx

from converter.errors import PassRefused, describe_exception
from converter.onnx_calls import infer_shapes
from converter.pass_api import Pass, PassContext, PassResult
from converter.symbolic_shapes import symbolic_infer


@dataclass(frozen=True)
class InferShapesOptions:
    engine: Literal["onnx", "symbolic"] = field(default="onnx", metadata={"help": "onnx: ONNX shape inference; symbolic: ONNX Runtime's symbolic shape inference"})
    data_prop: bool = field(default=True, metadata={"help": "onnx engine: propagate constant shape values through shape arithmetic"})
    reset: bool = field(default=False, metadata={"help": "drop existing value_info first (stale shapes after edits)"})
    auto_merge: bool = field(default=True, metadata={"help": "symbolic engine: merge conflicting symbolic dims instead of failing"})
    strict: bool = field(default=True, metadata={"help": "fail on an inference error; false: report it and leave the model unchanged"})


def _annotations(model: onnx.ModelProto) -> bytes:
    g = model.graph
    return b"".join(v.SerializeToString() for v in [*g.value_info, *g.output])


def _unknown_shapes(model: onnx.ModelProto) -> list[str]:
    known = {v.name for v in [*model.graph.value_info, *model.graph.input, *model.graph.output] if v.type.tensor_type.HasField("shape")}
    known |= {t.name for t in model.graph.initializer}
    return [o for n in model.graph.node for o in n.output if o and o not in known]


def _onnx_infer(model: onnx.ModelProto, data_prop: bool) -> onnx.ModelProto:
    return infer_shapes(model, check_type=True, strict_mode=True, data_prop=data_prop)


def _symbolic_infer(model: onnx.ModelProto, auto_merge: bool) -> onnx.ModelProto:
    return symbolic_infer(model, auto_merge)


class InferShapesPass(Pass[InferShapesOptions]):
    name = "infer_shapes"
    summary = "Annotate tensors with types and shapes (ONNX or ONNX Runtime symbolic inference)."
    Options = InferShapesOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        opts = self.options
        before = _annotations(model)
        work = model
        if opts.reset:
            work = onnx.ModelProto()
            work.CopyFrom(model)
            del work.graph.value_info[:]
        try:
            inferred = _onnx_infer(work, opts.data_prop) if opts.engine == "onnx" else _symbolic_infer(work, opts.auto_merge)
        except Exception as exc:
            hint = "; try infer_shapes{engine=onnx}" if opts.engine == "symbolic" else "; try infer_shapes{engine=symbolic}"
            message = f"{opts.engine} shape inference failed: {describe_exception(exc)}{hint}"
            if opts.strict:
                raise PassRefused(message) from exc
            ctx.log.warning(message)
            return PassResult(model, False, facts={"error": message}, refused=[message + " (strict=false: model left unchanged)"])
        unknown = _unknown_shapes(inferred)
        if unknown:
            ctx.log.info("%d tensors still have no shape, e.g. %s", len(unknown), ", ".join(unknown[:5]))
        return PassResult(
            inferred,
            _annotations(inferred) != before,
            facts={"engine": opts.engine, "value_info": len(inferred.graph.value_info), "tensors_without_shape": len(unknown)},
        )
