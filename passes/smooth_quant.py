"""smooth_quant: SmoothQuant (Xiao et al. 2022), moving activation outlier channels into the weights before ``qdq``.

For each MatMul/Gemm reading an activation A (last axis K) and a constant float32 weight B
(``[K, N]``, ``[N, K]`` for Gemm ``transB``): ``max|X_j|`` per channel of A is calibrated on the data
``qdq`` reads (running maxima only), ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (clamped to
[1e-5, 1e5], 1 where either is 0), then ``X' = X / s`` and ``W' = diag(s) W``: the float output is
unchanged, per-tensor int8 of X' loses less. All MatMul/Gemm readers of one A (Q/K/V) share one s.
``1/s`` folds into the producer when A has no other reader and it is a LayerNormalization (or
``Mul(gamma) -> Add(beta)``) with constants; otherwise one ``Mul(A, 1/s)`` is inserted, other readers
keep the original A. Skipped with a reason: unknown last dim, non-float32 weights, a MatMul/Gemm
reading A without a constant weight, If/Loop bodies.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter import lazy_weights
from converter.calibration import CALIB_DATA, CALIB_RANDOM, open_source
from converter.calibration.batching import rebatch, samples_in
from converter.calibration.collector import calibration_model, check_feeds, plan_chunks, value_infos
from converter.calibration.data import declared_axes
from converter.errors import PassRefused, UsageError, describe_exception
from converter.graph_edit import node_inputs, replace_repeated, unique_name
from converter.graph_info import graph_inputs, iter_graphs
from converter.options import bounded
from converter.ort_session import make_session, run_session
from converter.pass_api import Pass, PassContext, PassResult
from converter.passes.fold_constants import constant_node_tensor
from converter.passes.qdq import calibration_layout

S_MIN, S_MAX = 1e-5, 1e5
LAYER_OPS = ("MatMul", "Gemm")
_BUDGET_BYTES = 256 * 2**20
_DEFAULT = ("", "ai.onnx")


@dataclass(frozen=True)
class SmoothQuantOptions:
    alpha: float = field(default=0.5, metadata=bounded(0.0, 1.0, "migration strength: s = max|X|^alpha / max|W|^(1-alpha) per input channel (0: outliers stay in the activations, 1: all moved into the weights)"))
    samples: int = field(default=128, metadata=bounded(1, 10_000_000, "calibration samples used at most"))
    batch_size: int = field(default=8, metadata=bounded(1, 65536, "samples per calibration batch (a static batch-1 model is made dynamic on a copy, or fed one by one)"))

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0 or self.samples < 1 or self.batch_size < 1:
            raise ValueError(f"alpha must be in [0, 1] (got {self.alpha}), samples and batch_size >= 1")


@dataclass
class Reader:
    node: onnx.NodeProto
    index: int
    label: str
    weight: str
    transposed: bool
    """Gemm with transB: the weight is [N, K], input channel j is its column j."""


@dataclass
class Group:
    tensor: str
    channels: int
    readers: list[Reader]
    fold: list[tuple[onnx.NodeProto, int]] = field(default_factory=list)
    """(node, input index) of the constants 1/s folds into; empty: a Mul is inserted."""
    fold_label: str = ""


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Constant tensors: initializers that are not graph inputs (those can be overridden), and Constant nodes."""
    inputs = {i.name for i in graph.input}
    out = {t.name: t for t in graph.initializer if t.name not in inputs}
    found = {n.output[0]: constant_node_tensor(n) for n in graph.node if n.op_type == "Constant" and n.domain in _DEFAULT and len(n.output) == 1 and n.attribute}
    return {**out, **{k: t for k, t in found.items() if t is not None}}


def _last_dim(infos: dict[str, onnx.ValueInfoProto], name: str) -> int | None:
    dims = infos[name].type.tensor_type.shape.dim if name in infos else []
    return int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value > 0 else None


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _reader(node: onnx.NodeProto, index: int, label: str, a: str, k: int, consts: dict[str, onnx.TensorProto]) -> Reader | str:
    """A MatMul/Gemm reading ``a`` as a smoothable reader, or why it is not one."""
    if node.domain not in _DEFAULT or len(node.input) < 2 or node.input[0] != a or node.input[1] == a:
        return f"{label} ({node.op_type}) does not read it as input A with a separate weight B"
    if node.op_type == "Gemm" and _attr(node, "transA"):
        return f"{label} (Gemm) has transA=1"
    w = consts.get(node.input[1])
    if w is None:
        return f"{label} ({node.op_type}) reads a weight '{node.input[1]}' that is not a constant (int8 weights dequantized in the graph: run fold_constants first)"
    if w.data_type != onnx.TensorProto.FLOAT:
        return f"{label} ({node.op_type}): weight '{w.name}' is {onnx.TensorProto.DataType.Name(w.data_type)}, not FLOAT"
    transposed = node.op_type == "Gemm" and bool(_attr(node, "transB"))
    if len(w.dims) != 2 or w.dims[1 if transposed else 0] != k:
        return f"{label} ({node.op_type}): weight '{w.name}' of shape {list(w.dims)} does not have {k} input channels on axis {1 if transposed else 0}"
    return Reader(node, index, label, node.input[1], transposed)


