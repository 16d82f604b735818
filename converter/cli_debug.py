"""``convert debug ...``: tools to see where accuracy goes (placeholder until the quantization issue lands)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from converter.errors import UsageError


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    p = sub.add_parser("debug", help="debugging tools (accuracy)", description="Debugging tools.")
    dsub = p.add_subparsers(dest="debug_command", required=True, parser_class=type(p))
    acc = dsub.add_parser("accuracy", help="compare a float and a quantized model layer by layer")
    acc.add_argument("float_model")
    acc.add_argument("quant_model")
    common(acc)
    return p


def handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        raise UsageError("convert debug accuracy is not available in this version")

    return run
