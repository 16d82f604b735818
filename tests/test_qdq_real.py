"""int8 on real models with real data: the "done when" of the int8 issue.

For each model, ``convert MODEL -p fold_constants,qdq -b onnx --calib-data ...`` runs as a user types it, on
real calibration data (``tests/real_data.py``: text images, a speech recording, sentences), and must:

- exit 0;
- quantize at least half of the Conv/ConvTranspose/Gemm/MatMul nodes, those inside If/Loop/Scan bodies
  counted (a node counts when its activation and weight inputs both come from DequantizeLinear);
- keep cosine >= 0.98 between the int8 and the fp32 model's outputs on held-out real samples (disjoint
  from the calibration ones): each float output flattened over all held-out runs, the minimum over outputs.
  The int8 graph runs on ONNX Runtime with its Q/DQ fusion off (``session.disable_quant_qdq``): every
  QuantizeLinear/DequantizeLinear computed as written, the arithmetic TensorRT does with this graph. Fused,
  on an x86 CPU without VNNI, ORT's U8S8 kernels saturate (``plugins/ort/_cpu.py``; ``-b ort`` lowers around
  it), which measures the CPU, not the quantization: that cosine is printed too, not asserted.

Models where plain ``qdq`` cannot reach the cosine are listed in :data:`TARGET_COSINE` and get
``qdq{target_cosine=0.985,holdout=8}`` instead (or all of them with ``QDQ_REAL_TARGET_COSINE=1``).
Calibration data goes in as the user would give it: an ``.npz`` of batched arrays, or for the recurrent
models (state carried between runs, static batch 1) a ``module:function`` that yields one feed dict per run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converter.ort_session import make_session, run_session, session_options
from tests import real_data as rd
from tests.conftest import Cli
from tests.real_models import BY_ID

pytestmark = pytest.mark.slow

MIN_QUANTIZED = 0.5
MIN_COSINE = 0.98
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CALIB, HELD = 32, 16
"""Calibration samples and held-out samples per model."""

TARGET_COSINE: set[str] = {"minilm_l6", "ppocr_det", "oww_melspectrogram"}
"""Model ids where plain ``qdq`` misses the cosine (measured: 0.972, 0.972, 0.798): they get the pass's accuracy
budget, aiming a little above the bar on its own 8 held-out samples (the last of the 32 calibration samples)."""
BUDGET = "target_cosine=0.985,holdout=8"


def pipeline(model_id: str) -> str:
    if model_id in TARGET_COSINE or os.environ.get("QDQ_REAL_TARGET_COSINE") == "1":
        return f"fold_constants,qdq{{{BUDGET}}}"
    return "fold_constants,qdq"


@dataclass(frozen=True)
class Case:
    calib: Callable[[Path], dict[str, np.ndarray] | list[dict[str, np.ndarray]]]
    """model path -> batched arrays (written as .npz) or one feed dict per run (yielded by module:function)."""
    held: Callable[[Path], list[dict[str, np.ndarray]]]
    """model path -> held-out runs (each a feed dict the model takes as it is)."""
    note: str


def _batched(feeds: dict[str, np.ndarray], size: int = 4) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    return [{k: v[i : i + size] for k, v in feeds.items()} for i in range(0, n, size)]


CASES: dict[str, Case] = {
    "minilm_l6": Case(lambda p: rd.minilm_split(CALIB, HELD)[0], lambda p: _batched(rd.minilm_split(CALIB, HELD)[1]),
                      "sentences padded to a common length, attention mask 0 on the pads"),
    "ppocr_det": Case(lambda p: rd.det_crops("calib", CALIB), lambda p: _batched(rd.det_crops("held", HELD, seed=1)),
                      "160x352 crops of page.png (top) and text.png (left); held out: page bottom, text right"),
    "ppocr_cls": Case(lambda p: rd.cls_crops("calib", CALIB), lambda p: _batched(rd.cls_crops("held", HELD, seed=1)),
                      "48x192 text-line segments of page.png, half turned 180 degrees (opset 11: upgraded to 13)"),
    "oww_melspectrogram": Case(lambda p: rd.mel_audio("calib", CALIB), lambda p: _batched(rd.mel_audio("held", HELD)),
                               "1-D Conv STFT on 1 s of raw speech at int16 scale"),
    "fsmn_vad": Case(lambda p: rd.fsmn_runs(p, "calib", CALIB), lambda p: rd.fsmn_runs(p, "held", HELD),
                     "20 LFR frames of Kaldi fbank + CMVN, FSMN caches carried by the fp32 model (module:function)"),
    "silero_vad": Case(lambda p: rd.silero_runs(p, "calib", CALIB), lambda p: rd.silero_runs(p, "held", HELD),
                       "576-sample windows (64 context + 512), state carried by the fp32 model, sr scalar (module:function)"),
}

RUNS_MODULE = """
from pathlib import Path

import numpy as np


def runs():
    with np.load(Path(__file__).with_name("{npz}")) as z:
        data = {{k: z[k] for k in z.files}}
    for i in range(len(next(iter(data.values())))):
        yield {{k: v[i] for k, v in data.items()}}
