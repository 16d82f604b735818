"""dynamic_batch rules for ops that move dims around: Reshape, Flatten, Transpose, Squeeze, Unsqueeze.

Reshape is where exporters bake the batch most often (``view(1, -1)``,
``reshape(1 * heads, seq, dim)``). The rule finds which output dim holds the
batch after the reshape and, when the shape input would not produce it at
another batch, writes a new shape with 0 (copy the batch dim) or -1 there.
"""

from __future__ import annotations

import math

import onnx

from converter.passes.dynamic_batch._analysis import Analysis, Refuse
from converter.passes.dynamic_batch._flags import BDim, Flag, attr, fmt_flag, norm_axis, set_attr
from converter.passes.dynamic_batch._values import Lin, NotLinear, as_list


def shape_text(values: list[Lin] | None) -> str:
    return "a computed value" if values is None else "[" + ", ".join(map(str, values)) + "]"


def _prod(xs: list[int] | tuple[int, ...]) -> int:
    return int(math.prod(xs))


def _only_flag(a: Analysis, node: onnx.NodeProto, name: str) -> tuple[int, BDim] | None:
    flagged = [(i, f) for i, f in enumerate(a.flags_of(name)) if f is not None]
    if len(flagged) > 1:
        raise Refuse(f"'{name}' carries the batch in more than one dim ({', '.join(str(i) for i, _ in flagged)})")
    return flagged[0] if flagged else None


def _lin_product(dims: list[Lin]) -> Lin:
    total = Lin(1)
    for d in dims:
        total = total * d
    return total


def _reshape_shape(a: Analysis, node: onnx.NodeProto) -> list[Lin] | None:
    """The shape Reshape reads: its second input, or its ``shape`` attribute before opset 5."""
    if len(node.input) > 1 and node.input[1]:
        v = a.value(node.input[1])
        return None if v is None else as_list(v)
    return [Lin(x) for x in attr(node, "shape", [])]


