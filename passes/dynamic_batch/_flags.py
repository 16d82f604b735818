"""Batch flags of the dynamic_batch analysis (which dim of a tensor holds the batch, and how) and node helpers."""

from __future__ import annotations

from typing import Any, NamedTuple

import onnx
from onnx import helper

from converter.passes.dynamic_batch._graph import Refuse


class BDim(NamedTuple):
    """A dim holding ``outer * sum(parts) * batch`` elements (see the module doc)."""

    parts: tuple[int, ...]
    outer: int = 1

    @property
    def total(self) -> int:
        return self.outer * sum(self.parts)

    @property
    def k(self) -> int | None:
        """``k`` of a plain ``k * batch`` dim (batch outermost, one part); None otherwise."""
        return self.parts[0] if len(self.parts) == 1 and self.outer == 1 else None

    def __str__(self) -> str:
        one = " + ".join("batch" if k == 1 else f"{k}*batch" for k in self.parts)
        return one if self.outer == 1 else f"{self.outer} x ({one}), batch inside"


def plain(k: int) -> BDim:
    return BDim((k,))


Flag = BDim | None
Flags = tuple[Flag, ...]


SHAPE_INPUTS: dict[str, range] = {
    "Reshape": range(1, 2), "Expand": range(1, 2), "Tile": range(1, 2), "ConstantOfShape": range(0, 1),
    "Slice": range(1, 5), "Split": range(1, 2), "Resize": range(1, 4), "Upsample": range(1, 2), "Pad": range(1, 2),
    "Squeeze": range(1, 2), "Unsqueeze": range(1, 2), "TopK": range(1, 2), "CumSum": range(1, 2),
    **{op: range(1, 2) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                  "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
}
"""Inputs whose value only decides the output's shape, not the values computed."""


def fmt_flag(f: Flag) -> str:
    return "static" if f is None else str(f)


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def norm_axis(axis: int, rank: int) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank:
        raise Refuse(f"axis {axis} is out of range for rank {rank}")
    return a


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH] + [g for a in node.attribute for g in a.graphs]


def label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"
