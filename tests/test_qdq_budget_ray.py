"""The qdq accuracy budget's sensitivity sweep in Ray tasks (``--ray``): the same result as in one process, bit for bit.

The models and data are tests/test_qdq_budget.py's (MLPs with one sensitive MatMul). One local Ray cluster
(2 CPUs) serves the whole module, as in tests/test_calibration_shards.py: started by the fixture, stopped at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from converter.errors import EXIT_BACKEND_UNAVAILABLE, BackendUnavailable, UsageError
from converter.passes.qdq._budget import BudgetResult, Reference, fit_budget
from converter.passes.qdq._budget_ray import RayEvaluations, score_task
from tests.conftest import Cli
from tests.test_qdq_budget import mlp, setup

LOG = logging.getLogger("test.qdq_budget_ray")


def same(a: BudgetResult, b: BudgetResult) -> dict:
    """Everything but the time and where it ran, compared exactly (floats bit for bit, dict orders included)."""
    def key(r: BudgetResult) -> dict:
        d = dataclasses.asdict(r)
        del d["seconds"], d["ray_tasks"]
        return {**d, "kept_order": list(r.kept_float), "ranking": sorted(r.sensitivity, key=lambda n: (-r.sensitivity[n], list(r.sensitivity).index(n)))}

    assert key(a) == key(b)
    return key(a)


# layers, sensitive node, group_above, target, max_evaluations; the sweep's evaluations (all on Ray)
CASES = {
    "per node": (9, 4, 64, 0.995, None, 9),
    "per node, 1024 outputs": (4, 2, 64, 0.999, None, 4),  # sums BLAS would split by its thread count (one in a task): the last bits differed
    "blocks of 3, 1 refined": (9, 4, 4, 0.995, None, 3 + 3),
    "blocks of 4, 3 refined": (16, 7, 3, 0.9995, None, 4 + 12),
    "per node, stopped after 3": (9, 4, 64, 0.995, 1 + 3 + 2 * math.ceil(math.log2(9)) + 1, 3),
    "blocks, stopped among them": (16, 7, 3, 0.9995, 1 + 2 + 2 * math.ceil(math.log2(16)) + 1, 2),
    "blocks, stopped while refining": (16, 7, 3, 0.9995, 1 + 4 + 3 + 2 * math.ceil(math.log2(16)) + 1, 4 + 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ray_sweep_gives_the_single_process_result(ray_cluster, case: str) -> None:
    layers, sensitive, group_above, target, cap, sweep = CASES[case]
    model, build, nodes, batches = setup(layers=layers, sensitive=sensitive, outputs=1024 if "1024" in case else 8)
    one = fit_budget(model, build, nodes, batches, target, log=LOG, max_evaluations=cap, group_above=group_above)
    with RayEvaluations("auto", LOG) as runner:  # auto: this module's cluster, already connected
        sharded = fit_budget(model, build, nodes, batches, target, log=LOG, max_evaluations=cap, group_above=group_above, runner=runner)
    facts = same(one, sharded)
    assert one.ray_tasks == 0 and sharded.ray_tasks == sweep and facts["evaluations"] > 1 + sweep  # the sweep ran there, the search here
    if cap is None:
        assert not facts["unmeasured"] and facts["met"]
    else:  # measured: the nodes the sweep's evaluations reached (3 nodes, no block, 3 nodes of the costliest block)
        measured = layers - len(facts["estimated"]) - len(facts["unmeasured"])
        assert facts["evaluations"] <= cap and measured == {3: 3, 2: 0, 7: 3}[sweep]
    assert bool(facts["estimated"]) == (group_above < layers)


def test_a_check_that_differs_sends_the_sweep_back_here(caplog: pytest.LogCaptureFixture) -> None:
    model, build, nodes, batches = setup(layers=9, sensitive=4)
    calls = []

    def off_by_one_ulp(configs, build, ref, batches) -> Iterator[tuple[frozenset[str], float]]:
        feeds = list(batches())
        calls.append(len(configs))
        for i, kept in enumerate(configs):
            value = score_task(ref, feeds, build(kept).SerializeToString(), 1)
            yield kept, np.nextafter(value, 2.0) if i == 0 else value

    one = fit_budget(model, build, nodes, batches, 0.995)
    with caplog.at_level(logging.WARNING, logger="test.qdq_budget_ray"):
        back = fit_budget(model, build, nodes, batches, 0.995, log=LOG, runner=off_by_one_ulp)
    same(one, back)
    assert back.ray_tasks == 0 and calls == [1 + len(nodes)]
    assert any("evaluating in this process" in r.getMessage() for r in caplog.records)


def test_a_task_error_is_raised_as_in_one_process(ray_cluster) -> None:
    model, build, nodes, batches = setup(layers=4, sensitive=2)

    def renames_the_output(kept: frozenset[str]) -> onnx.ModelProto:
        m = build(kept)
        if kept and "mm2" not in kept:  # only in the sweep: the all-quantized model is scored here first
            m.graph.output[0].name = "z"
            next(n for n in m.graph.node if "y" in n.output).output[0] = "z"
        return m

    with pytest.raises(ValueError, match=r"lacks the float model's outputs \['y'\]") as here:
        fit_budget(model, renames_the_output, nodes, batches, 0.999)
    with RayEvaluations("auto", LOG) as runner, pytest.raises(ValueError, match=r"lacks the float model's outputs \['y'\]") as there:
        fit_budget(model, renames_the_output, nodes, batches, 0.999, runner=runner)
    assert str(here.value) == str(there.value)


def test_a_model_over_2_gib_is_refused_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    import converter.passes.qdq._budget_ray as budget_ray

    monkeypatch.setattr(budget_ray, "MAX_MODEL_BYTES", 100)
    monkeypatch.setattr(budget_ray, "cluster", lambda *a, **k: pytest.fail("connected"))
    model, build, nodes, batches = setup(layers=4, sensitive=2)
    with RayEvaluations("auto", LOG) as runner, pytest.raises(UsageError, match=r"^--ray: the model is over 2 GiB.*without --ray$") as info:
        fit_budget(model, build, nodes, batches, 0.999, runner=runner)
    assert "\n" not in str(info.value)


def test_without_ray_it_exits_3_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'converter\[ray\]'") as info:
        RayEvaluations("auto", LOG).__enter__()
    assert info.value.exit_code == EXIT_BACKEND_UNAVAILABLE == 3


def test_the_reference_travels_whole() -> None:
    import pickle

    model, build, _, batches = setup(layers=3, sensitive=1)
    ref = Reference(model, batches, "cosine")
    again = pickle.loads(pickle.dumps(ref))
    m = build(frozenset())
    assert again.score(m, batches, 1) == ref.score(m, batches) == score_task(ref, list(batches()), m.SerializeToString())


def test_cli_ray_keeps_the_same_nodes_float(ray_cluster, cli: Cli, tmp_path: Path) -> None:
    model, _ = mlp(layers=9, sensitive=4)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "feeds.npz", x=np.random.default_rng(1).standard_normal((96, 16)).astype(np.float32))
    address = ray_cluster.get_runtime_context().gcs_address  # this module's cluster, even if others run on the machine
    common = [tmp_path / "m.onnx", "-p", "qdq{target_cosine=0.999,calibrator=minmax,samples=64,holdout=32}", "--calib-data", tmp_path / "feeds.npz",
              "-b", "onnx", "--json"]
    runs = [cli(*common, "-o", tmp_path / f"{name}.onnx", *extra, cwd=tmp_path) for name, extra in (("one", []), ("ray", ["--ray", address]))]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-1500:] for r in runs]
    one, ray = (next(p["facts"]["budget"] for p in json.loads(r.stdout)["passes"] if p["name"] == "qdq") for r in runs)
    assert one["kept_float"] and one["kept_float"] == ray["kept_float"] and list(one["kept_float"]) == list(ray["kept_float"])
    assert {k: one[k] for k in ("curve", "evaluations", "achieved", "met")} == {k: ray[k] for k in ("curve", "evaluations", "achieved", "met")}
    assert "ray_tasks" not in one and ray["ray_tasks"] == 9