def _reshape_result(a: Analysis, node: onnx.NodeProto) -> list[Lin] | None:
    """What Reshape's output dims are at run time with its current shape input, or None if unknown."""
    v = _reshape_shape(a, node)
    in_dims = a.lin_dims(node.input[0])
    if v is None or in_dims is None:
        return None
    allowzero = int(attr(node, "allowzero", 0))
    res: list[Lin | None] = []
    free = None
    for i, e in enumerate(v):
        if e == Lin(0) and not allowzero:
            if i >= len(in_dims):
                return None
            res.append(in_dims[i])
        elif e == Lin(-1):
            free = i
            res.append(None)
        else:
            res.append(e)
    if free is not None:
        try:
            total = _lin_product(in_dims)
            others = _lin_product([x for x in res if x is not None])
        except NotLinear:
            return None
        if others.k == 0 and others.c:
            try:
                res[free] = total.div(others)
            except NotLinear:
                return None
        elif others.c == 0 and total.c == 0 and others.k and total.k % others.k == 0:
            res[free] = Lin(total.k // others.k)
        else:
            return None
    return res  # type: ignore[return-value]


def _reshape_targets(in_dims: tuple[int, ...], p: int, fp: BDim, out_dims: tuple[int, ...], B: int) -> list[tuple[tuple[int, int, bool, int], BDim]]:
    """Output dims that can hold the batch dim ``p`` after the reshape, best first.

    In memory the input is ``[before * outer, batch, k * after]``; an output dim
    ``j`` holds the batch when the static dims before it divide ``before * outer``
    (what is left, ``outer_j``, sits outside the batch in that dim). Best: the
    batch outermost in its dim (smallest ``outer``), then the smallest ``k``
    (static dims stay static), then the batch staying at its position. The pass
    retries the next reading when a later node refuses the first.
    """
    before, after = _prod(in_dims[:p]), _prod(in_dims[p + 1:])
    found = []
    if len(fp.parts) > 1:  # a concatenation along the batch survives only as an untouched dim
        for j, o in enumerate(out_dims):
            if o == in_dims[p] and _prod(out_dims[:j]) == before and _prod(out_dims[j + 1:]) == after:
                found.append(((0, 1, j != p, j), fp))
        return found
    outside = before * fp.outer
    for j, o in enumerate(out_dims):
        q = _prod(out_dims[:j])
        if o <= 0 or q <= 0 or outside % q:
            continue
        outer_j = outside // q
        if o % (outer_j * B):
            continue
        k_j = o // (outer_j * B)
        found.append(((outer_j, k_j, j != p, j), BDim((k_j,), outer_j)))
    return sorted(found)


def reshape(node: onnx.NodeProto, a: Analysis) -> None:
    data, out = node.input[0], node.output[0]
    found = _only_flag(a, node, data)
    if found is None:
        if len(node.input) > 1 and a.value_depends(node.input[1]):
            raise Refuse("its shape depends on the batch but its data does not")
        return
    p, fp = found
    in_dims, out_dims = a.static_dims(data), a.static_dims(out)
    targets = _reshape_targets(in_dims, p, fp, out_dims, a.B)
    if not targets:
        raise Refuse(f"it moves the batch (dim {p} of {list(in_dims)}, {fmt_flag(fp)}) to no dim of {list(out_dims)}: samples would be interleaved")
    (_, _, _, j), flag = targets[a.choose(len(targets)) if len(targets) > 1 else 0]
    a.set_flags(out, tuple(flag if i == j else None for i in range(len(out_dims))))
    intended = [Lin(d) for d in out_dims]
    intended[j] = Lin(0, flag.total)
    if _reshape_result(a, node) == intended:
        return
    allowzero = int(attr(node, "allowzero", 0))
    new = list(out_dims)
    if not allowzero and j == p and flag == fp:
        new[j] = 0
    else:
        if allowzero and 0 in out_dims:
            raise Refuse("allowzero=1 with an empty dim leaves no way to write the batch dim as -1")
        new[j] = -1
    old = _reshape_shape(a, node)
    if len(node.input) > 1 and node.input[1]:
        node.input[1] = a.edits.const_int64(new, base="reshape_shape")
    else:
        set_attr(node, "shape", new)
    a.rewrote(node, f"shape {shape_text(old)} → {new}")


def flatten(node: onnx.NodeProto, a: Analysis) -> None:
    data = node.input[0]
    flags = a.flags_of(data)
    dims = a.static_dims(data)
    raw = int(attr(node, "axis", 1))
    axis = raw + len(dims) if raw < 0 else raw
    if not 0 <= axis <= min(len(dims), len(flags)):
        raise Refuse(f"axis {raw} is out of range for rank {len(dims)}")
    out: list[Flag] = [None, None]
    for part, (lo, hi) in enumerate(((0, axis), (axis, len(dims)))):
        flagged = [(i, f) for i in range(lo, hi) if (f := flags[i]) is not None]
        if not flagged:
            continue
        if len(flagged) > 1:
            raise Refuse("it merges two dims that carry the batch")
        i, f = flagged[0]
        before, rest = _prod(dims[lo:i]), _prod(dims[i + 1:hi])
        if len(f.parts) > 1:
            if before != 1 or rest != 1:
                raise Refuse(f"it merges a concatenation along the batch ({fmt_flag(f)}) with other dims")
            out[part] = f
        else:
            out[part] = BDim((f.parts[0] * rest,), f.outer * before)
    a.set_flags(node.output[0], out)


def transpose(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    perm = attr(node, "perm") or list(reversed(range(len(flags))))
    a.set_flags(node.output[0], [flags[p] for p in perm])


def _axes_of(node: onnx.NodeProto, a: Analysis, what: str = "axes") -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        return a.static_ints(node.input[1], what)
    got = attr(node, "axes")
    return None if got is None else list(got)


def squeeze(node: onnx.NodeProto, a: Analysis) -> None:
    data = node.input[0]
    flags = a.flags_of(data)
    axes = _axes_of(node, a)
    if axes is None:
        dims = a.static_dims(data)
        removed = [i for i, d in enumerate(dims) if d == 1]
    else:
        removed = sorted(norm_axis(x, len(flags)) for x in axes)
    hit = [i for i in removed if flags[i] is not None]
    if hit:
        raise Refuse(f"it removes dim {hit[0]}, which carries the batch")
    if axes is None:  # without axes it would also drop the batch dim at run-time batch 1
        if a.opset >= 13:
            node.input.append(a.edits.const_int64(removed, base="squeeze_axes"))
        else:
            set_attr(node, "axes", removed)
        a.rewrote(node, f"axes made explicit {removed} so a run-time batch of 1 is not squeezed away")
    a.set_flags(node.output[0], [f for i, f in enumerate(flags) if i not in removed])


def unsqueeze(node: onnx.NodeProto, a: Analysis) -> None:
    flags = list(a.flags_of(node.input[0]))
    axes = _axes_of(node, a)
    if axes is None:
        raise Refuse("it has no axes")
    rank = len(flags) + len(axes)
    for ax in sorted(norm_axis(x, rank) for x in axes):
        flags.insert(ax, None)
    a.set_flags(node.output[0], flags)


RESHAPE_RULES = {
    "Reshape": reshape,
    "Flatten": flatten,
    "Transpose": transpose,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
}
