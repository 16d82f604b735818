"""fp16 policy: which ops stay in float32 by default and why, and what each node may run in.

A node's precision follows its ONNX schema: every type variable (``T``) that binds a
float32 tensor and allows ``tensor(float16)`` switches to float16 together; inputs
with a fixed type (``Resize``'s ``scales`` is ``tensor(float)``) stay float32. That
rule alone handles what made the common converter block ``Resize``, ``Range`` and
friends (it turned float-only inputs into float16 and produced invalid models).
The default block list below is for ops whose schema *allows* float16 but whose
results are unsafe in it, each with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import onnx
from onnx import TensorProto

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
NON_TENSOR = -1
"""Element type recorded for sequence/optional/map values."""

_ML = "ai.onnx.ml classic-ML operator: its kernels take float/double only, and thresholds or tree splits compared in fp16 would flip decisions"
_RANDOM = "random sampling: fp16 truncates the distribution's tails and its output dtype is an attribute; kept so sampling matches the float model"
_QUANT = "quantization scales are calibrated in float32 and TensorRT wants float32 Q/DQ scales; Q/DQ stay as they are"
_NORM = "a sum of squares over an axis: it overflows fp16 (max 65504) once the vector's L2 norm passes 256"

DEFAULT_OP_BLOCK_REASONS: dict[str, str] = {
    **{op: _ML for op in (
        "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer", "FeatureVectorizer",
        "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor", "Normalizer", "OneHotEncoder",
        "SVMClassifier", "SVMRegressor", "Scaler", "TreeEnsemble", "TreeEnsembleClassifier", "TreeEnsembleRegressor", "ZipMap",
    )},
    **{op: _RANDOM for op in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial")},
    **{op: _QUANT for op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")},
    **{op: _NORM for op in ("ReduceSumSquare", "ReduceL2", "LpNormalization")},
    "NonMaxSuppression": "box coordinates in pixels lose precision in fp16 (spacing 1 px past 2048), moving IoU decisions; its schema is float-only anyway",
    "RoiAlign": "region coordinates in pixels lose precision in fp16 (spacing 0.5 px past 1024), moving the sampling points",
    "TopK": "fp16 rounding makes ties of values that differ in float32, so the returned indices change",
    "Range": "element counts computed from float start/limit/delta: integers past 2048 are not exact in fp16 (its schema has no float16 either)",
    "CumSum": "a running sum over a whole axis: fp16 error grows with the axis length and the sum overflows past 65504",
    "DFT": "each output bin sums the whole signal: fp16 error grows with the signal length",
    "STFT": "each output bin sums a whole frame: fp16 error grows with the frame length",
}
DEFAULT_OP_BLOCK_LIST: tuple[str, ...] = tuple(DEFAULT_OP_BLOCK_REASONS)

CONTROL_FLOW_REASON = "control flow: its subgraphs are not converted, so the node and its bodies stay float32"
SHAPE_REASON = "shape arithmetic (derived from Shape/Size): integers past 2048 are not exact in fp16"
SHAPE_SOURCES = frozenset({"Shape", "Size"})
NOT_SHAPE_ARITHMETIC = frozenset({"ConstantOfShape"})  # its output is data of that shape, not a shape


class Want(Enum):
    """What a node wants for one float32 input."""

    FP16 = "fp16"
    FP32 = "fp32"
    ANY = "any"
    """The input's type variable binds no output: it takes either precision as it comes."""


class Flexible(Enum):
    """Producers whose output precision is chosen by their consumers (no compute to convert)."""

    CONSTANT = "Constant"
    CONSTANT_OF_SHAPE = "ConstantOfShape"
    CAST = "Cast"


