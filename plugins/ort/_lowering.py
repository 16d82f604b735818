"""Lower the canonical symmetric-int8 Q/DQ graph to the forms ONNX Runtime's CPU kernels fuse.

The passes write what every backend reads (DESIGN.md, Precision): symmetric int8, zero
point 0. ONNX Runtime's CPU execution provider turns ``DequantizeLinear → Conv →
QuantizeLinear`` into ``QLinearConv`` only when nothing sits between the Conv and its
Q; a ReLU/ReLU6 (``Relu``, ``Clip(min>=0)``) does, unless the Q's own range makes it
redundant, which ORT then removes (its ClipQuantFusion/ReluQuantFusion). A symmetric
int8 Q spans [-amax, amax], so the activation stays; ORT falls back to float Conv with
Q/DQ around it, slower than fp32.

The steps, in order, each in its own module:

0. ``_hardswish``: a written-out HardSwish (Add, Clip, Mul, Div) becomes ``x * HardSigmoid(x)`` or ``HardSwish``.
1. ``_pads``: a constant zero Pad before a Conv goes into the Conv's pads.
2. Here: for every activation Q/DQ pair whose input is non-negative by construction (the
   output of Relu, or of Clip with a constant min >= 0) the pair is re-expressed as uint8
   with zero point 0 and scale amax/255: the same range [0, amax], twice the resolution,
   and the activation becomes redundant so ORT fuses the Conv. Every other activation
   pair becomes uint8 with zero point 128 and the same scale: exactly the same grid
   (q_u8 = q_s8 + 128, both saturating at the same values), in the u8 activation / s8
   weight form ORT's CPU kernels are fastest with. A pair after an op with a known floor
   (HardSwish, SiLU: ``converter.activation_floors``) spans [floor, amax] instead.
3. ``_chain``: with the activation ranges ``qdq`` records in the model (``_ranges``; for a model quantized
   elsewhere, which carries none, those of Conv outputs before SiLU/HardSwish derived from the pairs after them:
   ``_derived``), new
   uint8 pairs after the quantized layers and through the ops ORT runs on uint8 (SiLU's
   Sigmoid and Mul, Add, Concat, pooling, reshapes), so every quantized Conv fuses even
   when a SiLU, HardSwish or PReLU follows it; with ``refit`` the pairs of step 2 are
   re-expressed over their own calibrated range (asymmetric: finer steps where a tensor
   is mostly of one sign, as after SiLU or HardSwish). Without ranges this step does nothing.
   ``_gates``: a HardSwish between uint8 pairs gets a uint8 pair on its gate, so its Mul runs as QLinearMul.
4. ``_weights``: the weights read with uint8 activations, int8 where ORT's U8S8 kernels
   are exact, uint8/128 where they saturate (x86-64 without VNNI; ``_cpu``).
5. ``_gemm``: a quantized Gemm whose output stays float becomes ORT's MatMulIntegerToFloat, and so does a quantized
   MatMul with the bias Add after it (the bias goes into the op).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from converter.activation_floors import uint8_grid
from converter.graph_edit import node_inputs, replace_repeated
from converter.plugins.ort._chain import extend_chain
from converter.plugins.ort._cpu import u8s8_is_exact
from converter.plugins.ort._derived import derived_ranges
from converter.plugins.ort._gates import quantize_gates
from converter.plugins.ort._gemm import MS_DOMAIN, gemms_to_integer_matmul, matmuls_with_bias
from converter.plugins.ort._graph import GraphIndex, const_value, in_default_domain
from converter.plugins.ort._hardswish import collapse_written_out
from converter.plugins.ort._pads import fold_pads
from converter.plugins.ort._ranges import activation_ranges
from converter.plugins.ort._weights import float_input_layers, store_weights

WeightForm = Literal["auto", "s8", "s7", "u8"]
"""``s8``: int8 weights (U8S8 kernels); ``s7``: int8 weights within +-63 (U8S8 kernels, exact everywhere); ``u8``: uint8 weights,
zero point 128 (U8U8 kernels, exact everywhere, slower); ``auto``: ``s8`` where U8S8 is exact on this CPU, else ``u8``
(``s7`` is as fast as ``s8`` but its coarser weights lost accuracy: EfficientNet-Lite0 cosine 0.9944 -> 0.871)."""


@dataclass
class Lowering:
    model: onnx.ModelProto
    lowered: list[str] = field(default_factory=list)
    """Tensors whose Q/DQ pair became uint8 (zero point 0, scale amax/255)."""
    shifted: list[str] = field(default_factory=list)
    """Tensors whose Q/DQ pair became uint8 with zero point 128 (same grid as int8/0)."""
    weights: Literal["s8", "s7", "u8"] = "s8"
    """The weight form chosen (``auto`` resolved): ``s8`` keeps int8 weights, ``s7`` puts them on 7 bits, ``u8`` stores them as uint8/128."""
    u8_weights: list[str] = field(default_factory=list)
    """Weight initializers stored in the ``u8`` or ``s7`` form: int8 ones shifted (u8) or put on 7 bits (s7), float ones quantized per channel."""
    added: list[str] = field(default_factory=list)
    """Tensors given a new uint8 pair from their calibrated range (``_chain``)."""
    same_grid: list[str] = field(default_factory=list)
    """Tensors of reshapes, pooling, Split... whose pair now has their input's parameters (ORT runs the op on uint8)."""
    refit: list[str] = field(default_factory=list)
    """Existing pairs re-expressed over their calibrated range (asymmetric uint8)."""
    gemms_as_matmul: list[str] = field(default_factory=list)
    """Quantized Gemms with a float output rewritten as ORT's MatMulIntegerToFloat (``_gemm``)."""
    matmuls_with_bias: list[str] = field(default_factory=list)
    """Quantized MatMuls and the bias Add after them, as one MatMulIntegerToFloat with its bias (``_gemm``)."""
    gates_quantized: int = 0
    """HardSwish gates given a uint8 pair so ORT runs the Mul as QLinearMul (``_gates``)."""
    hardswish_collapsed: int = 0
    """Written-out HardSwishes (Add, Clip, Mul, Div) rewritten as x * HardSigmoid(x) or HardSwish (``_hardswish``)."""
    floored: list[str] = field(default_factory=list)
    """Pairs after an op with a known floor (HardSwish, SiLU...) as uint8 over [floor, amax] (``converter.activation_floors``)."""
    folded_pads: list[str] = field(default_factory=list)
    """Pad nodes folded into the Convs after them."""
    ranges: int = 0
    """Calibrated ranges the model carried (0: none; then ``ranges_derived`` says what its pairs gave)."""
    ranges_derived: int = 0
    """Ranges derived from the pairs after SiLU/HardSwish for a model that carried none (``_derived``)."""


