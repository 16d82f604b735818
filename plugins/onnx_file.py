"""The ``onnx`` backend: the graph the passes produced, written as it is.

For users who build engines elsewhere (trtexec on the target machine). Its
runner is ONNX Runtime on that very file, with Q/DQ fusion off: each
QuantizeLinear/DequantizeLinear is computed as written (the arithmetic TensorRT
does with the graph), so a golden check judges the graph, not this CPU's int8
kernels (on x86 without VNNI, ORT's fused u8s8 kernels saturate).
"""

from __future__ import annotations

import onnx

from converter.artifacts import base_manifest
from converter.backend_api import Artifact, Availability, Backend, EmitContext, Runner
from converter.model_io import write_model
from converter.options import NoOptions
from converter.plugins.ort import OrtRunner


class OnnxFileBackend(Backend[NoOptions]):
    name = "onnx"
    summary = "The passes' graph written as is (for trtexec or other runtimes); checked on ONNX Runtime."
    Options = NoOptions

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, "", {"onnx": onnx.__version__})

    def emit(self, model: onnx.ModelProto, ctx: EmitContext) -> Artifact:
        out = ctx.staging / ctx.file_name
        files = write_model(model, out, external_data=ctx.external_data or None)
        runner = OrtRunner(out, exact_qdq=True)
        manifest = base_manifest(self.name, files, runner, source_sha256=ctx.source_sha256, pipeline=ctx.pipeline, extra={"onnx_version": onnx.__version__})
        return Artifact(self.name, out, manifest, files)

    def load(self, artifact: Artifact) -> Runner:
        return OrtRunner(artifact.path, exact_qdq=True)

