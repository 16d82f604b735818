"""The ``onnx`` backend: the graph the passes produced, written as it is.

For users who build engines elsewhere (trtexec on the target machine). Its
runner is ONNX Runtime on that very file.
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
        runner = OrtRunner(out)
        manifest = base_manifest(self.name, files, runner, source_sha256=ctx.source_sha256, pipeline=ctx.pipeline, extra={"onnx_version": onnx.__version__})
        return Artifact(self.name, out, manifest, files)

    def load(self, artifact: Artifact) -> Runner:
        return OrtRunner(artifact.path)