def resolve_weight_form(weights: WeightForm) -> Literal["s8", "s7", "u8"]:
    """``weights`` with ``auto`` decided for this CPU: ``s8`` where ORT's U8S8 kernels are exact, else ``u8``."""
    if weights == "auto":
        return "s8" if u8s8_is_exact() else "u8"
    if weights not in ("s8", "s7", "u8"):
        raise ValueError(f"weights must be 'auto', 's8', 's7' or 'u8', not {weights!r}")
    return weights


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _pairs_to_uint8(g: onnx.GraphProto, result: Lowering) -> set[str]:
    """Step 2: every symmetric int8 activation pair as uint8 (zero point 0 after Relu/Clip and other non-negative ops, over
    [floor, amax] after an op with a known floor (``converter.activation_floors``), else 128: the same grid); the Q outputs retyped.

    A Q whose output is a graph output keeps its int8 type: the model's interface does not change.
    """
    index = GraphIndex.of(g)
    inits, readers = index.inits, index.readers
    view = index.view()
    retyped: set[str] = set()
    for q in [n for n in g.node if n.op_type == "QuantizeLinear" and in_default_domain(n) and len(n.input) == 3]:
        if q.output[0] in index.outputs:
            continue
        scale, zp = const_value(g, inits, q.input[1]), const_value(g, inits, q.input[2])
        if scale is None or zp is None or scale.size != 1 or zp.dtype != np.int8 or int(zp.reshape(())) != 0:
            continue
        dqs = readers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" or list(d.input[1:3]) != list(q.input[1:3]) for d in dqs):
            continue  # only plain pairs sharing the Q's parameters
        base = q.output[0]
        s_name, z_name = f"{base}_u8_scale", f"{base}_u8_zero_point"
        grid = uint8_grid(q.input[0], view, float(scale.reshape(())) * 127.0)
        if grid is not None and grid[2] >= 0.0:  # after Relu/Clip: zero point 0, so ORT drops the activation
            new_scale, new_zero = grid[0], grid[1]
            result.lowered.append(q.input[0])
        elif grid is not None:  # the function's own floor (HardSwish: -0.375) instead of -amax: finer steps, nothing more clipped
            new_scale, new_zero = grid[0], grid[1]
            result.floored.append(q.input[0])
        else:
            new_scale, new_zero = float(scale.reshape(())), 128
            result.shifted.append(q.input[0])
        g.initializer.append(numpy_helper.from_array(np.array(new_scale, dtype=np.float32), s_name))
        g.initializer.append(numpy_helper.from_array(np.array(new_zero, dtype=np.uint8), z_name))
        for node in [q, *dqs]:
            node.input[1], node.input[2] = s_name, z_name
        retyped.add(base)
    return retyped


