"""simplify: onnxsim (constant folding, shape inference, onnxoptimizer fusions) with its options exposed.

Quantized weights are protected: before onnxsim runs, the constant inputs of
``QuantizeLinear``/``DequantizeLinear`` nodes (an int8 weight, or a float weight
about to be quantized) are turned into graph inputs, so onnxsim cannot fold a
weight ``DequantizeLinear`` into a float tensor (which quadruples the weights of
a Q/DQ model); afterwards they become initializers again.

Weights left in their files (a model with big external data, :mod:`converter.lazy_weights`) are hidden the
same way: onnxsim sees them as inputs, so it folds nothing through them (``fold_constants`` does, reading one
weight at a time).

Where onnxsim cannot run (a model of 2 GiB or more, an exception inside
onnxsim, its own check failing) the pass says why: with ``on_failure=error`` it
fails, with ``on_failure=skip`` it leaves the model unchanged and reports the
reason among the refused items. The graph's interface is kept: inputs onnxsim
drops are put back; a changed output list is a failure.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import helper

from converter import lazy_weights
from converter.errors import PassRefused, UsageError, describe_exception
from converter.feeds import parse_shapes
from converter.graph_edit import node_inputs, topological_sort
from converter.graph_info import graph_inputs, iter_graphs, node_count
from converter.model_io import PROTOBUF_LIMIT
from converter.options import bounded
from converter.pass_api import Pass, PassContext, PassResult
from converter.passes.fold_constants import QDQ_OPS, constant_node_tensor, delete_at, is_default_domain

# onnxoptimizer's fusion passes, used when onnxsim cannot list its default optimizers.
_KNOWN_FUSIONS = (
    "fuse_add_bias_into_conv", "fuse_bn_into_conv", "fuse_consecutive_concats", "fuse_consecutive_log_softmax",
    "fuse_consecutive_reduce_unsqueeze", "fuse_consecutive_squeezes", "fuse_consecutive_transposes",
    "fuse_matmul_add_bias_into_gemm", "fuse_pad_into_conv", "fuse_pad_into_pool", "fuse_transpose_into_gemm",
)


@dataclass(frozen=True)
class SimplifyOptions:
    optimize: bool = field(default=True, metadata={"help": "run onnxoptimizer's passes (false: only constant folding and shape inference)"})
    skip_fusions: bool = field(default=False, metadata={"help": "skip every fuse_* optimizer (keep the graph's op structure)"})
    skip_fuse_bn: bool = field(default=False, metadata={"help": "skip fusing BatchNormalization into Conv"})
    skipped_optimizers: tuple[str, ...] = field(default=(), metadata={"help": "onnxoptimizer passes to skip, e.g. [fuse_bn_into_conv,fuse_pad_into_conv]"})
    skip_constant_folding: bool = field(default=False, metadata={"help": "skip onnxsim's constant folding"})
    skip_shape_inference: bool = field(default=False, metadata={"help": "skip onnxsim's shape inference (when it crashes on a model)"})
    input_shapes: tuple[str, ...] = field(default=(), metadata={"help": "overwrite input shapes, e.g. [x:1x3x224x224,mask:1x77] (fixes the interface's dims)"})
    check_n: int = field(default=0, metadata=bounded(0, 10_000, "onnxsim's own check with N random inputs (0: off; the pass manager's --verify checks numerics)"))
    protect_qdq: bool = field(default=True, metadata={"help": "hide the constant inputs of QuantizeLinear/DequantizeLinear from folding, so quantized weights stay int8"})
    on_failure: Literal["error", "skip"] = field(default="error", metadata={"help": "when onnxsim cannot run: error fails the pass, skip leaves the model unchanged and says why"})

    def __post_init__(self) -> None:
        if self.check_n < 0:
            raise ValueError(f"check_n must be 0 or more, got {self.check_n}")
        self.shape_overrides()  # raises ValueError on a malformed item

    def shape_overrides(self) -> dict[str, list[int]]:
        try:
            return {name: list(dims) for name, dims in parse_shapes(",".join(self.input_shapes)).items()}
        except UsageError as exc:
            raise ValueError(f"input_shapes: {exc}") from None


class SimplifyFailed(PassRefused, RuntimeError):
    """onnxsim could not simplify the model; the message is one line saying why.

    A PassRefused (the model is not one onnxsim can take, not a bug of ours), and a RuntimeError.
    """


# ---------------------------------------------------------------- Q/DQ protection


@dataclass
class HiddenWeights:
    """Constant inputs of Q/DQ nodes, shown to onnxsim as graph inputs while it runs."""

    tensors: list[onnx.TensorProto] = field(default_factory=list)
    already_inputs: set[str] = field(default_factory=set)
    """Initializers that were graph inputs already (IR < 4 models): their input stays."""


def hide_qdq_weights(model: onnx.ModelProto, *, qdq: bool = True, also: frozenset[str] = frozenset()) -> HiddenWeights:
    """Turn the constant data inputs of main-graph Q/DQ nodes (with ``qdq``), and the initializers named in ``also``,
    into graph inputs (in place)."""
    g = model.graph
    wanted = {n.input[0] for n in g.node if qdq and n.op_type in QDQ_OPS and is_default_domain(n) and n.input and n.input[0]} | set(also)
    wanted -= {o.name for o in g.output}
    declared = {i.name for i in g.input}
    hidden = HiddenWeights()
    init_idx = [i for i, t in enumerate(g.initializer) if t.name in wanted]
    for i in init_idx:
        copy = onnx.TensorProto()
        copy.CopyFrom(g.initializer[i])
        hidden.tensors.append(copy)
        if copy.name in declared:
            hidden.already_inputs.add(copy.name)
    const_idx = []
    for i, n in enumerate(g.node):
        if n.op_type == "Constant" and is_default_domain(n) and n.output[0] in wanted:
            tensor = constant_node_tensor(n)
            if tensor is not None:
                hidden.tensors.append(tensor)
                const_idx.append(i)
    delete_at(g.initializer, init_idx)
    delete_at(g.node, const_idx)
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in hidden.tensors if t.name not in hidden.already_inputs)
    return hidden


def restore_qdq_weights(model: onnx.ModelProto, hidden: HiddenWeights) -> int:
    """Make hidden weights initializers again; returns how many are still used."""
    g = model.graph
    names = {t.name for t in hidden.tensors} - hidden.already_inputs
    delete_at(g.input, [i for i, vi in enumerate(g.input) if vi.name in names])
    used = {x for n in g.node for x in node_inputs(n)} | {o.name for o in g.output}
    kept = [t for t in hidden.tensors if t.name in used or t.name in hidden.already_inputs]
    if kept and model.ir_version < 4:
        model.ir_version = 4  # initializers that are not graph inputs need IR 4
    g.initializer.extend(kept)
    return len(kept)


# ---------------------------------------------------------------- running onnxsim


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Redirect the process's stdout/stderr (file descriptors, so native code too) into a buffer."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as buf:
        saved = [os.dup(1), os.dup(2)]
        try:
            for fd in (1, 2):
                os.dup2(buf.fileno(), fd)
            yield lines
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            buf.seek(0)
            lines.extend(buf.read().decode("utf-8", "replace").splitlines())


def import_onnxsim(ctx: PassContext | None = None):
    """Import onnxsim without the ~1 s it spends importing torch.

    onnxsim's package import tries ``import torch`` only to probe an optional PPQ bridge
    (inside ``try/except``) that simplification never uses. When nothing has loaded torch
    yet, torch is hidden for the duration of that import (``sys.modules["torch"] = None``
    makes it raise ImportError) and made importable again right after. Should a future
    onnxsim need torch at import time, it is imported again the ordinary way.
    """
    if "onnxsim" in sys.modules or "torch" in sys.modules:
        import onnxsim

        return onnxsim
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import onnxsim
    except ImportError as exc:
        for name in [m for m in sys.modules if m == "onnxsim" or m.startswith("onnxsim.")]:
            del sys.modules[name]
        if ctx is not None:
            ctx.log.debug("onnxsim needs torch at import time (%s); importing it with torch", exc)
        del sys.modules["torch"]
        import onnxsim
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return onnxsim


def default_optimizers() -> list[str]:
    import_onnxsim()
    import onnxsim.onnxsim_cpp2py_export as native

    lister = getattr(native, "_list_optimizers", None)
    return list(lister()) if lister is not None else list(_KNOWN_FUSIONS)


def _skipped(opts: SimplifyOptions) -> list[str] | None:
    """onnxsim's ``skipped_optimizers``: None skips them all."""
    if not opts.optimize:
        return None
    skipped = list(opts.skipped_optimizers)
    if opts.skip_fuse_bn:
        skipped.append("fuse_bn_into_conv")
    if opts.skip_fusions:
        skipped.extend(p for p in default_optimizers() if p.startswith("fuse_"))
    return sorted(set(skipped))


