"""dynamic_batch rules for ops that compute: elementwise, matmul, conv-like, reductions, recurrences.

The question each rule answers: does this op keep samples independent? Ops that
mix values across the batch dim (a reduction or softmax over it, a contraction
over it) are refused; the others pass the batch dim through.
"""

from __future__ import annotations

import onnx

from converter.passes.dynamic_batch._analysis import Analysis, Refuse, Rule
from converter.passes.dynamic_batch._flags import Flag, attr, fmt_flag, norm_axis
from converter.passes.dynamic_batch._trace import shared_with_batch
from converter.passes.dynamic_batch.rules._control import CONTROL_RULES
from converter.passes.dynamic_batch.rules._shape import SHAPE_RULES


def _uses_batch_size_as_value(node: onnx.NodeProto, a: Analysis) -> None:
    """A float op computing with the batch size itself (x / batch) changes what one sample gets."""
    dep = [x for x in node.input if a.value_depends(x)]
    if dep and any(o and o not in a.values for o in node.output):
        raise Refuse(f"it computes with the batch size as a value (from '{dep[0]}')")


def _broadcast(node: onnx.NodeProto, a: Analysis, indices: list[int], drop_tail: int = 0) -> list[Flag]:
    """Flags of the numpy-broadcast of the given inputs (ignoring their last ``drop_tail`` dims)."""
    names = [node.input[i] for i in indices]
    flags = [a.flags_of(x)[: len(a.flags_of(x)) - drop_tail] for x in names]
    rank = max(len(f) for f in flags)
    out: list[Flag] = []
    for pos in range(-rank, 0):
        here = [(i, f[pos] if len(f) >= -pos else None, len(f)) for i, f in zip(indices, flags)]
        seen = {f for _, f, _ in here if f is not None}
        if not seen:
            out.append(None)
            continue
        if len(seen) > 1:
            raise Refuse(f"its inputs carry the batch differently at dim {rank + pos} ({', '.join(sorted(map(fmt_flag, seen)))})")
        f = seen.pop()
        for i, g, r in here:
            if g is not None or r < -pos:
                continue
            full = len(a.flags_of(node.input[i]))
            p = full - drop_tail + pos
            if a.static_dims(node.input[i])[p] == 1:
                shared_with_batch(a, node.input[i], p)  # an input's batch dim of size 1 stops the walk here
                continue  # broadcast of one value to every sample
            a.require(node, i, p, f)
        out.append(f)
    return out


def elementwise(node: onnx.NodeProto, a: Analysis) -> None:
    _uses_batch_size_as_value(node, a)
    flags = _broadcast(node, a, [i for i, x in enumerate(node.input) if x])
    for o in node.output:
        a.set_flags(o, flags)


def unary(node: onnx.NodeProto, a: Analysis) -> None:
    """Shape-preserving ops of one data input (activations, Cast, Clip, Dropout in inference)."""
    others = [x for x in node.input[1:] if x and a.batched(x)]
    if others:
        raise Refuse(f"its parameter input '{others[0]}' carries the batch")
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        raise Refuse("it has a training_mode input (random per sample)")
    a.set_like(node, a.flags_of(node.input[0]), range(len(node.output)))


