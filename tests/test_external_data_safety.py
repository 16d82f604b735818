"""External data may only come from inside the model's folder.

Every kind of reference a model can hold (initializers of the main graph and of subgraphs,
``t``/``tensors`` attributes, ``sparse_tensor``/``sparse_tensors`` attributes, a Constant's
``sparse_value``, ``sparse_initializer``, function bodies) is attacked with each way out of
the folder (``..``, an absolute path, a symbolic link to a file or a folder outside, a file that
exists only in the current working folder, offset/length past the end of the file). Each
command must exit 2 with one ``convert: error:`` line, write nothing, and leak no secret byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from converter.cli import main
from converter.external_data import check_external_data, external_refs
from converter.model_io import load_model

_SCRIPT = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "convert"
CONVERT = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "converter.cli"]
SECRET = b"TOPSECRET-" * 64
DECOY = b"CWD-DECOY-" * 64
VALUES = np.array([1.5, -2.0, 3.25, 4.0], np.float32)
INDICES = np.array([0, 2, 5, 7], np.int64)
WEIGHT = np.arange(8, dtype=np.float32) / 4 - 1
DENSE = np.zeros(8, np.float32)
DENSE[INDICES] = VALUES
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])
OPSETS = [helper.make_opsetid("", 17)]


class Ext:
    """Moves one tensor's bytes out to ``location``; remembers the bytes so a legitimate file can be written."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.data = b""

    def __call__(self, t: TensorProto) -> TensorProto:
        assert not self.data, "one external tensor per model"
        self.data = t.raw_data
        set_external_data(t, self.location, offset=0, length=len(t.raw_data))
        t.ClearField("raw_data")
        return t


def _model(nodes: list, inits: list | None = None, *, inputs: list | None = None, sparse: list | None = None, **kw) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs or [X], [Y], inits or [], sparse_initializer=sparse or [])
    return helper.make_model(g, opset_imports=kw.pop("opsets", OPSETS), **kw)


def _sparse(ext: Ext, part: str) -> onnx.SparseTensorProto:
    values = numpy_helper.from_array(VALUES, "sv")
    indices = numpy_helper.from_array(INDICES, "sv_indices")
    ext(values if part == "values" else indices)
    return helper.make_sparse_tensor(values, indices, [8])


def _if_model(then_nodes: list, then_inits: list | None = None) -> onnx.ModelProto:
    then_g = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("yt", TensorProto.FLOAT, [8])], then_inits or [])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["ye"])], "else", [], [helper.make_tensor_value_info("ye", TensorProto.FLOAT, [8])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    return _model([node], inputs=[X, helper.make_tensor_value_info("c", TensorProto.BOOL, [])])


def k_initializer(ext: Ext) -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], [ext(numpy_helper.from_array(WEIGHT, "w"))])


def k_subgraph_initializer(ext: Ext) -> onnx.ModelProto:
    return _if_model([helper.make_node("Add", ["x", "wt"], ["yt"])], [ext(numpy_helper.from_array(WEIGHT, "wt"))])


def k_attr_t(ext: Ext) -> onnx.ModelProto:
    const = helper.make_node("Constant", [], ["w"], value=ext(numpy_helper.from_array(WEIGHT, "w")))
    return _model([const, helper.make_node("Add", ["x", "w"], ["y"])])


def k_attr_tensors(ext: Ext) -> onnx.ModelProto:
    node = helper.make_node("Holder", ["x"], ["y"], domain="test.unsafe", tensors=[ext(numpy_helper.from_array(WEIGHT, "w"))])
    return _model([node], opsets=[*OPSETS, helper.make_opsetid("test.unsafe", 1)])


def k_sparse_constant_values(ext: Ext) -> onnx.ModelProto:
    const = helper.make_node("Constant", [], ["w"], sparse_value=_sparse(ext, "values"))
    return _model([const, helper.make_node("Add", ["x", "w"], ["y"])])


def k_sparse_constant_indices(ext: Ext) -> onnx.ModelProto:
    const = helper.make_node("Constant", [], ["w"], sparse_value=_sparse(ext, "indices"))
    return _model([const, helper.make_node("Add", ["x", "w"], ["y"])])


def k_attr_sparse_tensors(ext: Ext) -> onnx.ModelProto:
    node = helper.make_node("Holder", ["x"], ["y"], domain="test.unsafe", sparse_tensors=[_sparse(ext, "values")])
    return _model([node], opsets=[*OPSETS, helper.make_opsetid("test.unsafe", 1)])


def k_sparse_initializer(ext: Ext) -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "sv"], ["y"])], sparse=[_sparse(ext, "values")])


def k_subgraph_sparse_constant(ext: Ext) -> onnx.ModelProto:
    const = helper.make_node("Constant", [], ["wt"], sparse_value=_sparse(ext, "values"))
    return _if_model([const, helper.make_node("Add", ["x", "wt"], ["yt"])])


