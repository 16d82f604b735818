"""``--golden-update``: re-record a case's reference outputs from its model on ONNX Runtime.

Like ``convert golden record``: the stored inputs go through the model (ORT, optimizations off)
and :func:`converter.golden.record_case` writes the case. What the manifest says besides the
recording (name, model source and recipe, tolerances, checks, notes) is kept, and so is every
other file in the case folder. The new case is written beside the old one and swapped in with
one rename, so a reader never sees half a case.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from converter.feeds import check_feeds
from converter.golden import MANIFEST, DataSet, load_case, record_case
from converter.golden_manifest import DATA_SET_PREFIX
from converter.golden_manifest import tolerances as parse_tolerances
from converter.graph_info import graph_inputs, graph_outputs
from converter.model_io import load_model
from converter.ort_session import make_session, run_session, session_options

RECORDING_KEYS = ("format", "name", "model", "inputs", "outputs", "tolerances", "recorded")


def _changes(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> list[str]:
    out = []
    for name, arr in new.items():
        ref = old.get(name)
        if ref is None or ref.shape != arr.shape or ref.dtype != arr.dtype:
            out.append(f"{name} (new shape/dtype)")
        elif not np.array_equal(ref, arr, equal_nan=arr.dtype.kind in "fc"):
            diff = np.abs(ref.astype(np.float64) - arr.astype(np.float64))
            out.append(f"{name} (max_abs {np.nanmax(diff) if diff.size else 0:.3g})")
    return out


def _keep_other_files(case_dir: Path, new_dir: Path) -> None:
    for entry in sorted(case_dir.iterdir()):
        if entry.name == MANIFEST or (entry.is_dir() and entry.name.startswith(DATA_SET_PREFIX)) or (new_dir / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new_dir / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, new_dir / entry.name, follow_symlinks=False)


def _swap_in(new_dir: Path, case_dir: Path) -> None:
    old = case_dir.with_name(f".{case_dir.name}.old-{os.getpid()}")
    os.replace(case_dir, old)
    try:
        os.replace(new_dir, case_dir)
    except BaseException:
        os.replace(old, case_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def rerecord(case_dir: Path) -> tuple[bool, str]:
    """Re-record the case in place; returns (written, a one-line note of what changed). Errors are ConverterErrors.

    A case whose references, model hash and output names all stay the same is not rewritten."""
    case = load_case(case_dir)
    loaded = load_model(case.model_path())
    specs = graph_inputs(loaded.proto)
    for ds in case.data_sets:
        check_feeds(ds.inputs, specs, where=f"{case_dir / ds.name} (stored inputs)")
    sess = make_session(loaded.proto, options=session_options(opt_level="disable"))
    data_sets = [DataSet(ds.inputs, run_session(sess, dict(ds.inputs)), ds.name) for ds in case.data_sets]
    changed = [f"{ds.name}: {c}" for old, ds in zip(case.data_sets, data_sets) for c in _changes(old.outputs, ds.outputs)]
    output_names = [o.name for o in graph_outputs(loaded.proto)]
    same = case.manifest.get("model", {}).get("sha256") == loaded.sha256 and case.manifest.get("outputs") == output_names
    if same and not changed:  # nothing to record: leave the files (and their history) alone
        return False, f"'{case.name}': references unchanged, case left as it was"
    kept = {k: v for k, v in case.manifest.items() if k not in RECORDING_KEYS}
    if "name" in case.manifest:
        kept["name"] = case.manifest["name"]
    kept["model"] = {**case.manifest.get("model", {}), "sha256": loaded.sha256}
    tolerances = parse_tolerances(case.manifest, case_dir / MANIFEST) or None
    staging = Path(tempfile.mkdtemp(prefix=f".{case_dir.name}.update-", dir=case_dir.parent))
    try:
        new_dir = staging / case_dir.name
        record_case(new_dir, model_path=loaded.path, model_sha256=loaded.sha256, data_sets=data_sets,
                    input_names=[s.name for s in specs], output_names=output_names,
                    tolerances=tolerances, extra=kept)
        _keep_other_files(case_dir, new_dir)
        _swap_in(new_dir, case_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    what = f"changed {', '.join(changed)}" if changed else "references unchanged, model or output names changed"
    return True, f"'{case.name}': re-recorded from {loaded.path.name} on onnxruntime ({len(data_sets)} data set(s)): {what}"
