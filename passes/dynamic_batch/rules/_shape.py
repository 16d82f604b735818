"""dynamic_batch rules for ops that join, cut or size tensors: Concat, Split, Slice, Gather, Expand, Tile, ...

Each rule sets the flags of the node's outputs and, where the node still holds
the old batch value (Slice ends, Split sizes, Resize sizes, Expand shapes under
an old batch > 1), rewrites that input.
"""

from __future__ import annotations

import onnx

from converter.passes.dynamic_batch._analysis import Analysis, Refuse
from converter.passes.dynamic_batch._flags import BDim, Flag, attr, fmt_flag, norm_axis, plain, set_attr
from converter.passes.dynamic_batch._values import Lin, as_list
from converter.passes.dynamic_batch.rules._reshape import RESHAPE_RULES, shape_text

INT64_MAX = 2**63 - 1
_TO_END = 2**31 - 1
"""Slice ends at or past this run to the end of the dim, whatever the batch."""


def concat(node: onnx.NodeProto, a: Analysis) -> None:
    names = list(node.input)
    flags = [a.flags_of(x) for x in names]
    rank = len(flags[0])
    axis = norm_axis(int(attr(node, "axis", 0)), rank)
    out: list[Flag] = []
    for pos in range(rank):
        here = [f[pos] for f in flags]
        if pos == axis:
            if all(f is None for f in here):
                out.append(None)
            elif any(f is None for f in here):
                raise Refuse(f"it joins batch data with fixed-size data along the batch dim {pos}")
            elif any(f.outer != 1 for f in here):  # type: ignore[union-attr]
                raise Refuse(f"it concatenates along a batch dim laid out as {fmt_flag(next(f for f in here if f.outer != 1))}")  # type: ignore[union-attr]
            else:
                out.append(BDim(tuple(k for f in here for k in f.parts)))  # type: ignore[union-attr]
            continue
        seen = {f for f in here if f is not None}
        if not seen:
            out.append(None)
            continue
        if len(seen) > 1:
            raise Refuse(f"its inputs carry the batch differently at dim {pos} ({', '.join(sorted(map(fmt_flag, seen)))})")
        f = seen.pop()
        for i, h in enumerate(here):
            if h is None:
                a.require(node, i, pos, f)
        out.append(f)
    a.set_flags(node.output[0], out)


def _segment_groups(f: BDim, sizes: list[int], B: int) -> list[BDim] | None:
    """Split segments ``f`` (each ``k * B`` long) into consecutive groups of these sizes, or None."""
    if f.outer != 1:
        return [f] if len(sizes) == 1 else None
    groups, i = [], 0
    for size in sizes:
        group: list[int] = []
        while i < len(f.parts) and sum(group) * B < size:
            group.append(f.parts[i])
            i += 1
        if sum(group) * B != size:
            return None
        groups.append(BDim(tuple(group)))
    return groups if i == len(f.parts) else None


def split(node: onnx.NodeProto, a: Analysis) -> None:
    data = node.input[0]
    flags = a.flags_of(data)
    axis = norm_axis(int(attr(node, "axis", 0)), len(flags))
    outs = [o for o in node.output]
    f = flags[axis]
    has_input = len(node.input) > 1 and bool(node.input[1])
    if f is None:
        if has_input and a.value_depends(node.input[1]):
            raise Refuse("its split sizes depend on the batch but the split dim does not")
        for o in outs:
            a.set_flags(o, flags)
        return
    sizes = [a.static_dims(o)[axis] for o in outs]
    groups = _segment_groups(f, sizes, a.B)
    if groups is None:
        raise Refuse(f"it splits the batch dim ({fmt_flag(f)}) into parts {sizes} that cut through samples")
    for o, g in zip(outs, groups):
        a.set_flags(o, tuple(g if i == axis else x for i, x in enumerate(flags)))
    intended = [Lin(0, g.total) for g in groups]
    if has_input:
        cur = a.value(node.input[1])
        if cur is not None and as_list(cur) == intended:
            return
    elif attr(node, "split") is None:
        return  # equal parts: they follow the batch
    if a.opset < 13:
        raise Refuse("its split sizes hold the old batch and opset < 13 cannot take them as a tensor")
    old = a.value(node.input[1]) if has_input else None
    sizes_tensor = a.edits.shape_tensor(intended, base="split_sizes")
    if has_input:
        node.input[1] = sizes_tensor
    else:
        while len(node.input) < 2:
            node.input.append("")
        node.input[1] = sizes_tensor
    a.rewrote(node, f"split {shape_text(None if old is None else as_list(old)) if has_input else sizes} → [{', '.join(map(str, intended))}]")


