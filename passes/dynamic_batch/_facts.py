"""The typed facts dynamic_batch reports (each rewrite, where each graph input and output carries the batch), and its refusal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import onnx

from converter.errors import PassRefused


class BatchDependenceError(PassRefused):
    """The model uses its old batch in a way this pass cannot rewrite without changing results."""


@dataclass(frozen=True)
class Rewrite:
    """One place where the graph hard-coded the batch, and what the pass made of it."""

    op: str
    """The node's op type, or ``"graph output"``."""
    node: str
    """The node's name (its first output when unnamed), or the graph output's name."""
    change: str
    """What was rewritten, e.g. ``shape [1, 64] → [0, 64]``."""

    @classmethod
    def of(cls, node: onnx.NodeProto, change: str) -> Rewrite:
        return cls(node.op_type, node.name or node.output[0], change)

    def __str__(self) -> str:
        return f"{self.op} '{self.node}': {self.change}"


AxisSource = Literal["main", "option", "found", "none", "analysis", "symbolic"]


@dataclass(frozen=True)
class BatchAxis:
    """Which dim of a graph input or output carries the batch (``axis``), or None when it carries none.

    ``source`` says how the pass knows: ``main`` (an input whose dim 0 is the exported batch, the
    batch's seed), ``option`` (``inputs=`` or ``axes=``), ``found`` (the analysis followed the batch
    to this input, e.g. an LSTM's initial state ``[directions, batch, hidden]``), ``none`` (the
    input meets no batch data: scalars, tables; left as it is), ``analysis`` (an output's axis,
    from the analysis) or ``symbolic`` (a model whose batch is already dynamic, read from its dims).
    """

    tensor: str
    role: Literal["input", "output"]
    axis: int | None
    source: AxisSource

    def __str__(self) -> str:
        where = "no batch" if self.axis is None else f"batch at dim {self.axis}"
        return f"{self.role} '{self.tensor}': {where} ({self.source})"


def axes_mapping(axes: list[BatchAxis] | tuple[BatchAxis, ...]) -> dict[str, int | None]:
    """``{tensor: axis}`` of every input and output, what :func:`converter.batch_verify.check_batch_stacking` takes."""
    return {a.tensor: a.axis for a in axes}
