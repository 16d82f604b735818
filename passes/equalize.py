"""equalize: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"; AIMET's ``equalize_model``), before ``qdq``.

For two Convs in a chain ``Conv1 -> [act] -> Conv2`` (act: nothing, Relu, LeakyRelu, PRelu or Clip(0, inf):
positive homogeneous, ``act(x / s) = act(x) / s`` for ``s > 0``), output channel i of Conv1 feeds input
channel i of Conv2 only, so dividing Conv1's row i (and bias i) by ``s_i`` and multiplying Conv2's input
channel i by ``s_i`` leaves the float output unchanged. With ``r1`` = max|W1| per output channel of Conv1 and
``r2`` = max|W2| per input channel of Conv2, ``s = sqrt(r1 * r2) / r2`` makes both ``sqrt(r1 * r2)``.
Depthwise Convs (group == channels, one filter a channel) take part on both sides, so AIMET's three-layer
set Conv -> DW -> Conv is two pairs sharing the DW; every pair is rebalanced in sweeps until no scale moves
by more than ``tolerance`` (``iterations`` at most): the fixed point of AIMET's closed form (all three
ranges equal to the cube root of their product). Each pair's total scale is clamped to
[``min_scale``, ``max_scale``]; a channel whose range is 0 on either side keeps scale 1.

Skipped, with the reason: a tensor on the chain read by anything else (branch, residual Add, graph output:
its readers would see scaled values), grouped Convs other than depthwise, a depthwise multiplier above 1,
weights or a Conv1 bias that are not float32 constants (initializers or Constant nodes), an act that is
not positive homogeneous (HardSwish, Sigmoid, BatchNormalization: run ``fold_constants{fuse_conv=true}``
first). Clip(0, 6) (ReLU6) would need the per-channel bound ``6 / s_i``, which a scalar Clip cannot hold:
such pairs are skipped, or with ``relu6_to_relu=true`` the Clip is replaced by Relu as AIMET does (this
changes the float model; the facts list every Clip replaced). High-bias absorption is not done: it is
not exact (it shifts outputs where pre-activations fall below ``beta - 3 gamma`` and at Conv2's zero-padded
borders) and needs the BatchNorm statistics that folding has already erased.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter import lazy_weights
from converter.graph_edit import node_inputs, unique_name
from converter.graph_info import iter_graphs
from converter.options import bounded
from converter.pass_api import Pass, PassContext, PassResult
from converter.passes.fold_constants import constant_node_tensor

_DEFAULT = ("", "ai.onnx")
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
RELU6_MAX = 6.0


@dataclass(frozen=True)
class EqualizeOptions:
    iterations: int = field(default=20, metadata=bounded(1, 1000, "sweeps over all pairs at most (stops earlier when no scale moves by more than tolerance)"))
    tolerance: float = field(default=1e-3, metadata=bounded(0.0, 1.0, "converged when every scale of a sweep is within 1 +- tolerance"))
    min_scale: float = field(default=1e-3, metadata=bounded(1e-12, 1.0, "lower clamp of each channel's total scale s (Conv1 row divided by s)"))
    max_scale: float = field(default=1e3, metadata=bounded(1.0, 1e12, "upper clamp of each channel's total scale s"))
    relu6_to_relu: bool = field(default=False, metadata={"help": "replace Clip(0, 6) between two Convs by Relu so the pair can be equalized (AIMET's approach; changes the float model)"})

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= 1 <= self.max_scale or self.iterations < 1 or self.tolerance < 0:
            raise ValueError(f"need 0 < min_scale <= 1 <= max_scale (got {self.min_scale}, {self.max_scale}), iterations >= 1, tolerance >= 0")


@dataclass
class Layer:
    """A Conv taking part in equalization: its weight and bias as float64 arrays, scaled in memory."""

    index: int
    label: str
    w: np.ndarray
    b: np.ndarray | None
    depthwise: bool


@dataclass
class Pair:
    first: Layer
    second: Layer
    act: str
    clip: onnx.NodeProto | None = None
    """A Clip(0, 6) to replace by Relu (relu6_to_relu)."""
    total: np.ndarray = field(default_factory=lambda: np.ones(0))
    before: tuple[float | None, float | None] = (None, None)

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """max |W| per output channel of the first Conv, per input channel of the second."""
        w1, w2 = np.abs(self.first.w), np.abs(self.second.w)
        r1 = w1.reshape(w1.shape[0], -1).max(axis=1)
        r2 = w2.reshape(w2.shape[0], -1).max(axis=1) if self.second.depthwise else np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1).max(axis=1)
        return r1, r2


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def spread(r: np.ndarray) -> float | None:
    """max / min channel range (None when a channel is all zeros)."""
    low = float(r.min()) if r.size else 0.0
    return round(float(r.max()) / low, 3) if low > 0 else None


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


class _Graph:
    """The main graph's readers, producers and constants (initializers that are not graph inputs, Constant nodes)."""

    def __init__(self, model: onnx.ModelProto, model_dir: str | None) -> None:
        g = model.graph
        self.graph, self.model_dir = g, model_dir or ""
        self.nodes = list(g.node)
        self.readers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for x in dict.fromkeys(node_inputs(n)):
                self.readers[x].append(i)
        for o in g.output:
            self.readers[o.name].append(-1)
        inputs = {i.name for i in g.input}
        self.inits = {t.name: t for t in g.initializer if t.name not in inputs}
        self.const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.domain in _DEFAULT and len(n.output) == 1 and n.attribute}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return lazy_weights.to_array(self.inits[name], base_dir=self.model_dir)
        node = self.const_nodes.get(name)
        t = constant_node_tensor(node) if node is not None else None
        return lazy_weights.to_array(t) if t is not None else None

    def others(self, name: str, reader: int) -> str:
        """Who else reads ``name`` besides node ``reader`` ('' when nobody)."""
        rest = [i for i in self.readers[name] if i != reader]
        return ", ".join("a graph output" if i < 0 else f"{node_label(self.nodes[i], i)} ({self.nodes[i].op_type})" for i in rest)

    def write(self, node: onnx.NodeProto, slot: int, value: np.ndarray) -> None:
        """Store ``value`` as input ``slot`` of ``node``: in place when only this node reads it, else as a new initializer."""
        name = node.input[slot]
        tensor = numpy_helper.from_array(value.astype(np.float32), name)
        if len(self.readers[name]) == 1 and name in self.inits:
            self.inits[name].CopyFrom(tensor)
        elif len(self.readers[name]) == 1 and name in self.const_nodes:
            c = self.const_nodes[name]
            del c.attribute[:]
            c.attribute.append(helper.make_attribute("value", tensor))
        else:
            taken = {t.name for t in self.graph.initializer} | {i.name for i in self.graph.input} | {o for n in self.graph.node for o in n.output}
            new = numpy_helper.from_array(value.astype(np.float32), unique_name(name + "_cle", taken))
            self.graph.initializer.append(new)
            node.input[slot] = new.name


