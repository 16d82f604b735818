"""dynamic_batch: make the batch dim of a static-batch model symbolic, and rewrite what still holds the old batch.

Exporters bake the example batch (usually 1) into the graph: Reshape shape
constants, Expand/Tile sizes, Slice ends, Split sizes, LSTM initial states.
The pass marks the batch dim of every tensor (``_analysis``), starting from the
main input (``_inputs``) and finding the batch dim of every other input by what
it meets (an LSTM state ``[layers, batch, hidden]`` carries it at dim 1, ``_trace``;
scalars and tables carry none and are left alone), rewrites each node that
would break at another batch (0 or -1 in a Reshape shape, shapes computed from
``Shape(x)[0]``, broadcasts of batch-1 constants), walks If branches, and
refuses, naming the nodes, where samples would not stay independent. By
default it then proves the result: batch ``verify_batch`` must equal that many
stacked batch-1 runs of the original, each input and output stacked along its
own batch dim (:mod:`converter.batch_verify`).

A model whose main input already has a symbolic batch is left alone; ``repair=true``
analyses it as batch ``dim`` (default 1) anyway, for exports with
``dynamic_axes`` whose code still says ``view(1, -1)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import onnx

from converter.batch_verify import check_batch_stacking
from converter.graph_edit import node_inputs, replace_repeated, topological_sort
from converter.graph_info import opset_version
from converter.options import bounded
from converter.pass_api import Effect, Pass, PassContext, PassResult
from converter.passes.dynamic_batch._analysis import Analysis
from converter.passes.dynamic_batch._facts import BatchAxis, BatchDependenceError, axes_mapping
from converter.passes.dynamic_batch._flags import plain
from converter.passes.dynamic_batch._graph import GraphEdits
from converter.passes.dynamic_batch._inputs import Plan, dims_of, dynamic_inputs, parse_axes, pin, plan_seeds, real_inputs
from converter.passes.dynamic_batch._interface import outputs, update_interface
from converter.passes.dynamic_batch._shapes import static_info
from converter.passes.dynamic_batch._trace import InputAxisFound, Seed
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
    plan: Plan
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
    seeds: dict[str, Seed]


@dataclass(frozen=True)
class DynamicBatchOptions:
    name: str = field(default="batch", metadata={"help": "name of the symbolic batch dim (dim_param)"})
    dim: int | None = field(default=None, metadata=bounded(1, 1_000_000, "the static batch the model was exported with (default: the batch dim of the main input)"))
    inputs: tuple[str, ...] = field(default=(), metadata={"help": "the main inputs, batched at dim 0 (default: the first input with dims, and others whose dim 0 is the batch); other inputs' batch dims are found by analysis"})
    axes: tuple[str, ...] = field(default=(), metadata={"help": "batch dims of inputs, name:dim or name:none (e.g. [state:1,sr:none]); overrides what the analysis finds"})
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
        parse_axes(self.axes)


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


def _axes_facts(model: onnx.ModelProto, seeds: dict[str, Seed], out_axes: dict[str, int | None]) -> list[BatchAxis]:
    facts = [BatchAxis(vi.name, "input", s.axis if s else None, s.source if s else "none")
             for vi in real_inputs(model) for s in [seeds.get(vi.name)]]
    return facts + [BatchAxis(n, "output", ax, "analysis") for n, ax in out_axes.items()]


class DynamicBatchPass(Pass[DynamicBatchOptions]):
    name = "dynamic_batch"
    summary = "Make the batch dim symbolic and rewrite every node that still holds the old batch (or refuse, naming it)."
    Options = DynamicBatchOptions
    effects = frozenset({Effect.BATCH})

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        o = self.options
        axes = parse_axes(o.axes)
        dynamic = dynamic_inputs(model, o.inputs, axes)
        if dynamic:
            text = ", ".join(f"'{n}' dim {ax} is '{d or '?'}'" for n, (ax, d) in dynamic.items())
            if not o.repair:
                ctx.log.info("dynamic_batch: the batch is already dynamic (%s); model left unchanged", text)
                facts = {"already_dynamic": {n: d for n, (_, d) in dynamic.items()},
                         "axes": [BatchAxis(vi.name, "input", dynamic[vi.name][0] if vi.name in dynamic else None, "symbolic" if vi.name in dynamic else "none") for vi in real_inputs(model)]}
                return PassResult(model, False, facts=facts,
                                  refused=[f"batch already dynamic ({text}): nothing to rewrite (repair=true checks its nodes for a hard-coded batch anyway)"])
            return self._repair(model, dynamic, axes, ctx)
        return self._convert(model, plan_seeds(model, o.inputs, axes, o.dim), ctx)

    def _repair(self, model: onnx.ModelProto, dynamic: dict[str, tuple[int, str | None]], axes: dict[str, int | None], ctx: PassContext) -> PassResult:
        """A model whose inputs already say 'batch' but whose nodes may still hard-code it (dim, default 1)."""
        old = self.options.dim or 1
        pin(model, {n: (ax, old) for n, (ax, _) in dynamic.items()})  # analysed as the static model it really is
        try:
            plan = plan_seeds(model, self.options.inputs, {**axes, **{n: ax for n, (ax, _) in dynamic.items()}}, old)
            result = self._convert(model, plan, ctx)
        except BaseException:
            pin(model, dynamic)
            raise
        result.facts["repaired_from"] = {n: d for n, (_, d) in dynamic.items()}
        if not result.facts["rewritten"] and all(d == self.options.name for _, d in dynamic.values()):
            result.modified = False
            result.refused.append(f"repair: no node hard-codes the batch {old}; model unchanged")
        return result

    def _convert(self, model: onnx.ModelProto, plan: Plan, ctx: PassContext) -> PassResult:
        o = self.options
        opset = opset_version(model) or 1
        original = None
        if o.verify:  # what the result is proven against (and restored from if the proof fails)
            original = onnx.ModelProto()
            original.CopyFrom(model)
        done = self._rewrite(model, plan, opset, ctx)
        analysis = done.analysis
        input_axes = {n: s.axis for n, s in done.seeds.items() if s.axis is not None}
        update_interface(model, input_axes, done.out_axes, analysis, o.name)
        out_axes: dict[str, int | None] = {out.name: done.out_axes[out.name][0] if out.name in done.out_axes else None for out in model.graph.output}
        axes = _axes_facts(model, done.seeds, out_axes)
        facts = {
            "batch": o.name,
            "old_batch": plan.old,
            "inputs": list(input_axes),
            "outputs": {n: {"axis": ax, "dim": p} for n, (ax, p) in done.out_axes.items()},
            "axes": axes,
            "rewritten": analysis.rewritten,
            "nodes_added": len(analysis.edits.prelude) + len(done.tail) + analysis.inserted,
        }
        if done.unbatched:
            facts["outputs_without_batch"] = done.unbatched
        left = [a.tensor for a in axes if a.role == "input" and a.axis is None]
        if left:
            facts["inputs_without_batch"] = left
        for a in axes:
            if a.source in ("found", "none") and a.role == "input":
                ctx.log.info("dynamic_batch: %s", a)
        if analysis.assumed:
            facts["assumed"] = analysis.assumed
            ctx.log.warning("dynamic_batch: %d node(s) without a rule were assumed per-sample: %s", len(analysis.assumed), "; ".join(analysis.assumed[:3]))
        for line in analysis.rewritten:
            ctx.log.info("dynamic_batch: %s", line)
        if original is not None:
            try:
                facts["self_check"] = self._self_check(original, model, ctx, plan.old, axes_mapping(axes))
            except BatchDependenceError:
                model.CopyFrom(original)
                raise
        return PassResult(model, True, facts=facts)

    def _rewrite(self, model: onnx.ModelProto, plan: Plan, opset: int, ctx: PassContext) -> _Attempt:
        """Analyse and rewrite copies of the nodes; the model changes only once nothing was refused."""
        g = model.graph
        base = onnx.GraphProto()
        base.node.extend(g.node)
        if not _is_sorted(g):
            topological_sort(base)
        static, types = static_info(model)
        live_before = _live_tensors(g, list(g.node))
        done = self._search(_Setup(g, base, static, types, plan, opset, ctx))
        a = done.analysis
        if a.refusals:
            more = len(a.refusals) - _MAX_LISTED
            listed = "; ".join(a.refusals[:_MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
            raise BatchDependenceError(f"cannot make the batch dynamic without changing results: {listed}")
        for sub, nodes in a.subgraph_plans:  # innermost first: an outer list copies the inner ones as they are by then
            if len(nodes) != len(sub.node):
                replace_repeated(sub.node, nodes)
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

    def _search(self, setup: _Setup) -> _Attempt:
        """The analysis with every input's batch dim found; guessed dim-0 inputs are dropped if they cause refusals."""
        done = self._discover(setup)
        movable = [n for n, s in done.seeds.items() if s.movable]
        if done.analysis.refusals and movable:
            seeds = {n: s for n, s in setup.plan.seeds.items() if not s.movable}
            retry = self._discover(replace(setup, plan=replace(setup.plan, seeds=seeds)))
            if not retry.analysis.refusals:
                setup.ctx.log.debug("dynamic_batch: %s carry no batch at dim 0 after all", ", ".join(movable))
                return retry
        return done

    def _discover(self, setup: _Setup) -> _Attempt:
        """Walk; each time the batch reaches an input whose batch dim was not known, batch it there and walk again."""
        seeds = dict(setup.plan.seeds)
        tried: set[tuple[str, int]] = set()
        while True:
            try:
                return self._analyse(replace(setup, plan=replace(setup.plan, seeds=seeds)))
            except InputAxisFound as found:
                if (found.name, found.axis) in tried:
                    raise BatchDependenceError(f"input '{found.name}': its batch dim cannot be settled ({found})") from None
                tried.add((found.name, found.axis))
                seeds[found.name] = Seed(found.axis, "found")
                setup.ctx.log.debug("dynamic_batch: %s", found)

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
        plan = setup.plan
        edits = GraphEdits(setup.graph, setup.opset, plan.lead, batch_axis=plan.lead_axis)
        a = Analysis(setup.graph, list(work.node), dict(setup.static), plan.old, edits, setup.opset, all_rules(), fallback, setup.ctx.log, setup.types, choices)
        a.seeds = dict(plan.seeds)
        a.input_names = {vi.name for vi in setup.graph.input} - {t.name for t in setup.graph.initializer}
        for vi in setup.graph.input:
            seed = plan.seeds.get(vi.name)
            if seed is not None and seed.axis is not None:
                a.set_flags(vi.name, [plain(1) if i == seed.axis else None for i in range(len(dims_of(vi)))])
        nodes: list[onnx.NodeProto] = []
        for node in list(work.node):
            a.pending = []
            a.visit(node)
            nodes.extend(a.pending)
            nodes.append(node)
        a.position = a.steps
        tail, out_axes, unbatched = outputs(a, nodes, self.options.name)
        return _Attempt(a, nodes, tail, out_axes, unbatched, min(a.refused_at, default=a.steps + 1), dict(plan.seeds))

    def _self_check(self, original: onnx.ModelProto, model: onnx.ModelProto, ctx: PassContext, old: int = 1, axes: dict[str, int | None] | None = None) -> str:
        n = self.options.verify_batch
        check = check_batch_stacking(original, model, batch_sizes=(n * old,), seed=ctx.seed, axes=axes)
        if not check:
            failures = check.failures()
            if failures and ("cannot load the original model" in failures[0] or "the original model failed on" in failures[0]):
                raise BatchDependenceError(f"cannot self-check the result: {failures[0].split(': ', 1)[1]} (seeded sample data); set verify=false to convert without the check")
            raise BatchDependenceError(
                f"self-check failed: at batch {n * old} the rewritten model differs from {n} stacked batch-{old} runs ({'; '.join(check.failures()[:3])}); "
                "the model is left unconverted (verify=false skips this check)"
            )
        worst = max((o.needed_atol for r in check.runs if r.comparison for o in r.comparison.outputs), default=0.0)
        text = f"batch {n * old} equals {n} stacked batch-{old} runs (largest error {worst:.2g} x output scale)"
        ctx.log.info("dynamic_batch: %s", text)
        return text


__all__ = ["BatchDependenceError", "DynamicBatchOptions", "DynamicBatchPass"]