@dataclass
class NodePlan:
    """The precision of one node: wants per input, home precision per output (float32 tensors only)."""

    converted: bool = False
    reason: str | None = None
    """Why a node that computes on float32 stays float32."""
    flexible: Flexible | None = None
    input_want: dict[int, Want] = field(default_factory=dict)
    output_home: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    op_block: frozenset[str]
    node_block: frozenset[str]

    def op_reason(self, op_type: str) -> str:
        return DEFAULT_OP_BLOCK_REASONS.get(op_type, "listed in op_block_list")


def label(node: onnx.NodeProto) -> str:
    out = next((o for o in node.output if o), "?")
    return node.name or f"{node.op_type}->{out}"


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def shape_derived(graph: onnx.GraphProto, constants: set[str]) -> set[str]:
    """Tensors computed from Shape/Size through shape arithmetic (constants may join in)."""
    derived: set[str] = set()
    for node in graph.node:
        ins = [x for x in node.input if x]
        if node.op_type in SHAPE_SOURCES:
            derived.update(o for o in node.output if o)
        elif node.op_type not in NOT_SHAPE_ARITHMETIC and not has_subgraph(node) and ins:
            if any(x in derived for x in ins) and all(x in derived or x in constants for x in ins):
                derived.update(o for o in node.output if o)
    return derived


def _formal(formals, i: int):
    if i < len(formals):
        return formals[i]
    if formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return formals[-1]
    return None


def _bindings(schema, node: onnx.NodeProto) -> dict[str, list[tuple[str, int]]]:
    """Type string (a variable, per-actual for heterogeneous variadics) -> the actual inputs/outputs it binds."""
    out: dict[str, list[tuple[str, int]]] = {}
    for side, formals, actuals in (("in", schema.inputs, node.input), ("out", schema.outputs, node.output)):
        for i, name in enumerate(actuals):
            f = _formal(formals, i)
            if not name or f is None:
                continue
            key = f.type_str if f.is_homogeneous else f"{f.type_str}#{side}{i}"
            out.setdefault(key, []).append((side, i))
    return out


def schema_of(node: onnx.NodeProto, opsets: dict[str, int]):
    domain = "" if node.domain == "ai.onnx" else node.domain
    version = opsets.get(domain)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


def _float_vars(schema, node: onnx.NodeProto, types: dict[str, int]) -> list[tuple[str, list[tuple[str, int, str]]]]:
    """(type variable, its bound actuals as (side, index, name)) for every variable binding a float32 tensor."""
    out = []
    for type_str, binds in _bindings(schema, node).items():
        names = [(side, i, (node.input if side == "in" else node.output)[i]) for side, i in binds]
        if any(types.get(n) == FLOAT for _, _, n in names):
            out.append((type_str.split("#")[0], names))
    return out


def plan_by_schema(node: onnx.NodeProto, schema, types: dict[str, int], out_of_range: dict[str, float]) -> NodePlan:
    """Switch every float32 type variable that allows float16 and binds an input; keep the rest.

    A variable bound only to inputs (BatchNormalization's scale, Pow's exponent) follows the node:
    float16 when the node computes in float16 (kernels are registered for one float type), as it
    comes otherwise (Shape, Cast to int, IsNaN: their kernels take any type).
    """
    allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}
    plan, refusals, switch = NodePlan(), [], []
    for var, names in _float_vars(schema, node, types):
        has_in = any(side == "in" for side, _, _ in names)
        if var in allowed and "tensor(float16)" in allowed[var] and has_in:
            switch.append(names)
            continue
        refusals.append("an attribute sets its type" if var in allowed and not has_in else f"its schema allows no float16 for {var}")
        for side, i, n in names:
            if types.get(n) == FLOAT:
                (plan.input_want if side == "in" else plan.output_home)[i] = Want.FP32 if side == "in" else FLOAT
    plan.converted = any(side == "out" for names in switch for side, _, _ in names)
    for names in switch:
        shared = sum(side == "in" for side, _, _ in names) > 1  # Greater(A: T, B: T): both must arrive in one type
        for side, i, n in names:
            if side == "out":
                plan.output_home[i] = FLOAT16
            elif not plan.converted:
                plan.input_want[i] = Want.FP32 if shared else Want.ANY
            elif n in out_of_range:
                return kept(node, types, f"reads '{n}' whose values reach {out_of_range[n]:.3g}, beyond max_finite_val")
            else:
                plan.input_want[i] = Want.FP16
    if not plan.converted and refusals:
        plan.reason = refusals[0]
    return plan


