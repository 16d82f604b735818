"""TensorRT lint rules for operators and graph structure.

unsupported-op, op-restriction, loop-scan, non-constant-weights (operators); hardcoded-batch, dynamic-rank,
shape-inference (shapes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import onnx

from converter.backend_api import Finding
from converter.plugins.tensorrt.lint import _ops as ops
from converter.plugins.tensorrt.lint._context import ERROR, WARNING, Dim, LintContext, NodeRef, finding, version_text

# -------------------------------------------------------------------------------------- operator rules

def op_unsupported_reason(ctx: LintContext, ref: NodeRef) -> str | None:
    op = ref.op
    added = ops.OPS_ADDED_IN.get(op)
    if added is not None and ctx.trt is not None and ctx.trt < added:
        return f"{op} is imported only since TensorRT {version_text(added)} (this is {version_text(ctx.trt)})"
    if op in ops.UNSUPPORTED_OPS and not (added is not None and (ctx.trt is None or ctx.trt >= added)):
        return f"{op} is not supported by TensorRT's ONNX parser (operators.md, TensorRT {version_text(ops.OPERATORS_MD_VERSION)})"
    if op not in ops.SUPPORTED_OPS and op not in ops.UNSUPPORTED_OPS:
        return f"{op} is not in TensorRT's operator table (operators.md, TensorRT {version_text(ops.OPERATORS_MD_VERSION)})"
    return None


def _custom_domain_finding(ctx: LintContext, ref: NodeRef) -> Finding:
    node = ref.node
    if node.op_type in ops.SUPPORTED_OPS:
        return finding("unsupported-op", WARNING, ref, f"{node.domain}.{node.op_type} is imported as the ONNX operator "
                        f"{node.op_type} (the parser ignores the domain); check that their semantics agree")
    return finding("unsupported-op", ERROR, ref, f"{node.domain}.{node.op_type} is not an ONNX operator; TensorRT imports "
                    f"it only through a plugin registered as {node.op_type!r}, and none ships with TensorRT")


def check_unsupported_op(ctx: LintContext) -> Iterable[Finding]:
    """Every node must be an operator TensorRT's ONNX parser imports, a model-local function, or a plugin.

    The operator table is onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15), with the versions that added
    operators from its docs/Changelog.md. The parser dispatches on op_type alone, domain ignored: a builtin
    importer of that name, else a local function (since 9.0), else "No importer registered for op ...
    Attempting to import as plugin" (onnx/onnx-tensorrt ModelImporter.cpp, parseNode). So a custom-domain node
    named like an ONNX operator is imported as that operator (warning: semantics may differ), the parser's own
    TRT_* operators are importers, and anything else needs a plugin; the plugins TensorRT ships are
    NVIDIA/TensorRT plugin/README.md.
    """
    for ref in ctx.nodes:
        node = ref.node
        if (node.domain, node.op_type) in ctx.functions or node.op_type in ops.TRT_PLUGINS:
            continue
        if node.op_type.startswith(ops.PARSER_OP_PREFIX):
            continue
        if node.domain not in ops.ONNX_DOMAINS:
            yield _custom_domain_finding(ctx, ref)
            continue
        reason = op_unsupported_reason(ctx, ref)
        if reason is not None:
            yield finding("unsupported-op", ERROR, ref, reason)


def _pool_restrictions(ctx: LintContext, ref: NodeRef) -> Iterator[str]:
    dilations = ref.attr("dilations")
    if isinstance(dilations, list) and any(d != 1 for d in dilations):
        yield f"dilations {dilations}: TensorRT needs them empty or all ones"
    if ref.op == "MaxPool" and len(ref.node.output) > 1 and ref.node.output[1]:
        yield "the Indices output is not supported"


def _resize_restrictions(ctx: LintContext, ref: NodeRef) -> Iterator[str]:
    mode = _text(ref.attr("mode", b"nearest"))
    ctm = _text(ref.attr("coordinate_transformation_mode", b"half_pixel"))
    policy = _text(ref.attr("keep_aspect_ratio_policy", b"stretch"))
    if mode not in ("nearest", "linear"):
        yield f"mode {mode!r}: TensorRT supports nearest and linear"
    if ctm not in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"):
        yield f"coordinate_transformation_mode {ctm!r} is not supported"
    if ref.attr("antialias", 0):
        yield "antialiasing is not supported"
    if policy != "stretch":
        yield f"keep_aspect_ratio_policy {policy!r}: TensorRT supports stretch only"


def _topk_restrictions(ctx: LintContext, ref: NodeRef) -> Iterator[str]:
    if ref.attr("sorted", 1) != 1:
        yield "sorted=0: TensorRT needs sorted=1"
    k = ctx.const(ref.input(1))
    if k is not None and k.size == 1 and int(k.ravel()[0]) >= 3840:
        yield f"K={int(k.ravel()[0])}: TensorRT needs K < 3840"


def _misc_restrictions(ctx: LintContext, ref: NodeRef) -> Iterator[str]:
    if ref.op == "ScatterND" and _text(ref.attr("reduction", b"none")) != "none":
        yield "reduction other than none is not supported"
    if ref.op == "LSTM" and (ref.attr("input_forget", 0) or ref.attr("layout", 0)):
        yield "input_forget and layout must be 0"
    if ref.op == "LayerNormalization" and any(ref.node.output[1:]):
        yield "only the first output Y is supported"
    if ref.op in ("Squeeze", "Unsqueeze") and ref.input(1) and ref.input(1) not in ctx.static:
        yield "axes must be resolvable to a constant"
    if ref.op == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings") for a in ref.node.attribute):
        yield "sparse_value, value_string and value_strings are not supported"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


RESTRICTIONS: dict[str, Callable[[LintContext, NodeRef], Iterator[str]]] = {
    "MaxPool": _pool_restrictions, "AveragePool": _pool_restrictions, "LpPool": _pool_restrictions,
    "Resize": _resize_restrictions, "TopK": _topk_restrictions,
    "ScatterND": _misc_restrictions, "LSTM": _misc_restrictions, "LayerNormalization": _misc_restrictions,
    "Squeeze": _misc_restrictions, "Unsqueeze": _misc_restrictions, "Constant": _misc_restrictions,
}


def check_op_restriction(ctx: LintContext) -> Iterable[Finding]:
    """Supported operators with attributes or inputs TensorRT does not support.

    The "Restrictions" column of onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15): pooling dilations
    empty or ones, no MaxPool Indices; Resize modes nearest/linear, the listed coordinate
    transformation modes, no antialias, stretch only; TopK sorted=1 and K < 3840; ScatterND reduction none;
    LSTM input_forget=0 and layout=0; LayerNormalization only output Y; Squeeze/Unsqueeze axes resolvable to a
    constant; Constant without sparse/string values.
    """
    for ref in ctx.nodes:
        check = RESTRICTIONS.get(ref.op) if ref.node.domain in ops.ONNX_DOMAINS else None
        for message in check(ctx, ref) if check else ():
            yield finding("op-restriction", ERROR, ref, f"{ref.op}: {message}")


def check_loop_scan(ctx: LintContext) -> Iterable[Finding]:
    """Loop and Scan run as TensorRT loops, with restrictions; unrolled graphs run faster.

    operators.md (TensorRT 10.15), Loop: "Scan output length cannot be dynamic. The shape of Loop carried
    dependencies must be the same across all loop iterations."
    """
    for ref in ctx.nodes:
        if ref.is_onnx("Loop", "Scan"):
            yield finding("loop-scan", WARNING, ref, f"{ref.op} becomes a TensorRT loop: scan outputs need a static length "
                           "and carried shapes must not change; unroll it where the trip count is fixed")


def check_non_constant_weights(ctx: LintContext) -> Iterable[Finding]:
    """Conv/ConvTranspose weights should be build-time constants (initializers, or DequantizeLinear of them).

    TensorRT 8.4's operators.md: "Weights `W` must be an initializer" for Conv and ConvTranspose; later
    versions drop the restriction, but weights known only at run time cannot be prepared at build time.
    """
    for ref in ctx.nodes:
        if ref.is_onnx("Conv", "ConvTranspose") and ref.input(1) and ref.input(1) not in ctx.static:
            yield finding("non-constant-weights", WARNING, ref, f"weights {ref.input(1)!r} are computed at run time; "
                           "TensorRT <= 8.4 rejects this and later versions cannot pre-process them")


# --------------------------------------------------------------------------------------- shape rules

SHAPE_OPS = {"Reshape": 1, "Expand": 1, "Tile": 1, "ConstantOfShape": 0}
"""Ops whose constant input fixes the output's dims, and which input that is."""