def k_function_attr(ext: Ext) -> onnx.ModelProto:
    const = helper.make_node("Constant", [], ["w"], value=ext(numpy_helper.from_array(WEIGHT, "w")))
    fn = helper.make_function("test.fn", "AddW", ["a"], ["b"], [const, helper.make_node("Add", ["a", "w"], ["b"])], OPSETS)
    return _model([helper.make_node("AddW", ["x"], ["y"], domain="test.fn")], opsets=[*OPSETS, helper.make_opsetid("test.fn", 1)], functions=[fn])


KINDS: dict[str, Callable[[Ext], onnx.ModelProto]] = {
    name[2:]: fn for name, fn in dict(globals()).items() if name.startswith("k_") and callable(fn)
}


class Layout:
    """tmp/model/m.onnx, a secret outside the model's folder, a decoy in the CWD, an empty output folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model_dir = root / "model"
        self.secret_dir = root / "secret"
        self.cwd = root / "cwd"
        self.out = root / "out"
        for d in (self.model_dir, self.secret_dir, self.cwd, self.out):
            d.mkdir()
        self.secret = self.secret_dir / "secret.bin"
        self.secret.write_bytes(SECRET)
        (self.cwd / "decoy.bin").write_bytes(DECOY)
        self.model = self.model_dir / "m.onnx"

    def snapshot(self) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in self.root.rglob("*") if p.is_file() and not p.is_symlink()}


def _attack(layout: Layout, attack: str) -> str:
    """Prepare the files for ``attack``; returns the location the model will name."""
    if attack == "dotdot":
        return "../secret/secret.bin"
    if attack == "dotdot_inner":
        return "data/../../secret/secret.bin"
    if attack == "absolute":
        return str(layout.secret)
    if attack == "symlink_file":
        (layout.model_dir / "link.bin").symlink_to(layout.secret)
        return "link.bin"
    if attack == "symlink_dir":
        (layout.model_dir / "sub").symlink_to(layout.secret_dir, target_is_directory=True)
        return "sub/secret.bin"
    if attack == "cwd":
        return "decoy.bin"
    if attack == "bounds":
        (layout.model_dir / "short.bin").write_bytes(b"\0" * 4)
        return "short.bin"
    raise AssertionError(attack)


ATTACKS = ["dotdot", "dotdot_inner", "absolute", "symlink_file", "symlink_dir", "cwd", "bounds"]
COMMANDS = {
    "inspect": lambda m, out: ["inspect", m],
    "convert": lambda m, out: [m, "-p", "fold_constants", "-b", "onnx", "-o", out / "out.onnx"],
    "golden_record": lambda m, out: ["golden", "record", m, "--random-inputs", "-o", out / "case"],
}


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    lay = Layout(tmp_path)
    monkeypatch.chdir(lay.cwd)
    return lay


def _assert_refused(layout: Layout, before: dict[Path, bytes], rc: int, stderr: str, location: str) -> None:
    lines = stderr.splitlines()
    assert rc == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("convert: error:"), stderr
    assert repr(location) in lines[0], lines[0]
    assert list(layout.out.iterdir()) == [], "something was written beside -o"
    after = layout.snapshot()
    assert after == before, f"files changed: {sorted(set(after) ^ set(before))}"
    for path, data in after.items():
        if path not in (layout.secret, layout.cwd / "decoy.bin"):
            assert b"TOPSECRET" not in data and b"CWD-DECOY" not in data, path


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_attack_is_refused(layout: Layout, kind: str, attack: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    location = _attack(layout, attack)
    onnx.save_model(KINDS[kind](Ext(location)), str(layout.model))
    before = layout.snapshot()
    rc = main([str(a) for a in COMMANDS[command](layout.model, layout.out)])
    captured = capsys.readouterr()
    assert "TOPSECRET" not in captured.out + captured.err
    _assert_refused(layout, before, rc, captured.err, location)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("attack", ["cwd", "dotdot", "absolute", "symlink_file"])
def test_attack_through_the_real_cli(layout: Layout, attack: str, command: str) -> None:
    """The installed ``convert`` script, in a subprocess whose CWD holds the decoy (the sparse constant case)."""
    location = _attack(layout, attack)
    onnx.save_model(k_sparse_constant_values(Ext(location)), str(layout.model))
    before = layout.snapshot()
    proc = subprocess.run([*CONVERT, *map(str, COMMANDS[command](layout.model, layout.out))],
                          check=False, capture_output=True, text=True, cwd=layout.cwd, timeout=300)
    assert "TOPSECRET" not in proc.stdout + proc.stderr
    _assert_refused(layout, before, proc.returncode, proc.stderr, location)


@pytest.mark.parametrize("kind", list(KINDS))
def test_inside_the_folder_loads_into_memory(layout: Layout, kind: str) -> None:
    """Legitimate external data of every kind loads, is listed, and nothing is left for a reader to resolve later."""
    ext = Ext("data/inside.bin")
    model = KINDS[kind](ext)
    (layout.model_dir / "data").mkdir()
    (layout.model_dir / "data" / "inside.bin").write_bytes(ext.data)
    (layout.cwd / "data").mkdir()
    (layout.cwd / "data" / "inside.bin").write_bytes(DECOY[: len(ext.data)])
    onnx.save_model(model, str(layout.model))
    loaded = load_model(layout.model)
    assert loaded.external_data_files == [layout.model_dir / "data" / "inside.bin"]
    assert external_refs(loaded.proto) == []
    assert b"CWD-DECOY" not in loaded.proto.SerializeToString()
    assert ext.data in loaded.proto.SerializeToString()


def _legit_model(layout: Layout) -> onnx.ModelProto:
    """y = x + w + dense(sparse): w and the sparse constant's values and indices in files inside the folder."""
    (layout.model_dir / "data").mkdir()
    (layout.model_dir / "data" / "w.bin").write_bytes(WEIGHT.tobytes())
    (layout.model_dir / "data" / "sparse.bin").write_bytes(b"\0" * 3 + VALUES.tobytes() + INDICES.tobytes())
    # same names in the CWD with other bytes: the model's folder must win
    (layout.cwd / "data").mkdir()
    for name in ("w.bin", "sparse.bin"):
        (layout.cwd / "data" / name).write_bytes(DECOY)
    w = numpy_helper.from_array(np.zeros(8, np.float32), "w")
    set_external_data(w, "data/w.bin", 0, WEIGHT.nbytes)
    w.ClearField("raw_data")
    values = numpy_helper.from_array(np.zeros(4, np.float32), "sv")
    indices = numpy_helper.from_array(np.zeros(4, np.int64), "sv_indices")
    for t, off, n in ((values, 3, VALUES.nbytes), (indices, 3 + VALUES.nbytes, INDICES.nbytes)):
        set_external_data(t, "data/sparse.bin", off, n)
        t.ClearField("raw_data")
    const = helper.make_node("Constant", [], ["s"], sparse_value=helper.make_sparse_tensor(values, indices, [8]))
    nodes = [const, helper.make_node("Add", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "s"], ["y"])]
    return _model(nodes, [w])


