"""Carry the uint8 chain past the quantized layers, so ORT fuses every one of them.

The canonical graph quantizes only the inputs of Conv/Gemm/MatMul and residual Adds.
ORT's CPU provider forms QLinearConv only from ``DQ -> Conv -> Q`` with the Q as the
Conv's only reader (``ConvNodeGroupSelector`` in ORT's qdq_selectors.cc), so a Conv
followed by SiLU, HardSwish, PReLU, ... runs as DQ + float Conv, slower than fp32.
With the ranges ``qdq`` records (``_ranges``), this step gives tensors a uint8 Q/DQ
pair where ORT's QDQ selectors (qdq_selector_action_transformer.cc) then fuse:

- the output of every quantized Conv (QLinearConv), and of Gemm/MatMul where a reader
  fuses too (they fuse without a Q: QGemm, MatMulIntegerToFloat);
- the outputs of the ops ORT runs on uint8 when all their inputs are dequantized:
  Sigmoid, LeakyRelu, AveragePool, GlobalAveragePool (QLinear* in com.microsoft),
  Add, Mul (QLinearAdd/Mul), Concat (QLinearConcat);
- the outputs of the ops ORT runs on uint8 when the pair after them has the parameters
  of the pair before (its DropQDQ and Split rules): Reshape, Transpose, Flatten,
  Squeeze, Unsqueeze, MaxPool (opset 12 to 21), Resize, Slice, Gather, Expand, Tile,
  Split. Such an op's output takes its input's parameters, an existing pair included:
  its values are values of the input grid, so that is exact where the canonical grid
  would round again.

A Relu or Clip(min >= 0) that is an op's only reader belongs to the op: the pair goes on
its output with zero point 0 (and inside the Clip's max), which ORT's selectors then
drop as redundant. Layers stay as ``qdq`` left them: only a layer whose inputs 0 and 1
are already dequantized counts (a layer ``qdq`` kept float stays float). An op fuses
only when all its outputs have a pair, so every reader of a paired tensor reads the
DequantizeLinear, except a layer ``qdq`` left float (its weight, input 1, is not read
through a DequantizeLinear: ``exclude=``, ``keep_first_last``, the accuracy budget): it
keeps reading the float tensor, and the op before it then runs float in ORT. A new pair
on anything but a Conv, or on a Conv's output that such a float layer reads, is kept
only where some reader of it fuses (repeated until nothing changes), so pairs are added
where they turn float work into integer kernels, not at the float edges of the graph.
Graph outputs stay float.
The output of a float op (HardSigmoid, PRelu, Div...) takes a pair on the same terms:
where a reader then fuses (``x * HardSigmoid(x)`` becomes QLinearMul).

``refit``: the pairs already in the graph are re-expressed over their own range too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from converter.graph_edit import replace_repeated, unique_name
from converter.plugins.ort._graph import GraphIndex, Pair, add_scalar, attribute, in_default_domain, uint8_pairs, used_names
from converter.plugins.ort._ranges import ActivationRange
from converter.plugins.ort._windows import reader_window

LAYERS = ("Conv", "Gemm", "MatMul")
FLOAT_OUT_LAYERS = ("Gemm", "MatMul")
"""Layers ORT fuses without a Q after them (QGemm with float output, MatMulIntegerToFloat)."""
QLINEAR = ("Sigmoid", "LeakyRelu", "AveragePool", "GlobalAveragePool", "Add", "Mul", "Concat")
"""Ops ORT replaces by a com.microsoft QLinear* op when every input is dequantized and the output quantized."""
SAME_GRID = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "Resize", "Slice", "Gather", "Expand", "Tile", "Split")
"""Ops ORT runs on uint8 when the pairs around them share parameters (input 0 is the data)."""


@dataclass
class Op:
    """A node this step may fuse: the tensors it needs quantized and the ones it produces."""

    node: onnx.NodeProto
    inputs: list[str]
    outputs: list[str]
    """Output tensors; through a Relu/Clip reader this is the Relu/Clip's output."""
    clip: tuple[bool, float | None] = (False, None)
    """(non-negative, upper bound) of the outputs: after Relu (True, None), after Clip(0, 6) (True, 6.0)."""
    integer: bool = True
    """False for a float op (HardSigmoid, PRelu, Div...) whose output may be quantized so that a reader fuses."""