BROADCAST_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal",
                           "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "PRelu", "Mod"})


def _pins_batch(ctx: LintContext, ref: NodeRef, first: int, length: int, batch: set[str]) -> bool:
    """The op forces a batch-carrying input's dim 0 to the constant ``first``."""
    data = ctx.shape(ref.input(0))
    if not data or data[0] not in batch:
        return False
    if ref.op == "Reshape":
        return first > 0
    return ref.op == "Expand" and len(data) == length and first > 1


def _creates_dim0(ctx: LintContext, ref: NodeRef, first: int, length: int) -> int | None:
    """The static dim 0 > 1 the op creates from a dim 0 of 1 (or from nothing), else None."""
    if first <= 1:
        return None
    if ref.op == "ConstantOfShape":
        return first
    data = ctx.shape(ref.input(0))
    if data is None:
        return None
    if ref.op == "Reshape":
        return first if isinstance(data[0], int) and data[0] != first else None
    if ref.op == "Tile":
        return first if data[:1] == [1] else None
    if ref.op == "Expand":
        return first if len(data) < length or (len(data) == length and data[0] == 1) else None
    return None


def _meets_batch(ctx: LintContext, tensor: str, k: int, batch: set[str]) -> NodeRef | None:
    """The first node downstream where a tensor of static dim 0 ``k`` meets one whose dim 0 is the batch."""
    seen: set[str] = set()
    todo = [tensor]
    while todo:
        name = todo.pop()
        ours = ctx.shape(name)
        for consumer, _ in ctx.consumers.get(name, []):
            if consumer.label in seen:
                continue
            seen.add(consumer.label)
            if _joins_batch(ctx, consumer, name, ours, batch):
                return consumer
            todo.extend(o for o in consumer.node.output if o and (ctx.shape(o) or [None])[0] == k)
    return None