def run_onnxsim(model: onnx.ModelProto, opts: SimplifyOptions, ctx: PassContext) -> onnx.ModelProto:
    onnxsim = import_onnxsim(ctx)
    shapes = opts.shape_overrides() or None
    with _captured_output() as printed:
        try:
            simplified, check_ok = onnxsim.simplify(
                model,
                check_n=opts.check_n,
                perform_optimization=opts.optimize,
                skipped_optimizers=_skipped(opts),
                skip_constant_folding=opts.skip_constant_folding,
                skip_shape_inference=opts.skip_shape_inference,
                overwrite_input_shapes=shapes,
                test_input_shapes=shapes,
                certify=False,
            )
            error = None
        except Exception as exc:  # onnxsim raises many types; each becomes a one-line reason
            error = exc
    for line in printed:
        ctx.log.debug("onnxsim: %s", line)
    if error is not None:
        raise SimplifyFailed(f"onnxsim raised {type(error).__name__}: {describe_exception(error)}") from error
    if not check_ok:
        raise SimplifyFailed(f"onnxsim's own check with {opts.check_n} random inputs found different outputs")
    return simplified


# ---------------------------------------------------------------- interface


def _check_input_names(model: onnx.ModelProto, opts: SimplifyOptions) -> None:
    names = {s.name for s in graph_inputs(model)}
    unknown = [n for n in opts.shape_overrides() if n not in names]
    if unknown:
        raise UsageError(f"input_shapes names '{unknown[0]}', which is not a model input; inputs: {', '.join(sorted(names))}")


