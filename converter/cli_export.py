"""``convert export``: PyTorch module → ONNX (placeholder parser until the export issue lands)."""

from __future__ import annotations

import argparse
from typing import Any

from converter.errors import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a PyTorch model to ONNX", description="Export a PyTorch model to ONNX.")
    p.add_argument("spec", help="package.module:factory returning an nn.Module")
    return p


def cmd_export(args: argparse.Namespace) -> int:
    raise UsageError("convert export is not available in this version")