def _clip_bounds(node: onnx.NodeProto, g: _Graph) -> tuple[float, float] | None:
    """(min, max) of a Clip, -inf/inf where absent; None when a bound is not a constant scalar."""
    if any(a.name in ("min", "max") for a in node.attribute):  # opset < 11
        return float(_attr(node, "min", -np.inf)), float(_attr(node, "max", np.inf))  # type: ignore[arg-type]
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(node.input) <= i or not node.input[i]:
            bounds.append(default)
            continue
        v = g.const(node.input[i])
        if v is None or v.size != 1:
            return None
        bounds.append(float(v.reshape(())))
    return bounds[0], bounds[1]


def _act_problem(act: onnx.NodeProto, g: _Graph, relu6_to_relu: bool) -> tuple[str, bool]:
    """('', False) when ``act`` is positive homogeneous, ('', True) for a Clip(0, 6) to replace, else (why not, False)."""
    if act.domain not in _DEFAULT:
        return f"{act.op_type} (domain {act.domain}) is not known to be positive homogeneous", False
    if act.op_type in HOMOGENEOUS:
        return "", False
    if act.op_type == "Clip":
        bounds = _clip_bounds(act, g)
        if bounds is None:
            return "Clip with bounds that are not constant scalars", False
        lo, hi = bounds
        if lo == -np.inf and hi == np.inf or lo == 0 and hi == np.inf:
            return "", False
        if lo == 0 and hi == RELU6_MAX:
            if relu6_to_relu:
                return "", True
            return ("Clip(0, 6) (ReLU6) between them: scaling channel i by 1/s_i needs the bound 6/s_i, which a scalar Clip "
                    "cannot hold (relu6_to_relu=true replaces it with Relu, as AIMET does, changing the float model)"), False
        return f"Clip({lo:g}, {hi:g}) between them is not positive homogeneous", False
    if act.op_type == "BatchNormalization":
        return "BatchNormalization between them (fold it into the Conv first: fold_constants{fuse_conv=true})", False
    return f"{act.op_type} between them is not positive homogeneous (act(x/s) != act(x)/s)", False