def restore_interface(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Put back graph inputs onnxsim dropped; fail when the outputs changed. Returns the names restored."""
    out_before = [o.name for o in before.graph.output]
    out_after = [o.name for o in after.graph.output]
    if out_before != out_after:
        raise SimplifyFailed(f"onnxsim changed the graph outputs from {out_before} to {out_after}")
    present = {i.name for i in after.graph.input} | {t.name for t in after.graph.initializer}
    weights_before = {t.name for t in before.graph.initializer}  # IR < 4 weights listed as inputs: not part of the interface
    restored = []
    for vi in before.graph.input:
        if vi.name not in present and vi.name not in weights_before:
            after.graph.input.append(vi)
            restored.append(vi.name)
    if restored:  # back in the original order
        order = {vi.name: i for i, vi in enumerate(before.graph.input)}
        ordered = [onnx.ValueInfoProto.FromString(vi.SerializeToString()) for vi in after.graph.input]
        ordered.sort(key=lambda vi: order.get(vi.name, len(order)))
        del after.graph.input[:]
        after.graph.input.extend(ordered)
    return restored


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return t.ByteSize()
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def serialized_size_if_large(model: onnx.ModelProto) -> int:
    """The model's serialized size when it may be near protobuf's 2 GiB limit, else 0.

    ``ByteSize()`` walks every weight (about 0.15 s per 100 MB); the tensors' own sizes
    tell cheaply whether the model is anywhere near the limit.
    """
    g = model.graph
    estimate = sum(_tensor_bytes(t) for t in g.initializer)
    estimate += sum(_tensor_bytes(a.t) for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
    return model.ByteSize() if estimate >= PROTOBUF_LIMIT // 2 else 0


def _bump_old_ir(model: onnx.ModelProto) -> bool:
    """Work around an onnxsim defect: on an IR < 4 model it turns Constant nodes into initializers
    that are not graph inputs, which IR < 4 forbids, and then fails its own check
    ("X in initializer but not in graph input"). IR 4 allows it. Old opsets (< 6) are left alone:
    onnxsim keeps their weights as inputs on purpose (its fusions emit ops those opsets reject)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if model.ir_version >= 4 or opset < 6:
        return False
    model.ir_version = 4
    return True


def _structure(model: onnx.ModelProto) -> tuple:
    """What simplification changes, without serializing weight data."""
    g = model.graph
    nodes = tuple(n.SerializeToString(deterministic=True) for n in g.node)
    inits = tuple((t.name, t.data_type, tuple(t.dims)) for t in g.initializer)
    io = tuple(v.SerializeToString(deterministic=True) for v in [*g.input, *g.output, *g.value_info])
    return nodes, inits, io


def _sort_all(model: onnx.ModelProto) -> int:
    """onnxsim refuses graphs whose nodes are not in topological order (ONNX Runtime runs them): sort every graph."""
    changed = 0
    for graph in iter_graphs(model.graph):
        try:
            changed += topological_sort(graph)
        except ValueError as exc:  # a cycle or a value nothing produces: the checker names it
            raise SimplifyFailed(f"graph '{graph.name}' cannot be put in topological order: {describe_exception(exc)}") from exc
    return changed


# ---------------------------------------------------------------- the pass


class SimplifyPass(Pass[SimplifyOptions]):
    name = "simplify"
    summary = "onnxsim: fold constants, infer shapes, fuse (Q/DQ weights protected; says why when onnxsim cannot run)."
    Options = SimplifyOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        opts = self.options
        _check_input_names(model, opts)
        try:
            return self._simplify(model, ctx)
        except SimplifyFailed as exc:
            if opts.on_failure == "error":
                raise
            reason = f"{exc} (on_failure=skip: model left unchanged)"
            ctx.log.warning("simplify: %s", reason)
            return PassResult(model, False, facts={"onnxsim": "skipped"}, refused=[reason])

    def _simplify(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        opts = self.options
        size = serialized_size_if_large(model)
        if size >= PROTOBUF_LIMIT:
            raise SimplifyFailed(f"the model is {size / 2**30:.2f} GiB; onnxsim works on models under 2 GiB in memory")
        work = onnx.ModelProto()
        work.CopyFrom(model)
        ir_bumped = _bump_old_ir(work)
        sorted_graphs = _sort_all(work)
        # weights left in their files (converter.lazy_weights) are shown to onnxsim as inputs too: it would read them
        # into memory, from the current folder; what it folds through them, fold_constants folds reading one at a time
        lazy = frozenset(t.name for t in lazy_weights.lazy_initializers(work))
        hidden = hide_qdq_weights(work, qdq=opts.protect_qdq, also=lazy) if opts.protect_qdq or lazy else HiddenWeights()
        simplified = run_onnxsim(work, opts, ctx)
        protected = restore_qdq_weights(simplified, hidden)
        restored = restore_interface(model, simplified)
        before, after = node_count(model), node_count(simplified)
        facts = {
            "nodes_before": before,
            "nodes_after": after,
            "skipped_optimizers": "all" if _skipped(opts) is None else _skipped(opts),
            "qdq_weights_protected": protected,
            "lazy_weights_hidden": len(lazy),
            "inputs_restored": restored,
            "ir_version_bumped": ir_bumped,
            "graphs_sorted": sorted_graphs,
        }
        ctx.log.info("simplify: %d -> %d nodes", before, after)
        return PassResult(simplified, _structure(simplified) != _structure(model), facts=facts)