"""


def write_calib(model_id: str, data: dict[str, np.ndarray] | list[dict[str, np.ndarray]], folder: Path) -> str:
    """The --calib-data argument: an .npz of batched arrays, or module:function yielding the runs as they are."""
    if isinstance(data, dict):
        np.savez(folder / f"{model_id}_calib.npz", **data)
        return str(folder / f"{model_id}_calib.npz")
    np.savez(folder / f"{model_id}_runs.npz", **{k: np.stack([run[k] for run in data]) for k in data[0]})
    (folder / f"calib_{model_id}.py").write_text(RUNS_MODULE.format(npz=f"{model_id}_runs.npz"))
    return f"calib_{model_id}:runs"


def graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The graph and every If/Loop/Scan body in it, depth first."""
    out = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                out.extend(graphs(sub))
    return out


def quantized_layers(model: onnx.ModelProto) -> tuple[int, int, list[str]]:
    """(quantized, total, float ones) over the layer ops of every graph: quantized when inputs 0 and 1 both come
    from a DequantizeLinear (outer-scope names included)."""
    every = graphs(model.graph)
    dq = {o for g in every for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized, left = 0, []
    for g in every:
        for i, n in enumerate(g.node):
            if n.op_type in LAYER_OPS:
                if all(name in dq for name in n.input[:2]):
                    quantized += 1
                else:
                    left.append(f"{g.name}/{n.name or i}:{n.op_type}")
    return quantized, quantized + len(left), left


def cosines(ref_runs: list[dict[str, np.ndarray]], got_runs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Cosine per float output, each flattened over all runs (float64)."""
    out = {}
    for name, first in ref_runs[0].items():
        if first.dtype.kind != "f":
            continue
        r = np.concatenate([run[name].ravel() for run in ref_runs]).astype(np.float64)
        g = np.concatenate([run[name].ravel() for run in got_runs]).astype(np.float64)
        if not np.all(np.isfinite(g)):
            out[name] = float("nan")
            continue
        denom = np.linalg.norm(r) * np.linalg.norm(g)
        out[name] = float(r @ g / denom) if denom > 0 else float(np.array_equal(r, g))
    return out


def exact_qdq_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """ORT on the Q/DQ graph as written: no QDQ fusion into (saturating) integer kernels."""
    so = session_options()
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    return make_session(model, options=so)


def qdq_facts(stdout: str) -> dict:
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return {}
    for record in report.get("passes", []) if isinstance(report, dict) else []:
        if record.get("name") == "qdq":
            return {"facts": record.get("facts", {}), "refused": record.get("refused", []), "seconds": record.get("seconds")}
    return {}


@pytest.mark.parametrize("model_id", list(CASES))
def test_int8_on_real_data(model_id: str, tmp_path: Path) -> None:
    m = BY_ID[model_id]
    path = m.path()
    if path is None:
        pytest.skip(f"{m.package} is not installed: {m.install_hint} (make test installs it)")
    case = CASES[model_id]
    calib_arg = write_calib(model_id, case.calib(path), tmp_path)
    held = case.held(path)

    out = tmp_path / f"{model_id}.int8.onnx"
    start = time.perf_counter()
    res = Cli(tmp_path)(path, "-p", pipeline(model_id), "--calib-data", calib_arg, "-b", "onnx", "-o", out, "--json", cwd=tmp_path, timeout=600)
    seconds = time.perf_counter() - start
    assert res.returncode == 0, f"{model_id}: convert -p {pipeline(model_id)} exited {res.returncode} after {seconds:.1f} s:\n{res.stderr.strip()[-3000:]}"

    q = onnx.load(str(out))
    quantized, total, left = quantized_layers(q)
    source_total = quantized_layers(onnx.load(str(path)))[1]
    fp32, int8, fused = make_session(onnx.load(str(path))), exact_qdq_session(q), make_session(q)
    ref = [run_session(fp32, f) for f in held]
    cos = cosines(ref, [run_session(int8, f) for f in held])
    fused_cos = min(cosines(ref, [run_session(fused, f) for f in held]).values())
    facts = qdq_facts(res.stdout)
    summary = (f"{model_id}: convert {seconds:.1f} s, quantized {quantized}/{total} layer nodes "
               f"({quantized / max(total, 1):.0%}; source has {source_total}), cosine "
               + ", ".join(f"{k}={v:.5f}" for k, v in cos.items())
               + f" (ORT fused int8 kernels: {fused_cos:.5f}); qdq facts quantized_nodes={facts.get('facts', {}).get('quantized_nodes')}, {len(facts.get('refused', []))} left float")
    print(summary)
    refused = "\n  ".join(facts.get("refused", [])[:12])
    assert total and quantized / total >= MIN_QUANTIZED, f"{summary}\nfloat layers: {left[:12]}\nqdq left float:\n  {refused}"
    assert cos and min(cos.values()) >= MIN_COSINE, f"{summary}\n({case.note})"
