"""End to end on a real packaged model with real-photo inputs, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tests.conftest import Cli


def test_convert_real_model_with_golden(cli: Cli, rapid_model: Path, photo_feeds: Path, tmp_path: Path) -> None:
    golden = tmp_path / "golden" / "rapid"
    rec = cli("golden", "record", rapid_model, "--inputs", photo_feeds, "-o", golden)
    assert rec.returncode == 0, rec.stderr
    assert (golden / "test_data_set_0" / "input_0.pb").is_file() and (golden / "test_data_set_0" / "output_0.pb").is_file()
    manifest = json.loads((golden / "manifest.json").read_text())
    assert manifest["model"]["source"]["kind"] == "package" and set(manifest["tolerances"]) == {"fp32", "fp16", "int8"}

    before = rapid_model.read_bytes()
    out = tmp_path / "out.onnx"
    res = cli(rapid_model, "-p", "infer_shapes,cleanup", "-b", "ort", "-o", out, "--golden", golden, "--verify", "--inputs", photo_feeds)
    assert res.returncode == 0, res.stderr
    assert "cleanup" in res.stdout and "PASS" in res.stdout
    assert rapid_model.read_bytes() == before
    art = json.loads((tmp_path / "out.onnx.manifest.json").read_text())
    assert art["backend"] == "ort" and art["pipeline"] == "infer_shapes,cleanup" and art["inputs"][0]["name"] == "x"
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Identity" not in ops and "BatchNormalization" not in ops  # cleanup removed Identity; ORT fused BN into Conv

    chk = cli("golden", "check", out, golden)
    assert chk.returncode == 0, chk.stderr

    # a golden case whose stored outputs were perturbed fails with a per-output table
    bad = tmp_path / "golden" / "perturbed"
    shutil.copytree(golden, bad)
    out_pb = bad / "test_data_set_0" / "output_0.pb"
    t = onnx.TensorProto()
    t.ParseFromString(out_pb.read_bytes())
    arr = numpy_helper.to_array(t).copy()
    arr[0] = arr[0][::-1]  # swap class scores of the first image
    out_pb.write_bytes(numpy_helper.from_array(arr, t.name).SerializeToString())
    fail = cli("golden", "check", out, bad)
    assert fail.returncode == 1
    assert "fetch_name_0" in fail.stdout and "FAIL" in fail.stdout and "needed_atol" in fail.stdout
    assert fail.stderr.strip().startswith("convert: error: golden check failed")


def test_failed_golden_leaves_no_artifact(cli: Cli, rapid_model: Path, tmp_path: Path) -> None:
    golden = tmp_path / "g"
    assert cli("golden", "record", rapid_model, "--random-inputs", "--input-shapes", "x:2x3x224x224", "-o", golden).returncode == 0
    out_pb = golden / "test_data_set_0" / "output_0.pb"
    t = onnx.TensorProto()
    t.ParseFromString(out_pb.read_bytes())
    out_pb.write_bytes(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(0.05), t.name).SerializeToString())
    work = tmp_path / "work"
    work.mkdir()
    res = cli(rapid_model, "-o", work / "out.onnx", "--golden", golden)
    assert res.returncode == 1 and "not written" in res.stderr
    assert list(work.iterdir()) == []
    kept = cli(rapid_model, "-o", work / "out.onnx", "--golden", golden, "--keep-failed")
    assert kept.returncode == 1 and (work / "out.onnx").is_file() and (work / "out.onnx.manifest.json").is_file()


def test_record_refuses_to_overwrite_without_force(cli: Cli, tiny_path: Path, tmp_path: Path) -> None:
    g = tmp_path / "g"
    assert cli("golden", "record", tiny_path, "--random-inputs", "-o", g).returncode == 0
    again = cli("golden", "record", tiny_path, "--random-inputs", "--seed", "1", "-o", g)
    assert again.returncode == 2 and "--force" in again.stderr
    assert cli("golden", "record", tiny_path, "--random-inputs", "--seed", "1", "-o", g, "--force").returncode == 0


def test_inspect_real_model(cli: Cli, rapid_model: Path) -> None:
    res = cli("inspect", rapid_model, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["DynamicDimension.0", 3, 224, 224]}]
    assert info["opsets"]["ai.onnx"] == 15 and info["ops"]["Conv"] == 32 and info["metadata"]["character"].split() == ["0", "90", "180", "270"]
    text = cli("inspect", rapid_model)
    assert "x: float32 [DynamicDimension.0, 3, 224, 224]" in text.stdout


def test_console_script_is_installed(tiny_path: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "convert"
    assert exe.is_file(), "the 'convert' console script is not installed in this environment"
    res = subprocess.run([str(exe), str(tiny_path), "-p", "cleanup", "-o", str(tmp_path / "o.onnx"), "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["passes"][0]["facts"]["identities_removed"] == 2


def test_external_data_model_keeps_weights_external(cli: Cli, rapid_model: Path, tmp_path: Path) -> None:
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = src_dir / "rapid.onnx"
    onnx.save_model(onnx.load(str(rapid_model)), str(src), save_as_external_data=True, location="rapid.weights", size_threshold=1024)
    before = {p.name: p.read_bytes() for p in src_dir.iterdir()}
    g = tmp_path / "g"
    assert cli("golden", "record", src, "--random-inputs", "--input-shapes", "x:2x3x224x224", "-o", g).returncode == 0
    for backend in ("ort", "onnx"):
        out_dir = tmp_path / backend
        res = cli(src, "-p", "cleanup", "-b", backend, "-o", out_dir / "m.onnx", "--golden", g)
        assert res.returncode == 0, res.stderr
        names = sorted(p.name for p in out_dir.iterdir())
        assert names == ["m.onnx", "m.onnx.data", "m.onnx.manifest.json"], names
        assert (out_dir / "m.onnx").stat().st_size < 1_000_000 < (out_dir / "m.onnx.data").stat().st_size
        assert cli("golden", "check", out_dir / "m.onnx", g).returncode == 0
    assert {p.name: p.read_bytes() for p in src_dir.iterdir()} == before