def _slice_params(node: onnx.NodeProto, a: Analysis, flags: tuple[Flag, ...]) -> tuple[list[Lin], list[Lin], list[int], list[int]] | None:
    """starts, ends, axes, steps; None when the slice leaves every batch dim alone (bounds need not be known)."""
    rank = len(flags)
    if a.opset < 10:
        starts = [Lin(x) for x in attr(node, "starts", [])]
        ends = [Lin(x) for x in attr(node, "ends", [])]
        axes = [norm_axis(x, rank) for x in attr(node, "axes", range(len(starts)))]
        return starts, ends, axes, [1] * len(starts)
    if len(node.input) > 3 and node.input[3]:
        axes = a.static_ints(node.input[3], "axes")
    else:
        axes = list(range(a.static_dims(node.input[1])[0]))
    axes = [norm_axis(x, rank) for x in axes]
    sv, ev = a.value(node.input[1]), a.value(node.input[2])
    if sv is None or ev is None:
        if all(flags[ax] is None for ax in axes) and not any(a.value_depends(x) for x in node.input[1:3]):
            return None
        raise Refuse("its starts/ends are not known")
    steps = a.static_ints(node.input[4], "steps") if len(node.input) > 4 and node.input[4] else [1] * len(axes)
    return as_list(sv), as_list(ev), axes, steps


