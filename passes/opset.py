"""opset: convert the default-domain opset up to ``target`` with ONNX's version converter.

What it keeps and what it decides:

- Only the default domain (``""``/``ai.onnx``) changes; custom-domain opsets and their nodes
  are kept as they are, subgraphs (If/Loop/Scan bodies) are converted with the graph, and
  model-local functions (which the converter drops) are put back, their bodies converted too.
- ``ir_version`` is raised to the lowest one the new opset needs (never lowered).
- Upgrades only: a model at or above ``target`` is left unchanged and says so (``refused``);
  the converter's down-adapters cover few ops, and runtimes read new opsets.
- Failures name the op types and nodes the converter has no adapter (or no schema) for,
  taken from its message, or by converting each op type alone when the message names none.
- Models of any size: past protobuf's 2 GiB, big tensors are swapped for external-data
  placeholders during the conversion (the converter keeps them) and put back afterwards.

:func:`upgrade_opset` is the public function other passes (``qdq``) call.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import onnx
from onnx import helper, version_converter

from converter.errors import PassRefused, describe_exception
from converter.graph_info import histogram_delta, iter_graphs, op_histogram, opset_version
from converter.model_io import PROTOBUF_LIMIT
from converter.options import bounded
from converter.pass_api import Pass, PassContext, PassResult

MIN_TARGET = 7
MAX_TARGET = onnx.defs.onnx_opset_version()
DEFAULT_TARGET = 17
SWAP_LIMIT = PROTOBUF_LIMIT
"""Models this big (serialized) have their big tensors swapped out during the conversion."""
_SWAP_MIN_BYTES = 1024
_PLACEHOLDER = "converter-opset-placeholder-"
_LISTED = 6


@dataclass(frozen=True)
class OpsetChange:
    """What a conversion did: opsets and IR versions before and after, ops whose schema version moved."""

    from_opset: int
    to_opset: int
    ir_from: int
    ir_to: int
    op_delta: dict[str, int] = field(default_factory=dict)
    """Nodes per op type after minus before (adapters add Constants, Reshapes, ...)."""
    versions_changed: dict[str, int] = field(default_factory=dict)
    """Default-domain op types whose schema differs between the two opsets: how many nodes each."""

    @property
    def modified(self) -> bool:
        return self.from_opset != self.to_opset or self.ir_from != self.ir_to

    def summary(self) -> dict[str, int]:
        return {"from": self.from_opset, "to": self.to_opset}


class OpsetConversionFailed(PassRefused):
    """The version converter cannot convert the model; ``culprits`` names op types and nodes."""

    def __init__(self, from_opset: int, to_opset: int, reason: str, culprits: dict[str, list[str]]) -> None:
        self.from_opset, self.to_opset, self.reason, self.culprits = from_opset, to_opset, reason, culprits
        super().__init__(f"the ONNX version converter cannot convert opset {from_opset} to {to_opset}: {self.details()}")

    def details(self) -> str:
        if not self.culprits:
            return self.reason
        parts = []
        for op, nodes in self.culprits.items():
            more = f" and {len(nodes) - _LISTED} more" if len(nodes) > _LISTED else ""
            parts.append(f"op {op} (nodes {', '.join(nodes[:_LISTED])}{more})")
        return f"no adapter for {'; '.join(parts)} ({self.reason})"


@dataclass(frozen=True)
class OpsetOptions:
    target: int = field(default=DEFAULT_TARGET, metadata=bounded(MIN_TARGET, MAX_TARGET, f"the default-domain opset to convert to (upgrades only; this onnx knows up to {MAX_TARGET})"))


def _default_nodes(model: onnx.ModelProto) -> list[tuple[str, onnx.NodeProto]]:
    """(label, node) of every default-domain node, subgraphs included."""
    out = []
    for gi, g in enumerate(iter_graphs(model.graph)):
        where = "" if gi == 0 else f" in subgraph '{g.name}'"
        for i, n in enumerate(g.node):
            if n.domain in ("", "ai.onnx"):
                out.append((f"'{n.name}'{where}" if n.name else f"{n.op_type}#{i}{where}", n))
    return out


def _since(op: str, version: int) -> int | None:
    try:
        return onnx.defs.get_schema(op, version, "").since_version
    except Exception:  # noqa: BLE001 - no schema at that version
        return None


def _versions_changed(model: onnx.ModelProto, low: int, high: int) -> dict[str, int]:
    counts = Counter(n.op_type for _, n in _default_nodes(model))
    return {op: c for op, c in sorted(counts.items()) if _since(op, low) != _since(op, high)}


# ------------------------------------------------------------------ big models


def _big_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    out = []
    for g in iter_graphs(model.graph):
        out.extend(g.initializer)
        for n in g.node:
            out.extend(a.t for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
    return [t for t in out if t.ByteSize() >= _SWAP_MIN_BYTES and t.data_location != onnx.TensorProto.EXTERNAL]


def _swap_out(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Replace big tensors by external-data placeholders in place; returns the originals, by index."""
    saved = []
    for i, t in enumerate(_big_tensors(model)):
        keep = onnx.TensorProto()
        keep.CopyFrom(t)
        saved.append(keep)
        name, dtype, dims = t.name, t.data_type, list(t.dims)
        t.Clear()
        t.name, t.data_type = name, dtype
        t.dims.extend(dims)
        t.data_location = onnx.TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", f"{_PLACEHOLDER}{i}"
    return saved