def _layer(node: onnx.NodeProto, index: int, g: _Graph, with_bias: bool) -> Layer | str:
    label = f"{node_label(node, index)} (Conv)"
    w = g.const(node.input[1]) if len(node.input) > 1 else None
    if w is None:
        return f"{label}: its weight '{node.input[1] if len(node.input) > 1 else ''}' is not a constant"
    if w.dtype != np.float32 or w.ndim < 3:
        return f"{label}: its weight is {w.dtype} of rank {w.ndim}, not a float32 Conv weight"
    if not np.isfinite(w).all():
        return f"{label}: its weight holds NaN or inf"
    group = int(_attr(node, "group", 1))  # type: ignore[arg-type]
    depthwise = group > 1 and group == w.shape[0] and w.shape[1] == 1
    if group > 1 and not depthwise:
        return f"{label}: group={group} with weight {list(w.shape)} is a grouped Conv that is not depthwise (one filter per channel); only group 1 and depthwise are equalized"
    b = None
    if with_bias and len(node.input) > 2 and node.input[2]:
        b = g.const(node.input[2])
        if b is None or b.dtype != np.float32:
            return f"{label}: its bias '{node.input[2]}' is not a float32 constant"
    return Layer(index, node_label(node, index), w.astype(np.float64), None if b is None else b.astype(np.float64), depthwise)


def find_pairs(model: onnx.ModelProto, g: _Graph, relu6_to_relu: bool) -> tuple[list[Pair], list[str]]:
    """Every Conv -> [act] -> Conv pair to equalize, and the ones skipped with why."""
    pairs, refused = [], []
    layers: dict[int, Layer] = {}
    nodes = g.nodes

    def is_conv_reading(i: int, name: str) -> bool:
        return i >= 0 and nodes[i].op_type == "Conv" and nodes[i].domain in _DEFAULT and nodes[i].input[0] == name

    for i1, c1 in enumerate(nodes):
        if c1.op_type != "Conv" or c1.domain not in _DEFAULT or not c1.output or not c1.output[0]:
            continue
        out = c1.output[0]
        via = [(r, None) for r in g.readers[out] if is_conv_reading(r, out)]
        via += [(nxt, r) for r in g.readers[out] if r >= 0 and nodes[r].op_type != "Conv" and len(nodes[r].input) and nodes[r].input[0] == out
                 and nodes[r].output for nxt in g.readers[nodes[r].output[0]] if is_conv_reading(nxt, nodes[r].output[0])]
        if not via:
            continue
        i2, ia = via[0]
        act = nodes[ia] if ia is not None else None
        middle = f"{node_label(act, ia)} ({act.op_type}) -> " if act is not None and ia is not None else ""
        where = f"{node_label(c1, i1)} -> {middle}{node_label(nodes[i2], i2)}"
        first_reader = ia if ia is not None else i2
        problem = ""
        if len(g.readers[out]) > 1:
            problem = f"'{out}' is also read by {g.others(out, first_reader)} (branch or residual: its readers would see scaled values)"
        elif act is not None and len(g.readers[act.output[0]]) > 1:
            problem = f"'{act.output[0]}' is also read by {g.others(act.output[0], i2)} (branch or residual: its readers would see scaled values)"
        elif act is not None and (len(act.output) > 1 or act.op_type == "PRelu" and act.input[1] == out):
            problem = f"{act.op_type} {node_label(act, ia or 0)} is not an elementwise activation of '{out}' alone"
        replace = False
        if not problem and act is not None:
            problem, replace = _act_problem(act, g, relu6_to_relu)
        found = []
        if not problem:
            found = [layers.get(i) or _layer(nodes[i], i, g, True) for i in (i1, i2)]
            problem = "; ".join(x for x in found if isinstance(x, str))
        if not problem:
            first, second = found  # type: ignore[misc]
            c_out, c_in = first.w.shape[0], second.w.shape[0] if second.depthwise else second.w.shape[1]
            if c_out != c_in:
                problem = f"{first.label} has {c_out} output channels, {second.label} reads {c_in}"
        if problem:
            refused.append(f"{where}: {problem}; not equalized")
            continue
        layers[i1], layers[i2] = first, second
        pairs.append(Pair(first, second, act.op_type if act is not None else "none", act if replace else None, np.ones(c_out)))
    for sub in list(iter_graphs(model.graph))[1:]:
        refused += [f"{node_label(n, i)} (Conv): inside a subgraph (If/Loop/Scan body), not equalized" for i, n in enumerate(sub.node) if n.op_type == "Conv"]
    return pairs, refused