@dataclass
class ChainResult:
    added: list[str] = field(default_factory=list)
    """Tensors given a new uint8 pair from their range."""
    same_grid: list[str] = field(default_factory=list)
    """Tensors whose pair (new or existing) now has the parameters of their op's input."""
    refit: list[str] = field(default_factory=list)
    """Existing pairs re-expressed over their calibrated range."""
    redirected: int = 0
    """Float reads of a paired tensor turned into reads of its DequantizeLinear."""


def _max_pool_runs_on_uint8(opset: int) -> bool:
    return 12 <= opset < 22  # ORT's DropQDQ rule for MaxPool names since-version 12 only


def _activation_bounds(node: onnx.NodeProto, g: onnx.GraphProto, index: GraphIndex) -> tuple[bool, float | None] | None:
    """(True, max or None) for Relu and Clip with a constant min >= 0; None for anything else."""
    if not in_default_domain(node):
        return None
    if node.op_type == "Relu":
        return True, None
    if node.op_type != "Clip":
        return None
    if len(node.input) > 1:
        low = index.value(node.input[1]) if node.input[1] else None
        high = index.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        low_v = float(low.reshape(())) if low is not None and low.size == 1 else None
        high_v = float(high.reshape(())) if high is not None and high.size == 1 else None
    else:
        low_v, high_v = attribute(node, "min"), attribute(node, "max")
    if low_v is None or low_v < 0.0:
        return None
    return True, (float(high_v) if high_v is not None else None)