def _swap_in(model: onnx.ModelProto, saved: list[onnx.TensorProto]) -> None:
    tensors = []
    for g in iter_graphs(model.graph):
        tensors.extend(g.initializer)
        for n in g.node:
            tensors.extend(a.t for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
    for t in tensors:
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        if loc.startswith(_PLACEHOLDER):
            name = t.name
            t.CopyFrom(saved[int(loc[len(_PLACEHOLDER):])])
            t.name = name


def _convert(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """onnx's converter on a model of any size (the original is not modified)."""
    if model.ByteSize() < SWAP_LIMIT:
        return version_converter.convert_version(model, target)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    saved = _swap_out(work)
    converted = version_converter.convert_version(work, target)
    _swap_in(converted, saved)
    return converted


# ------------------------------------------------------------------ naming failures


def _named_in(message: str, ops: set[str]) -> list[str]:
    return sorted(op for op in ops if re.search(rf"(?<![A-Za-z_]){re.escape(op)}(?![A-Za-z_])", message))


def _probe(node: onnx.NodeProto, model: onnx.ModelProto, low: int, high: int) -> str | None:
    """Convert ``node`` alone; the converter's message when it fails."""
    inputs = [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in dict.fromkeys(node.input) if x]
    outputs = [helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None) for y in node.output if y]
    alone = onnx.NodeProto()
    alone.CopyFrom(node)
    del alone.attribute[:]  # subgraph bodies are not carried: their nodes are probed on their own
    alone.attribute.extend(a for a in node.attribute if a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS))
    graph = helper.make_graph([alone], "probe", inputs, outputs)
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", low)], ir_version=model.ir_version)
    try:
        version_converter.convert_version(probe, high)
    except Exception as exc:  # noqa: BLE001 - the converter's own failure is the answer
        return describe_exception(exc, 200)
    return None


def _culprits(model: onnx.ModelProto, message: str, low: int, high: int) -> dict[str, list[str]]:
    nodes = _default_nodes(model)
    by_op: dict[str, list[str]] = {}
    for label, n in nodes:
        by_op.setdefault(n.op_type, []).append(label)
    named = _named_in(message, set(by_op))
    if not named:
        first = {}
        for _, n in nodes:
            first.setdefault(n.op_type, n)
        named = sorted(op for op, n in first.items() if _probe(n, model, low, high) is not None)
    return {op: by_op[op] for op in named}


def _convert_function(function: onnx.FunctionProto, low: int, target: int) -> onnx.FunctionProto:
    """A model-local function with its body converted too (as a graph of untyped values)."""
    out = onnx.FunctionProto()
    out.CopyFrom(function)
    imports = {o.domain: o.version for o in function.opset_import}
    version = imports.get("", imports.get("ai.onnx"))
    if version is None or version >= target:
        return out
    values = lambda names: [helper.make_value_info(n, onnx.TypeProto()) for n in names if n]  # noqa: E731
    graph = helper.make_graph(list(function.node), function.name, values(function.input), values(function.output))
    body = helper.make_model(graph, opset_imports=list(function.opset_import), ir_version=onnx.IR_VERSION)
    try:
        converted = version_converter.convert_version(body, target)
    except Exception as exc:  # noqa: BLE001
        raise OpsetConversionFailed(version, target, f"in function '{function.domain}.{function.name}': {describe_exception(exc, 200)}", _culprits(body, str(exc), version, target)) from exc
    del out.node[:]
    out.node.extend(converted.graph.node)
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = target
    return out


# ------------------------------------------------------------------ the public function


def upgrade_opset(model: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, OpsetChange]:
    """The model converted to default-domain opset ``target`` (>= its own) and what changed.

    The input model is not modified. A model at or above ``target`` comes back as it is.
    Raises :class:`OpsetConversionFailed` (a ``PassRefused``) naming the ops the converter cannot convert.
    """
    low = opset_version(model) or 1
    if low >= target:
        return model, OpsetChange(low, low, model.ir_version, model.ir_version)
    before = op_histogram(model)
    try:
        converted = _convert(model, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError/ConvertError/asserts alike
        reason = describe_exception(exc, 240)
        raise OpsetConversionFailed(low, target, reason, _culprits(model, str(exc), low, target)) from exc
    if model.functions and not converted.functions:
        converted.functions.extend(_convert_function(f, low, target) for f in model.functions)  # the converter drops them
    needed = helper.find_min_ir_version_for([o for o in converted.opset_import if o.domain in ("", "ai.onnx")], ignore_unknown=True)
    if converted.ir_version < needed:
        converted.ir_version = needed
    change = OpsetChange(
        low, target, model.ir_version, converted.ir_version,
        op_delta=histogram_delta(before, op_histogram(converted)),
        versions_changed=_versions_changed(model, low, target),
    )
    return converted, change


class OpsetPass(Pass[OpsetOptions]):
    name = "opset"
    summary = "Upgrade the default-domain opset with ONNX's version converter (failures name the ops)."
    Options = OpsetOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        target = self.options.target
        current = opset_version(model) or 1
        if current >= target:
            why = f"the model is at opset {current}, target {target}"
            refused = [] if current == target else [f"{why}: downgrading is not supported, the model is kept at opset {current}"]
            ctx.log.info("opset: %s; unchanged", why)
            return PassResult(model, False, facts={"from": current, "to": current, "unchanged": why}, refused=refused)
        converted, change = upgrade_opset(model, target)
        ctx.log.info("opset: %d -> %d (ir_version %d -> %d), %d op types with new versions", change.from_opset, change.to_opset, change.ir_from, change.ir_to, len(change.versions_changed))
        facts = {
            "from": change.from_opset,
            "to": change.to_opset,
            "ir_version": {"from": change.ir_from, "to": change.ir_to},
            "versions_changed": change.versions_changed,
            "op_delta": change.op_delta,
            "change": change,
        }
        return PassResult(converted, True, facts=facts)


__all__ = ["DEFAULT_TARGET", "OpsetChange", "OpsetConversionFailed", "OpsetOptions", "OpsetPass", "upgrade_opset"]
