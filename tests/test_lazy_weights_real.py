"""Real models of three kinds, saved with external data, convert the same with their weights left in their files.

``CONVERTER_LAZY_WEIGHTS_BYTES=0`` loads every model with external data lazily (what a model over 1 GiB gets), so
these packaged models (a Paddle-converted CNN, a transformer encoder with an attention mask, a text encoder with a
bidirectional GRU op) take the path of a model over 2 GB; the artifacts must match the ones made with the
weights in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converter import lazy_weights
from tests.real_models import BY_ID

MODELS = ["rapid_orientation", "minilm_l6", "romanizer_gru"]
PIPELINES = {"int8": ("simplify,fold_constants,dynamic_batch,qdq", "ort"), "fp16": ("fold_constants,fp16", "onnx")}


def _with_external_data(model_id: str, folder: Path) -> Path:
    src = BY_ID[model_id].path()
    if src is None:
        pytest.skip(f"{model_id}: {BY_ID[model_id].install_hint}")
    folder.mkdir(parents=True)
    out = folder / "model.onnx"
    onnx.save_model(onnx.load(str(src)), str(out), save_as_external_data=True, location="model.onnx.data", size_threshold=1024)
    return out


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))


@pytest.mark.parametrize("precision", sorted(PIPELINES))
@pytest.mark.parametrize("model_id", MODELS)
def test_real_model_converts_the_same_with_lazy_weights(model_id: str, precision: str, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _with_external_data(model_id, tmp_path / "in")
    initializers = onnx.load(str(model), load_external_data=False).graph.initializer
    external = sum(1 for t in initializers if t.data_location == onnx.TensorProto.EXTERNAL)
    assert external > 0
    pipeline, backend = PIPELINES[precision]
    outs = {}
    for mode in ("eager", "lazy"):
        if mode == "lazy":
            monkeypatch.setenv(lazy_weights.THRESHOLD_ENV, "0")
        out = tmp_path / mode / "m.onnx"
        proc = cli(model, "-p", pipeline, "--calib-random", "-b", backend, "-o", out, "-q", "--json")
        assert proc.returncode == 0, proc.stderr
        assert sorted(f.name for f in out.parent.iterdir()) == ["m.onnx", "m.onnx.data", "m.onnx.manifest.json"]
        assert lazy_weights.LAZY_KEY.encode() not in out.read_bytes()
        outs[mode] = out
    eager, lazy = (onnx.load(str(outs[m]), load_external_data=False) for m in ("eager", "lazy"))
    ops = {m: [n.op_type for n in g.graph.node] for m, g in (("eager", eager), ("lazy", lazy))}
    feeds = BY_ID[model_id].feeds(seed=1, batch=1)
    if "simplify" in pipeline and ops["eager"] != ops["lazy"]:
        # onnxsim folds through weights it holds in memory (MiniLM's int8 weights' Cast/Mul into float Gemms); lazily
        # they are hidden from it and fold_constants folds them, one weight at a time: another graph, no larger, and
        # at least as close to the float model
        assert len(ops["lazy"]) <= len(ops["eager"]), ops
        reference = _run(model, feeds)
        for ref, a, b in zip(reference, _run(outs["eager"], feeds), _run(outs["lazy"], feeds)):
            if ref.dtype.kind == "f":
                assert _cosine(ref, b) >= min(0.97, _cosine(ref, a) - 0.005), (_cosine(ref, a), _cosine(ref, b))
        return
    assert ops["eager"] == ops["lazy"]
    for a, b in zip(_run(outs["eager"], feeds), _run(outs["lazy"], feeds)):
        if a.dtype.kind != "f":
            np.testing.assert_array_equal(a, b)
            continue
        scale = float(np.abs(a).max()) or 1.0
        # fp16: the same weights, bit for bit; int8: calibration ran without ORT's pre-packing (float sums in
        # another order), which may move a scale by an ulp and a value across a rounding step
        np.testing.assert_allclose(b, a, rtol=0, atol=(0.0 if precision == "fp16" else 0.02 * scale))