def _fold_target(a: str, nodes: list[onnx.NodeProto], producer: dict[str, int], readers: dict[str, list[int]], consts: dict[str, onnx.TensorProto], k: int) -> tuple[list[tuple[onnx.NodeProto, int]], str]:
    """Where 1/s can fold: a LayerNormalization's scale and bias, or Mul(gamma) -> Add(beta) with constants."""
    p = nodes[producer[a]] if a in producer else onnx.NodeProto()
    if p.domain not in _DEFAULT:
        return [], ""
    if p.op_type == "LayerNormalization" and p.domain in _DEFAULT and p.output[0] == a:
        targets = [(p, i) for i in (1, 2) if i < len(p.input) and p.input[i]]
        if all(p.input[i] in consts and consts[p.input[i]].data_type == onnx.TensorProto.FLOAT and list(consts[p.input[i]].dims)[-1:] == [k] for _, i in targets):
            return targets, f"LayerNormalization '{node_label(p, producer[a])}' (scale and bias divided by s)"
        return [], ""
    beta_i = next((i for i in (1, 0) if p.op_type == "Add" and len(p.input) == 2 and p.input[i] in consts and p.input[1 - i] in producer), None)
    mi = producer[p.input[1 - beta_i]] if beta_i is not None else -1
    m = nodes[mi] if mi >= 0 else onnx.NodeProto()
    if m.op_type != "Mul" or m.domain not in _DEFAULT or len(m.input) != 2 or len(readers[m.output[0]]) != 1:
        return [], ""
    gamma_i = next((i for i in (1, 0) if m.input[i] in consts and m.input[1 - i] not in consts), None)
    if gamma_i is None or any(consts[t].data_type != onnx.TensorProto.FLOAT for t in (m.input[gamma_i], p.input[beta_i])):
        return [], ""
    return [(m, gamma_i), (p, beta_i)], f"Mul(gamma) '{node_label(m, mi)}' and Add(beta) '{node_label(p, producer[a])}' (divided by s)"


def find_groups(model: onnx.ModelProto) -> tuple[list[Group], list[str]]:
    """The groups to smooth (one per activation A read by MatMul/Gemm with constant weights), and the skipped ones with why."""
    graph = model.graph
    consts = _constants(graph)
    infos = value_infos(model)
    nodes = list(graph.node)
    labels = [node_label(n, i) for i, n in enumerate(nodes)]
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    readers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for x in dict.fromkeys(node_inputs(n)):
            readers[x].append(i)
    for o in graph.output:
        readers[o.name].append(-1)  # a graph output is a reader that must keep the original values
    candidates = dict.fromkeys(n.input[0] for n in nodes if n.op_type in LAYER_OPS and n.domain in _DEFAULT and len(n.input) > 1 and n.input[0] and n.input[0] not in consts and n.input[1] in consts)
    groups, refused = [], []
    for a in candidates:
        layers = [i for i in readers[a] if i >= 0 and nodes[i].op_type in LAYER_OPS]
        where = f"'{a}' (read by {', '.join(labels[i] for i in layers)})"
        k = _last_dim(infos, a)
        if k is None:
            refused.append(f"{where}: its last dim is unknown; not smoothed")
            continue
        found = [_reader(nodes[i], i, labels[i], a, k, consts) for i in layers]
        problems = [r for r in found if isinstance(r, str)]
        if problems:
            refused.append(f"{where}: {'; '.join(problems)}; not smoothed")
            continue
        group = Group(a, k, [r for r in found if isinstance(r, Reader)])
        if len(readers[a]) == len(layers):
            group.fold, group.fold_label = _fold_target(a, nodes, producer, readers, consts, k)
        groups.append(group)
    for sub in list(iter_graphs(graph))[1:]:
        refused += [f"{node_label(n, i)} ({n.op_type}): inside a subgraph (If/Loop/Scan body), not smoothed" for i, n in enumerate(sub.node) if n.op_type in LAYER_OPS]
    return groups, refused


# ---------------------------------------------------------------- calibration: per-channel max |X|


