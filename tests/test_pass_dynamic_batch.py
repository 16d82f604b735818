"""dynamic_batch on real torch exports that hard-code batch 1 (the patterns: tests/dynamic_batch_models.py;
one rule per tiny ONNX-text model: test_pass_dynamic_batch_rules.py; refusals and repair: test_pass_dynamic_batch_refusals.py).

Proof for every pattern: the rewritten model runs at batch 1, 2, 7 and 32 and
equals the stacked batch-1 runs of the original (converter.batch_verify:
max abs error <= 1e-5 x output scale, cosine >= 0.99999) on seeded inputs.
Each torch module is exported once per session, with both exporters
(``dynamo=False`` legacy TorchScript and ``dynamo=True``), without dynamic_axes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest

from converter.batch_verify import check_batch_stacking
from converter.onnx_calls import check_model
from converter.pass_api import PassContext
from converter.passes.dynamic_batch import BatchDependenceError, DynamicBatchOptions, DynamicBatchPass, Rewrite
from tests.dynamic_batch_models import BATCHES, CTX, EXPORTERS, PATTERNS, F, FlattenView, dim_param, export, run_pass, torch


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """Export a pattern once per module: exported(name, exporter) -> path of the batch-1 model."""
    folder = tmp_path_factory.mktemp("dynamic-batch-exports")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, exporter: str) -> Path:
        if (name, exporter) not in cache:
            torch.manual_seed(0)
            cache[(name, exporter)] = export(PATTERNS[name](), PATTERNS[name].shape, folder / f"{name}.{exporter}.onnx", exporter)
        return cache[(name, exporter)]

    return get


def naive(model: onnx.ModelProto) -> onnx.ModelProto:
    """What most tools do: rename dim 0 of inputs and outputs, hope."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*out.graph.input, *out.graph.output]:
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_param = "batch"
    del out.graph.value_info[:]
    return out


# ---- torch exports -----------------------------------------------------------------------------


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_runs_at_any_batch(exported, name: str, exporter: str) -> None:
    original = onnx.load(str(exported(name, exporter)))
    result = run_pass(original)
    assert result.modified
    check_model(result.model)
    assert dim_param(result.model.graph.input[0]) == "batch"
    assert all(any(d.dim_param == "batch" for d in o.type.tensor_type.shape.dim) for o in result.model.graph.output)
    check = check_batch_stacking(original, result.model, BATCHES, seed=0)
    assert check, check.table()
    assert [r.batch for r in check.runs] == list(BATCHES)
    original_nodes = {n.name for n in original.graph.node}
    for rewrite in result.facts["rewritten"]:  # each typed fact names a node of the original or a graph output
        assert isinstance(rewrite, Rewrite)
        assert rewrite.node in original_nodes or rewrite.op == "graph output", rewrite
    assert "equals" in result.facts["self_check"]


CORE = ["flatten_view", "reshape_c_hw", "channel_shuffle", "expand_token", "lstm_buffer_h0", "gru_param_h0", "attention", "attention_batch_x_heads"]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", CORE)
def test_renaming_dim0_alone_breaks_these_exports(exported, name: str, exporter: str) -> None:
    """The patterns really hard-code batch 1: editing the input dim and hoping fails at batch 2."""
    original = onnx.load(str(exported(name, exporter)))
    assert not check_batch_stacking(original, naive(original), (2,))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_lstm_states_keep_batch_in_dim_1(exported, exporter: str) -> None:
    result = run_pass(onnx.load(str(exported("lstm_zeros_h0", exporter))))
    h_n = result.model.graph.output[1]
    assert [d.dim_param or d.dim_value for d in h_n.type.tensor_type.shape.dim] == [1, "batch", 6]
    assert result.facts["outputs"][h_n.name] == {"axis": 1, "dim": "batch"}


def test_reshape_rewrites_use_0_or_minus_1(exported) -> None:
    result = run_pass(onnx.load(str(exported("attention_batch_x_heads", "legacy"))))
    model = result.model
    inits = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in model.graph.initializer}
    shapes = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Reshape" and n.input[1] in inits]
    assert shapes and all(s[0] in (0, -1) for s in shapes), shapes
    assert [0, 6, 4, 4] in shapes and [-1, 6, 4] in shapes  # copy the batch where dim 0 is it; -1 for batch*heads


def test_batch_2_export(tmp_path: Path) -> None:
    class Flatten2(FlattenView):
        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).view(2, -1))

    for exporter in EXPORTERS:
        original = onnx.load(str(export(Flatten2(), (2, 3, 6, 6), tmp_path / f"b2.{exporter}.onnx", exporter)))
        result = run_pass(original)
        assert result.facts["old_batch"] == 2
        check = check_batch_stacking(original, result.model, (2, 4, 14))
        assert check, check.table()


def test_cli_converts_and_runs_at_several_batches(exported, tmp_path: Path, cli) -> None:
    for name, exporter in (("attention", "legacy"), ("lstm_buffer_h0", "dynamo"), ("expand_token", "legacy")):
        src = exported(name, exporter)
        out = tmp_path / f"{name}.{exporter}.ort.onnx"
        proc = cli(src, "-p", "dynamic_batch", "-b", "ort", "-o", out)
        assert proc.returncode == 0, proc.stderr
        converted = onnx.load(str(out))
        assert dim_param(converted.graph.input[0]) == "batch"
        check = check_batch_stacking(onnx.load(str(src)), converted, BATCHES, seed=1)
        assert check, check.table()


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_cli_after_fold_constants(exported, tmp_path: Path, cli, name: str) -> None:
    """The issue's command on every pattern: fold, make the batch dynamic, --verify proves 1/2/7 stacking;
    then the written artifact runs at 1, 2, 7 and 32 equal to stacked batch-1 runs."""
    src = exported(name, "legacy")
    out = tmp_path / f"{name}.onnx"
    proc = cli(src, "-p", "fold_constants,dynamic_batch", "-b", "ort", "-o", out, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "batch check (batch N vs N stacked batch-1 runs): ok" in proc.stdout
    check = check_batch_stacking(onnx.load(str(src)), onnx.load(str(out)), BATCHES)
    assert check, check.table()


def test_self_check_refuses_a_wrong_result(exported) -> None:
    original = onnx.load(str(exported("flatten_view", "legacy")))
    with pytest.raises(BatchDependenceError, match="self-check failed: at batch 3"):
        DynamicBatchPass(DynamicBatchOptions())._self_check(original, naive(original), CTX)


@pytest.mark.parametrize("name", ["expand_token", "lstm_buffer_h0", "zeros_repeat_cat", "flatten_view", "gru_param_h0"])
def test_tensorrt_lint_flags_rename_only_exports_but_not_converted_ones(exported, name: str) -> None:
    """`convert check -b tensorrt` must catch what naive batch renaming leaves behind, and stay quiet after the pass."""
    from converter.plugins.tensorrt.lint._rules import lint

    src = onnx.load(str(exported(name, "legacy")))
    renamed = onnx.ModelProto()
    renamed.CopyFrom(src)
    for vi in [*renamed.graph.input, *renamed.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    del renamed.graph.value_info[:]
    assert [f for f in lint(renamed) if f.rule == "hardcoded-batch" and f.severity == "error"], "rename-only export not flagged"
    converted = DynamicBatchPass(DynamicBatchOptions()).run(src, PassContext(log=logging.getLogger("t"))).model
    assert [f.line() for f in lint(converted) if f.rule == "hardcoded-batch"] == []
