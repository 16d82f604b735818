"""Probe models: the float model plus local quantized copies of layers, measured in one streamed run.

Bias correction and the activation scale search both need, for each quantized layer, what the
layer computes from its *float* input through its own Q/DQ and int8 weight, next to what the
float layer computes. A :class:`Probe` starts from a copy of the float model, copies nodes of the
quantized graph into it so that they read the float model's tensors (:meth:`local`), and adds
small reductions as outputs; :meth:`run` streams the calibration batches and returns each
output's mean over batches. ReduceXxx nodes run right after their inputs (priority-based order),
so memory stays that of the float model; Q/DQ are computed as written (not fused into this CPU's
int8 kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from converter import progress
from converter.errors import PassRefused, describe_exception
from converter.graph_edit import unique_name
from converter.graph_info import opset_version
from converter.ort_session import make_session, run_session, session_options

Feeds = dict[str, np.ndarray]


class Probe:
    def __init__(self, float_model: onnx.ModelProto, quant_model: onnx.ModelProto, purpose: str = "qdq") -> None:
        self.purpose = purpose
        self.model = onnx.ModelProto()
        self.model.CopyFrom(float_model)
        self.graph = self.model.graph
        del self.graph.output[:]
        g, q = self.graph, quant_model.graph
        self.known = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
        self.taken = set(self.known) | {o for n in q.node for o in n.output} | {t.name for t in q.initializer}
        self.inits = {t.name: t for t in q.initializer if t.name not in self.known}
        self.producers = {o: n for n in q.node for o in n.output}
        self.renamed: dict[str, str] = {}
        self.new_axes_input = (opset_version(self.model) or 13) >= 18

    def fresh(self, base: str) -> str:
        return unique_name(base, self.taken)

    def local(self, name: str) -> str:
        """The probe's name for tensor ``name`` of the quantized graph: the float tensor when the float model has it, else a copy."""
        if not name or name in self.known:
            return name
        if name in self.renamed:
            return self.renamed[name]
        if name in self.inits:
            self.graph.initializer.append(self.inits[name])
            self.known.add(name)
            return name
        node = self.producers[name]
        copy = helper.make_node(node.op_type, [self.local(x) for x in node.input], [], domain=node.domain)
        copy.attribute.extend(node.attribute)
        for o in node.output:
            self.renamed[o] = self.fresh(f"{o}_local") if o else ""
            copy.output.append(self.renamed[o])
        self.graph.node.append(copy)
        return self.renamed[name]

    def layer(self, node: onnx.NodeProto, inputs: Sequence[str] | None = None) -> str:
        """A copy of quantized layer ``node`` reading ``inputs`` (default: its own inputs, made local); its output."""
        ins = list(inputs) if inputs is not None else [self.local(x) for x in node.input]
        copy = helper.make_node(node.op_type, ins, [self.fresh(f"{node.output[0]}_local")], domain=node.domain)
        copy.attribute.extend(node.attribute)
        self.graph.node.append(copy)
        return copy.output[0]

    def constant(self, value: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def add(self, op: str, inputs: Sequence[str], base: str, **attrs: object) -> str:
        out = self.fresh(base)
        self.graph.node.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def reduce(self, op: str, tensor: str, axes: Sequence[int] | None, dims: Sequence[int]) -> str:
        """An output: ``op`` (ReduceMean, ReduceSumSquare...) of ``tensor`` over ``axes`` (None: all), keepdims 0."""
        if axes is None:
            out = self.add(op, [tensor], f"{tensor}_{op}", keepdims=0)
        elif self.new_axes_input:
            out = self.add(op, [tensor, self.constant(np.array(list(axes), dtype=np.int64), f"{tensor}_axes")], f"{tensor}_{op}", keepdims=0)
        else:
            out = self.add(op, [tensor], f"{tensor}_{op}", axes=list(axes), keepdims=0)
        self.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, list(dims)))
        return out

    def run(self, batches: Callable[[], Iterator[Feeds]]) -> dict[str, np.ndarray]:
        """Each output's mean over the batches (float64)."""
        so = session_options()
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # reductions right after their inputs: memory of the float model
        so.add_session_config_entry("session.disable_quant_qdq", "1")  # the Q/DQ arithmetic as written
        try:
            session = make_session(self.model, options=so)
            sums: dict[str, np.ndarray] = {}
            count = 0
            with progress.step(f"{self.purpose}: probe run", unit="batches") as task:
                for feeds in batches():
                    for name, value in run_session(session, feeds).items():
                        sums[name] = sums.get(name, 0.0) + np.asarray(value, dtype=np.float64)
                    count += 1
                    task.advance()
        except Exception as exc:  # ORT's many error types: one line, naming what was measured
            raise PassRefused(f"{self.purpose}: ONNX Runtime cannot run the probe model: {describe_exception(exc)}") from exc
        return {k: v / max(count, 1) for k, v in sums.items()}
