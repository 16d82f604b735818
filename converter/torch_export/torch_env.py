"""torch is optional: import it only when an export runs, and say how to install it when it is missing."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from converter.errors import UsageError

INSTALL_HINT = "pip install 'converter[torch]'"


class TorchMissing(UsageError):
    """``convert export`` needs torch (and onnxscript for the dynamo exporter)."""


def require_torch() -> ModuleType:
    if importlib.util.find_spec("torch") is None:
        raise TorchMissing(f"convert export needs PyTorch, which is not installed here; install it with: {INSTALL_HINT}")
    import torch

    return torch


def require_onnxscript() -> None:
    """The dynamo exporter translates through onnxscript."""
    if importlib.util.find_spec("onnxscript") is None:
        raise TorchMissing("the dynamo exporter needs onnxscript, which is not installed here; install it with: pip install onnxscript (or use --exporter torchscript)")