def _update(maxima: dict[str, np.ndarray], name: str, value: np.ndarray) -> None:
    k = maxima[name].shape[0]
    if value.size == 0:
        return
    if value.shape[-1:] != (k,):
        raise PassRefused(f"calibration: tensor '{name}' has shape {list(value.shape)} at run time, shape inference said its last dim is {k}")
    a = np.abs(value.reshape(-1, k).astype(np.float64))
    a[~np.isfinite(a)] = 0.0  # ±inf/NaN (masked positions) say nothing about the channel's range
    np.maximum(maxima[name], a.max(axis=0), out=maxima[name])


def channel_maxima(model: onnx.ModelProto, channels: dict[str, int], options: SmoothQuantOptions, ctx: PassContext) -> tuple[dict[str, np.ndarray], dict]:
    """max |x| per channel of the last axis of each tensor in ``channels``, streamed over the calibration data."""
    start = time.perf_counter()
    tensors = list(channels)
    text, specs = ctx.inputs.get(CALIB_DATA), graph_inputs(model)
    layout = calibration_layout(model, options.batch_size, tensors, declared_axes(text, specs), ctx)
    calib_model, axes, batch, exact = layout.model, layout.axes, layout.batch, layout.exact
    source = open_source(text, specs, allow_random=ctx.inputs.get(CALIB_RANDOM), samples=options.samples, seed=ctx.seed, log=ctx.log, axes=axes, run_specs=graph_inputs(calib_model))
    infos = value_infos(calib_model)
    fed = {s.name for s in graph_inputs(calib_model)}
    from_model = [t for t in tensors if t not in fed]
    maxima = {t: np.zeros(k, np.float64) for t, k in channels.items()}
    samples = batches = 0
    for index, chunk in enumerate(plan_chunks(from_model, infos, batch, _BUDGET_BYTES) or [[]]):
        try:
            session = make_session(calibration_model(calib_model, chunk, infos)) if chunk else None
        except Exception as exc:
            raise PassRefused(f"calibration: ONNX Runtime cannot run the model: {describe_exception(exc)}") from exc
        samples = batches = 0
        for feeds in rebatch(source, batch, options.samples, exact):
            if index == 0:
                check_feeds(feeds, samples, source.description)
                for t in tensors:
                    if t in fed:
                        _update(maxima, t, np.asarray(feeds[t]))
            if session is not None:
                try:
                    outputs = run_session(session, feeds)
                except Exception as exc:
                    raise PassRefused(f"calibration: ONNX Runtime failed on the calibration data: {describe_exception(exc)}") from exc
                for name, value in outputs.items():
                    _update(maxima, name, np.asarray(value))
            samples += samples_in(feeds, source)
            batches += 1
        del session
    if samples == 0:
        raise UsageError(f"--calib-data {source.description}: no samples reached the model (batch {batch})")
    facts = {"samples": samples, "batches": batches, "batch": batch, "data": source.description, "calibration_seconds": round(time.perf_counter() - start, 3)}
    return maxima, facts


# ---------------------------------------------------------------- scales and the rewrite


