"""The backend conformance kit (converter.testing): our backends pass it, TensorRT skips with its own reason here,
the sample third-party plugin passes it through the pytest option, and deliberately broken backends fail it
with messages that name the check and say what the contract expects."""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import onnx
import pytest

from converter.plugins.onnx_file import OnnxFileBackend
from converter.plugins.ort import OrtBackend
from converter.plugins.tensorrt import TensorRTBackend
from converter.testing import ZOO_DIR, check_backend, checks, pytest_params, zoo_cases
from converter.testing.kit import load_backend_class, parse_options
from converter.testing.plugin import ConformanceItem  # noqa: F401  (imported once: in-process pytester runs reuse it)
from tests.conftest import PLUGIN_SRC, ROOT

pytest_plugins = ["pytester"]


# -- our backends --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", pytest_params([OrtBackend, OnnxFileBackend, TensorRTBackend]))
def test_our_backends_conform(case) -> None:  # type: ignore[no-untyped-def]
    case.run()


def test_tensorrt_runs_the_kit_where_it_can_run() -> None:
    reason = TensorRTBackend.availability().reason
    results = check_backend(TensorRTBackend, select=["availability", "emit_load_run", "bad_input"])
    assert all(results), [r.line() for r in results if not r]
    if TensorRTBackend.availability().ok:
        assert all(r.outcome == "passed" for r in results), [r.line() for r in results]
    else:
        ran, skipped = results[0], results[1:]
        assert ran.check == "availability" and ran.outcome == "passed"
        assert {r.outcome for r in skipped} == {"skipped"}
        assert all(r.message == f"backend 'tensorrt' is unavailable here: {reason}" for r in skipped), skipped[0].message
        required = check_backend(TensorRTBackend, select=["emit_load_run[fp32_mlp]"], require_available=True)  # a GPU CI machine: no silent skips
        assert [r.outcome for r in required] == ["failed"] and reason in required[0].message


