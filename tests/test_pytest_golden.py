"""The golden-case pytest plugin (converter.pytest_golden), run through pytester on a tiny recorded case."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter.pytest_golden.collect
import converter.pytest_golden.run
import converter.pytest_golden.update  # noqa: F401  (imported here, in-process pytester runs reuse them instead of importing anew)
from converter.golden import DataSet, record_case
from converter.ort_session import make_session, run_session
from converter.plugin_manager import load_plugins
from converter.pytest_golden.checks import CaseSpec, Check, check_precision, unique_names

pytest_plugins = ["pytester"]

CHECKS = [{"passes": "cleanup", "backend": "ort"}, {"passes": "", "backend": "onnx"}]
HAS_XDIST = importlib.util.find_spec("xdist") is not None


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def make_case(root: Path, name: str = "tiny", checks: list | None = None) -> Path:
    """Record a real case (model copied inside it) with ORT outputs on seeded inputs."""
    model = _model()
    src = root / f"{name}-src.onnx"
    src.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(src))
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)}
    outputs = run_session(make_session(model), feeds)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    record_case(root / name, model_path=src, model_sha256=sha, data_sets=[DataSet(feeds, outputs)], input_names=["x"], output_names=["y"],
                copy_model=True, extra={"checks": CHECKS if checks is None else checks})
    src.unlink()
    return root / name


def corrupt(case: Path) -> None:
    """Change the stored reference output (same tensor name), as a wrong recording would."""
    f = case / "test_data_set_0" / "output_0.pb"
    t = onnx.TensorProto()
    t.ParseFromString(f.read_bytes())
    f.write_bytes(numpy_helper.from_array(numpy_helper.to_array(t) + 0.5, t.name).SerializeToString())


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def _warm_plugins() -> None:
    """pytester restores sys.modules after each in-process run: import the passes and backends once, before."""
    load_plugins()


@pytest.fixture
def case(pytester: pytest.Pytester) -> Path:
    return make_case(pytester.path / "golden")


def test_passing_case_one_test_per_check(pytester: pytest.Pytester, case: Path) -> None:
    res = pytester.runpytest("--golden-dir", "golden", "-v", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(["*golden: checking cases in*", "golden/tiny/manifest.json::tiny[[]cleanup@ort[]] PASSED*",
                              "golden/tiny/manifest.json::tiny[[]no-passes@onnx[]] PASSED*"])
    again = pytester.runpytest("--golden-dir", "golden", "golden/tiny/manifest.json::tiny[no-passes@onnx]", "-p", "no:cacheprovider")
    again.assert_outcomes(passed=1)
    pytester.runpytest("--golden-dir", "golden/tiny", "-p", "no:cacheprovider").assert_outcomes(passed=2)  # a case folder itself


def test_failing_case_shows_the_table_not_a_traceback(pytester: pytest.Pytester, case: Path) -> None:
    corrupt(case)
    res = pytester.runpytest("--golden-dir", "golden", "-p", "no:cacheprovider")
    res.assert_outcomes(failed=2)
    out = res.stdout.str()
    res.stdout.fnmatch_lines([
        "golden case 'tiny' [[]cleanup@ort[]]: outputs out of tolerance at fp32: y", "case folder: *golden/tiny",
        "check: passes 'cleanup' on backend 'ort', judged at fp32*", "", "tiny/test_data_set_0: FAIL",
        "*output*shape*max_abs*max_rel*cosine*top1*needed_atol*result*", "*y*2x3*FAIL*",
        "tolerance (fp32): atol=1e-05*", "needed_atol: the smallest atol*--golden-update*",
    ])
    assert "Traceback" not in out and "pytest_golden/" not in out and "\nE   " not in out, out


def test_update_only_with_the_flag(pytester: pytest.Pytester, case: Path) -> None:
    good = hashes(case)
    manifest = json.loads((case / "manifest.json").read_text())
    corrupt(case)
    bad = hashes(case)
    pytester.runpytest("--golden-dir", "golden", "-p", "no:cacheprovider").assert_outcomes(failed=2)
    assert hashes(case) == bad, "a run without --golden-update changed the case"

    res = pytester.runpytest("--golden-dir", "golden", "--golden-update", "-v", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["golden/tiny/manifest.json::tiny[[]golden-update[]] PASSED*", "*golden: re-recorded 1 case(s), 0 unchanged*",
                              "*tiny*: 'tiny': re-recorded from model.onnx on onnxruntime (1 data set(s)): changed test_data_set_0: y (max_abs 0.5)"])
    now = hashes(case)
    assert now["test_data_set_0/output_0.pb"] == good["test_data_set_0/output_0.pb"]
    assert now["model.onnx"] == good["model.onnx"] and now.keys() == good.keys()
    after = json.loads((case / "manifest.json").read_text())
    assert {k: after[k] for k in ("name", "model", "checks", "tolerances", "inputs", "outputs")} == {k: manifest[k] for k in ("name", "model", "checks", "tolerances", "inputs", "outputs")}
    assert not [p for p in case.parent.iterdir() if p.name.startswith(".")], "staging folders left behind"
    pytester.runpytest("--golden-dir", "golden", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    fixed = hashes(case)
    res = pytester.runpytest("--golden-dir", "golden", "--golden-update", "-p", "no:cacheprovider")
    res.stdout.fnmatch_lines(["*'tiny': references unchanged, case left as it was"])
    assert hashes(case) == fixed


def test_markers_select_by_precision_and_backend(pytester: pytest.Pytester) -> None:
    make_case(pytester.path / "golden", checks=[*CHECKS, {"passes": "", "backend": "onnx", "precision": "fp16"}])
    base = ["--golden-dir", "golden", "--strict-markers", "-p", "no:cacheprovider"]
    pytester.runpytest(*base, "-m", "precision_fp32").assert_outcomes(passed=2, deselected=1)
    pytester.runpytest(*base, "-m", "backend_onnx").assert_outcomes(passed=2, deselected=1)
    res = pytester.runpytest(*base, "-m", "precision_fp16 and backend_onnx and golden", "-v")
    res.assert_outcomes(passed=1, deselected=2)
    res.stdout.fnmatch_lines(["*::tiny[[]no-passes@onnx:fp16[]] PASSED*"])
    pytester.runpytest(*base, "--golden-backend", "ort").assert_outcomes(passed=1)
    markers = pytester.runpytest("--golden-dir", "golden", "--markers").stdout.str()
    assert "@pytest.mark.precision_int8:" in markers


def test_precision_from_the_passes_and_distinct_names() -> None:
    plugins = load_plugins()
    assert check_precision(Check("infer_shapes,qdq{calib=minmax},cleanup", "ort"), plugins) == "int8"
    assert check_precision(Check("fp16,cleanup", "ort{opt_level=all}"), plugins) == "fp16"
    assert check_precision(Check("cleanup", "onnx"), plugins) == "fp32"
    assert check_precision(Check("qdq", "ort", precision="fp16"), plugins) == "fp16"  # the check's own wins
    twice = [Check("", "onnx"), Check("", "onnx")]
    assert unique_names(CaseSpec(Path("c"), "c"), twice) == ["c[no-passes@onnx]", "c[no-passes@onnx#2]"]


def test_ini_option_like_testpaths(pytester: pytest.Pytester) -> None:
    make_case(pytester.path / "cases" / "nested")
    pytester.makeini("[pytest]\ngolden_dirs =\n    cases\n")
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    pytester.runpytest("test_plain.py", "-p", "no:cacheprovider").assert_outcomes(passed=1)  # explicit paths: only those
    pytester.runpytest("cases/nested/tiny", "-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_inert_without_golden_dirs(pytester: pytest.Pytester, case: Path) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    res = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q")
    assert "golden" not in res.stdout.str() and "test_plain.py::test_one" in res.stdout.str()
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    err = pytester.runpytest("--golden-update", "-p", "no:cacheprovider")
    assert err.ret == pytest.ExitCode.USAGE_ERROR and "--golden-update needs golden case folders" in err.stderr.str()
    code = "import sys, converter.pytest_golden; bad = [m for m in ('onnx', 'numpy', 'converter.golden') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_case_errors_are_one_line_failures_and_missing_backends_skip(pytester: pytest.Pytester) -> None:
    root = pytester.path / "golden"
    make_case(root, "badchecks", checks=[{"passes": "cleanup"}])
    gone = make_case(root, "nomodel")
    manifest = json.loads((gone / "manifest.json").read_text())
    manifest["model"]["source"] = {"kind": "package", "package": "no_such_model_pkg", "resource": "m.onnx", "install": "pip install no-such-model-pkg==1.0"}
    (gone / "manifest.json").write_text(json.dumps(manifest))
    make_case(root, "trt", checks=[{"passes": "", "backend": "tensorrt"}])
    trt_here = bool(load_plugins().backends.get("tensorrt").cls.availability())
    res = pytester.runpytest("--golden-dir", "golden", "-rs", "-p", "no:cacheprovider")
    res.stdout.fnmatch_lines([
        "golden case 'badchecks': *golden/badchecks/manifest.json: checks[[]0[]].backend must name a backend*",
        "golden case 'nomodel': package 'no_such_model_pkg' is not installed; pip install no-such-model-pkg==1.0",
        "check: passes 'cleanup' on backend 'ort'",
    ])
    if not trt_here:
        res.stdout.fnmatch_lines(["SKIPPED*golden case 'trt' [[]no-passes@tensorrt[]]: backend 'tensorrt' is unavailable*"])
        res.assert_outcomes(failed=3, skipped=1)
    assert "Traceback" not in res.stdout.str()


@pytest.mark.skipif(not HAS_XDIST, reason="pytest-xdist is not installed")
def test_xdist_workers_share_nothing(pytester: pytest.Pytester) -> None:
    make_case(pytester.path / "golden", "one")
    two = make_case(pytester.path / "golden", "two")
    good = hashes(two)
    corrupt(two)
    pytester.runpytest_subprocess("--golden-dir", "golden", "-n", "2", "-p", "no:cacheprovider").assert_outcomes(passed=2, failed=2)
    res = pytester.runpytest_subprocess("--golden-dir", "golden", "-n", "2", "--golden-update", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=2)  # one item per case: two workers never write the same case
    res.stdout.fnmatch_lines(["*golden: re-recorded 1 case(s), 1 unchanged*", "*one*: 'one': references unchanged, case left as it was", "*two*: 'two': re-recorded from model.onnx*"])  # the notes reach the controller
    now = hashes(two)
    now.pop("manifest.json"), good.pop("manifest.json")  # the manifest has a new "recorded" date
    assert now == good


def test_external_data_model_is_the_recorded_model(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """A case's sha256 covers the model and its external data (as recorded): such a case must pass, not 'model changed'."""
    from converter import golden

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    model = _model()
    onnx.save_model(model, str(model_dir / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    golden.record(model_dir / "ext.onnx", pytester.path / "golden" / "ext", random_inputs=True, input_shapes="x:2x4")
    result = pytester.runpytest("--golden-dir", "golden", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
