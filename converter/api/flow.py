"""``converter.load`` and ``converter.convert``: the main flow, as the ``convert`` command runs it.

``convert`` takes what ``convert MODEL ...`` takes, as keyword arguments with Python values, and
returns the same report objects the command prints (:class:`~converter.convert_job.ConvertOutcome`:
``.report.table()``, ``.golden``, ``.artifact``, ``.to_json()``). Errors are the command's errors, as
exceptions: each :class:`~converter.errors.ConverterError` carries the exit code the CLI would return
(``exc.exit_code``); a golden mismatch raises :class:`~converter.convert_job.GoldenFailed` with the
outcome on it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converter import reporting
from converter.api.objects import default_plugins
from converter.backend_api import Backend
from converter.convert_args import fold_backend_options
from converter.convert_job import ConvertOutcome, ConvertRequest, GoldenFailed
from converter.convert_job import convert as run_convert
from converter.errors import UsageError
from converter.model_io import LoadedModel, load_model
from converter.options import option_text
from converter.pass_api import Pass
from converter.plugin_manager import Plugins

Result = ConvertOutcome
"""What :func:`convert` returns: the pipeline report, the artifact, the golden comparison."""

PathLike = str | os.PathLike[str]


def load(path: PathLike) -> LoadedModel:
    """Read a model with every check ``convert`` applies (size, external data inside its folder); never writes."""
    return load_model(path)


def _model_path(model: PathLike | LoadedModel | onnx.ModelProto, scratch: list[tempfile.TemporaryDirectory[str]]) -> Path:
    if isinstance(model, LoadedModel):
        return model.path
    if isinstance(model, onnx.ModelProto):  # an in-memory model: written to a private folder for the run
        folder = tempfile.TemporaryDirectory(prefix="converter-api-")
        scratch.append(folder)
        path = Path(folder.name) / f"{model.graph.name or 'model'}.onnx"
        onnx.save_model(model, str(path))
        return path
    return Path(model)


def _feeds_path(inputs: PathLike | Mapping[str, np.ndarray] | None, scratch: list[tempfile.TemporaryDirectory[str]]) -> Path | None:
    if inputs is None or isinstance(inputs, (str, os.PathLike)):
        return None if inputs is None else Path(inputs)
    folder = tempfile.TemporaryDirectory(prefix="converter-api-")
    scratch.append(folder)
    path = Path(folder.name) / "inputs.npz"
    np.savez(path, **{k: np.asarray(v) for k, v in inputs.items()})
    return path


def plugin_inputs(plugins: Plugins, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Keyword arguments for plugin flags: pass inputs (``calib_data=``) and backend flags (``min_shapes=``), by name."""
    by_key = {i.key: i for i in plugins.options.pass_inputs}
    by_option = {f.option: f for f in plugins.options.backend_flags}
    pass_inputs: dict[str, Any] = {}
    backend_options: dict[str, str] = {}
    for name, value in values.items():
        if value is None or value is False:
            continue
        if name in by_key:
            pass_inputs[name] = True if by_key[name].switch else option_text(value)
        elif name in by_option:
            backend_options[name] = option_text(value)
        else:
            valid = ", ".join(sorted([*by_key, *by_option]))
            raise UsageError(f"convert() got an unknown argument '{name}'; plugin inputs: {valid}")
    return pass_inputs, backend_options


def convert(
    model: PathLike | LoadedModel | onnx.ModelProto,
    passes: str | Sequence[Pass] = "",
    backend: str | Backend = "ort",
    *,
    output: PathLike | None = None,
    golden: PathLike | None = None,
    precision: str | None = None,
    keep_failed: bool = False,
    verify: bool = False,
    inputs: PathLike | Mapping[str, np.ndarray] | None = None,
    input_shapes: str | None = None,
    seed: int = 0,
    check: bool = True,
    report: PathLike | None = None,
    plugins: Plugins | None = None,
    **plugin_flags: Any,
) -> ConvertOutcome:
    """Run ``passes`` over ``model`` and emit an artifact through ``backend``; what ``convert MODEL`` does.

    ``passes`` is pipeline text (``"fold_constants,qdq{calibrator=entropy}"``) or pass objects
    (``[converter.passes.get("qdq")(calibrator="entropy")]``); ``backend`` is text (``"ort{threads=2}"``)
    or a backend object. ``output`` defaults to ``MODEL_STEM.BACKEND.onnx`` in the current folder;
    ``golden`` checks the artifact before it is written; ``inputs`` feeds ``verify`` (an .npz path or a
    dict of arrays). Plugin flags are keyword arguments named after the flag: ``calib_data="feeds.npz"``,
    ``calib_random=True``, TensorRT's ``min_shapes=...``. ``report`` also writes the HTML page.
    """
    plugins = plugins or default_plugins()
    scratch: list[tempfile.TemporaryDirectory[str]] = []
    try:
        pass_inputs, backend_flags = plugin_inputs(plugins, plugin_flags)
        path = _model_path(model, scratch)
        out = Path(output) if output is not None else None
        page = Path(report) if report is not None else None
        reporting.check_report_path(page, [path, *([out] if out else [])])
        req = ConvertRequest(
            model=path, output=out, golden=Path(golden) if golden is not None else None, precision=precision, verify=verify,
            inputs=_feeds_path(inputs, scratch), input_shapes=input_shapes, check=check, keep_failed=keep_failed, seed=seed,
            pass_inputs=pass_inputs,
        )
        if isinstance(passes, str):
            req.pipeline = passes
        else:
            req.pass_objects = list(passes)
        if isinstance(backend, str):
            req.backend = fold_backend_options(backend, {k: (f"{k}=", v) for k, v in backend_flags.items()}, f"backend='{backend}'")
        else:
            if backend_flags:
                raise UsageError(f"backend flags ({', '.join(backend_flags)}) go into the backend object's options when backend is an object")
            req.backend_object = backend
        try:
            outcome = run_convert(req, plugins)
        except GoldenFailed as exc:  # the page shows why: the comparison that failed
            if page is not None:
                reporting.write_page(page, reporting.document("convert", exc.outcome.to_json()), [path])
            raise
        if page is not None:
            reporting.write_page(page, reporting.document("convert", outcome.to_json()), [path])
        return outcome
    finally:
        for folder in scratch:
            folder.cleanup()