def quantize_linear(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    axis = norm_axis(int(attr(node, "axis", 1)), len(flags)) if flags else 0
    per_axis = any(len(a.static.get(x, ())) >= 1 and a.static.get(x) != (1,) for x in node.input[1:3] if x)
    if per_axis and flags and flags[axis] is not None:
        raise Refuse(f"it quantizes per channel along the batch dim {axis}")
    unary(node, a)


N_FIRST: dict[str, tuple[int, ...]] = {
    op: (0,) for op in (
        "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
        "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization",
        "GroupNormalization", "LRN", "DepthToSpace", "SpaceToDepth", "Col2Im",
    )
}
N_FIRST["GridSample"] = (0, 1)
N_FIRST["DeformConv"] = (0, 2, 4)


def n_first(node: onnx.NodeProto, a: Analysis) -> None:
    """Ops on [N, C, ...] tensors that treat each sample on its own."""
    if node.op_type == "BatchNormalization" and int(attr(node, "training_mode", 0)):
        raise Refuse("training-mode batch normalization averages over the batch")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        raise Refuse("its Indices output counts positions across the whole batch")
    per_sample = N_FIRST[node.op_type]
    flag: Flag = None
    for i, x in enumerate(node.input):
        if not x or not a.batched(x):
            continue
        f = a.flags_of(x)
        if i not in per_sample or any(g is not None for g in f[1:]):
            raise Refuse(f"input '{x}' carries the batch outside dim 0 of a per-sample input")
        if flag is not None and f[0] != flag:
            raise Refuse("its inputs carry the batch differently")
        flag = f[0]
    if flag is None:
        raise Refuse("its batch-dependent inputs are not per-sample tensors")
    for i in per_sample:
        if i < len(node.input) and node.input[i] and not a.batched(node.input[i]):
            a.require(node, i, 0, flag)
    rank = a.rank(node.output[0])
    a.set_flags(node.output[0], (flag, *([None] * (rank - 1))))


def _check_axis_free(a: Analysis, flags: tuple[Flag, ...], axes: list[int], what: str) -> None:
    for ax in axes:
        if flags[ax] is not None:
            raise Refuse(f"it {what} over the batch dim {ax}")


def softmax_like(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    rank = len(flags)
    if node.op_type in ("Softmax", "LogSoftmax", "Hardmax") and a.opset < 13:
        axis = norm_axis(int(attr(node, "axis", 1)), rank)
        _check_axis_free(a, flags, list(range(axis, rank)), "normalizes (coerced to 2-D)")
    elif node.op_type in ("LayerNormalization", "RMSNormalization"):
        axis = norm_axis(int(attr(node, "axis", -1)), rank)
        _check_axis_free(a, flags, list(range(axis, rank)), "normalizes")
        a.set_flags(node.output[0], flags)
        for o in node.output[1:]:
            a.set_flags(o, [f if i < axis else None for i, f in enumerate(flags)])
        return
    else:
        axis = norm_axis(int(attr(node, "axis", -1)), rank)
        _check_axis_free(a, flags, [axis], "normalizes")
    a.set_like(node, flags, range(len(node.output)))


def cumsum(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    axis = norm_axis(a.static_ints(node.input[1], "axis")[0], len(flags))
    _check_axis_free(a, flags, [axis], "accumulates")
    a.set_flags(node.output[0], flags)


def topk(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    axis = norm_axis(int(attr(node, "axis", -1)), len(flags))
    _check_axis_free(a, flags, [axis], "ranks")
    a.set_like(node, flags, range(len(node.output)))


def _reduced(flags: tuple[Flag, ...], axes: list[int], keepdims: bool) -> list[Flag]:
    if keepdims:
        return [None if i in axes else f for i, f in enumerate(flags)]
    return [f for i, f in enumerate(flags) if i not in axes]


def argmax(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    axis = norm_axis(int(attr(node, "axis", 0)), len(flags))
    _check_axis_free(a, flags, [axis], "takes the arg max/min")
    a.set_flags(node.output[0], _reduced(flags, [axis], bool(attr(node, "keepdims", 1))))


_AXES_AS_INPUT_SINCE = {"ReduceSum": 13}


def reduce(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    rank = len(flags)
    since = _AXES_AS_INPUT_SINCE.get(node.op_type, 18)
    if a.opset >= since:
        axes = a.static_ints(node.input[1], "axes") if len(node.input) > 1 and node.input[1] else []
        if not axes and int(attr(node, "noop_with_empty_axes", 0)):
            a.set_flags(node.output[0], flags)
            return
    else:
        axes = list(attr(node, "axes", []))
    axes = [norm_axis(x, rank) for x in axes] or list(range(rank))
    _check_axis_free(a, flags, axes, "reduces")
    a.set_flags(node.output[0], _reduced(flags, axes, bool(attr(node, "keepdims", 1))))


def mvn(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    axes = [norm_axis(x, len(flags)) for x in attr(node, "axes", [0, 2, 3])]
    _check_axis_free(a, flags, axes, "normalizes")
    a.set_flags(node.output[0], flags)


def lp_norm(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    _check_axis_free(a, flags, [norm_axis(int(attr(node, "axis", -1)), len(flags))], "normalizes")
    a.set_flags(node.output[0], flags)


def trilu(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    _check_axis_free(a, flags, [len(flags) - 2, len(flags) - 1], "masks a triangle")
    unary(node, a)


def matmul(node: onnx.NodeProto, a: Analysis) -> None:
    ia, ib = (0, 3) if node.op_type == "QLinearMatMul" else (0, 1)
    fa, fb = a.flags_of(node.input[ia]), a.flags_of(node.input[ib])
    if fa[-1] is not None or (len(fb) >= 2 and fb[-2] is not None) or (len(fb) == 1 and fb[0] is not None):
        raise Refuse("it contracts over the batch dim")
    batch = _broadcast(node, a, [ia, ib], drop_tail=2) if max(len(fa), len(fb)) > 2 else []
    tail: list[Flag] = []
    if len(fa) >= 2:
        tail.append(a.flags_of(node.input[ia])[-2])
    if len(fb) >= 2:
        tail.append(fb[-1])
    a.set_flags(node.output[0], [*batch, *tail])


def gemm(node: onnx.NodeProto, a: Analysis) -> None:
    fa, fb = a.flags_of(node.input[0]), a.flags_of(node.input[1])
    m, ka = (1, 0) if int(attr(node, "transA", 0)) else (0, 1)
    n, kb = (0, 1) if int(attr(node, "transB", 0)) else (1, 0)
    if fa[ka] is not None or fb[kb] is not None:
        raise Refuse("it contracts over the batch dim")
    out: list[Flag] = [fa[m], fb[n]]
    if len(node.input) > 2 and node.input[2]:
        fc = a.flags_of(node.input[2])
        cdims = a.static_dims(node.input[2])
        for pos in range(-len(fc), 0):
            f, o = fc[pos], out[pos]
            if f is not None and o is not None and f != o:
                raise Refuse("its bias carries the batch differently from the product")
            if f is not None:
                out[pos] = f
            elif o is not None and cdims[pos] != 1:
                a.require(node, 2, len(fc) + pos, o)
            elif o is not None:
                shared_with_batch(a, node.input[2], len(fc) + pos)
    a.set_flags(node.output[0], out)


def einsum(node: onnx.NodeProto, a: Analysis) -> None:
    raw = attr(node, "equation", b"")
    eq = (raw.decode() if isinstance(raw, bytes) else str(raw)).replace(" ", "")
    if "..." in eq:
        raise Refuse("its equation uses '...', which this pass does not follow")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if not rhs and "->" not in eq:
        counts = {c: lhs.count(c) for c in set(lhs.replace(",", ""))}
        rhs = "".join(sorted(c for c, n in counts.items() if n == 1))
    letters: dict[str, Flag] = {}
    for i, term in enumerate(terms):
        for c, f in zip(term, a.flags_of(node.input[i])):
            if f is None:
                continue
            if letters.get(c) not in (None, f):
                raise Refuse(f"index '{c}' carries the batch differently in two inputs")
            letters[c] = f
    for c, f in letters.items():
        if f is not None and c not in rhs:
            raise Refuse(f"it sums over index '{c}', which carries the batch")
    for i, term in enumerate(terms):
        dims = a.static_dims(node.input[i])
        for pos, c in enumerate(term):
            f = letters.get(c)
            if f is not None and a.flags_of(node.input[i])[pos] is None and dims[pos] != 1:
                a.require(node, i, pos, f)
    a.set_flags(node.output[0], [letters.get(c) for c in rhs])


def recurrent(node: onnx.NodeProto, a: Analysis) -> None:
    """LSTM, GRU, RNN: X is [seq, batch, in] (layout 0) or [batch, seq, in]; initial states follow the batch."""
    layout = int(attr(node, "layout", 0))
    bpos, spos = (1, 0) if layout == 0 else (0, 1)
    fx = a.flags_of(node.input[0])
    if fx[spos] is not None or fx[2] is not None:
        raise Refuse(f"its input X carries the batch at dim {spos if fx[spos] is not None else 2}, not at the batch dim {bpos} (layout={layout})")
    f = fx[bpos]
    weights = [x for x in node.input[1:4] if x and a.batched(x)]
    if f is None or weights:
        raise Refuse("its weights carry the batch" if weights else "its initial state carries the batch but X does not")
    if f.k is None:
        raise Refuse(f"X holds the batch as {fmt_flag(f)}, not as a plain batch dim")
    state_pos = 1 if layout == 0 else 0
    n_states = 2 if node.op_type == "LSTM" else 1
    if len(node.input) > 4 and node.input[4]:
        a.require(node, 4, 0, f)
    for idx in range(5, 5 + n_states):
        if len(node.input) > idx and node.input[idx]:
            a.require(node, idx, state_pos, f)
    if node.op_type == "LSTM" and len(node.input) > 7 and node.input[7] and a.batched(node.input[7]):
        raise Refuse("its peephole weights carry the batch")
    y_pos = 2 if layout == 0 else 0
    for i, o in enumerate(node.output):
        if not o:
            continue
        rank = a.rank(o)
        pos = y_pos if i == 0 else state_pos
        a.set_flags(o, [f if d == pos else None for d in range(rank)])


def refuse_batched(node: onnx.NodeProto, a: Analysis) -> None:
    raise Refuse(REFUSED[node.op_type])


def fallback(node: onnx.NodeProto, a: Analysis) -> None:
    """An op this pass has no rule for: accepted only as a per-sample op with the batch at dim 0."""
    _uses_batch_size_as_value(node, a)
    batched = [x for x in node.input if x and a.batched(x)]
    if not batched:
        return
    first = a.flags_of(node.input[0]) if node.input and node.input[0] else ()
    if not first or first[0] is None or any(f is not None for f in first[1:]) or batched != [node.input[0]]:
        raise Refuse("no rule for this op, and it is not a per-sample op with the batch in dim 0 of its first input only")
    d0 = a.static_dims(node.input[0])[0]
    for o in node.output:
        if o and (a.static.get(o) is None or not a.static[o] or a.static[o][0] != d0):
            raise Refuse(f"no rule for this op, and its output '{o}' does not keep dim 0 of its input")
    for o in node.output:
        if o:
            a.set_flags(o, (first[0], *([None] * (len(a.static[o]) - 1))))
    a.assume(node, "no rule for this op; assumed to treat each sample on its own (the batch stays in dim 0)")


ELEMENTWISE = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "PRelu",
)
UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Erf", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Softplus",
    "Softsign", "Selu", "Elu", "Celu", "ThresholdedRelu", "HardSigmoid", "HardSwish", "Mish", "Gelu", "Identity", "Cast",
    "CastLike", "Not", "IsNaN", "IsInf", "BitwiseNot", "Clip", "Dropout", "Shrink",
)
REFUSED: dict[str, str] = {
    **{op: "its output size depends on the data, which this pass does not follow across the batch" for op in (
        "NonZero", "Unique", "NonMaxSuppression", "Compress", "StringNormalizer", "SequenceConstruct",
        "SplitToSequence", "ConcatFromSequence", "SequenceInsert", "SequenceAt", "SequenceErase")},
    **{op: "it addresses samples through index values (batch indices, scatter targets) this pass cannot rewrite" for op in (
        "RoiAlign", "MaxRoiPool", "MaxUnpool", "ScatterND", "ScatterElements", "Scatter", "ReverseSequence")},
    **{op: "its random values would differ between one batch-N run and N batch-1 runs" for op in (
        "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")},
    "DynamicQuantizeLinear": "its quantization range is computed over the whole tensor, all samples together",
}
REDUCE = (
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
)


def all_rules() -> dict[str, Rule]:
    rules: dict[str, Rule] = dict(SHAPE_RULES)
    rules.update({op: elementwise for op in ELEMENTWISE})
    rules.update({op: unary for op in UNARY})
    rules.update({op: n_first for op in N_FIRST})
    rules.update({op: refuse_batched for op in REFUSED})
    rules.update({op: reduce for op in REDUCE})
    rules.update({op: softmax_like for op in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "RMSNormalization")})
    rules.update(CONTROL_RULES)
    rules.update({op: recurrent for op in ("LSTM", "GRU", "RNN")})
    rules.update({op: matmul for op in ("MatMul", "MatMulInteger", "QLinearMatMul")})
    rules.update({"QuantizeLinear": quantize_linear, "DequantizeLinear": quantize_linear})
    rules.update({
        "Gemm": gemm, "Einsum": einsum, "CumSum": cumsum, "TopK": topk, "ArgMax": argmax, "ArgMin": argmax,
        "MeanVarianceNormalization": mvn, "LpNormalization": lp_norm, "Trilu": trilu,
    })
    return rules
