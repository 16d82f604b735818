"""dynamic_batch refuses what depends on other samples and leaves dynamic models alone; --repair fixes
models whose inputs say batch while their nodes hard-code 1 (torch exports, proved by stacking)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from converter.batch_verify import check_batch_stacking
from converter.passes.dynamic_batch import BatchDependenceError
from tests.dynamic_batch_models import BATCHES, EXPORTERS, FlattenView, dim_param, export, nn, run_pass


class BatchMean(nn.Module):
    shape = (1, 4)

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


class FirstSample(nn.Module):
    shape = (1, 4)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x[0])


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize(("module", "op", "why"), [(BatchMean, "ReduceMean", "reduces over the batch"), (FirstSample, "Gather", "along the batch dim")])
def test_cross_sample_ops_are_refused(tmp_path: Path, module, op: str, why: str, exporter: str) -> None:
    path = export(module(), module.shape, tmp_path / "m.onnx", exporter)
    model = onnx.load(str(path))
    before = model.SerializeToString()
    with pytest.raises(BatchDependenceError) as err:
        run_pass(model)
    node = next(n for n in model.graph.node if n.op_type == op)
    assert f"{op} '{node.name}'" in str(err.value) and why in str(err.value)
    assert model.SerializeToString() == before  # the input model is untouched


def test_cli_refusal_exits_2_with_one_line(tmp_path: Path, cli) -> None:
    path = export(BatchMean(), BatchMean.shape, tmp_path / "mean.onnx", "legacy")
    proc = cli(path, "-p", "dynamic_batch", "-b", "ort", "-o", tmp_path / "out.onnx")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dynamic_batch" in lines[0] and "ReduceMean '/ReduceMean'" in lines[0], proc.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_already_dynamic_model_is_left_alone(tmp_path: Path, cli) -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    path = export(Flat(), (1, 3, 4), tmp_path / "dyn.onnx", "legacy", dynamic_axes={"x": {0: "N"}})
    model = onnx.load(str(path))
    before = model.SerializeToString()
    result = run_pass(model)
    assert not result.modified
    assert result.model.SerializeToString() == before
    assert result.refused and "already dynamic" in result.refused[0] and "'N'" in result.refused[0]
    proc = cli(path, "-p", "dynamic_batch", "-b", "onnx", "-o", tmp_path / "same.onnx")
    assert proc.returncode == 0, proc.stderr
    assert dim_param(onnx.load(str(tmp_path / "same.onnx")).graph.input[0]) == "N"


def test_repair_a_model_whose_inputs_say_batch_but_whose_nodes_hard_code_1(tmp_path: Path) -> None:
    """torch.onnx.export(..., dynamic_axes) of code with view(1, -1): dynamic on the outside, batch 1 inside."""
    path = export(FlattenView(), FlattenView.shape, tmp_path / "half.onnx", "legacy", dynamic_axes={"x": {0: "N"}})
    half = onnx.load(str(path))
    static = onnx.load(str(path))
    d = static.graph.input[0].type.tensor_type.shape.dim[0]
    d.Clear()
    d.dim_value = 1
    assert not check_batch_stacking(static, half, (2,))  # its symbolic batch is a promise it does not keep
    assert not run_pass(onnx.load(str(path))).modified
    result = run_pass(onnx.load(str(path)), repair=True)
    assert result.modified and result.facts["repaired_from"] == {"x": "N"}
    assert any(r.op == "Reshape" for r in result.facts["rewritten"])
    assert dim_param(result.model.graph.input[0]) == "batch"
    check = check_batch_stacking(static, result.model, BATCHES)
    assert check, check.table()


def test_repair_that_refuses_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    model = onnx.load(str(export(BatchMean(), BatchMean.shape, tmp_path / "mean.onnx", "legacy", dynamic_axes={"x": {0: "N"}})))
    before = model.SerializeToString()
    with pytest.raises(BatchDependenceError, match="reduces over the batch"):
        run_pass(model, repair=True)
    assert model.SerializeToString() == before
