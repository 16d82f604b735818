"""Benchmark (not a test): tools on an ONNX transformer over protobuf's 2 GB limit (weights in external data).

    python bench/bench_big_model.py [--model M.onnx --calib C.npz] [--workdir /tmp/bigbench] [--tools a,b,...]
        [--timeout 1800] [--results bench/results/big_model.json] [--no-run-check]

Without ``--model``, ``make_big_transformer.py`` builds the default model (48 layers, hidden 1024, 613 M
parameters, 2.45 GB of float32 weights) and 16 calibration samples into the work folder, once. Each tool then
runs on that same file as its own command line, in its own process (``bench_simplify.run_measured``: wall time
around the process, peak RSS as its ``ru_maxrss`` from ``os.wait4`` in a small launcher), with its own folder
``WORKDIR/TOOL/``: outputs in ``out/``, the log in ``log.txt``, and a temporary working folder (also TMPDIR)
removed afterwards (ORT's quantizer leaves files in its current folder and writes a full augmented copy of the
model to the temp folder). A run longer than ``--timeout`` is killed (``timeout``); one the kernel's OOM killer
ends is ``failed: killed (out of memory)``.

An exit status of 0 is not enough for ``ok``: the output's .onnx must parse (without its weights) and every
external tensor must lie inside its data file. Unless ``--no-run-check``, the output is also run on ONNX Runtime
(in another process) on calibration sample 0 and compared with the input model's output (``max abs err``).

Each run merges its rows into ``--results`` (JSON, by tool), so tools can be rerun one at a time; the Markdown
table printed at the end shows every row of that file, and the exact command of each tool. Exit status 0 even
when tools fail.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from bench_simplify import run_measured

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
DEFAULT_RESULTS = BENCH / "results" / "big_model.json"

# ---------------------------------------------------------------- tools

_ORT_QUANTIZE = '''"""ONNX Runtime's static quantization, QDQ, of a model with external data (bench_big_model.py)."""
import sys

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

src, calib, out = sys.argv[1:4]
with np.load(calib) as z:
    data = {k: z[k] for k in z.files}  # samples on axis 0, one batch-1 feed each
count = len(next(iter(data.values())))


class Reader(CalibrationDataReader):
    def __init__(self):
        self.i = 0

    def get_next(self):
        if self.i >= count:
            return None
        self.i += 1
        return {k: v[self.i - 1 : self.i] for k, v in data.items()}

    def rewind(self):
        self.i = 0


quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                use_external_data_format=True)
'''

# Runs a model on calibration sample 0 and saves its outputs (the output check; not measured).
_RUN_ONE = r"""
import sys, numpy as np, onnxruntime as ort
model, calib, out = sys.argv[1:4]
with np.load(calib) as z:
    feeds = {k: z[k][:1] for k in z.files}
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
names = [o.name for o in sess.get_outputs()]
np.savez(out, **dict(zip(names, sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()}))))
"""


def _bin(name: str) -> str:
    """An entry point beside this interpreter (the project's venv), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name) or name


_OURS = "cleanup,infer_shapes,fold_constants,dynamic_batch"


def _ours(passes: str, backend: str, name: str) -> Callable[[Path, Path, Path, Path], list[str]]:
    def argv(model: Path, calib: Path, out: Path, _folder: Path) -> list[str]:
        calibration = ["--calib-data", str(calib)] if "qdq" in passes else []
        cli = [sys.executable, "-m", "converter.cli", str(model), "-p", passes, *calibration]
        return [*cli, "-b", backend, "-o", str(out / f"{name}.onnx"), "-q"]

    return argv


# Each as a user would run it on a model over 2 GB: the output's weights saved as external data.
def _onnxsim(model: Path, _calib: Path, out: Path, _folder: Path) -> list[str]:
    return [sys.executable, "-m", "onnxsim", str(model), str(out / "onnxsim.onnx"), "--save-as-external-data"]


def _onnxslim(model: Path, _calib: Path, out: Path, _folder: Path) -> list[str]:
    return [_bin("onnxslim"), str(model), str(out / "onnxslim.onnx"), "--save-as-external-data"]


def _polygraphy(model: Path, _calib: Path, out: Path, _folder: Path) -> list[str]:
    sanitize = [_bin("polygraphy"), "surgeon", "sanitize", str(model), "--fold-constants"]
    return [*sanitize, "-o", str(out / "polygraphy.onnx"), "--save-external-data", "polygraphy.onnx.data"]


def _ort_quantize(model: Path, calib: Path, out: Path, folder: Path) -> list[str]:
    script = folder / "ort_quantize.py"
    script.write_text(_ORT_QUANTIZE)
    return [sys.executable, str(script), str(model), str(calib), str(out / "ort_quantize.onnx")]


@dataclass(frozen=True)
class Tool:
    name: str
    argv: Callable[[Path, Path, Path, Path], list[str]]
    """(model, calib npz, output folder, the tool's folder) -> the command line."""
    package: str
    """The distribution whose version is recorded; it must be installed."""
    module: str


TOOLS = (
    Tool("ours_int8", _ours(f"{_OURS},qdq", "ort", "ours_int8"), "converter", "converter"),
    Tool("ours_fp16", _ours(f"{_OURS},fp16", "onnx", "ours_fp16"), "converter", "converter"),
    Tool("onnxsim", _onnxsim, "onnxsim", "onnxsim"),
    Tool("onnxslim", _onnxslim, "onnxslim", "onnxslim"),
    Tool("polygraphy", _polygraphy, "polygraphy", "polygraphy"),
    Tool("ort_quantize", _ort_quantize, "onnxruntime", "onnxruntime.quantization"),
)


def _missing(tool: Tool) -> str | None:
    with contextlib.suppress(ModuleNotFoundError):
        if importlib.util.find_spec(tool.module) is not None:
            return None
    return f"{tool.module} is not installed (pip install {tool.package})"


def _version(package: str) -> str:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(package)
    return ""


def weights_bytes(model_path: Path) -> int:
    """Bytes of the model's initializers (external ones by their recorded length), read without the weights."""
    model = onnx.load(str(model_path), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0))
        else:
            total += len(t.raw_data) or math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def check_output(path: Path) -> str:
    """'' when the .onnx parses and each external tensor lies inside its file, else why not (one line)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the tool's result
        return f"output does not parse: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        data = path.parent / info.get("location", "")
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if not data.is_file() or (info.get("length") and data.stat().st_size < end):
            return f"output's tensor {t.name} points outside its data file {data.name}"
    return ""


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _run_one(model: Path, calib: Path, out: Path, log: Path) -> str:
    """Run ``model`` on sample 0 into ``out`` (.npz); '' or why it failed."""
    with open(log, "ab") as fh:
        argv = [sys.executable, "-c", _RUN_ONE, str(model), str(calib), str(out)]
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, timeout=1800, check=False)
    return "" if proc.returncode == 0 else f"ONNX Runtime could not run it: {_last_line(log)}"


def _max_abs_err(got: Path, want: Path) -> float:
    with np.load(got) as a, np.load(want) as b:
        return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in b.files)


# ---------------------------------------------------------------- running one tool


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "exception" in ln.lower()]
    return ((errors or lines or ["no output"])[-1])[:160]


def _kernel_log() -> list[str]:
    try:
        return subprocess.run(["dmesg"], capture_output=True, text=True, timeout=30, check=False).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []


@contextlib.contextmanager
def _scratch(folder: Path):
    """A temporary current folder and TMPDIR for the tool (and the launcher, which it inherits them from)."""
    saved = os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(dir=folder, prefix="scratch-") as tmp, contextlib.chdir(tmp):
        os.environ["TMPDIR"] = tmp
        try:
            yield Path(tmp)
        finally:
            if saved is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved


def _outcome(rc: int, wall: float, timeout: float, killed_lines: list[str], log: Path) -> str:
    if rc == 0:
        return "ok"
    if rc == -signal.SIGKILL and wall >= timeout:
        return "timeout"
    if rc == -signal.SIGKILL:
        oom = any("out of memory" in ln.lower() or "oom-kill" in ln.lower() for ln in killed_lines)
        return "failed: killed (out of memory)" if oom else "failed: killed (SIGKILL)"
    if rc < 0:
        return f"failed: killed by {signal.Signals(-rc).name}"
    return f"failed: exit {rc}: {_last_line(log)}"


def run_tool(tool: Tool, model: Path, calib: Path, workdir: Path, timeout: float, reference: Path | None) -> dict:
    folder = workdir / tool.name
    shutil.rmtree(folder, ignore_errors=True)
    out = folder / "out"
    out.mkdir(parents=True)
    argv = tool.argv(model, calib, out, folder)
    size = weights_bytes(model)
    row: dict = {
        "tool": tool.name,
        "version": _version(tool.package),
        "command": shlex.join(argv),
        "model": str(model),
        "weights_bytes": size,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_s": None,
        "peak_rss_gib": None,
        "rss_over_weights": None,
        "output_gib": None,
        "max_abs_err": None,
    }
    why = _missing(tool)
    if why:
        return row | {"outcome": f"unavailable: {why}"}
    print(f"{tool.name}: {row['command']}", file=sys.stderr, flush=True)
    log = folder / "log.txt"
    before = len(_kernel_log())
    with _scratch(folder):
        wall, rss_mib, rc = run_measured(argv, log, timeout)
    outcome = _outcome(rc, wall, timeout, _kernel_log()[before:], log)
    produced = out / f"{tool.name}.onnx"
    if outcome == "ok":
        outcome = "failed: exit 0 but no output written" if not produced.is_file() else check_output(produced)
        outcome = f"failed: {outcome}" if outcome and not outcome.startswith("failed") else outcome or "ok"
    row |= {
        "outcome": outcome,
        "wall_s": round(wall, 2),
        "peak_rss_gib": round(rss_mib / 1024, 3),
        "rss_over_weights": round(rss_mib * 2**20 / size, 3) if size else None,
        "output_gib": round(_folder_bytes(out) / 2**30, 3) if outcome == "ok" else None,
    }
    if outcome == "ok" and reference is not None:
        got = folder / "sample0.npz"
        failed = _run_one(produced, calib, got, folder / "check.log")
        row["outcome"] = f"failed: {failed}" if failed else "ok"
        row["max_abs_err"] = None if failed else _max_abs_err(got, reference)
    print(f"{tool.name}: {row['outcome']} ({wall:.1f} s, {rss_mib / 1024:.2f} GiB)", file=sys.stderr, flush=True)
    return row


# ---------------------------------------------------------------- results


def merge(path: Path, rows: list[dict]) -> dict:
    """Merge ``rows`` into the JSON at ``path`` (by tool) and write it back; returns the whole file."""
    results = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    results.setdefault("rows", {}).update({r["tool"]: r for r in rows})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(results: dict) -> str:
    """Every row of ``results`` (tools in the benchmark's order, then any others), then each tool's command."""
    order = [t.name for t in TOOLS]
    rank = {name: i for i, name in enumerate(order)}
    rows = sorted(results.get("rows", {}).values(), key=lambda r: (rank.get(r["tool"], len(order)), r["tool"]))
    head = ["tool", "outcome", "wall s", "peak RSS GiB", "RSS ÷ weights", "output GiB", "max abs err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [
            r["tool"],
            r.get("outcome", "-").replace("|", "/"),
            _num(r.get("wall_s"), ".1f"),
            _num(r.get("peak_rss_gib"), ".2f"),
            _num(r.get("rss_over_weights"), ".2f") + ("x" if r.get("rss_over_weights") is not None else ""),
            _num(r.get("output_gib"), ".2f"),
            _num(r.get("max_abs_err"), ".2g"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    models = sorted({(r.get("model", "?"), r.get("weights_bytes") or 0) for r in rows})
    lines += [""] + [f"model {m}: {b / 2**30:.2f} GiB of weights" for m, b in models] + [""]
    lines += [f"- {r['tool']}{' ' + r['version'] if r.get('version') else ''}: `{r.get('command', '')}`" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def _make_model(workdir: Path) -> tuple[Path, Path]:
    model, calib = workdir / "big.onnx", workdir / "big.calib.npz"
    if not (model.is_file() and model.with_name(model.name + ".data").is_file() and calib.is_file()):
        make = [sys.executable, str(BENCH / "make_big_transformer.py"), "--out", str(model), "--calib", "16"]
        subprocess.run(make, check=True)
    return model, calib


def _reference(model: Path, calib: Path, workdir: Path) -> Path | None:
    """The input model's outputs on sample 0, computed once per model file (kept beside the tools' folders)."""
    stat = model.stat()
    ref = workdir / f"reference.{model.stem}.{stat.st_size}.{int(stat.st_mtime)}.npz"
    if not ref.is_file():
        failed = _run_one(model, calib, ref, workdir / "reference.log")
        if failed:
            print(f"no output check: the input model does not run: {failed}", file=sys.stderr)
            return None
    return ref


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="the model (default: build WORKDIR/big.onnx once)")
    ap.add_argument("--calib", type=Path, help="calibration .npz (samples on axis 0; default: WORKDIR/big.calib.npz)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bigbench"), help="default /tmp/bigbench")
    ap.add_argument("--tools", help=f"comma-separated subset of {','.join(t.name for t in TOOLS)} (default: all)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per tool (default 1800)")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON the rows are merged into")
    ap.add_argument("--no-run-check", action="store_true", help="skip running each output on ONNX Runtime")
    args = ap.parse_args(argv)
    if (args.model is None) != (args.calib is None):
        ap.error("--model and --calib go together")
    wanted = args.tools.split(",") if args.tools else [t.name for t in TOOLS]
    unknown = set(wanted) - {t.name for t in TOOLS}
    if unknown:
        ap.error(f"unknown tools: {', '.join(sorted(unknown))}")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model, calib = (args.model.resolve(), args.calib.resolve()) if args.model else _make_model(workdir)
    print(f"model {model}: {weights_bytes(model) / 2**30:.2f} GiB of weights", file=sys.stderr)
    reference = None if args.no_run_check else _reference(model, calib, workdir)
    rows = [run_tool(t, model, calib, workdir, args.timeout, reference) for t in TOOLS if t.name in wanted]
    print(markdown_table(merge(args.results, rows)))
    print(f"\nresults in {args.results}; outputs and logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
