"""dynamic_batch: make dim 0 of a static-batch model symbolic, and rewrite what still holds the old batch.

Exporters bake the example batch (usually 1) into the graph: Reshape shape
constants, Expand/Tile sizes, Slice ends, Split sizes, LSTM initial states.
The pass marks the batch dim of every tensor (``_batch_analysis``), rewrites each
node that would break at another batch (0 or -1 in a Reshape shape, shapes
computed from ``Shape(x)[0]``, broadcasts of batch-1 constants), and refuses,
naming the nodes, where samples would not stay independent. By default it then
proves the result: batch ``verify_batch`` must equal that many stacked batch-1
runs of the original (:mod:`converter.batch_verify`).

A model whose inputs already have a symbolic batch is left alone; ``repair=true``
analyses it as batch ``dim`` (default 1) anyway, for exports with
``dynamic_axes`` whose code still says ``view(1, -1)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx

from converter.batch_verify import check_batch_stacking
from converter.errors import PassRefused, UsageError
from converter.graph_edit import node_inputs, replace_repeated, topological_sort
from converter.graph_info import opset_version
from converter.options import bounded
from converter.pass_api import Effect, Pass, PassContext, PassResult
from converter.passes.dynamic_batch._analysis import Analysis, Refuse, Rewrite, fmt_flag, plain
from converter.passes.dynamic_batch._graph import GraphEdits
from converter.passes.dynamic_batch._shapes import static_info
from converter.passes.dynamic_batch.rules import all_rules, fallback

_MAX_LISTED = 8
_MAX_ATTEMPTS = 64


@dataclass
class _Setup:
    """What every attempt of the analysis starts from."""

    graph: onnx.GraphProto
    base: onnx.GraphProto
    """The model's nodes, in topological order (copies: attempts never touch the model)."""
    static: dict[str, tuple[int | None, ...]]
    types: dict[str, int]
    chosen: list[onnx.ValueInfoProto]
    old: int
    opset: int
    ctx: PassContext


@dataclass
class _Attempt:
    analysis: Analysis
    nodes: list[onnx.NodeProto]
    tail: list[onnx.NodeProto]
    out_axes: dict[str, tuple[int, str]]
    unbatched: list[str]
    first_refusal: int
    """Position of the first refused node (past the last node when none was refused)."""


class BatchDependenceError(PassRefused):
    """The model uses its old batch in a way this pass cannot rewrite without changing results."""


@dataclass(frozen=True)
class DynamicBatchOptions:
    name: str = field(default="batch", metadata={"help": "name of the symbolic batch dim (dim_param)"})
    dim: int | None = field(default=None, metadata=bounded(1, 1_000_000, "the static batch the model was exported with (default: dim 0 of the first input)"))
    inputs: tuple[str, ...] = field(default=(), metadata={"help": "inputs whose dim 0 is the batch (default: every input)"})
    verify: bool = field(default=True, metadata={"help": "run the result on verify_batch stacked seeded samples and refuse it unless it equals the original run on each sample"})
    verify_batch: int = field(default=3, metadata=bounded(2, 64, "samples stacked in that self-check (batch = verify_batch x the old batch)"))
    repair: bool = field(default=False, metadata={"help": "inputs already have a symbolic batch: still find and rewrite nodes that hard-code it (as batch dim, default 1)"})

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"name '{self.name}' must be an identifier (letters, digits, _)")
        if self.dim is not None and self.dim < 1:
            raise ValueError("dim must be >= 1")
        if self.verify_batch < 2:
            raise ValueError("verify_batch must be >= 2")


def _dim0(vi: onnx.ValueInfoProto) -> int | str | None:
    t = vi.type.tensor_type
    if not t.HasField("shape") or not t.shape.dim:
        raise UsageError(f"input '{vi.name}' has no dims, so it has no batch dim; name the batched inputs with inputs=[...]")
    d = t.shape.dim[0]
    if d.HasField("dim_value") and d.dim_value > 0:
        return int(d.dim_value)
    return d.dim_param or None


def _batched_inputs(model: onnx.ModelProto, wanted: tuple[str, ...]) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    real = [vi for vi in model.graph.input if vi.name not in inits]
    if wanted:
        names = {vi.name for vi in real}
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise UsageError(f"inputs: '{unknown[0]}' is not an input of the model (inputs: {', '.join(sorted(names))})")
        real = [vi for vi in real if vi.name in wanted]
    if not real:
        raise UsageError("the model has no inputs to carry a batch")
    return real


