"""Where does the batch live? Forward analysis of an exported model with a static batch.

Every tensor gets *flags*: per dim, ``None`` (static) or a :class:`BDim` telling
how that dim holds the batch. ``BDim((k,))`` is ``k * batch`` laid out
batch-major (``[batch, k]``, as after a reshape that merges the batch with ``k``
heads); ``BDim((k,), outer=a)`` is ``[a, batch, k]`` merged (torch's
``view(tgt_len * bsz, embed)``); ``BDim((k1, k2))`` is a concatenation along the
batch dim of parts ``k_i * batch`` (part-major). Op rules (``_batch_rules*``)
compute the flags of a node's outputs from its inputs and rewrite the node where
it still holds the old batch value. A rule that cannot keep the model exact
raises :class:`Refuse`; the analysis collects those and the pass reports them
all, naming the nodes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

import onnx

from converter import lazy_weights
from converter.graph_edit import node_inputs
from converter.graph_info import iter_graphs
from converter.passes.dynamic_batch._facts import Rewrite
from converter.passes.dynamic_batch._flags import SHAPE_INPUTS, BDim, Flag, Flags, attr, fmt_flag, label, plain, subgraphs
from converter.passes.dynamic_batch._graph import GraphEdits, Refuse
from converter.passes.dynamic_batch._shapes import infer_node
from converter.passes.dynamic_batch._trace import Seed, check_input_origin
from converter.passes.dynamic_batch._values import Lin, NotLinear, ShapeLookup, Value, depends_on_batch, evaluate, is_static, tensor_value, to_ints

Rule = Callable[[onnx.NodeProto, "Analysis"], None]


class Analysis:
    """Flags and values of every tensor, filled node by node in topological order."""

    def __init__(self, graph: onnx.GraphProto, nodes: list[onnx.NodeProto], static: dict[str, tuple[int | None, ...]], old_batch: int,
                 edits: GraphEdits, opset: int, rules: dict[str, Rule], fallback: Rule, log: logging.Logger,
                 types: dict[str, int] | None = None, choices: dict[int, int] | None = None) -> None:
        self.graph = graph
        self.choices = choices or {}
        """Which alternative to take at each ambiguous node (by position), for a retry after a refusal."""
        self.choice_points: list[tuple[int, int, int]] = []
        """(position, alternative taken, alternatives) of every ambiguous node met."""
        self.position = 0
        self.refused_at: list[int] = []
        self.static = static
        self.types = types or {}
        self.B = old_batch
        self.edits = edits
        self.opset = opset
        self.rules = rules
        self.fallback = fallback
        self.log = log
        self.flags: dict[str, Flags] = {}
        self.values: dict[str, Value] = {}
        self.dependent: set[str] = set()
        """Tensors whose value depends on the batch size in a way not tracked as a Lin."""
        self.rewritten: list[Rewrite] = []
        self.assumed: list[str] = []
        self.refusals: list[str] = []
        self.poisoned: set[str] = set()
        self.pending: list[onnx.NodeProto] = []
        self.inserted = 0
        """Nodes inserted before readers (broadcasts of batch-1 constants)."""
        everything = [*nodes, *(n for top in nodes for sg in subgraphs(top) for g in iter_graphs(sg) for n in g.node)]
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in everything for o in n.output if o}
        self.uses: dict[str, int] = defaultdict(int)
        for n in everything:  # outer-scope reads count at the If and again inside: more uses only means fewer in-place rewrites
            for x in node_inputs(n):
                self.uses[x] += 1
        self.steps = 0
        """Nodes visited so far, subgraph nodes included: ``position`` of the node being visited."""
        self.seeds: dict[str, Seed] = {}
        """Graph inputs and where they carry the batch (set by the pass before the walk)."""
        self.input_names: set[str] = set()
        self.aliases: dict[str, list[str]] = {}
        """If outputs → the outputs of the branches analysed for them."""
        self.subgraph_plans: list[tuple[onnx.GraphProto, list[onnx.NodeProto]]] = []
        """New node lists of walked subgraphs (broadcasts inserted), innermost first; applied by the pass."""
        self.graph_outputs = {o.name for o in graph.output}
        self._broadcasts: dict[tuple[str, int, int], str] = {}
        for t in graph.initializer:
            v = tensor_value(t)
            if v is not None:
                self.values[t.name] = v
        self._look = ShapeLookup(self.lin_dims, opset)

    # ---- facts about tensors -------------------------------------------------

    def rank(self, name: str) -> int:
        if name in self.flags:
            return len(self.flags[name])
        if name in self.static:
            return len(self.static[name])
        raise Refuse(f"the rank of '{name}' is unknown (shape inference gave no shape)")

    def static_dims(self, name: str) -> tuple[int, ...]:
        dims = self.static.get(name)
        if dims is None or any(d is None for d in dims):
            raise Refuse(f"the shape of '{name}' is not fully known ({list(dims) if dims else 'no shape'})")
        return tuple(int(d) for d in dims)  # type: ignore[arg-type]

    def flags_of(self, name: str) -> Flags:
        if name in self.flags:
            return self.flags[name]
        return (None,) * self.rank(name)

    def batched(self, name: str) -> bool:
        return name in self.flags and any(f is not None for f in self.flags[name])

    def lin_dims(self, name: str) -> list[Lin] | None:
        """Dims as run-time expressions (static dims known from inference)."""
        dims = self.static.get(name)
        if dims is None:
            return None
        flags = self.flags.get(name, (None,) * len(dims))
        out = []
        for d, f in zip(dims, flags):
            if f is not None:
                out.append(Lin(0, f.total))
            elif d is None:
                return None
            else:
                out.append(Lin(int(d)))
        return out

    def value(self, name: str) -> Value | None:
        return self.values.get(name) if name else None

    def value_depends(self, name: str) -> bool:
        if not name:
            return False
        if name in self.dependent:
            return True
        v = self.values.get(name)
        return v is not None and depends_on_batch(v)

    def float_values(self, name: str) -> list[float] | None:
        """A constant float input (Resize scales) from an initializer or a Constant node."""
        t = next((t for t in self.graph.initializer if t.name == name), None)
        prod = self.producer.get(name)
        if t is None and prod is not None and prod.op_type == "Constant":
            t = attr(prod, "value")
        if t is None:
            return None
        return [float(x) for x in lazy_weights.to_array(t).reshape(-1)]

    def static_ints(self, name: str, what: str) -> list[int]:
        """A constant integer input (axes, pads, repeats) as a list; refuses when not constant."""
        v = self.value(name)
        if v is None or depends_on_batch(v):
            raise Refuse(f"its {what} ('{name}') is not a constant")
        return [int(x) for x in to_ints(v).reshape(-1)]

    # ---- results ---------------------------------------------------------------

    def set_flags(self, name: str, flags: Sequence[Flag]) -> None:
        batch_dims = [i for i, f in enumerate(flags) if f is not None]
        if len(batch_dims) > 1:  # batch x batch elements: every sample meets every other one
            raise Refuse(f"'{name}' would get the batch in two dims ({batch_dims[0]} and {batch_dims[1]}): samples would be mixed")
        if name:
            self.flags[name] = tuple(flags)

    def choose(self, count: int) -> int:
        """Which of ``count`` readings of the current node to take (0: the best guess)."""
        taken = min(self.choices.get(self.position, 0), count - 1)
        self.choice_points.append((self.position, taken, count))
        return taken

    def set_like(self, node: onnx.NodeProto, flags: Sequence[Flag], outputs: Sequence[int] = (0,)) -> None:
        for i in outputs:
            if i < len(node.output):
                self.set_flags(node.output[i], flags)

    def rewrote(self, node: onnx.NodeProto, text: str) -> None:
        self.rewritten.append(Rewrite.of(node, text))

    def assume(self, node: onnx.NodeProto, text: str) -> None:
        self.assumed.append(f"{label(node)}: {text}")

    # ---- demands: a tensor must carry the batch at a given dim ------------------

    def require(self, node: onnx.NodeProto, index: int, pos: int, want: BDim) -> None:
        """Make input ``index`` of ``node`` carry ``want`` at dim ``pos`` (rewriting its origin or broadcasting it)."""
        name = node.input[index]
        cur = self.flags_of(name)[pos]
        if cur == want:
            return
        if cur is not None:
            raise Refuse(f"input '{name}' has {fmt_flag(cur)} at dim {pos} where {fmt_flag(want)} is needed")
        if want.k is None:
            raise Refuse(f"input '{name}' (size {self.static_dims(name)[pos]} at dim {pos}) meets a batch dim laid out as {want}, which a broadcast cannot produce")
        new = self.batched_version(name, pos, want.k, reader=label(node))
        node.input[index] = new
        if new != name:
            self.rewrote(node, f"input {index} ('{name}') broadcast to the run-time batch at dim {pos}")

    def batched_version(self, name: str, pos: int, k: int, reader: str) -> str:
        """``name`` with ``k * batch`` at dim ``pos``: its producer rewritten in place, or a broadcast of it."""
        check_input_origin(self, name, pos, k, reader)
        dims = self.static_dims(name)
        if dims[pos] != self.B * k:
            raise Refuse(f"'{name}' has size {dims[pos]} at dim {pos}, where the batch ({self.B}{'' if k == 1 else f' * {k}'}) is needed")
        prod = self.producer.get(name)
        if prod is not None and self.uses[name] == 1 and name not in self.graph_outputs and self.rewrite_origin(prod, name, pos, k):
            return name
        key = (name, pos, k)
        if key in self._broadcasts:
            return self._broadcasts[key]
        if self.B != 1:
            raise Refuse(f"'{name}' holds {dims[pos]} rows at dim {pos} that do not come from the batch, so they cannot be broadcast to it")
        node = self.edits.broadcast_to_batch(name, len(dims), pos, k, dims[pos])
        self.pending.append(node)
        self.inserted += 1
        out = node.output[0]
        self.static[out] = dims
        self.set_flags(out, tuple(plain(k) if i == pos else f for i, f in enumerate(self.flags_of(name))))
        self._broadcasts[key] = out
        self.log.debug("broadcast '%s' to the batch at dim %d for %s", name, pos, reader)
        return out

    def rewrite_origin(self, prod: onnx.NodeProto, name: str, pos: int, k: int) -> bool:
        """Expand/Tile/ConstantOfShape that made the old batch from a constant: make them use the run-time batch."""
        if prod.domain not in ("", "ai.onnx") or prod.op_type not in ("Expand", "Tile", "ConstantOfShape"):
            return False
        out_dims = self.static_dims(name)
        if any(self.batched(x) for x in prod.input if x):
            return False
        if prod.op_type == "ConstantOfShape":
            pieces = [Lin(d) for d in out_dims]
            pieces[pos] = Lin(0, k)
            index, what = 0, "shape"
        else:
            data = self.static_dims(prod.input[0])
            offset = len(out_dims) - len(data)
            d = data[pos - offset] if pos >= offset else 1
            if prod.op_type == "Expand":
                if d != 1:
                    return False
                pieces = [Lin(x) for x in out_dims]
                pieces[pos] = Lin(0, k)
                index, what = 1, "shape"
            else:
                reps = [o // x for o, x in zip(out_dims, data)]
                if reps[pos] % self.B:
                    return False
                pieces = [Lin(r) for r in reps]
                pieces[pos] = Lin(0, reps[pos] // self.B)
                index, what = 1, "repeats"
        old = self.value(prod.input[index])
        old_text = "[" + ", ".join(str(x) for x in old.reshape(-1)) + "]" if old is not None else "a computed value"
        prod.input[index] = self.edits.shape_tensor(pieces, base=f"{what}")
        self.values.pop(name, None)
        self.set_flags(name, tuple(plain(k) if i == pos else None for i in range(len(out_dims))))
        self.rewrote(prod, f"{what} {old_text} → [{', '.join(map(str, pieces))}]")
        return True

    # ---- the walk ----------------------------------------------------------------

    def visit(self, node: onnx.NodeProto) -> None:
        self.position = self.steps
        self.steps += 1
        ins = node_inputs(node)
        if any(x in self.poisoned for x in ins):
            self.poisoned.update(o for o in node.output if o)
            return
        self._fill_shapes(node)
        self._track_values(node)
        involved = any(self.batched(x) for x in ins) or any(self.value_depends(x) for x in ins)
        if not involved and node.op_type != "If":  # branches are walked anyway: their shapes and values matter later
            return
        if node.domain in ("", "ai.onnx"):
            rule = self.rules.get(node.op_type, self.fallback)
        else:
            rule = self.fallback
        try:
            rule(node, self)
        except Refuse as exc:
            self.refusals.append(f"{label(node)}: {exc}")
            self.refused_at.append(self.position)
            self.poisoned.update(o for o in node.output if o)

    def walk(self, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
        """Visit a subgraph's nodes in order; returns its new node list (broadcasts inserted before readers)."""
        saved = self.pending, self.position, dict(self._broadcasts)
        nodes: list[onnx.NodeProto] = []
        try:
            for n in list(graph.node):
                self.pending = []
                self.visit(n)
                nodes.extend(self.pending)
                nodes.append(n)
        finally:
            self.pending, self.position, self._broadcasts = saved
        self.subgraph_plans.append((graph, nodes))
        return nodes

    def broadcast_in(self, nodes: list[onnx.NodeProto], name: str, pos: int, k: int, reader: str) -> str:
        """``batched_version`` for a tensor of a subgraph whose node list is ``nodes`` (new nodes go at its end)."""
        saved = self.pending, dict(self._broadcasts)
        self.pending = []
        try:
            out = self.batched_version(name, pos, k, reader)
            nodes.extend(self.pending)
        finally:
            self.pending, self._broadcasts = saved
        return out

    def _fill_shapes(self, node: onnx.NodeProto) -> None:
        if all(o in self.static and None not in self.static[o] for o in node.output if o):
            return
        data = {}
        for x in node.input:
            v = self.values.get(x) if x else None
            if v is not None and is_static(v):
                data[x] = to_ints(v)
        infer_node(node, self.static, self.types, data, self.opset)

    def _track_values(self, node: onnx.NodeProto) -> None:
        vals = [self.value(x) for x in node.input]
        try:
            outs = evaluate(node, vals, self._look)
        except NotLinear:
            outs = None
        shape_only = SHAPE_INPUTS.get(node.op_type, range(0)) if node.domain in ("", "ai.onnx") else range(0)
        depends = any(self.value_depends(x) for i, x in enumerate(node.input) if i not in shape_only)
        if node.op_type in ("Shape", "Size") and node.input and self.batched(node.input[0]):
            depends = True  # holds the run-time batch even when its value could not be tracked
        for i, o in enumerate(node.output):
            if not o:
                continue
            v = outs[i] if outs is not None and i < len(outs) else None
            if v is not None:
                self.values[o] = v
            elif depends:
                self.dependent.add(o)