def kept(node: onnx.NodeProto, types: dict[str, int], reason: str) -> NodePlan:
    """A node that stays float32: every float32 input wants float32, every float32 output is float32."""
    plan = NodePlan(reason=reason)
    plan.input_want = {i: Want.FP32 for i, n in enumerate(node.input) if n and types.get(n) == FLOAT}
    plan.output_home = {i: FLOAT for i, n in enumerate(node.output) if n and types.get(n) == FLOAT}
    return plan


def _touches_float(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    return any(types.get(n) == FLOAT for n in [*node.input, *node.output] if n)


def _unknown(node: onnx.NodeProto, types: dict[str, int]) -> str | None:
    for n in [*node.input, *node.output]:
        if n and types.get(n, 0) in (0, NON_TENSOR):
            return f"type of '{n}' is {'not a tensor' if types.get(n) == NON_TENSOR else 'unknown (shape inference could not infer it)'}"
    return None


def plan_node(node: onnx.NodeProto, ctx: "PlanContext") -> NodePlan | None:
    """The plan of one node, or None when it has nothing to do with float32."""
    types = ctx.types
    if has_subgraph(node):
        return kept(node, types, CONTROL_FLOW_REASON)
    if not _touches_float(node, types):
        return None
    if (why := _unknown(node, types)) is not None:
        return kept(node, types, why)
    if label(node) in ctx.policy.node_block:
        return kept(node, types, "named in node_block_list")
    if node.op_type in ctx.policy.op_block:
        return kept(node, types, ctx.policy.op_reason(node.op_type))
    if any(o in ctx.derived and types.get(o) == FLOAT for o in node.output if o):
        return kept(node, types, SHAPE_REASON)
    special = _plan_flexible(node, types, ctx.out_of_range)
    if special is not None:
        return special
    schema = schema_of(node, ctx.opsets)
    if schema is None:
        domain = node.domain or "ai.onnx"
        return kept(node, types, f"no ONNX schema for {domain}::{node.op_type} at this opset (a custom or unknown op)")
    return plan_by_schema(node, schema, types, ctx.out_of_range)


def _plan_flexible(node: onnx.NodeProto, types: dict[str, int], out_of_range: dict[str, float]) -> NodePlan | None:
    if node.op_type not in {f.value for f in Flexible} or node.domain not in ("", "ai.onnx"):
        return None
    out = node.output[0]
    if types.get(out) != FLOAT:  # e.g. Cast(float -> int64): the input comes as it is
        return NodePlan(input_want={i: Want.ANY for i, n in enumerate(node.input) if n and types.get(n) == FLOAT})
    if out in out_of_range:
        return kept(node, types, f"its value reaches {out_of_range[out]:.3g}, beyond max_finite_val")
    if node.op_type == "Constant" and not any(a.name in ("value", "value_float", "value_floats") for a in node.attribute):
        return kept(node, types, "a sparse Constant")
    plan = NodePlan(flexible=Flexible(node.op_type), output_home={0: FLOAT})  # home settled by its consumers
    plan.input_want = {i: Want.ANY for i, n in enumerate(node.input) if n and types.get(n) == FLOAT}
    return plan


@dataclass
class PlanContext:
    types: dict[str, int]
    opsets: dict[str, int]
    policy: Policy
    out_of_range: dict[str, float]
    """Constant tensors (initializers, Constant/ConstantOfShape outputs) with finite values beyond max_finite_val -> max |value|."""
    derived: set[str]