def _boundary(x: Lin, size: int, cum: list[int], B: int, is_end: bool) -> int | None:
    """Which segment boundary ``x`` marks (``cum[i] * batch`` at run time), or None if none."""
    if x.static:
        if is_end and x.c >= _TO_END:
            return len(cum) - 1
        v = max(0, min(size, x.c + size if x.c < 0 else x.c))
        return cum.index(v // B) if v % B == 0 and v // B in cum else None
    return cum.index(x.k) if x.c == 0 and x.k in cum else None


def slice_(node: onnx.NodeProto, a: Analysis) -> None:
    data = node.input[0]
    flags = a.flags_of(data)
    if all(f is None for f in flags):
        if any(a.value_depends(x) for x in node.input[1:]):
            raise Refuse("its starts/ends depend on the batch but its data does not")
        return
    params = _slice_params(node, a, flags)
    if params is None:
        a.set_flags(node.output[0], flags)
        return
    starts, ends, axes, steps = params
    out = list(flags)
    new_starts, new_ends, changes = list(starts), list(ends), []
    for i, (ax, s, e, st) in enumerate(zip(axes, starts, ends, steps)):
        f = flags[ax]
        if f is None:
            if not (s.static and e.static):
                raise Refuse(f"its bounds on static dim {ax} depend on the batch")
            continue
        if st != 1:
            raise Refuse(f"it steps by {st} along the batch dim {ax}")
        parts = f.parts if f.outer == 1 else (f.total,)  # batch inside a static dim: only the whole dim
        cum = [0]
        for k in parts:
            cum.append(cum[-1] + k)
        size = a.B * cum[-1]
        first, last = _boundary(s, size, cum, a.B, False), _boundary(e, size, cum, a.B, True)
        if first is None or last is None or last <= first:
            raise Refuse(f"it takes elements {s}:{e} of the batch dim {ax} ({fmt_flag(f)}), not whole samples")
        out[ax] = f if f.outer != 1 else BDim(f.parts[first:last])
        want_s = Lin(0, cum[first])
        to_end = last == len(parts)
        want_e = Lin(INT64_MAX) if to_end else Lin(0, cum[last])
        ok_e = e == want_e or (to_end and ((e.static and e.c >= _TO_END) or e == Lin(0, cum[-1])))
        if s != want_s or not ok_e:
            new_starts[i], new_ends[i] = want_s, want_e
            changes.append(f"axis {ax}: {s}:{e} → {want_s}:{'end' if to_end else want_e}")
    a.set_flags(node.output[0], out)
    if not changes:
        return
    if a.opset < 10:
        if not all(x.static for x in new_starts + new_ends):
            raise Refuse("opset < 10 keeps starts/ends in attributes, which cannot follow the batch")
        set_attr(node, "starts", [x.c for x in new_starts])
        set_attr(node, "ends", [x.c for x in new_ends])
    else:
        if a.types.get(node.input[1], onnx.TensorProto.INT64) != onnx.TensorProto.INT64:
            raise Refuse("its starts/ends are int32; only int64 bounds are rewritten")
        node.input[1] = a.edits.shape_tensor(new_starts, base="slice_starts")
        node.input[2] = a.edits.shape_tensor(new_ends, base="slice_ends")
    a.rewrote(node, "; ".join(changes))


def gather(node: onnx.NodeProto, a: Analysis) -> None:
    fd, fi = a.flags_of(node.input[0]), a.flags_of(node.input[1])
    axis = norm_axis(int(attr(node, "axis", 0)), len(fd))
    if fd[axis] is not None:
        raise Refuse(f"it picks elements along the batch dim {axis}")
    a.set_flags(node.output[0], (*fd[:axis], *fi, *fd[axis + 1:]))


def gather_elements(node: onnx.NodeProto, a: Analysis) -> None:
    fd, fi = a.flags_of(node.input[0]), a.flags_of(node.input[1])
    axis = norm_axis(int(attr(node, "axis", 0)), len(fd))
    if fd[axis] is not None or fi[axis] is not None:
        raise Refuse(f"it picks elements along the batch dim {axis}")
    for pos, (x, y) in enumerate(zip(fd, fi)):
        if x != y:
            raise Refuse(f"data and indices carry the batch differently at dim {pos}")
    a.set_flags(node.output[0], fi)


def gather_nd(node: onnx.NodeProto, a: Analysis) -> None:
    fd, fi = a.flags_of(node.input[0]), a.flags_of(node.input[1])
    bd = int(attr(node, "batch_dims", 0))
    m = a.static_dims(node.input[1])[-1]
    for pos in range(bd):
        if fd[pos] != fi[pos]:
            raise Refuse(f"data and indices carry the batch differently at batch dim {pos}")
    if any(f is not None for f in fd[bd:]) or fi[-1] is not None:
        raise Refuse("it indexes into the batch dim")
    a.set_flags(node.output[0], (*fi[:-1], *fd[bd + m:]))


def expand(node: onnx.NodeProto, a: Analysis) -> None:
    data, out = node.input[0], node.output[0]
    fd = a.flags_of(data)
    out_dims = a.static_dims(out)
    off = len(out_dims) - len(fd)
    sv = a.value(node.input[1])
    if sv is None:
        if a.value_depends(node.input[1]):
            raise Refuse("its shape depends on the batch in a way that is not tracked")
        if all(f is None for f in fd):
            return
        pieces = [Lin(1) if i >= off and fd[i - off] is not None else Lin(d) for i, d in enumerate(out_dims)]
        node.input[1] = a.edits.shape_tensor(pieces, base="expand_shape")
        a.set_flags(out, [fd[i - off] if i >= off else None for i in range(len(out_dims))])
        a.rewrote(node, f"shape (computed) → [{', '.join(map(str, pieces))}]")
        return
    elems = as_list(sv)
    flags: list[Flag] = []
    new = list(elems)
    for i, e in enumerate(elems):
        f = fd[i - off] if i >= off else None
        if f is not None:
            if e == Lin(1) or e == Lin(0, f.total):
                flags.append(f)
            elif e.static and e.c == a.B * f.total:
                new[i] = Lin(1)
                flags.append(f)
            else:
                raise Refuse(f"it expands batch dim {i - off} ({fmt_flag(f)}) to {e}")
        elif e.static:
            flags.append(None)
        elif e.c == 0 and e.k > 0:
            flags.append(plain(e.k))
        else:
            raise Refuse(f"its shape element {i} is {e}")
    a.set_flags(out, flags)
    if new != elems:
        node.input[1] = a.edits.shape_tensor(new, base="expand_shape")
        a.rewrote(node, f"shape {shape_text(elems)} → {shape_text(new)} (broadcast keeps the run-time batch)")


def tile(node: onnx.NodeProto, a: Analysis) -> None:
    fd = a.flags_of(node.input[0])
    rv = a.value(node.input[1])
    if rv is None:
        raise Refuse("its repeats are not known")
    dims = a.static_dims(node.input[0])
    flags: list[Flag] = []
    for i, (f, r) in enumerate(zip(fd, as_list(rv))):
        if f is not None:
            if not r.static:
                raise Refuse(f"it repeats the batch dim {i} a batch-dependent number of times")
            if r.c != 1 and f.outer != 1:
                raise Refuse(f"it repeats a batch dim laid out as {fmt_flag(f)}")
            flags.append(BDim(f.parts * r.c) if r.c != 1 else f)
        elif r.static:
            flags.append(None)
        elif r.c == 0 and r.k > 0:
            flags.append(plain(r.k * dims[i]))
        else:
            raise Refuse(f"its repeats element {i} is {r}")
    a.set_flags(node.output[0], flags)


def constant_of_shape(node: onnx.NodeProto, a: Analysis) -> None:
    v = a.value(node.input[0])
    if v is None:
        raise Refuse("its shape depends on the batch in a way that is not tracked")
    flags: list[Flag] = []
    for i, e in enumerate(as_list(v)):
        if e.static:
            flags.append(None)
        elif e.c == 0 and e.k > 0:
            flags.append(plain(e.k))
        else:
            raise Refuse(f"its shape element {i} is {e}")
    a.set_flags(node.output[0], flags)


def range_(node: onnx.NodeProto, a: Analysis) -> None:
    raise Refuse("its length or values depend on the batch size (e.g. arange(batch)): the samples would not be independent")


def shape_only(node: onnx.NodeProto, a: Analysis) -> None:
    """Shape, Size: their outputs are static-shaped; values are tracked separately."""


def resize(node: onnx.NodeProto, a: Analysis) -> None:
    data = node.input[0]
    flags = a.flags_of(data)
    rank = len(flags)
    axes = [norm_axis(x, rank) for x in attr(node, "axes", [])] or list(range(rank))
    batched = [ax for ax in axes if flags[ax] is not None]
    a.set_flags(node.output[0], flags)
    if not batched:
        return
    scales_at = 1 if (node.op_type == "Upsample" or a.opset < 11) else 2
    scales_name = node.input[scales_at] if len(node.input) > scales_at else ""
    sizes_name = node.input[3] if node.op_type == "Resize" and a.opset >= 11 and len(node.input) > 3 else ""
    if node.op_type == "Upsample" and a.opset < 9:
        scales = list(attr(node, "scales", []))
    elif scales_name and not sizes_name:
        scales = a.float_values(scales_name)
        if scales is None:
            raise Refuse(f"its scales ('{scales_name}') are not constant")
    else:
        scales = None
    if scales is not None:
        for ax in batched:
            if scales[axes.index(ax)] != 1.0:
                raise Refuse(f"it scales the batch dim {ax} by {scales[axes.index(ax)]}")
        return
    if not sizes_name:
        raise Refuse("it has neither scales nor sizes")
    v = a.value(sizes_name)
    out_dims = a.static_dims(node.output[0])
    cur = as_list(v) if v is not None else None
    pieces = [Lin(out_dims[ax]) for ax in axes]
    for ax in batched:
        pieces[axes.index(ax)] = Lin(0, flags[ax].total)  # type: ignore[union-attr]
    if cur == pieces:
        return
    node.input[3] = a.edits.shape_tensor(pieces, base="resize_sizes")
    a.rewrote(node, f"sizes {shape_text(cur)} → {shape_text(pieces)}")


def pad(node: onnx.NodeProto, a: Analysis) -> None:
    flags = a.flags_of(node.input[0])
    rank = len(flags)
    if a.opset < 11:
        pads = list(attr(node, "pads", attr(node, "paddings", [])))
        axes = list(range(rank))
    else:
        pads = a.static_ints(node.input[1], "pads")
        axes = a.static_ints(node.input[3], "axes") if len(node.input) > 3 and node.input[3] else list(range(rank))
        axes = [norm_axis(x, rank) for x in axes]
    n = len(axes)
    for i, ax in enumerate(axes):
        if flags[ax] is not None and (pads[i] or pads[i + n]):
            raise Refuse(f"it pads the batch dim {ax} ({pads[i]}, {pads[i + n]})")
    a.set_flags(node.output[0], flags)


def one_hot(node: onnx.NodeProto, a: Analysis) -> None:
    flags = list(a.flags_of(node.input[0]))
    if any(a.batched(x) or a.value_depends(x) for x in node.input[1:]):
        raise Refuse("its depth or values depend on the batch")
    axis = int(attr(node, "axis", -1))
    flags.insert(axis + len(flags) + 1 if axis < 0 else axis, None)
    a.set_flags(node.output[0], flags)


SHAPE_RULES = {
    **RESHAPE_RULES,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "GatherElements": gather_elements,
    "GatherND": gather_nd,
    "Expand": expand,
    "Tile": tile,
    "ConstantOfShape": constant_of_shape,
    "Range": range_,
    "Shape": shape_only,
    "Size": shape_only,
    "Resize": resize,
    "Upsample": resize,
    "Pad": pad,
    "OneHot": one_hot,
}
