"""``convert check MODEL -b BACKEND``: the backend's compatibility lint, no device needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from converter import reporting
from converter.backend_api import Severity
from converter.command_api import Command
from converter.errors import EXIT_CHECK_FAILED, EXIT_OK
from converter.model_io import load_model
from converter.options import build_options
from converter.pipeline_text import parse_step
from converter.plugin_manager import Plugins


class CheckCommand(Command):
    name = "check"
    help = "lint a model for a backend (no device needed)"
    description = "Report what the backend will reject or run slowly. Exit 0 when clean, 1 with findings."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", type=Path)
        parser.add_argument("-b", "--backend", default="tensorrt")
        parser.add_argument("--ignore-warnings", action="store_true", help="exit 0 when there are only warnings")

    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        step = parse_step(args.backend)
        cls = plugins.backends.get(step.name).cls
        backend = cls(build_options(cls.Options, step.options, f"backend '{step.name}'"))
        findings = backend.lint(load_model(args.model).proto)
        errors = sum(f.severity is Severity.ERROR for f in findings)
        if args.json:
            reporting.emit("check", {"model": str(args.model), "backend": cls.name, "findings": [f.to_json() for f in findings]})
        else:
            for f in findings:
                print(f.line())
            print(f"{args.model}: {errors} error(s), {len(findings) - errors} warning(s) for backend '{cls.name}'" if findings else f"{args.model}: clean for backend '{cls.name}'")
        blocking = [f for f in findings if f.severity is Severity.ERROR or not args.ignore_warnings]
        return EXIT_CHECK_FAILED if blocking else EXIT_OK