def _joins_batch(ctx: LintContext, consumer: NodeRef, name: str, ours: list[Dim] | None, batch: set[str]) -> bool:
    """``consumer`` aligns dim 0 of ``name`` with a same-rank input whose dim 0 is the batch."""
    if not ours or not (consumer.op in BROADCAST_OPS or consumer.op == "Concat"):
        return False
    if consumer.op == "Concat" and int(consumer.attr("axis", 0)) in (0, -len(ours)):  # type: ignore[call-overload]
        return False
    for other in consumer.node.input:
        theirs = ctx.shape(other) if other and other != name else None
        if theirs and len(theirs) == len(ours) and theirs[0] in batch:
            return True
    return False


def check_hardcoded_batch(ctx: LintContext) -> Iterable[Finding]:
    """A dynamic-batch model must not bake its export batch into Reshape/Expand/Tile/ConstantOfShape constants.

    When the graph input's dim 0 is symbolic but a shape constant fixes dim 0 (traced with one batch size),
    TensorRT fails at build or run time with "Profile kMAX values are not self-consistent ... reshape would
    change volume", or gives wrong results for other batch sizes (roboflow/rf-detr#376 and #949;
    NVIDIA/TensorRT#3405 "kOPT values for profile 0 violate shape constraints"). Reported: a Reshape or Expand
    that pins a batch-carrying tensor's dim 0 to a constant, and a constant dim 0 > 1 created by
    Expand/Tile/ConstantOfShape/Reshape that later meets the batch in an elementwise op or a Concat.
    Models with a static batch are not checked: their constants agree with the input.
    """
    batch = ctx.batch_symbols()
    if not batch:
        return
    reported: set[str] = set()
    for ref in ctx.nodes:
        if ref.op not in SHAPE_OPS or ref.node.domain not in ops.ONNX_DOMAINS:
            continue
        values = ctx.const(ref.input(SHAPE_OPS[ref.op]))
        if values is None or values.ndim != 1 or values.size == 0:
            continue
        first, length = int(values[0]), int(values.size)
        if _pins_batch(ctx, ref, first, length, batch):
            yield finding("hardcoded-batch", ERROR, ref, f"fixes dim 0 of a dynamic-batch tensor to {first}; use 0 "
                           "(copy) or -1 in the shape, or compute it from Shape(input)")
            reported.add(ref.node.name or ref.node.output[0])
            continue
        k = _creates_dim0(ctx, ref, first, length)
        meet = _meets_batch(ctx, ref.node.output[0], k, batch) if k is not None else None
        if meet is not None:
            yield finding("hardcoded-batch", ERROR, ref, f"creates a constant dim 0 of {k} that meets the dynamic batch "
                           f"at {meet.label}: the batch size the model was exported with is baked in")
            reported.add(ref.node.name or ref.node.output[0])
    yield from _batch_pass_findings(ctx, reported, batch)