class _Planner:
    def __init__(self, g: onnx.GraphProto, ranges: dict[str, ActivationRange], opset: int) -> None:
        self.g, self.ranges, self.opset = g, ranges, opset
        self.index = GraphIndex.of(g)
        self.pairs: dict[str, Pair] = uint8_pairs(g, self.index)
        self.dq_source = {d.output[0]: t for t, p in self.pairs.items() for d in p.dqs}
        self.paired: set[str] = set(self.pairs)
        self.new: dict[str, Op] = {}
        self.ops: list[Op] = []

    def source(self, name: str) -> str:
        return self.dq_source.get(name, name)

    def _is_dq(self, name: str) -> bool:
        p = self.index.producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear" and in_default_domain(p)

    def float_layer(self, node: onnx.NodeProto) -> bool:
        """A Conv/Gemm/MatMul ``qdq`` left float: its weight (input 1) is not read through a DequantizeLinear."""
        return node.op_type in LAYERS and in_default_domain(node) and (len(node.input) < 2 or not self._is_dq(node.input[1]))

    def read_by_float_layer(self, tensor: str) -> bool:
        return any(self.float_layer(r) for r in self.index.readers.get(tensor, []))

    def _op(self, node: onnx.NodeProto) -> Op | None:
        """The node as an :class:`Op`, or None when ORT has no integer form of it here."""
        if not in_default_domain(node) or not node.output:
            return None
        t = node.op_type
        if t in LAYERS:
            if len(node.input) < 2 or node.input[0] not in self.dq_source or not self._is_dq(node.input[1]):
                return None  # a layer qdq left float stays float
            return self._with_outputs(node, [x for x in node.input[:2] if x in self.dq_source])
        if t == "Split":
            return Op(node, [node.input[0]], list(node.output))
        if t in SAME_GRID:
            if len(node.output) != 1 or (t == "MaxPool" and not _max_pool_runs_on_uint8(self.opset)):
                return None
            return Op(node, [node.input[0]], [node.output[0]])
        if t in QLINEAR:
            data = [x for x in node.input if x]
            if len(node.output) != 1 or any(x in self.index.inits or self.index.value(x) is not None for x in data):
                return None
            return self._with_outputs(node, data)
        return None

    def _with_outputs(self, node: onnx.NodeProto, inputs: list[str]) -> Op:
        """The op with a lone Relu/Clip(min >= 0) reader taken in, when that reader's output can be paired."""
        y = node.output[0]
        readers = self.index.readers.get(y, [])
        if len(readers) == 1 and y not in self.index.outputs and len(node.output) == 1:
            bounds = _activation_bounds(readers[0], self.g, self.index)
            r = readers[0].output[0]
            if bounds is not None and (r in self.pairs or (r not in self.index.outputs and self.params_for(r, bounds) is not None)):
                return Op(node, inputs, [r], bounds)
        return Op(node, inputs, list(node.output))

    def params_for(self, tensor: str, clip: tuple[bool, float | None]) -> tuple[float, int] | None:
        r = self.ranges.get(tensor)
        return r.uint8(*clip, window=reader_window(tensor, self.g, self.index)) if r is not None else None

    def forward(self) -> None:
        """Every op whose inputs are (or can be) quantized, with the pairs its outputs would need."""
        for node in self.g.node:
            op = self._op(node)
            if op is not None and self._admit(op):
                continue
            if node.op_type not in LAYERS:  # a layer qdq left float gets no pair after it either
                self._float_op(node)

    def _admit(self, op: Op) -> bool:
        """Record ``op`` when its inputs are quantized and its outputs can be; whether it was."""
        if not all(self.source(x) in self.paired for x in op.inputs):
            return False
        same_grid = op.node.op_type in SAME_GRID
        if not all(o in self.pairs or (o not in self.index.outputs and (same_grid or self.params_for(o, op.clip) is not None)) for o in op.outputs):
            if op.node.op_type in FLOAT_OUT_LAYERS:  # fused all the same, with a float output
                self.ops.append(Op(op.node, op.inputs, []))
                return True
            return False
        self.ops.append(op)
        for o in op.outputs:
            if o not in self.pairs:
                self.new[o] = op
                self.paired.add(o)
        return True

    def _float_op(self, node: onnx.NodeProto) -> None:
        """A float op's output may take a pair too, where that lets a reader fuse (``x * HardSigmoid(x)``: QLinearMul)."""
        if not in_default_domain(node) or len(node.output) != 1 or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return
        o = node.output[0]
        if o in self.paired or o in self.index.outputs or self.params_for(o, (False, None)) is None:
            return
        op = Op(node, [], [o], integer=False)
        self.ops.append(op)
        self.new[o] = op
        self.paired.add(o)

    def fused(self, op: Op) -> bool:
        return op.integer and all(self.source(x) in self.paired for x in op.inputs) and all(o in self.paired for o in op.outputs)

    def prune(self) -> None:
        """Drop new pairs no fused reader reads, until stable.

        A Conv's output pair always stays (it fuses the Conv) unless a float layer reads that
        output too: then the Conv runs float in ORT all the same.
        """
        reads: dict[str, list[Op]] = {}
        for op in self.ops:
            for x in op.inputs:
                reads.setdefault(self.source(x), []).append(op)
        changed = True
        while changed:
            changed = False
            for t, producer in list(self.new.items()):
                if producer.integer and producer.node.op_type == "Conv" and not self.read_by_float_layer(t):
                    continue
                if self._costs_more(t, producer, reads.get(t, [])) or not any(self.fused(r) for r in reads.get(t, [])):
                    del self.new[t]
                    self.paired.discard(t)
                    changed = True


    def _costs_more(self, t: str, producer: Op, readers: list[Op]) -> bool:
        """A new pair on a float tensor (a layer fused with a float output, or a float op) that some reader still reads
        as float: its QuantizeLinear and that reader's DequantizeLinear are two passes more, for readers that at most
        run an elementwise op on uint8 (the layers' own inputs have their pairs already). GELU's ``x * (1 + erf) / 2``
        after a MatMul: MiniLM ran 7% slower with that Mul as QLinearMul."""
        if producer.integer and producer.node.op_type not in FLOAT_OUT_LAYERS:
            return False
        fused = {id(r.node) for r in readers if self.fused(r)}
        return any(id(r) not in fused for r in self.index.readers.get(t, []))


