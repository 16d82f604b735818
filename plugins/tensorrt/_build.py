"""Build a TensorRT engine from an ONNX model. The only module that drives TensorRT's builder.

Written against TensorRT 10 and 11 (``tensorrt-stubs`` type-checks it with pyright):
- TensorRT 11 has no precision builder flags and builds strongly typed networks
  only; on TensorRT 10 we ask for a strongly typed network too, so in both the
  precision comes from the graph (fp16 casts, Q/DQ), which is what our passes make.
- Parser errors are reported with the node's name and operator.
- A timing cache from another TensorRT version or GPU is ignored with a warning.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from converter import progress
from converter.errors import BackendError
from converter.plugins.tensorrt._profiles import InputRange

if TYPE_CHECKING:
    import tensorrt as trt


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


@dataclass(frozen=True)
class BuildSettings:
    workspace_mib: int | None
    opt_level: int | None
    strongly_typed: bool
    timing_cache: Path | None


def network_flags(version: str, strongly_typed: bool) -> int:
    """Creation flags: strong typing is implicit on TensorRT 11, a flag on TensorRT 10."""
    import tensorrt as trt

    if trt_major(version) >= 11 or not strongly_typed:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def parser_errors(parser: "trt.OnnxParser") -> list[str]:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = err.node_name() or (f"node #{err.node()}" if err.node() >= 0 else "model")
        op = f" ({err.node_operator()})" if err.node_operator() else ""
        lines.append(f"{where}{op}: {err.desc()}")
    return lines


class BuildPhases:
    """TensorRT's build phases as progress tasks and log lines (pure logic: tested without TensorRT)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.tasks: dict[str, progress.Task] = {}

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        parent = self.tasks.get(parent_phase or "")
        depth = parent.depth + 1 if parent is not None else None
        self.tasks[phase_name] = progress.begin(f"tensorrt: {phase_name}", total=num_steps or None, unit="steps", depth=depth)
        self.log.info("tensorrt: %s%s (%d steps)", "  " if parent_phase else "", phase_name, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        task = self.tasks.get(phase_name)
        if task is not None:
            task.update(completed=step + 1)
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        task = self.tasks.pop(phase_name, None)
        if task is not None:
            task.end()

    def close(self, failed: bool) -> None:
        """End phases TensorRT left open (a failed build)."""
        for task in self.tasks.values():
            task.end(failed=failed)
        self.tasks.clear()


class _LogProgress:
    """Adapts TensorRT's progress callbacks to :class:`BuildPhases` (created lazily: needs tensorrt)."""

    @staticmethod
    def create(phases: BuildPhases) -> "trt.IProgressMonitor":
        import tensorrt as trt

        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)

            def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
                phases.phase_start(phase_name, parent_phase, num_steps)

            def step_complete(self, phase_name: str, step: int) -> bool:
                return phases.step_complete(phase_name, step)

            def phase_finish(self, phase_name: str) -> None:
                phases.phase_finish(phase_name)

        return Monitor()


def _load_timing_cache(config: "trt.IBuilderConfig", path: Path | None, log: logging.Logger) -> "trt.ITimingCache":
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, False):
        return cache
    log.warning("timing cache %s was made by another TensorRT version or GPU; ignoring it and starting a new one", path)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config: "trt.IBuilderConfig", path: Path) -> None:
    data = bytes(memoryview(config.get_timing_cache().serialize()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".timing-", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def build_engine(
    onnx_path: Path,
    profiles: Sequence[dict[str, InputRange]],
    settings: BuildSettings,
    log: logging.Logger,
) -> bytes:
    """Parse ``onnx_path`` (external data beside it is found by path) and build a serialized engine."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt.__version__, settings.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = parser_errors(parser)
        raise BackendError(f"TensorRT's ONNX parser rejected the model: {'; '.join(errors[:3])}" + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""))
    config = builder.create_builder_config()
    if settings.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.opt_level is not None:
        config.builder_optimization_level = settings.opt_level
    phases = BuildPhases(log)
    config.progress_monitor = _LogProgress.create(phases)
    _load_timing_cache(config, settings.timing_cache, log)
    for profile in profiles:
        p = builder.create_optimization_profile()
        for name, r in profile.items():
            p.set_shape(name, trt.Dims(list(r.min)), trt.Dims(list(r.opt)), trt.Dims(list(r.max)))
        config.add_optimization_profile(p)
    with progress.step("tensorrt: build engine") as task:
        serialized = None
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            phases.close(failed=serialized is None)
        task.update(detail="failed" if serialized is None else f"{serialized.nbytes / 2**20:.1f} MiB")
    if serialized is None:
        raise BackendError("TensorRT could not build the engine (see the TensorRT messages above; try a larger workspace_mib or check 'convert check MODEL -b tensorrt')")
    if settings.timing_cache is not None:
        _save_timing_cache(config, settings.timing_cache)
    return bytes(memoryview(serialized))


def device_facts(device: int = 0) -> dict[str, str]:
    """GPU name and compute capability through cuda-python."""
    from converter.plugins.tensorrt._cuda import check, cudart

    props = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
