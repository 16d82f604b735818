"""Layer-by-layer accuracy of a lowered model (Q/DQ int8 or fp16) against its float model.

Every quantized tensor is paired with the float tensor it stands for: a
``DequantizeLinear`` output in the quantized model corresponds to the input of the
``QuantizeLinear`` before it (the float tensor T that Q/DQ were inserted after), or, for
weights stored as int8, to the float model's input of the node that reads the DQ output
(nodes are matched by output name, then by node name). For an fp16 model, tensors with
the same name in both models are paired.

Memory stays bounded: at most ``chunk_size`` tensors are marked as outputs of one session;
the data is streamed batch by batch through each chunk's sessions and only running sums
are kept per tensor (sums of squares and products, max abs error), never the tensors.
Weights (tensors that depend on no graph input) are evaluated on the first batch only.
The sums are exact (rounded once, when read), so shards of the data merge into exactly one pass's
numbers (``debug accuracy --ray``, :mod:`converter.debug.sharded`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import onnx

from converter.graph_edit import node_inputs
from converter.ort_session import make_session, session_options

Feeds = dict[str, np.ndarray]
Mode = Literal["qdq", "fp16"]


@dataclass
class Pair:
    """A float tensor, the tensor standing for it in the lowered model, and who reads it."""

    float_name: str
    quant_name: str
    own_name: str | None = None
    """The lowered model's own float tensor before its QuantizeLinear: DQ(Q(own)) vs own is this tensor's own quantization error."""
    consumers: list[str] = field(default_factory=list)
    static: bool = False


def add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to the exact sum held by ``partials`` (non-overlapping floats, Shewchuk's algorithm, as in ``math.fsum``)."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


_SUMS = ("ff", "qq", "fq", "dd", "own_ff", "own_dd")


@dataclass
class Stats:
    """Running sums over every element seen: enough for cosine, relative L2 and max abs error.

    Each sum is kept exactly (the batch's dot products added without rounding, rounded once when read), so
    it does not depend on the order of the batches: statistics over shards of the data :meth:`merge` into
    exactly those of one pass (``debug accuracy --ray``).
    """

    max_abs: float = 0.0
    elements: int = 0
    problem: str | None = None
    partials: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in _SUMS})

    ff = property(lambda self: math.fsum(self.partials["ff"]))
    qq = property(lambda self: math.fsum(self.partials["qq"]))
    fq = property(lambda self: math.fsum(self.partials["fq"]))
    dd = property(lambda self: math.fsum(self.partials["dd"]))
    own_ff = property(lambda self: math.fsum(self.partials["own_ff"]))
    own_dd = property(lambda self: math.fsum(self.partials["own_dd"]))

    def _add(self, **sums: float) -> None:
        for key, value in sums.items():
            add_exact(self.partials[key], value)

    def update(self, f: np.ndarray, q: np.ndarray, own: np.ndarray | None = None) -> None:
        if f.shape != q.shape or f.dtype.kind != "f" or q.dtype.kind != "f":
            self.problem = f"float {f.dtype}{list(f.shape)} vs lowered {q.dtype}{list(q.shape)}: not comparable"
            return
        f64, q64 = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
        d = q64 - f64
        self._add(ff=float(f64 @ f64), qq=float(q64 @ q64), fq=float(f64 @ q64), dd=float(d @ d))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d), initial=0.0)))
        self.elements += f64.size
        if own is not None and own.shape == q.shape:
            o64 = own.astype(np.float64).ravel()
            self._add(own_ff=float(o64 @ o64), own_dd=float((q64 - o64) @ (q64 - o64)))

    def merge(self, other: Stats) -> Stats:
        """Add ``other`` (the same tensor over later samples) into this one, exactly; returns ``self``."""
        for key in _SUMS:
            for value in other.partials[key]:
                add_exact(self.partials[key], value)
        self.max_abs = max(self.max_abs, other.max_abs)
        self.elements += other.elements
        self.problem = other.problem or self.problem  # the last batch that did not compare, as in one pass
        return self

    @property
    def cosine(self) -> float:
        ff, qq = self.ff, self.qq
        if ff == 0.0 and qq == 0.0:
            return 1.0
        return self.fq / math.sqrt(ff * qq) if ff > 0 and qq > 0 else 0.0

    @staticmethod
    def _rel(dd: float, ff: float) -> float:
        return math.sqrt(dd / ff) if ff > 0 else (0.0 if dd == 0 else math.inf)


@dataclass
class TensorError:
    tensor: str
    kind: Literal["weight", "activation"]
    consumers: list[str]
    cosine: float
    rel_l2: float
    """||lowered - float|| / ||float|| over all samples: the error accumulated up to this tensor."""
    max_abs: float
    own_rel_l2: float | None
    """This tensor's own quantization error (DQ(Q(x)) vs x inside the lowered model); None for fp16."""
    problem: str | None = None


@dataclass
class AccuracyReport:
    mode: Mode
    samples: int
    errors: list[TensorError]
    sort: Literal["own", "total"]
    chunk_size: int
    marked_per_session: list[int]
    """How many tensors each session marked as outputs (each <= chunk_size)."""
    unmapped: list[str] = field(default_factory=list)

    def ranked(self) -> list[TensorError]:
        def key(e: TensorError) -> float:
            value = e.own_rel_l2 if self.sort == "own" and e.own_rel_l2 is not None else e.rel_l2
            return -value if e.problem is None else math.inf

        return sorted(self.errors, key=key)

    def metric(self, e: TensorError) -> float:
        return e.own_rel_l2 if self.sort == "own" and e.own_rel_l2 is not None else e.rel_l2

    def cutoff(self, threshold: float, kind: str = "activation") -> float:
        """Errors above this are outliers: above ``threshold`` and 3x the median error of tensors of that kind."""
        values = [self.metric(e) for e in self.errors if e.problem is None and e.kind == kind]
        return max(threshold, 3 * float(np.median(values))) if values else threshold

    def suggest_exclude(self, top: int, threshold: float) -> list[str]:
        """Readers of the worst ``top`` tensors whose ranking error is above :meth:`cutoff`, worst first."""
        names: dict[str, None] = {}
        for e in self.ranked()[:top]:
            if e.problem is None and self.metric(e) > self.cutoff(threshold, e.kind):
                names.update(dict.fromkeys(e.consumers))
        return list(names)

    def to_json(self, top: int, threshold: float) -> dict:
        return {
            "mode": self.mode, "samples": self.samples, "sort": self.sort, "chunk_size": self.chunk_size,
            "marked_per_session": self.marked_per_session, "unmapped": self.unmapped,
            "tensors": [asdict(e) for e in self.ranked()],
            "suggested_exclude": self.suggest_exclude(top, threshold), "cutoff": self.cutoff(threshold),
        }


def label(node: onnx.NodeProto) -> str:
    """A node's name, or ``Op->first_output`` when it has none (what fp16's node_block_list accepts)."""
    return node.name or f"{node.op_type}->{next((o for o in node.output if o), '?')}"


def _defined(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.input} | {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output if o}


def _dynamic(graph: onnx.GraphProto) -> set[str]:
    """Tensors that depend on a graph input (the rest are weights and constants)."""
    inits = {t.name for t in graph.initializer}
    dyn = {i.name for i in graph.input if i.name not in inits}
    for node in graph.node:
        if any(x in dyn for x in node_inputs(node)):
            dyn.update(o for o in node.output if o)
    return dyn


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for x in dict.fromkeys(node_inputs(node)):
            out.setdefault(x, []).append(node)
    return out


def _float_of_dq(dq: onnx.NodeProto, q_producer, q_readers, f_nodes, f_defined) -> tuple[str | None, str | None]:
    """(float tensor the DQ output stands for, the lowered model's pre-Q tensor) or (None, None)."""
    src = q_producer.get(dq.input[0])
    own = src.input[0] if src is not None and src.op_type == "QuantizeLinear" else None
    if own is not None and own in f_defined:
        return own, own
    if dq.output[0] in f_defined:  # the DQ took over the float tensor's name (a quantized graph output, a bias)
        return dq.output[0], own
    for reader in q_readers.get(dq.output[0], []):
        fnode = f_nodes.get(reader.output[0]) if reader.output else None
        fnode = fnode or f_nodes.get(reader.name)
        idx = [i for i, x in enumerate(reader.input) if x == dq.output[0]]
        if fnode is not None and idx and idx[0] < len(fnode.input) and fnode.input[idx[0]] in f_defined:
            return fnode.input[idx[0]], None
    return None, None


def map_qdq(float_model: onnx.ModelProto, quant_model: onnx.ModelProto) -> tuple[list[Pair], list[str]]:
    """Pairs for every DequantizeLinear output of the quantized model, and the DQ outputs that map to nothing."""
    fg, qg = float_model.graph, quant_model.graph
    f_defined = _defined(fg)
    f_nodes = {**{n.name: n for n in fg.node if n.name}, **{n.output[0]: n for n in fg.node if n.output}}
    q_producer = {o: n for n in qg.node for o in n.output if o}
    q_readers = _readers(qg)
    f_dyn, q_dyn = _dynamic(fg), _dynamic(qg)
    pairs: dict[str, Pair] = {}
    unmapped = []
    for dq in (n for n in qg.node if n.op_type == "DequantizeLinear"):
        float_name, own = _float_of_dq(dq, q_producer, q_readers, f_nodes, f_defined)
        if float_name is None:
            unmapped.append(dq.output[0])
            continue
        pair = pairs.setdefault(float_name, Pair(float_name, dq.output[0], own, static=float_name not in f_dyn and dq.output[0] not in q_dyn))
        pair.consumers.extend(label(r) for r in q_readers.get(dq.output[0], []) if label(r) not in pair.consumers)
    return list(pairs.values()), unmapped


def map_same_names(float_model: onnx.ModelProto, low_model: onnx.ModelProto) -> list[Pair]:
    """fp16 models: every float32 node output of the float model that the lowered model also has."""
    fg = float_model.graph
    inferred = onnx.shape_inference.infer_shapes(float_model, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    low = _defined(low_model.graph)
    readers = _readers(fg)
    names = [o for n in fg.node if n.op_type != "Constant" for o in n.output if o and o in low and types.get(o, 1) == onnx.TensorProto.FLOAT]
    return [Pair(n, n, None, [label(r) for r in readers.get(n, [])]) for n in dict.fromkeys(names)]


def detect_mode(quant_model: onnx.ModelProto) -> Mode:
    return "qdq" if any(n.op_type == "DequantizeLinear" for n in quant_model.graph.node) else "fp16"


def chunks(pairs: list[Pair], chunk_size: int) -> Iterator[list[Pair]]:
    """Groups of pairs whose lowered-model tensors (DQ output + pre-Q tensor) fit in ``chunk_size`` outputs."""
    group: list[Pair] = []
    used = 0
    for p in pairs:
        cost = 1 + (p.own_name is not None and p.own_name != p.quant_name)
        if group and used + cost > chunk_size:
            yield group
            group, used = [], 0
        group.append(p)
        used += cost
    if group:
        yield group


def _with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy whose graph outputs are exactly ``names`` (weights are shared, not copied twice by protobuf)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names))
    return out