def lower_for_ort_cpu(model: onnx.ModelProto, weights: WeightForm = "auto", extend: bool = True, refit: bool = False) -> Lowering:
    """A copy of ``model`` in the forms ORT's CPU kernels fuse; ``model`` is not changed.

    ``weights`` chooses how the weights read with uint8 activations are stored (see
    :data:`WeightForm`); the choice made is :attr:`Lowering.weights`. ``extend`` adds
    pairs after the quantized layers from the ranges the model carries (``_chain``);
    ``refit`` re-expresses the pairs already there over their ranges too (off by default, as
    the backend's ``qdq_refit``).
    Raises :class:`~converter.plugins.ort._ranges.RangesError` when those ranges are malformed.
    """
    form = resolve_weight_form(weights)
    ranges = activation_ranges(model) if extend or refit else {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    result = Lowering(out, weights=form, ranges=len(ranges))
    result.hardswish_collapsed = collapse_written_out(g, _opset(out))
    result.folded_pads = fold_pads(g)
    if extend and not ranges:  # a Q/DQ model from elsewhere (QAT, another tool's PTQ): what its pairs bound
        ranges = derived_ranges(out)
        result.ranges_derived = len(ranges)
    retyped = _pairs_to_uint8(g, result)
    float_layers = float_input_layers(g)  # before the chain gives their inputs pairs: the layers qdq left float
    if ranges:
        chain = extend_chain(g, ranges, _opset(out), refit, extend)
        result.added, result.same_grid, result.refit = chain.added, chain.same_grid, chain.refit
    result.gates_quantized = quantize_gates(g)
    if form in ("u8", "s7"):
        result.u8_weights = store_weights(g, form, float_layers)
    result.gemms_as_matmul = gemms_to_integer_matmul(g)
    result.matmuls_with_bias = matmuls_with_bias(g)
    if (result.gemms_as_matmul or result.matmuls_with_bias) and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.add(domain=MS_DOMAIN, version=1)
    if retyped or result.u8_weights or result.folded_pads or result.hardswish_collapsed or result.gemms_as_matmul or result.matmuls_with_bias or result.gates_quantized:  # the Q outputs are uint8 now: drop their stale int8 annotations and the unread parameters
        read = {x for n in g.node for x in node_inputs(n)} | {i.name for i in g.input} | {o.name for o in g.output}  # subgraphs' reads too
        gone = {t.name for t in g.initializer if t.name not in read}
        produced = {o for n in g.node for o in n.output} | read
        replace_repeated(g.value_info, [v for v in g.value_info if v.name not in retyped and v.name not in gone and v.name in produced])
        replace_repeated(g.initializer, [t for t in g.initializer if t.name not in gone])
    return result