def _read_pb(path: Path) -> np.ndarray:
    t = TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def test_legitimate_external_data_still_converts(layout: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    onnx.save_model(_legit_model(layout), str(layout.model))
    files = [layout.model_dir / "data" / "w.bin", layout.model_dir / "data" / "sparse.bin"]

    assert main(["inspect", str(layout.model)]) == 0
    out = capsys.readouterr().out
    assert f"external   {files[0]}, {files[1]}" in out

    assert main([str(layout.model), "-p", "fold_constants", "-b", "onnx", "-o", str(layout.out / "out.onnx")]) == 0
    capsys.readouterr()
    artifact = layout.out / "out.onnx"
    # whatever the artifact still stores externally lies beside it, in the output folder
    check_external_data(onnx.load(str(artifact), load_external_data=False), artifact)
    x = np.linspace(-1, 1, 8, dtype=np.float32)
    sess = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(["y"], {"x": x})[0], x + WEIGHT + DENSE, rtol=0, atol=1e-6)

    assert main(["golden", "record", str(layout.model), "--random-inputs", "-o", str(layout.out / "case")]) == 0
    capsys.readouterr()
    inp = _read_pb(layout.out / "case" / "test_data_set_0" / "input_0.pb")
    outp = _read_pb(layout.out / "case" / "test_data_set_0" / "output_0.pb")
    np.testing.assert_allclose(outp, inp + WEIGHT + DENSE, rtol=0, atol=1e-6)
    for p in layout.out.rglob("*"):
        if p.is_file():
            assert b"CWD-DECOY" not in p.read_bytes(), p


def test_legitimate_external_data_through_the_real_cli(layout: Layout) -> None:
    onnx.save_model(_legit_model(layout), str(layout.model))
    proc = subprocess.run([*CONVERT, str(layout.model), "-p", "fold_constants", "-b", "onnx", "-o", str(layout.out / "out.onnx")],
                          check=False, capture_output=True, text=True, cwd=layout.cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    x = np.linspace(-1, 1, 8, dtype=np.float32)
    sess = ort.InferenceSession(str(layout.out / "out.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(["y"], {"x": x})[0], x + WEIGHT + DENSE, rtol=0, atol=1e-6)


def test_symlink_inside_the_folder_and_bad_offsets_are_model_errors(layout: Layout) -> None:
    from converter.errors import ModelError

    (layout.model_dir / "real.bin").write_bytes(WEIGHT.tobytes())
    (layout.model_dir / "alias.bin").symlink_to(layout.model_dir / "real.bin")
    onnx.save_model(k_sparse_constant_values(Ext("alias.bin")), str(layout.model))
    with pytest.raises(ModelError, match="symbolic link"):
        load_model(layout.model)
    model = k_initializer(Ext("real.bin"))
    model.graph.initializer[0].external_data[1].value = "-4"  # offset
    onnx.save_model(model, str(layout.model))
    with pytest.raises(ModelError, match="invalid offset"):
        load_model(layout.model)
    assert os.listdir(layout.out) == []