def _cast_inputs(feeds: Feeds, session) -> Feeds:
    types = {i.name: i.type for i in session.get_inputs()}
    return {k: v.astype(np.float16) if types.get(k) == "tensor(float16)" and v.dtype == np.float32 else v for k, v in feeds.items()}


def _run_chunk(group: list[Pair], float_model, quant_model, batches: Callable[[], Iterator[Feeds]], stats: dict[str, Stats], marked: list[int],
               threads: int = 0) -> None:
    f_names = [p.float_name for p in group]
    q_names = list(dict.fromkeys([p.quant_name for p in group] + [p.own_name for p in group if p.own_name]))
    so = session_options(threads, opt_level="basic")  # no Q/DQ fusion: the values are what the graph says
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle ORT threads would steal numpy's CPU
    fs, qs = make_session(_with_outputs(float_model, f_names), options=so), make_session(_with_outputs(quant_model, q_names), options=so)
    marked.extend([len(f_names), len(q_names)])
    for feeds in batches():
        f_out = dict(zip(f_names, fs.run(f_names, _cast_inputs(feeds, fs))))
        q_out = dict(zip(q_names, qs.run(q_names, _cast_inputs(feeds, qs))))
        for p in group:
            stats[p.float_name].update(f_out[p.float_name], q_out[p.quant_name], q_out[p.own_name] if p.own_name else None)
        del f_out, q_out