def _batch_pass_findings(ctx: LintContext, reported: set[str], batch: set[str]) -> Iterator[Finding]:
    """What the ``dynamic_batch`` pass (``repair=true``) would still have to rewrite is hard-coded batch.

    Its analysis follows the batch through every op (LSTM/GRU initial states, Expand of a learned token,
    zeros + repeat + cat, Resize sizes, ...), which the constant patterns above cannot see. Each node it
    would rewrite is a finding; a graph the pass refuses to analyse adds nothing here.
    """
    from converter.errors import ConverterError
    from converter.pass_api import PassContext
    from converter.passes.dynamic_batch import DynamicBatchOptions, DynamicBatchPass, Rewrite

    inits = {t.name for t in ctx.model.graph.initializer}
    batched = tuple(
        vi.name for vi in ctx.model.graph.input
        if vi.name not in inits and vi.type.tensor_type.shape.dim and vi.type.tensor_type.shape.dim[0].dim_param in batch
    )
    if not batched:
        return
    model = onnx.ModelProto()
    model.CopyFrom(ctx.model)
    pass_ctx = PassContext(log=logging.getLogger("converter.lint.hardcoded-batch"))
    try:
        result = DynamicBatchPass(DynamicBatchOptions(repair=True, verify=False, inputs=batched)).run(model, pass_ctx)
    except ConverterError as exc:  # the pass refuses graphs it cannot analyse safely: no claim either way
        pass_ctx.log.debug("hardcoded-batch: dynamic_batch analysis refused: %s", exc)
        return
    rewrites: list[Rewrite] = result.facts.get("rewritten", [])
    for rewrite in rewrites:
        if rewrite.node in reported:
            continue
        yield finding("hardcoded-batch", ERROR, rewrite.node, f"depends on the export batch: {rewrite.change} (the dynamic_batch pass with repair=true rewrites it)")


def _input_symbols(ctx: LintContext) -> set[str]:
    """Every symbolic dim of the graph inputs: the sizes that are only known at run time."""
    return {d for vi in ctx.graph_inputs() for d in (ctx.shape(vi.name) or []) if isinstance(d, str)}


def check_dynamic_rank(ctx: LintContext) -> Iterable[Finding]:
    """Every tensor needs a rank known at build time.

    TensorRT network inputs are added with fixed-rank Dims ("Failed to convert ONNX dimensions to TensorRT
    dimensions", onnx/onnx-tensorrt ModelImporter.cpp, importInput). A Reshape/Expand/ConstantOfShape whose
    shape input's length is a run-time size gives an output of unknown rank, which TensorRT cannot express
    (TensorRT docs, Dynamic Shapes: a shape tensor's own dimensions must be static). Lengths ONNX shape
    inference could not determine ("unk__" dims) are not reported: TensorRT folds more than ONNX infers.
    """
    for vi in ctx.graph_inputs():
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type":
            yield finding("dynamic-rank", ERROR, vi.name, f"{kind} input: TensorRT inputs are tensors")
        elif not vi.type.tensor_type.HasField("shape"):
            yield finding("dynamic-rank", ERROR, vi.name, "input has no shape, so no rank; TensorRT needs the rank")
    runtime = _input_symbols(ctx)
    for ref in ctx.nodes:
        if not ref.is_onnx("Reshape", "Expand", "ConstantOfShape"):
            continue
        name = ref.input(SHAPE_OPS[ref.op])
        shape = ctx.shape(name)
        if shape is not None and len(shape) == 1 and shape[0] in runtime:
            yield finding("dynamic-rank", ERROR, ref, f"shape input {name!r} has the run-time length {shape[0]!r}, "
                           "so the output rank is unknown at build time")


def check_shape_inference(ctx: LintContext) -> Iterable[Finding]:
    """ONNX shape inference must succeed for the shape-dependent rules to see shapes.

    The lint runs onnx.shape_inference.infer_shapes(strict_mode=True, data_prop=True) on a copy; a node whose
    types or shapes do not check is likely rejected by TensorRT's parser too, and when inference fails, rules
    that need shapes (qdq-axis, hardcoded-batch, dynamic-rank) see less (they then use lenient inference).
    """
    if ctx.inference_error:
        yield finding("shape-inference", WARNING, "model",
                       f"ONNX shape inference failed, shape checks are partial: {ctx.inference_error}")