def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha), clamped to [1e-5, 1e5]; 1 where either max is 0."""
    s = np.ones(act_max.shape, np.float64)
    ok = (act_max > 0) & (weight_max > 0)
    s[ok] = act_max[ok] ** alpha / weight_max[ok] ** (1.0 - alpha)
    return np.clip(s, S_MIN, S_MAX)


def outlier_ratio(channel_max: np.ndarray) -> float | None:
    """Largest channel max over the median channel max (None when the median is 0)."""
    median = float(np.median(channel_max))
    return round(float(channel_max.max()) / median, 3) if median > 0 else None


class _Editor:
    """Reads constants and adds new ones under fresh names; the originals stay for other readers."""

    def __init__(self, model: onnx.ModelProto, model_dir: str | None) -> None:
        self.graph = model.graph
        self.consts = _constants(model.graph)
        self.model_dir = model_dir or ""
        self.taken = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
        self.node_names = {n.name for n in model.graph.node if n.name}
        self.replaced: set[str] = set()

    def read(self, name: str) -> np.ndarray:
        return lazy_weights.to_array(self.consts[name], base_dir=self.model_dir)

    def add(self, base: str, value: np.ndarray) -> str:
        name = unique_name(base, self.taken)
        self.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def drop_unused(self) -> None:
        """Remove the replaced constants nothing reads any more (initializers and Constant nodes)."""
        used = {x for n in self.graph.node for x in node_inputs(n)} | {o.name for o in self.graph.output}
        dead = self.replaced - used
        keep = [t for t in self.graph.initializer if t.name not in dead]
        if len(keep) != len(self.graph.initializer):
            replace_repeated(self.graph.initializer, keep)
        nodes = [n for n in self.graph.node if not (n.op_type == "Constant" and n.output[0] in dead)]
        if len(nodes) != len(self.graph.node):
            replace_repeated(self.graph.node, nodes)


def weight_maxima(group: Group, edit: _Editor) -> np.ndarray | None:
    """max |W_j| per input channel over every weight of the group (None when a weight holds NaN or inf)."""
    out = np.zeros(group.channels, np.float64)
    for r in group.readers:
        w = np.abs(edit.read(r.weight).astype(np.float64))
        if not np.isfinite(w).all():
            return None
        np.maximum(out, w.max(axis=0 if r.transposed else 1), out=out)
    return out


def apply_group(group: Group, s: np.ndarray, edit: _Editor) -> onnx.NodeProto | None:
    """W' = diag(s) W for every reader; 1/s folded into the producer's constants, or a new Mul (returned, not yet placed)."""
    scaled: dict[tuple[str, bool], str] = {}
    for r in group.readers:
        key = (r.weight, r.transposed)
        if key not in scaled:
            w = edit.read(r.weight).astype(np.float64)
            edit.replaced.add(r.weight)
            scaled[key] = edit.add(r.weight + "_smooth", w * (s[None, :] if r.transposed else s[:, None]))
        r.node.input[1] = scaled[key]
    if group.fold:
        for node, index in group.fold:
            edit.replaced.add(node.input[index])
            node.input[index] = edit.add(node.input[index] + "_smooth", edit.read(node.input[index]).astype(np.float64) / s)
        return None
    inv = edit.add(group.tensor + "_smooth_inv", 1.0 / s)
    out = unique_name(group.tensor + "_smoothed", edit.taken)
    mul = helper.make_node("Mul", [group.tensor, inv], [out], name=unique_name(group.tensor + "_smooth_mul", edit.node_names))
    for r in group.readers:
        r.node.input[0] = out
    group.fold_label = f"Mul '{mul.name}' (new, read by the group only)"
    return mul


def _place(graph: onnx.GraphProto, muls: list[tuple[onnx.NodeProto, int]]) -> None:
    """Put each new Mul right before the first node of its group (its input is produced before any of them)."""
    before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for mul, first in muls:
        before[first].append(mul)
    replace_repeated(graph.node, [m for i, n in enumerate(graph.node) for m in [*before.get(i, []), n]])


class SmoothQuantPass(Pass[SmoothQuantOptions]):
    name = "smooth_quant"
    summary = "SmoothQuant: move activation outlier channels into MatMul/Gemm weights (X/s, diag(s)W) before qdq."
    Options = SmoothQuantOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        groups, refused = find_groups(model)
        if not groups:
            ctx.log.info("smooth_quant: nothing to smooth (%d groups skipped)", len(refused))
            return PassResult(model, False, facts={"smoothed_groups": 0}, refused=refused or ["no MatMul or Gemm reads an activation with a constant weight"])
        maxima, calib = channel_maxima(model, {g.tensor: g.channels for g in groups}, self.options, ctx)
        edit = _Editor(model, ctx.model_dir)
        muls, done = [], []
        for g in groups:
            act, w_max = maxima[g.tensor], weight_maxima(g, edit)
            if not act.any() or w_max is None:
                refused.append(f"'{g.tensor}': " + ("a weight of its readers holds NaN or inf" if w_max is None else "0 on every calibration sample") + "; not smoothed")
                continue
            s = smoothing_scales(act, w_max, self.options.alpha)
            mul = apply_group(g, s, edit)
            if mul is not None:
                muls.append((mul, min(r.index for r in g.readers)))
            done.append({
                "tensor": g.tensor, "readers": [r.label for r in g.readers], "channels": g.channels,
                "outlier_ratio_before": outlier_ratio(act), "outlier_ratio_after": outlier_ratio(act / s),
                "s_min": float(s.min()), "s_max": float(s.max()), "folded_into": g.fold_label,
            })
        _place(model.graph, muls)
        edit.drop_unused()
        if done and model.ir_version < 4:  # IR 3 requires every initializer to be a graph input; the new ones are not
            model.ir_version = 4
        folded = sum(1 for g in done if not g["folded_into"].startswith("Mul "))
        facts = {"alpha": self.options.alpha, "smoothed_groups": len(done), "folded": folded, "inserted_mul": len(muls), "calibration": calib, "groups": done}
        ctx.log.info("smooth_quant: %d groups smoothed (%d folded into their producer, %d Mul inserted), %d skipped", len(done), folded, len(muls), len(refused))
        return PassResult(model, bool(done), facts=facts, refused=refused)
