"""Load the model a SPEC names: ``package.module:factory`` → an ``nn.Module`` in eval mode.

The factory is any callable attribute of the module (a function or a class; dots reach into
objects, ``module:Class.build``). The module is imported from the current folder or PYTHONPATH,
as ``python -m`` would. ``--weights FILE`` loads a state dict (``torch.load(weights_only=True)``;
a checkpoint that nests it under ``state_dict`` or ``model`` works too) with ``strict=True``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from converter.errors import ModelError, UsageError, describe_exception

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
SYNTAX = "package.module:factory, e.g. mypkg.models:resnet18"


@dataclass(frozen=True)
class Spec:
    module: str
    attr: str

    @property
    def text(self) -> str:
        return f"{self.module}:{self.attr}"

    @property
    def stem(self) -> str:
        """A file-name stem for default outputs: the factory's name."""
        return self.attr.rsplit(".", 1)[-1]


def parse_spec(text: str) -> Spec:
    module, sep, attr = text.partition(":")
    if not sep or not _MODULE.match(module) or not _MODULE.match(attr):
        hint = " (a file path? name the module instead, importable from the current folder)" if text.endswith(".py") or "/" in text else ""
        raise UsageError(f"model spec '{text}' must be {SYNTAX}{hint}")
    return Spec(module, attr)


def _import(spec: Spec) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (spec.module == missing or spec.module.startswith(missing + ".")):
            raise UsageError(f"model spec '{spec.text}': module '{missing}' not found; run from the folder that holds it or add it to PYTHONPATH") from exc
        raise ModelError(f"importing '{spec.module}' failed: {describe_exception(exc)} (a dependency of the model is not installed)") from exc
    except Exception as exc:
        raise ModelError(f"importing '{spec.module}' failed: {type(exc).__name__}: {describe_exception(exc)}") from exc


def _resolve(spec: Spec, module: ModuleType) -> Any:
    obj: Any = module
    for part in spec.attr.split("."):
        if not hasattr(obj, part):
            callables = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__)
            raise UsageError(f"model spec '{spec.text}': '{spec.module}' has no attribute '{spec.attr}' (callables defined there: {', '.join(callables) or 'none'})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"model spec '{spec.text}': '{spec.attr}' is of type {type(obj).__name__}, not a callable that returns an nn.Module")
    return obj


def load_weights(torch: Any, model: Any, path: Path) -> None:
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read weights {path} as a state dict (torch.load with weights_only=True): {describe_exception(exc)}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict (a mapping of parameter names to tensors); save it with torch.save(model.state_dict(), PATH)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} {len(items)}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}" for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes)) if items]
        raise ModelError(f"weights {path} do not match the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def _required_params(factory: Any) -> list[str]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in sig.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty]


def load_model(torch: Any, spec: Spec, weights: Path | None = None) -> Any:
    """Import the module, call the factory, load weights, return the module in eval mode."""
    factory = _resolve(spec, _import(spec))
    required = _required_params(factory)
    if required:
        raise UsageError(f"model spec '{spec.text}': {spec.attr} needs arguments ({', '.join(required)}); name a factory that takes none")
    try:
        model = factory()
    except Exception as exc:
        raise ModelError(f"model spec '{spec.text}': {spec.attr}() raised {type(exc).__name__}: {describe_exception(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"model spec '{spec.text}': {spec.attr}() returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(torch, model, weights)
    return model.eval()