@dataclass
class Collected:
    """The pairs compared and their running sums: what one pass (or one shard) over the data gives."""

    mode: Mode
    pairs: list[Pair]
    unmapped: list[str]
    stats: dict[str, Stats]
    marked: list[int]


def collect_errors(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, batches: Callable[[], Iterator[Feeds]], *, chunk_size: int = 64,
                   weights: bool = True, threads: int = 0) -> Collected:
    """Stream ``batches()`` (called once per chunk) through both models, chunk by chunk; ``weights``: also compare the
    tensors that depend on no input (on the first batch only)."""
    mode = detect_mode(quant_model)
    pairs, unmapped = map_qdq(float_model, quant_model) if mode == "qdq" else (map_same_names(float_model, quant_model), [])
    stats = {p.float_name: Stats() for p in pairs}
    marked: list[int] = []
    first = lambda: _first(batches())  # weights need one batch
    for static in (True, False) if weights else (False,):
        for group in chunks([p for p in pairs if p.static == static], chunk_size):
            _run_chunk(group, float_model, quant_model, first if static else batches, stats, marked, threads)
    return Collected(mode, pairs, unmapped, stats, marked)


def report_of(collected: Collected, *, samples: int, chunk_size: int, sort: Literal["own", "total"] | None = None) -> AccuracyReport:
    c = collected
    errors = [_error(p, c.stats[p.float_name], c.mode) for p in c.pairs]
    return AccuracyReport(c.mode, samples, errors, sort or ("own" if c.mode == "qdq" else "total"), chunk_size, c.marked, c.unmapped)


def compare_layers(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, batches: Callable[[], Iterator[Feeds]],
                   *, samples: int, chunk_size: int = 64, sort: Literal["own", "total"] | None = None) -> AccuracyReport:
    """Stream ``batches()`` (called once per chunk) through both models, chunk by chunk."""
    return report_of(collect_errors(float_model, quant_model, batches, chunk_size=chunk_size), samples=samples, chunk_size=chunk_size, sort=sort)


def _first(it: Iterator[Feeds]) -> Iterator[Feeds]:
    for feeds in it:
        yield feeds
        return


def _error(p: Pair, s: Stats, mode: Mode) -> TensorError:
    total = Stats._rel(s.dd, s.ff)
    own = None
    if mode == "qdq":
        own = total if p.static else (Stats._rel(s.own_dd, s.own_ff) if p.own_name else None)
    return TensorError(p.float_name, "weight" if p.static else "activation", p.consumers, s.cosine, total, s.max_abs, own, s.problem)