def _set_dim(vi: onnx.ValueInfoProto, axis: int, param: str) -> None:
    d = vi.type.tensor_type.shape.dim[axis]
    d.Clear()
    d.dim_param = param


def _is_sorted(graph: onnx.GraphProto) -> bool:
    known = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    for n in graph.node:
        if any(x not in known for x in n.input if x):
            return False
        known.update(n.output)
    return True


def _live_tensors(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[str]:
    producer = {o: n for n in nodes for o in n.output if o}
    live: set[str] = set()
    stack = [o.name for o in graph.output]
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        n = producer.get(name)
        if n is not None:
            stack.extend(node_inputs(n))
    return live


class DynamicBatchPass(Pass[DynamicBatchOptions]):
    name = "dynamic_batch"
    summary = "Make the batch dim symbolic and rewrite every node that still holds the old batch (or refuse, naming it)."
    Options = DynamicBatchOptions
    effects = frozenset({Effect.BATCH})

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        o = self.options
        chosen = _batched_inputs(model, o.inputs)
        dims0 = {vi.name: _dim0(vi) for vi in chosen}
        dynamic = {n: d for n, d in dims0.items() if not isinstance(d, int)}
        if dynamic:
            if len(dynamic) < len(dims0):
                listed = ", ".join(f"{n} has dim 0 {d or '?'}" for n, d in dims0.items())
                raise BatchDependenceError(f"inputs disagree: {listed}; name the inputs to make dynamic with inputs=[...]")
            text = ", ".join(f"'{n}' dim 0 is '{d or '?'}'" for n, d in dynamic.items())
            if not o.repair:
                ctx.log.info("dynamic_batch: the batch is already dynamic (%s); model left unchanged", text)
                return PassResult(model, False, facts={"already_dynamic": dict(dynamic)},
                                  refused=[f"batch already dynamic ({text}): nothing to rewrite (repair=true checks its nodes for a hard-coded batch anyway)"])
            return self._repair(model, chosen, dynamic, ctx)
        old = o.dim if o.dim is not None else int(dims0[chosen[0].name])  # type: ignore[arg-type]
        wrong = [f"{n} has {d}" for n, d in dims0.items() if d != old]
        if wrong:
            raise BatchDependenceError(f"inputs disagree on the batch {old} in dim 0 ({', '.join(wrong)}); name the batched inputs with inputs=[...] or set dim=")
        return self._convert(model, chosen, old, ctx)

    def _repair(self, model: onnx.ModelProto, chosen: list[onnx.ValueInfoProto], dynamic: dict[str, str | None], ctx: PassContext) -> PassResult:
        """A model whose inputs already say 'batch' but whose nodes may still hard-code it (dim, default 1)."""
        old = self.options.dim or 1
        for vi in chosen:  # analysed as the static model it really is
            d = vi.type.tensor_type.shape.dim[0]
            d.Clear()
            d.dim_value = old
        try:
            result = self._convert(model, _batched_inputs(model, self.options.inputs), old, ctx)
        except BaseException:
            for vi in _batched_inputs(model, self.options.inputs):
                if vi.name in dynamic:
                    _set_dim(vi, 0, dynamic[vi.name] or self.options.name)
            raise
        result.facts["repaired_from"] = dict(dynamic)
        if not result.facts["rewritten"] and all(d == self.options.name for d in dynamic.values()):
            result.modified = False
            result.refused.append(f"repair: no node hard-codes the batch {old}; model unchanged")
        return result

    def _convert(self, model: onnx.ModelProto, chosen: list[onnx.ValueInfoProto], old: int, ctx: PassContext) -> PassResult:
        o = self.options
        opset = opset_version(model) or 1
        original = None
        if o.verify:  # what the result is proven against (and restored from if the proof fails)
            original = onnx.ModelProto()
            original.CopyFrom(model)
        done = self._rewrite(model, chosen, old, opset, ctx)
        analysis = done.analysis
        self._update_interface(model, chosen, done.out_axes, analysis)
        facts = {
            "batch": o.name,
            "old_batch": old,
            "inputs": [vi.name for vi in chosen],
            "outputs": {n: {"axis": ax, "dim": p} for n, (ax, p) in done.out_axes.items()},
            "rewritten": analysis.rewritten,
            "nodes_added": len(analysis.edits.prelude) + len(done.tail) + analysis.inserted,
        }
        if done.unbatched:
            facts["outputs_without_batch"] = done.unbatched
        if analysis.assumed:
            facts["assumed"] = analysis.assumed
            ctx.log.warning("dynamic_batch: %d node(s) without a rule were assumed per-sample: %s", len(analysis.assumed), "; ".join(analysis.assumed[:3]))
        for line in analysis.rewritten:
            ctx.log.info("dynamic_batch: %s", line)
        if original is not None:
            try:
                facts["self_check"] = self._self_check(original, model, ctx, old)
            except BatchDependenceError:
                model.CopyFrom(original)
                raise
        return PassResult(model, True, facts=facts)

    def _rewrite(self, model: onnx.ModelProto, chosen: list[onnx.ValueInfoProto], old: int, opset: int, ctx: PassContext) -> _Attempt:
        """Analyse and rewrite copies of the nodes; the model changes only once nothing was refused."""
        g = model.graph
        base = onnx.GraphProto()
        base.node.extend(g.node)
        if not _is_sorted(g):
            topological_sort(base)
        static, types = static_info(model)
        live_before = _live_tensors(g, list(g.node))
        done = self._analyse(_Setup(g, base, static, types, chosen, old, opset, ctx))
        a = done.analysis
        if a.refusals:
            more = len(a.refusals) - _MAX_LISTED
            listed = "; ".join(a.refusals[:_MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
            raise BatchDependenceError(f"cannot make the batch dynamic without changing results: {listed}")
        final = [*a.edits.prelude, *done.nodes, *done.tail]
        live = _live_tensors(g, final)
        keep = [n for n in final if any(x in live for x in n.output) or not any(x in live_before for x in n.output)]
        replace_repeated(g.node, keep)
        g.initializer.extend(a.edits.initializers)
        if model.ir_version < 4:  # initializers must also be graph inputs before IR 4
            g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in a.edits.initializers)
        used = set().union(*(node_inputs(n) for n in g.node)) if g.node else set()
        graph_inputs = {vi.name for vi in g.input}
        dropped = [t for t in g.initializer if t.name not in used and t.name in live_before and t.name not in graph_inputs]
        for t in dropped:
            g.initializer.remove(t)
        return done

    def _analyse(self, setup: _Setup) -> _Attempt:
        """Run the analysis; where a Reshape has several readings and a refusal follows, retry with the next one.

        Chronological backtracking: the latest ambiguous node before the first
        refusal takes its next reading. Returns the first clean attempt, or the
        one that got furthest before refusing.
        """
        choices: dict[int, int] = {}
        best: _Attempt | None = None
        for _ in range(_MAX_ATTEMPTS):
            attempt = self._attempt(setup, choices)
            a = attempt.analysis
            if not a.refusals:
                return attempt
            if best is None or attempt.first_refusal > best.first_refusal:
                best = attempt
            open_points = [(pos, taken) for pos, taken, count in a.choice_points if pos < attempt.first_refusal and taken + 1 < count]
            if not open_points:
                break
            pos, taken = open_points[-1]
            choices = {p: t for p, t, _ in a.choice_points if p < pos}
            choices[pos] = taken + 1
            setup.ctx.log.debug("dynamic_batch: retrying with reading %d of node %d after: %s", taken + 1, pos, a.refusals[0])
        assert best is not None
        return best

    def _attempt(self, setup: _Setup, choices: dict[int, int]) -> _Attempt:
        work = onnx.GraphProto()
        work.node.extend(setup.base.node)
        edits = GraphEdits(setup.graph, setup.opset, setup.chosen[0].name)
        a = Analysis(setup.graph, list(work.node), dict(setup.static), setup.old, edits, setup.opset, all_rules(), fallback, setup.ctx.log, setup.types, choices)
        for vi in setup.chosen:
            a.set_flags(vi.name, (plain(1), *([None] * (len(vi.type.tensor_type.shape.dim) - 1))))
        nodes: list[onnx.NodeProto] = []
        for i, node in enumerate(list(work.node)):
            a.pending = []
            a.position = i
            a.visit(node)
            nodes.extend(a.pending)
            nodes.append(node)
        a.position = len(work.node)
        tail, out_axes, unbatched = self._outputs(a, nodes)
        return _Attempt(a, nodes, tail, out_axes, unbatched, min(a.refused_at, default=len(work.node) + 1))

    def _outputs(self, a: Analysis, nodes: list[onnx.NodeProto]) -> tuple[list[onnx.NodeProto], dict[str, tuple[int, str]], list[str]]:
        """Every graph output gets its batch dim; outputs made from constants of the old batch are broadcast to it."""
        tail: list[onnx.NodeProto] = []
        axes: dict[str, tuple[int, str]] = {}
        unbatched: list[str] = []
        for out in a.graph.output:
            name = out.name
            if name in a.poisoned:
                continue
            try:
                flags = a.flags_of(name)
                batched = [(i, f) for i, f in enumerate(flags) if f is not None]
                if len(batched) > 1:
                    raise Refuse(f"it carries the batch in dims {[i for i, _ in batched]}")
                if batched:
                    i, f = batched[0]
                    if f.k is None:
                        raise Refuse(f"it holds the batch as {fmt_flag(f)}: batch-N samples would come out in another order than N batch-1 runs")
                    axes[name] = (i, self.options.name if f.k == 1 else f"{self.options.name}*{f.k}")
                    continue
                dims = a.static.get(name)
                if not dims or dims[0] != a.B:
                    unbatched.append(name)
                    continue
                tail.extend(self._batch_output(a, nodes, name, len(dims)))
                axes[name] = (0, self.options.name)
            except Refuse as exc:
                a.refusals.append(f"graph output '{name}': {exc}")
                a.refused_at.append(a.position)
        return tail, axes, unbatched

    def _batch_output(self, a: Analysis, nodes: list[onnx.NodeProto], name: str, rank: int) -> list[onnx.NodeProto]:
        prod = a.producer.get(name)
        if prod is None:
            raise Refuse("it is an input or a constant of the old batch, not computed from the inputs")
        if a.uses[name] == 0 and a.rewrite_origin(prod, name, 0, 1):
            return []
        if a.B != 1:
            raise Refuse(f"it holds {a.B} rows that do not come from the batch")
        inner = a.edits.unique(f"{name}/unbatched")
        prod.output[list(prod.output).index(name)] = inner
        for n in nodes:
            for i, x in enumerate(n.input):
                if x == name:
                    n.input[i] = inner
        node = a.edits.broadcast_to_batch(inner, rank, 0, 1, 1)
        node.output[0] = name
        a.rewritten.append(Rewrite("graph output", name, "broadcast from a batch-1 constant to the run-time batch"))
        return [node]

    def _update_interface(self, model: onnx.ModelProto, chosen: list[onnx.ValueInfoProto], out_axes: dict[str, tuple[int, str]], a: Analysis) -> None:
        g = model.graph
        for vi in chosen:
            _set_dim(vi, 0, self.options.name)
        for out in g.output:
            if out.name in out_axes and out.type.tensor_type.HasField("shape"):
                axis, param = out_axes[out.name]
                if axis < len(out.type.tensor_type.shape.dim):
                    _set_dim(out, axis, param)
        produced = {x for n in g.node for x in n.output}
        stale = [vi for vi in g.value_info if vi.name not in produced or a.batched(vi.name)]
        for vi in stale:
            g.value_info.remove(vi)

    def _self_check(self, original: onnx.ModelProto, model: onnx.ModelProto, ctx: PassContext, old: int = 1) -> str:
        n = self.options.verify_batch
        check = check_batch_stacking(original, model, batch_sizes=(n * old,), seed=ctx.seed)
        if not check:
            failures = check.failures()
            if failures and "cannot load the original model" in failures[0]:
                raise BatchDependenceError(f"cannot self-check the result: {failures[0].split(': ', 1)[1]}; set verify=false to convert without the check")
            raise BatchDependenceError(
                f"self-check failed: at batch {n * old} the rewritten model differs from {n} stacked batch-{old} runs ({'; '.join(check.failures()[:3])}); "
                "the model is left unconverted (verify=false skips this check)"
            )
        worst = max((o.needed_atol for r in check.runs if r.comparison for o in r.comparison.outputs), default=0.0)
        text = f"batch {n * old} equals {n} stacked batch-{old} runs (largest error {worst:.2g} x output scale)"
        ctx.log.info("dynamic_batch: %s", text)
        return text


__all__ = ["BatchDependenceError", "DynamicBatchOptions", "DynamicBatchPass"]