class _Writer:
    def __init__(self, planner: _Planner) -> None:
        self.p = planner
        self.g = planner.g
        self.used = used_names(self.g)
        self.params = {t: (p.scale, p.zero_point) for t, p in planner.pairs.items()}
        self.dq_of = {t: p.dq_output for t, p in planner.pairs.items()}
        self.inserted: dict[str, list[onnx.NodeProto]] = {}
        self.result = ChainResult()

    def _scalars(self, base: str, scale: float, zero_point: int) -> tuple[str, str]:
        return (add_scalar(self.g, self.used, f"{base}_scale", scale, np.float32),
                add_scalar(self.g, self.used, f"{base}_zero_point", zero_point, np.uint8))

    def _read_dq(self, tensor: str, own_q: str | None = None) -> None:
        """Every reader of ``tensor`` but its pair's own QuantizeLinear (output ``own_q``) and the layers ``qdq`` left float reads the DequantizeLinear."""
        for reader in self.p.index.readers.get(tensor, []):
            if own_q is not None and reader.op_type == "QuantizeLinear" and reader.output[0] == own_q:
                continue
            if self.p.float_layer(reader):  # stays float: not quantized behind qdq's back
                continue
            for i, x in enumerate(reader.input):
                if x == tensor:
                    reader.input[i] = self.dq_of[tensor]
                    self.result.redirected += 1

    def _new_pair(self, tensor: str, params: tuple[float, int]) -> None:
        s, z = self._scalars(f"{tensor}_u8", *params)
        q_out, dq_out = unique_name(f"{tensor}_u8_quantized", self.used), unique_name(f"{tensor}_u8_dequantized", self.used)
        self.dq_of[tensor] = dq_out
        self._read_dq(tensor)
        self.inserted[tensor] = [
            onnx.helper.make_node("QuantizeLinear", [tensor, s, z], [q_out], name=unique_name(f"{tensor}_u8_QuantizeLinear", self.used)),
            onnx.helper.make_node("DequantizeLinear", [q_out, s, z], [dq_out], name=unique_name(f"{tensor}_u8_DequantizeLinear", self.used)),
        ]

    def _set_params(self, pair: Pair, params: tuple[float, int]) -> None:
        if params == (pair.scale, pair.zero_point):
            return
        s, z = self._scalars(f"{pair.tensor}_u8", *params)
        for node in [pair.q, *pair.dqs]:
            node.input[1], node.input[2] = s, z
        pair.scale, pair.zero_point = params
        self.params[pair.tensor] = params

    def _refit(self) -> None:
        """Existing pairs over their calibrated range (asymmetric) instead of the symmetric [-amax, amax]."""
        for t, pair in self.p.pairs.items():
            producer = self.p.index.producer.get(t)
            bounds = _activation_bounds(producer, self.g, self.p.index) if producer is not None else None
            params = self.p.params_for(t, bounds or (False, None))
            if params is not None:
                self._set_params(pair, params)
                self.result.refit.append(t)

    def write(self, refit: bool) -> ChainResult:
        if refit:
            self._refit()
        for op in self.p.ops:
            if not op.integer:  # a float op: its output paired for a fused reader
                params = self.p.params_for(op.outputs[0], op.clip)
                if op.outputs[0] in self.p.new and params is not None:
                    self._new_pair(op.outputs[0], params)
                    self.params[op.outputs[0]] = params
                    self.result.added.append(op.outputs[0])
                continue
            if not self.p.fused(op):
                continue
            for i, x in enumerate(op.node.input):  # a fused op reads every input dequantized
                if x in op.inputs and x in self.p.pairs and x not in self.p.dq_source:
                    op.node.input[i] = self.dq_of[x]
                    self.result.redirected += 1
            same_grid = op.node.op_type in SAME_GRID
            for o in op.outputs:
                params = self.params[self.p.source(op.inputs[0])] if same_grid else None
                if o in self.p.new:
                    params = params or self.p.params_for(o, op.clip)
                    if params is None:  # the planner admitted o because its range gives parameters
                        raise AssertionError(f"no parameters for {o}")
                    self._new_pair(o, params)
                    (self.result.same_grid if same_grid else self.result.added).append(o)
                else:
                    pair = self.p.pairs[o]
                    if params is not None:
                        self._set_params(pair, params)
                        self.result.same_grid.append(o)
                    self._read_dq(o, own_q=pair.q.output[0])
                self.params[o] = params or self.params[o]
        if self.inserted:
            order: list[onnx.NodeProto] = []
            for node in self.g.node:
                order.append(node)
                for o in node.output:
                    order.extend(self.inserted.get(o, []))
            replace_repeated(self.g.node, order)
        return self.result


def extend_chain(g: onnx.GraphProto, ranges: dict[str, ActivationRange], opset: int, refit: bool = False, extend: bool = True) -> ChainResult:
    """Add and re-parameterize uint8 pairs in ``g`` (edited in place) so ORT fuses its quantized layers; what was done.

    ``refit``: the pairs already there take their calibrated range too (asymmetric, finer
    steps than the symmetric grid where the tensor is mostly of one sign). ``extend=False``
    adds no pair (only ``refit`` then applies).
    """
    planner = _Planner(g, ranges, opset)
    if extend:
        planner.forward()
        planner.prune()
    return _Writer(planner).write(refit)
