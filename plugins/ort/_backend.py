"""The ONNX Runtime backend: an .onnx with ORT's graph optimizations applied, run on ORT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import onnx

from converter import lazy_weights
from converter.artifacts import base_manifest
from converter.backend_api import Artifact, Availability, Backend, EmitContext, Runner
from converter.errors import BackendError, BackendUnavailable, UsageError, describe_exception
from converter.interface import plain_initializers
from converter.model_io import PROTOBUF_LIMIT
from converter.options import bounded
from converter.ort_session import make_session, session_options
from converter.plugins.ort._hardswish import join_hardswish_in_file
from converter.plugins.ort._layernorm import sums_before_layernorm
from converter.plugins.ort._lowering import lower_for_ort_cpu
from converter.plugins.ort._ranges import RangesError
from converter.plugins.ort._runner import OrtRunner


@dataclass(frozen=True)
class OrtOptions:
    providers: tuple[str, ...] = field(default=("CPUExecutionProvider",), metadata={"help": "execution providers in priority order, e.g. [CUDAExecutionProvider,CPUExecutionProvider]"})
    opt_level: Literal["disable", "basic", "extended", "all"] = field(
        default="extended",
        metadata={"help": "graph optimizations baked into the artifact; 'all' adds layout changes tied to this CPU's instruction set"},
    )
    threads: int = field(default=0, metadata=bounded(0, 256, "intra-op threads of the runner (0: ORT decides)"))
    lower_qdq: bool = field(
        default=True,
        metadata={"help": "activation Q/DQ as uint8 for ORT's CPU kernels: after Relu/ReLU6 zero point 0 (same range, finer steps), else zero point 128 (same grid)"},
    )
    qdq_weights: Literal["auto", "s8", "s7", "u8"] = field(
        default="auto",
        metadata={"help": "weights read with uint8 activations: s8 (u8s8 kernels, fastest; exact where the CPU has VNNI), s7 (int8 within +-63: the same "
                  "kernels, exact on every CPU, half the weight resolution), u8 (u8u8, exact on every x86 CPU, slower); "
                  "auto: s8 where this CPU's u8s8 kernels do not saturate, else u8 (AVX2 without VNNI saturates); pick u8 or s7 when the target CPU differs"},
    )
    qdq_extend: bool = field(
        default=True,
        metadata={"help": "with the activation ranges qdq records: uint8 Q/DQ after every quantized Conv and through SiLU, Add, Concat, pooling, reshapes, "
                  "so ORT fuses every quantized layer (QLinearConv) even before SiLU/HardSwish/PReLU; false: only the canonical pairs"},
    )
    qdq_refit: bool = field(
        default=False,
        metadata={"help": "with the recorded ranges, the canonical pairs too as uint8 over their calibrated [min, max] within +-amax (finer steps where a tensor "
                  "is mostly of one sign); off by default: qdq's bias correction and budget were measured on the canonical grid (zero point 128 keeps it)"},
    )
    provider_options: str | None = field(
        default=None,
        metadata={"help": "passed to the providers: 'Provider.key=value;...', e.g. TensorrtExecutionProvider.trt_fp16_enable=1;CUDAExecutionProvider.device_id=0"},
    )

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if not self.providers:
            raise ValueError("providers must name at least one execution provider")
        parse_provider_options(self.providers, self.provider_options)  # validates


def parse_provider_options(providers: tuple[str, ...], text: str | None) -> list[dict[str, str]]:
    """'TensorrtExecutionProvider.trt_fp16_enable=1;CUDAExecutionProvider.device_id=0' → one dict per provider."""
    per: dict[str, dict[str, str]] = {p: {} for p in providers}
    for item in filter(None, (i.strip() for i in (text or "").split(";"))):
        key, sep, value = item.partition("=")
        provider, dot, option = key.partition(".")
        if not sep or not dot or not option:
            raise ValueError(f"provider option '{item}' must be Provider.key=value")
        if provider not in per:
            raise ValueError(f"provider option '{item}' is for {provider}, which is not in providers ({', '.join(providers)})")
        per[provider][option.strip()] = value.strip()
    return [per[p] for p in providers]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


class OrtBackend(Backend[OrtOptions]):
    name = "ort"
    summary = "ONNX Runtime: saves the graph with ORT's optimizations applied; runs on ORT."
    Options = OrtOptions

    @classmethod
    def availability(cls) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            return Availability(False, f"onnxruntime cannot be imported: {exc}")
        return Availability(True, "", {"onnxruntime": ort.__version__, "providers": ",".join(ort.get_available_providers())})

    def preflight(self) -> None:
        import onnxruntime as ort

        have = ort.get_available_providers()
        missing = [p for p in self.options.providers if p not in have]
        if missing:
            raise BackendUnavailable(
                f"execution provider {missing[0]} is not in this onnxruntime build (available: {', '.join(have)}); install onnxruntime-gpu for CUDA/TensorRT providers"
            )
        self._check_provider_option_names()

    def _check_provider_option_names(self) -> None:
        """Unknown provider options are refused (ONNX Runtime ignores them silently): a tiny session shows which it took."""
        requested = self._provider_options()
        if not any(requested):
            return
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        try:
            sess = ort.InferenceSession(probe.SerializeToString(), providers=list(self.options.providers), provider_options=requested)
        except Exception as exc:
            raise UsageError(f"ort: provider_options rejected by ONNX Runtime: {describe_exception(exc)}") from exc
        taken = sess.get_provider_options()
        for provider, options in zip(self.options.providers, requested):
            unknown = sorted(set(options) - set(taken.get(provider, {})))
            if unknown:
                known = ", ".join(sorted(taken.get(provider, {}))) or "none"
                raise UsageError(f"ort: {provider} has no option {unknown[0]!r} (it takes: {known})")

    def emit(self, model: onnx.ModelProto, ctx: EmitContext) -> Artifact:
        import onnxruntime as ort

        self.preflight()
        inits = {i.name for i in model.graph.initializer}
        own = any(vi.name in inits for vi in model.graph.input)  # whether ``model`` is this method's copy, free to change
        if own:
            model = _copy(model)  # the passes' model stays as it is
        made_plain = plain_initializers(model)
        if made_plain:
            ctx.log.info("ort: %d inputs with initializer defaults (IR 3 style weights) become plain initializers", len(made_plain))
        lowered: list[str] = []
        weight_form = None
        facts: dict[str, int] = {}
        quantized = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        if self.options.lower_qdq and quantized:
            try:
                lowering = lower_for_ort_cpu(model, self.options.qdq_weights, extend=self.options.qdq_extend, refit=self.options.qdq_refit)
            except RangesError as exc:
                raise UsageError(f"ort: {exc}; rerun the qdq pass to record them again") from exc
            model, lowered, weight_form, own = lowering.model, [*lowering.lowered, *lowering.shifted], lowering.weights, True
            facts = {"hardswish_gates_quantized": lowering.gates_quantized, "gemms_as_matmul": len(lowering.gemms_as_matmul), "matmuls_with_bias": len(lowering.matmuls_with_bias), "hardswish_collapsed": lowering.hardswish_collapsed, "qdq_pairs_floored": len(lowering.floored), "qdq_pairs_added": len(lowering.added), "qdq_pairs_same_grid": len(lowering.same_grid), "qdq_pairs_refit": len(lowering.refit),
                     "pads_folded_into_conv": len(lowering.folded_pads), "activation_ranges": lowering.ranges, "activation_ranges_derived": lowering.ranges_derived}
            ctx.log.info("ort: activation Q/DQ pairs as uint8 for ORT's fused kernels: %d after Relu/Clip (zero point 0), %d shifted (zero point 128)", len(lowering.lowered), len(lowering.shifted))
            if (self.options.qdq_extend or self.options.qdq_refit) and not lowering.ranges:
                ctx.log.info("ort: the model carries no activation ranges (qdq{record_ranges=true} writes them): %d derived from the pairs after SiLU/HardSwish; Convs before other activations (PReLU, LeakyRelu...) stay unfused",
                             lowering.ranges_derived)
            ctx.log.info("ort: %d pairs added after layers from the recorded ranges, %d given their input's grid, %d refit to their range, %d Pads folded into Convs",
                         len(lowering.added), len(lowering.same_grid), len(lowering.refit), len(lowering.folded_pads))
        if tuple(self.options.providers) == ("CPUExecutionProvider",):  # ORT's fused SkipLayerNormalization is the slow one on CPU
            model, facts["adds_before_layernorm_as_sum"] = sums_before_layernorm(model, in_place=own)
        out = ctx.staging / ctx.file_name
        if lazy_weights.has_lazy(model):  # weights left in their files: so are the ones lowering rewrote
            model = lazy_weights.spill(model, ctx.staging / ".lazy-weights-ort.bin")
        so = session_options(self.options.threads, self.options.opt_level)
        so.optimized_model_filepath = str(out)
        if ctx.external_data or model.ByteSize() >= PROTOBUF_LIMIT:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", ctx.file_name + ".data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            make_session(model, providers=self.options.providers, options=so, provider_options=self._provider_options())
        except Exception as exc:
            if "serializ" in str(exc).lower() and out.exists():  # it started writing the optimized model, then could not go on
                raise UsageError(f"cannot write the artifact in {ctx.staging.parent}: ONNX Runtime could not write the optimized model (disk full or a file-size limit?)") from exc
            raise BackendError(f"ONNX Runtime cannot build a session for the model: {describe_exception(exc)}") from exc
        if quantized:  # each HardSwish ORT inlined would dequantize its input twice at run time
            facts["hardswish_joined"] = join_hardswish_in_file(out)
        files = sorted(p for p in ctx.staging.iterdir() if p.name.startswith(ctx.file_name))
        runner = OrtRunner(out, self.options.providers, self.options.threads, self._provider_options())
        manifest = base_manifest(
            self.name,
            files,
            runner,
            source_sha256=ctx.source_sha256,
            pipeline=ctx.pipeline,
            extra={
                "onnxruntime_version": ort.__version__,
                "providers": list(self.options.providers),
                "provider_options": self._provider_options(),
                "opt_level": self.options.opt_level,
                "threads": self.options.threads,
                "portable": self.options.opt_level in ("disable", "basic", "extended"),
                "qdq_lowered_to_uint8": len(lowered),
                "qdq_weights": weight_form,
                **facts,
                "weight_inputs_made_initializers": len(made_plain),
            },
        )
        return Artifact(self.name, out, manifest, files)

    def load(self, artifact: Artifact) -> Runner:
        providers = artifact.manifest.get("providers") or list(self.options.providers)
        provider_options = artifact.manifest.get("provider_options") or [{} for _ in providers]
        return OrtRunner(artifact.path, providers, int(artifact.manifest.get("threads", self.options.threads)), provider_options)

    def _provider_options(self) -> list[dict[str, str]]:
        return parse_provider_options(self.options.providers, self.options.provider_options)

