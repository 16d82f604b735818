"""The TensorRT backend's pure logic: profiles, availability reasons, manifest. No TensorRT or GPU needed."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import onnx
import onnx.parser
import pytest

from converter.backend_api import EmitContext, TensorSpec
from converter.errors import UsageError
from converter.plugins.tensorrt import InputRange, build_profiles, parse_batch, profiles_from_json, profiles_to_json, select_profile
from converter.plugins.tensorrt import _backend as trt_plugin
from tests.conftest import parse

IMG = TensorSpec("x", "float32", ("batch", 3, 224, 224))
MASK = TensorSpec("mask", "int64", ("batch", "seq"))
STATIC = TensorSpec("s", "float32", (1, 4))


def test_batch_default_profile_when_only_the_batch_is_dynamic() -> None:
    (profile,) = build_profiles([IMG, STATIC])
    assert profile == {"x": InputRange((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))}
    (p2,) = build_profiles([IMG], batch="2..4..16")
    assert p2["x"].opt == (4, 3, 224, 224)
    assert build_profiles([STATIC]) == []


def test_explicit_shapes_and_several_profiles() -> None:
    profiles = build_profiles(
        [IMG, MASK],
        min_shapes="x:1x3x224x224,mask:1x16;x:8x3x224x224,mask:8x16",
        opt_shapes="x:4x3x224x224,mask:4x64;x:16x3x224x224,mask:16x64",
        max_shapes="x:8x3x224x224,mask:8x128;x:32x3x224x224,mask:32x128",
    )
    assert len(profiles) == 2 and profiles[1]["mask"] == InputRange((8, 16), (16, 64), (32, 128))
    assert select_profile(profiles, {"x": (6, 3, 224, 224), "mask": (6, 100)}) == 0
    assert select_profile(profiles, {"x": (20, 3, 224, 224), "mask": (20, 20)}) == 1
    assert select_profile(profiles, {"x": (64, 3, 224, 224), "mask": (64, 20)}) == -1
    assert profiles_from_json(profiles_to_json(profiles)) == profiles


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_shapes": "x:1x3x224x224", "opt_shapes": "x:4x3x224x224"}, "together"),
        ({"min_shapes": "x:8x3x224x224", "opt_shapes": "x:4x3x224x224", "max_shapes": "x:16x3x224x224"}, r"dim 0 needs min <= opt <= max, got 8, 4, 16"),
        ({"min_shapes": "x:1x3x224x224", "opt_shapes": "x:1x3x224x224", "max_shapes": "x:1x3x256x224"}, "max dim 2 is 256 but the model fixes it to 224"),
        ({"min_shapes": "x:1x3x224", "opt_shapes": "x:1x3x224", "max_shapes": "x:1x3x224"}, "has rank 3"),
        ({"min_shapes": "y:1x3x224x224", "opt_shapes": "y:1x3x224x224", "max_shapes": "y:1x3x224x224"}, "'y' is not an input of the model"),
        ({"min_shapes": "x:1x3x224x224;x:2x3x224x224", "opt_shapes": "x:1x3x224x224", "max_shapes": "x:1x3x224x224"}, "give 2, 1 and 1 profiles"),
        ({"min_shapes": "x:1xAx224x224", "opt_shapes": "x:1x3x224x224", "max_shapes": "x:1x3x224x224"}, "integers joined by 'x'"),
        ({"batch": "8..4..16"}, "min <= opt <= max"),
        ({"batch": "0..4"}, "MIN >= 1"),
    ],
)
def test_profile_validation_errors(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_profiles([IMG], **kwargs)


def test_every_dynamic_input_must_be_covered() -> None:
    with pytest.raises(UsageError, match="dynamic input 'mask'"):
        build_profiles([IMG, MASK], min_shapes="x:1x3x224x224", opt_shapes="x:1x3x224x224", max_shapes="x:1x3x224x224")
    with pytest.raises(UsageError, match="input 'mask' has dynamic dims \\[0, 1\\] besides the batch"):
        build_profiles([IMG, MASK])


def test_parse_batch_forms() -> None:
    assert parse_batch("8") == (8, 8, 8) and parse_batch("1..32") == (1, 32, 32) and parse_batch("1..8..32") == (1, 8, 32)


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, module: types.ModuleType | None) -> None:
    monkeypatch.setitem(sys.modules, name, module)  # type: ignore[arg-type]


def test_availability_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1. not installed (this machine)
    _fake_module(monkeypatch, "tensorrt", None)
    a = trt_plugin.TensorRTBackend.availability()
    assert not a and a.reason.startswith("tensorrt is not installed")
    # 2. only the type stubs (a namespace package without Builder)
    _fake_module(monkeypatch, "tensorrt", types.ModuleType("tensorrt"))
    assert "only its type stubs" in trt_plugin.TensorRTBackend.availability().reason
    # 3. an unsupported version
    old = types.ModuleType("tensorrt")
    old.Builder = object  # type: ignore[attr-defined]
    old.__version__ = "8.6.1"  # type: ignore[attr-defined]
    _fake_module(monkeypatch, "tensorrt", old)
    assert "8.6.1 is not supported (need 10 or 11.x)" in trt_plugin.TensorRTBackend.availability().reason
    # 4. TensorRT importable, but no CUDA device
    trt11 = types.ModuleType("tensorrt")
    trt11.Builder = object  # type: ignore[attr-defined]
    trt11.__version__ = "11.4.0"  # type: ignore[attr-defined]
    _fake_module(monkeypatch, "tensorrt", trt11)
    monkeypatch.setattr(trt_plugin, "_cuda_device_count", lambda: (0, "CUDA runtime: cudaErrorInsufficientDriver"))
    a = trt_plugin.TensorRTBackend.availability()
    assert not a and a.reason == "no CUDA device (CUDA runtime: cudaErrorInsufficientDriver)" and a.versions["tensorrt"] == "11.4.0"
    # 5. everything there
    monkeypatch.setattr(trt_plugin, "_cuda_device_count", lambda: (2, ""))
    a = trt_plugin.TensorRTBackend.availability()
    assert a and a.versions == {"tensorrt": "11.4.0", "cuda_devices": "2"}


def test_cuda_device_count_without_a_driver() -> None:
    count, why = trt_plugin._cuda_device_count()
    assert count == 0 and why  # this machine has no GPU: the reason is cuda-python's or its absence


def test_engine_manifest(tmp_path: Path) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, 4] x) => (float[batch, 4] y) { y = Relu(x) }""")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00engine-bytes")
    opts = trt_plugin.TensorRTOptions(batch="1..4..8", workspace_mib=512)
    backend = trt_plugin.TensorRTBackend(opts)
    profiles = backend.profiles(model)
    ctx = EmitContext(staging=tmp_path, file_name="m.engine", log=logging.getLogger("t"), source_sha256="abc", pipeline="dynamic_batch")
    m = trt_plugin.engine_manifest(model, engine, profiles, opts, ctx, tensorrt_version="10.13.0", device={"gpu": "NVIDIA H100", "compute_capability": "9.0"})
    assert m["backend"] == "tensorrt" and m["tensorrt_version"] == "10.13.0" and m["compute_capability"] == "9.0"
    assert m["profiles"] == [{"x": {"min": [1, 4], "opt": [4, 4], "max": [8, 4]}}]
    assert m["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert m["source_model_sha256"] == "abc" and len(m["artifact_sha256"]) == 64
    assert m["settings"]["workspace_mib"] == 512


def test_options_validation() -> None:
    with pytest.raises(ValueError, match="opt_level"):
        trt_plugin.TensorRTOptions(opt_level=9)


def test_shape_flags_reach_backend_options(cli, tiny_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli(tiny_path, "-b", "ort", "--batch", "1..2..4", "-o", tmp_path / "o.onnx")
    assert res.returncode == 2 and "backend 'ort': unknown option 'batch'" in res.stderr
    res = cli(tiny_path, "-b", "tensorrt", "--min-shapes", "x:1x4", "--opt-shapes", "x:2x4", "--max-shapes", "x:4x4", "-o", tmp_path / "o.engine")
    assert res.returncode == 3 and [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]


def test_onnx_roundtrip_model_has_profiles() -> None:
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 3, 8, 8] y) { y = Relu(x) }""")
    (p,) = trt_plugin.TensorRTBackend(trt_plugin.TensorRTOptions()).profiles(m)
    assert p["x"].max == (32, 3, 8, 8)


QDQ_NONZERO = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) <float s = {0.1}, int8 zp = {3}> {
    q = QuantizeLinear <axis = 1> (x, s, zp)
    y = DequantizeLinear <axis = 1> (q, s, zp)
}
"""


def test_convert_check_lints_without_a_gpu(cli, tiny_path: Path, tmp_path: Path, rapid_model: Path) -> None:  # type: ignore[no-untyped-def]
    m = onnx.parser.parse_model(QDQ_NONZERO)
    m.graph.node[0].name = "quant_x"
    bad = tmp_path / "qdq.onnx"
    onnx.save_model(m, str(bad))
    res = cli("check", bad, "-b", "tensorrt")
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("error: zero-point")]
    assert lines and "quant_x" in lines[0]
    clean = cli("check", rapid_model, "-b", "tensorrt")
    assert clean.returncode == 0 and "clean for backend 'tensorrt'" in clean.stdout, clean.stdout
    old = cli("check", rapid_model, "-b", "tensorrt{target_version=8.6}", "--json")
    data = __import__("json").loads(old.stdout)
    assert old.returncode == 1 and {f["rule"] for f in data["findings"]} >= {"int64"}
    badver = cli("check", rapid_model, "-b", "tensorrt{target_version=ten}")
    assert badver.returncode == 2 and "not a TensorRT version" in badver.stderr