def equalize(pairs: list[Pair], options: EqualizeOptions) -> tuple[int, float]:
    """Rebalance every pair in sweeps, in place on the layers' arrays; (sweeps run, largest |s - 1| of the last)."""
    moved = 0.0
    for sweep in range(1, options.iterations + 1):
        moved = 0.0
        for p in pairs:
            r1, r2 = p.ranges()
            s = np.ones_like(r1)
            ok = (r1 > 0) & (r2 > 0)
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            total = np.clip(p.total * s, options.min_scale, options.max_scale)
            step = total / p.total
            p.total = total
            a, b = p.first, p.second
            a.w /= step.reshape(-1, *[1] * (a.w.ndim - 1))
            if a.b is not None:
                a.b /= step
            b.w *= step.reshape(-1, *[1] * (b.w.ndim - 1)) if b.depthwise else step.reshape(1, -1, *[1] * (b.w.ndim - 2))
            moved = max(moved, float(np.abs(step - 1.0).max(initial=0.0)))
        if moved <= options.tolerance:
            return sweep, moved
    return options.iterations, moved


def _relu(clip: onnx.NodeProto) -> None:
    """Turn a Clip(0, 6) into Relu in place (name kept)."""
    clip.op_type = "Relu"
    del clip.input[1:]
    del clip.attribute[:]


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove constants in ``names`` that nothing reads any more (initializers, Constant nodes)."""
    used = {x for n in graph.node for x in node_inputs(n)} | {o.name for o in graph.output}
    dead = names - used
    for coll, key in ((graph.initializer, lambda t: t.name), (graph.node, lambda n: n.output[0] if n.op_type == "Constant" else "")):
        for k in reversed(range(len(coll))):
            if key(coll[k]) in dead:
                del coll[k]


class EqualizePass(Pass[EqualizeOptions]):
    name = "equalize"
    summary = "Cross-layer equalization of Conv -> [Relu] -> Conv chains (depthwise included) before qdq: exact float rewrite of the weights."
    Options = EqualizeOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        g = _Graph(model, ctx.model_dir)
        pairs, refused = find_pairs(model, g, self.options.relu6_to_relu)
        if not pairs:
            ctx.log.info("equalize: no Conv pair to equalize (%d skipped)", len(refused))
            return PassResult(model, False, facts={"pairs_equalized": 0, "pairs_skipped": len(refused)}, refused=refused or ["no Conv -> [act] -> Conv chain"])
        for p in pairs:
            r1, r2 = p.ranges()
            p.before = (spread(r1), spread(r2))
        sweeps, moved = equalize(pairs, self.options)
        replaced, old = [], set()
        for p in pairs:
            if p.clip is not None:
                replaced.append(p.clip.name or p.clip.output[0])
                old.update(p.clip.input[1:])
                _relu(p.clip)
        layers = {p.first.index: p.first for p in pairs} | {p.second.index: p.second for p in pairs}
        for layer in layers.values():
            node = g.nodes[layer.index]
            old.update(node.input[1:3])
            g.write(node, 1, layer.w)
            if layer.b is not None:
                g.write(node, 2, layer.b)
        _drop_unused(g.graph, old)
        model.ir_version = max(model.ir_version, 4)  # IR 3 requires every initializer to be a graph input; new ones are not
        done = []
        for p in pairs:
            r1, r2 = p.ranges()
            done.append({
                "pair": f"{p.first.label} -> {p.second.label}", "act": "Relu (was Clip(0, 6))" if p.clip is not None else p.act,
                "channels": int(r1.size), "first_ratio_before": p.before[0], "first_ratio_after": spread(r1),
                "second_ratio_before": p.before[1], "second_ratio_after": spread(r2),
                "s_min": float(p.total.min()), "s_max": float(p.total.max()),
            })
        facts = {
            "pairs_equalized": len(pairs), "pairs_skipped": len(refused), "sweeps": sweeps, "converged": moved <= self.options.tolerance,
            "last_sweep_max_change": round(moved, 6), "relu6_replaced": replaced, "pairs": done,
        }
        if replaced:
            ctx.log.warning("equalize: %d Clip(0, 6) replaced by Relu (relu6_to_relu=true): the float model's outputs change", len(replaced))
        ctx.log.info("equalize: %d pairs equalized in %d sweeps, %d skipped", len(pairs), sweeps, len(refused))
        return PassResult(model, True, facts=facts, refused=refused)
