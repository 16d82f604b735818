"""Run a serialized TensorRT engine: select a profile, set shapes, device buffers via cuda-python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converter.backend_api import Runner, TensorSpec
from converter.errors import BackendError, UsageError
from converter.feeds import check_feeds
from converter.plugins.tensorrt._cuda import check, cudart
from converter.plugins.tensorrt._profiles import InputRange, Profile, select_profile


def dims_tuple(dims: Any) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple (the stubs declare indexing and len, not iteration)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class _DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(nbytes, 1)
        self.ptr = int(check(cudart.cudaMalloc(self.nbytes), "cudaMalloc"))

    def free(self) -> None:
        if self.ptr:
            check(cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class TensorRTRunner(Runner):
    def __init__(self, engine_path: Path, device: int = 0) -> None:
        import tensorrt as trt

        check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise BackendError(f"TensorRT cannot deserialize {engine_path} (built by another TensorRT version or for another GPU?)")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [self._spec(n) for n in names if is_input[n]]
        self.outputs = [self._spec(n) for n in names if not is_input[n]]
        self.profiles: list[Profile] = self._profiles()
        self._buffers: dict[str, _DeviceBuffer] = {}

    def _spec(self, name: str) -> TensorSpec:
        import tensorrt as trt

        dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
        shape = tuple(d if d >= 0 else None for d in dims_tuple(self.engine.get_tensor_shape(name)))
        return TensorSpec(name, str(dtype), shape)

    def _profiles(self) -> list[Profile]:
        out: list[Profile] = []
        for p in range(self.engine.num_optimization_profiles):
            prof: Profile = {}
            for spec in self.inputs:
                if any(d is None for d in spec.shape):
                    lo, opt, hi = self.engine.get_tensor_profile_shape(spec.name, p)
                    prof[spec.name] = InputRange(dims_tuple(lo), dims_tuple(opt), dims_tuple(hi))
            out.append(prof)
        return out

    def _buffer(self, name: str, nbytes: int) -> _DeviceBuffer:
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self._buffers[name] = _DeviceBuffer(nbytes)
        return buf

    def _select(self, feeds: dict[str, np.ndarray]) -> None:
        if not self.profiles:
            return
        index = select_profile(self.profiles, {n: a.shape for n, a in feeds.items()})
        if index < 0:
            ranges = "; ".join(", ".join(f"{n} {list(r.min)}..{list(r.max)}" for n, r in p.items()) for p in self.profiles)
            raise UsageError(f"input shapes {{{', '.join(f'{n}: {list(a.shape)}' for n, a in feeds.items())}}} fit no optimization profile of this engine ({ranges})")
        self.context.set_optimization_profile_async(index, int(self.stream))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorrt as trt

        check_feeds(feeds, self.inputs)
        self._select(feeds)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep: list[Any] = []
        for spec in self.inputs:
            arr = np.ascontiguousarray(feeds[spec.name])
            keep.append(arr)
            self.context.set_input_shape(spec.name, trt.Dims(list(arr.shape)))
            buf = self._buffer(spec.name, arr.nbytes)
            check(cudart.cudaMemcpyAsync(buf.ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream), "cudaMemcpyAsync")
            self.context.set_tensor_address(spec.name, buf.ptr)
        results: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            shape = dims_tuple(self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise BackendError(f"output '{spec.name}' has a data-dependent shape {list(shape)}; this runner needs shapes known from the inputs")
            out = np.empty(shape, dtype=np.dtype(spec.dtype))
            results[spec.name] = out
            self.context.set_tensor_address(spec.name, self._buffer(spec.name, out.nbytes).ptr)
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError("TensorRT failed to enqueue the inference")
        for name, out in results.items():
            check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name].ptr, out.nbytes, d2h, self.stream), "cudaMemcpyAsync")
        check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return results

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()

    def __del__(self) -> None:  # best effort: the process may be shutting down
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