# -- the zoo -------------------------------------------------------------------------------------
def test_zoo_covers_the_promised_cases_and_is_small() -> None:
    cases = {c.name: c for c in zoo_cases()}
    assert {c.precision for c in cases.values()} == {"fp32", "fp16", "int8"}
    assert cases["dynamic_batch"].batch_sizes == (1, 3, 8)
    assert len(cases["dynamic_batch"].golden().data_sets) == 3
    multi = onnx.load(str(cases["multi_io"].model_path))
    assert len(multi.graph.input) >= 2 and len(multi.graph.output) >= 2
    assert cases["external_data"].external_data and (ZOO_DIR / "external_data" / "model.onnx.data").stat().st_size > 1024
    qdq = onnx.load(str(cases["int8_qdq"].model_path))
    zero_points = [onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer if t.name.endswith("_z") or t.name.endswith("_wz")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    size = sum(p.stat().st_size for p in ZOO_DIR.rglob("*") if p.is_file())
    assert size < 200 * 1024, f"the zoo is {size} bytes"
    assert [c.id for c in checks()].count("emit_load_run[int8_qdq]") == 1


def test_zoo_is_what_the_generator_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("make_conformance_zoo", ROOT / "tools" / "make_conformance_zoo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_conformance_zoo", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "the shipped zoo differs from tools/make_conformance_zoo.py's output: rerun it"


# -- the Python API ------------------------------------------------------------------------------
def test_check_backend_without_pytest_and_its_errors() -> None:
    results = check_backend(OnnxFileBackend, select=["class_contract", "emit_load_run"])
    assert [r.check for r in results][:2] == ["class_contract", "emit_load_run[dynamic_batch]"]
    assert all(r.outcome == "passed" for r in results)
    assert parse_options("threads=1,providers=[CPUExecutionProvider]") == {"threads": "1", "providers": "[CPUExecutionProvider]"}
    with pytest.raises(Exception, match="write MODULE:CLASS"):
        load_backend_class("converter.plugins.ort")
    with pytest.raises(Exception, match="no attribute 'Nope'"):
        load_backend_class("converter.plugins.ort:Nope")
    with pytest.raises(Exception, match="no conformance check 'nope'"):
        check_backend(OnnxFileBackend, select=["nope"])


# -- through pytest: the sample plugin, broken backends, inertness -------------------------------
@pytest.fixture(scope="module", autouse=True)
def _warm_imports() -> None:
    """pytester restores sys.modules after each in-process run: import what the kit uses once, before."""
    import converter.convert_job
    import converter.testing.kit  # noqa: F401
    from converter.testing.contract import _installed

    _installed()


def _outcomes(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(conformance\[\S+?\]::\S+) (PASSED|FAILED|SKIPPED)", output, re.MULTILINE))


def test_sample_third_party_plugin_passes(pytester: pytest.Pytester) -> None:
    pytester.syspathinsert(PLUGIN_SRC)
    res = pytester.runpytest("--converter-backend", "converter_example_plugin:ReferenceBackend", "-v", "-rs", "-p", "no:cacheprovider")
    out = res.stdout.str()
    outcomes = _outcomes(out)
    assert len(outcomes) == len(checks()) and "FAILED" not in outcomes.values(), out[-3000:]
    assert outcomes["conformance[reference]::emit_load_run[fp32_mlp]"] == "PASSED"
    for name, outcome in outcomes.items():  # onnx.reference lacks Q/DQ before opset 19: the sample's lint() says so
        if outcome == "SKIPPED":
            assert "int8_qdq" in name, name
    if "SKIPPED" in outcomes.values():
        assert "declares through lint() that it rejects zoo case 'int8_qdq'" in out and "it does refuse it with a clean error" in out


BROKEN = '''
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converter.backend_api import Runner
from converter.plugins.onnx_file import OnnxFileBackend


class _Wrap(Runner):
    def __init__(self, inner, fix):
        self.inner, self.fix = inner, fix
        self.inputs, self.outputs = inner.inputs, inner.outputs

    def run(self, feeds):
        return self.fix(self.inner.run(feeds))


class RenamedOutput(OnnxFileBackend):
    name = "renamed"
    summary = "Renames the first output (deliberately broken)."

    def load(self, artifact):
        return _Wrap(super().load(artifact), lambda out: {("renamed_" + k if i == 0 else k): v for i, (k, v) in enumerate(out.items())})


class WrongDtype(OnnxFileBackend):
    name = "float64"
    summary = "Returns float64 outputs (deliberately broken)."

    def load(self, artifact):
        return _Wrap(super().load(artifact), lambda out: {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in out.items()})


class RaisingAvailability(OnnxFileBackend):
    name = "raising"
    summary = "availability() raises (deliberately broken)."

    @classmethod
    def availability(cls):
        raise RuntimeError("libfoo.so.1: cannot open shared object file")


class Leaky(OnnxFileBackend):
    name = "leaky"
    summary = "Writes a cache file into the working folder (deliberately broken)."

    def emit(self, model, ctx):
        Path("leaky.cache").write_text("cache")
        return super().emit(model, ctx)


class Crashing(OnnxFileBackend):
    name = "crashing"
    summary = "Raises KeyError on an op it does not know (deliberately broken)."

    def emit(self, model, ctx):
        if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
            raise KeyError(model.graph.node[0].op_type)
        return super().emit(model, ctx)


@dataclass(frozen=True)
class ListOptions:
    sizes: list = field(default_factory=list)


class BadOptions(OnnxFileBackend):
    name = "badopts"
    summary = "Options the text syntax cannot express, without help (deliberately broken)."
    Options = ListOptions


class Impostor(OnnxFileBackend):
    name = "ort"
    summary = "Takes a built-in backend's name (deliberately broken)."
'''


def test_broken_backends_fail_with_clear_messages(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(broken_backends=BROKEN)
    pytester.syspathinsert()
    names = ["RenamedOutput", "WrongDtype", "RaisingAvailability", "Leaky", "Crashing", "BadOptions", "Impostor"]
    args = [a for n in names for a in ("--converter-backend", f"broken_backends:{n}")]
    res = pytester.runpytest(*args, "-v", "-p", "no:cacheprovider")
    out = res.stdout.str()
    got = _outcomes(out)
    assert res.ret == pytest.ExitCode.TESTS_FAILED and len(got) == len(names) * len(checks()), out[-3000:]
    expect_failed = {
        "renamed": ["emit_load_run[fp32_mlp]", "emit_load_run[multi_io]"],
        "float64": ["emit_load_run[fp32_conv]", "emit_load_run[fp16_io]"],
        "raising": ["availability", "emit_load_run[fp32_mlp]"],
        "leaky": ["emit_load_run[fp32_mlp]", "nothing_left_behind[emit_fails]", "nothing_left_behind[golden_mismatch]"],
        "crashing": ["bad_input[unknown_op]"],
        "badopts": ["options_validation"],
        "ort": ["registration"],
    }
    for backend, failed in expect_failed.items():
        for check in failed:
            assert got[f"conformance[{backend}]::{check}"] == "FAILED", (backend, check)
    for backend in ("renamed", "float64", "leaky", "crashing", "badopts", "ort"):
        assert got[f"conformance[{backend}]::class_contract"] == "PASSED", backend
    assert got["conformance[renamed]::interface[fp32_mlp]"] == "PASSED"  # it declares the right outputs; run() renames them
    assert got["conformance[crashing]::nothing_left_behind[emit_fails]"] == "PASSED"  # it crashes, but inside staging
    messages = [
        ("run on zoo case 'fp32_mlp', data set test_data_set_0 (batch 2) returned outputs ['renamed_probs']; "
         "the model's outputs are ['probs'] (missing ['probs']) (not in the model: ['renamed_probs']): key every output by the model's output name"),
        "output 'y' is float64, the model's output is float16: return the model's dtypes",
        "availability() raised RuntimeError: libfoo.so.1: cannot open shared object file",
        "it must never raise: return Availability(False, 'the reason')",
        "emit wrote outside ctx.staging: <working folder>/leaky.cache",
        "files were left behind: <working folder>/leaky.cache",
        "emit raised KeyError: 'ConformanceNoSuchOp'",
        "as an internal error (exit 4, 'a bug in converter'): raise converter.errors.BackendError (exit 1)",
        "option 'sizes' has no help",
        "option 'sizes' has type <class 'list'>, which option text cannot express",
        "name 'ort' is taken by the built-in backend converter.plugins.ort._backend.OrtBackend: choose another name",
    ]
    assert "FAILED conformance[renamed]::emit_load_run[fp32_mlp] - run on zoo case" in out  # the summary line: the check, then the finding
    flat = " ".join(out.split())
    for message in messages:
        assert " ".join(message.split()) in flat, message
    assert "raise fail(" not in out, "a failure shows the kit's message, not the kit's source"


def test_plugin_is_inert_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="""
        import sys

        def test_plain():
            assert "converter.testing.kit" not in sys.modules
    """)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    res.assert_outcomes(passed=1)
    assert "conformance[" not in res.stdout.str()
    helptext = pytester.runpytest_subprocess("--help").stdout.str()
    assert all(f"--converter-{o}" in helptext for o in ("backend=MODULE:CLASS", "backend-options", "require-available"))


def test_bad_option_values_are_usage_errors(pytester: pytest.Pytester) -> None:
    res = pytester.runpytest("--converter-backend", "converter.plugins.ort:OrtBackend", "--converter-backend-options", "threads=many", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--converter-backend-options: backend 'ort' option 'threads': 'many' is not an integer*"])
    res = pytester.runpytest("--converter-backend", "no_such_module_xyz:Backend", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*cannot import no_such_module_xyz*"])


def test_checks_are_selected_with_k_and_take_backend_options(pytester: pytest.Pytester) -> None:
    res = pytester.runpytest("--converter-backend", "converter.plugins.ort:OrtBackend", "--converter-backend-options", "threads=1,opt_level=basic",
                             "-k", "fp16_io or availability", "-v", "-p", "no:cacheprovider")
    assert _outcomes(res.stdout.str()) == {
        "conformance[ort]::availability": "PASSED", "conformance[ort]::emit_load_run[fp16_io]": "PASSED", "conformance[ort]::interface[fp16_io]": "PASSED",
    }
