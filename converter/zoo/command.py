"""``convert zoo check DIR...``: every golden case under the folders, each with every check its manifest lists.

Runs on this machine (serially, or in worker processes) or on a Ray cluster; prints one verdict table
in discovery order (or ``--json``), writes ``--report`` (HTML) and ``--junit-xml``; exit 1 when any
check failed or errored, 0 otherwise (skipped checks do not fail the run).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from converter import progress, reporting
from converter.command_api import Command, add_common, positive_int
from converter.errors import EXIT_OK, CheckFailed
from converter.plugin_manager import Plugins
from converter.zoo import junit, local, ray_pool
from converter.zoo.cases import discover
from converter.zoo.report import ZooReport
from converter.zoo.runner import ERROR, FAILED
from converter.zoo.sources import resolve_all

DESCRIPTION = """Run every golden case under the folders (each case x each check in its manifest's 'checks').

Verdicts: passed; failed (outputs out of tolerance: the per-output table is printed); error (the
case cannot run as written: missing model package, changed model, bad pipeline); skipped (the
backend cannot run here). Exit 1 when any check failed or errored.

Where: serially in this process (the default), --workers N worker processes on this machine
(spawned; each pays its own start-up: worth it when the zoo's checks take longer than that), or
--ray auto|ADDRESS: one Ray task per check (a running cluster, else one started for this run and
stopped after it; or the cluster at ADDRESS). The table lists checks in discovery order whatever
order they finish in, so every way gives the same table but for the seconds."""


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="a golden case folder, or a folder searched (recursively) for cases")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, metavar="N",
                       help="worker processes on this machine (default 1: serially in this process; at most one per check)")
    where.add_argument("--ray", metavar="auto|ADDRESS", help="run on a Ray cluster: 'auto' (a running one, else one started for this run) or its address")
    p.add_argument("--backend", metavar="NAME", help="only the checks on this backend (its name, options aside: onnx, ort, tensorrt)")
    p.add_argument("--junit-xml", type=Path, metavar="PATH", help="also write the verdicts as JUnit XML (for CI)")
    reporting.add_report_flag(p)
    add_common(p)


def _collect(report: ZooReport, results: Iterable[dict[str, Any]], total: int) -> None:
    with progress.step("zoo check", total=total, unit="checks") as task:
        for result in results:
            report.results.append(result)
            bad = sum(r["verdict"] in (FAILED, ERROR) for r in report.results)
            task.update(completed=len(report.results), detail=f"{bad} failed" if bad else None)


def cmd_check(args: argparse.Namespace, plugins: Plugins) -> int:
    reporting.check_report_path(args.report)
    junit.check_path(args.junit_xml)
    if args.ray is not None:
        ray_pool.import_ray()  # exit 3 before any work when Ray is missing
    start = time.perf_counter()
    units = discover(args.dirs, args.backend)
    sources = resolve_all(units)
    runnable = sum(local.unrunnable(u, sources) is None for u in units)
    roots = [str(d) for d in args.dirs]
    if args.ray is not None:
        with ray_pool.connect(args.ray) as cluster:
            report = ZooReport(roots, "ray", int(cluster.cpus), args.backend, cluster.to_json())
            _collect(report, ray_pool.run(units, sources, cluster), len(units))
    else:
        workers = min(args.workers or 1, max(runnable, 1))
        if workers == 1:
            report = ZooReport(roots, "serial", 1, args.backend)
            _collect(report, local.run_serial(units, sources, plugins), len(units))
        else:
            report = ZooReport(roots, "processes", workers, args.backend)
            _collect(report, local.run_pool(units, sources, workers), len(units))
    report.wall_seconds = time.perf_counter() - start
    data = report.to_json()
    if args.json:
        reporting.emit("zoo check", data)
    else:
        print(report.text())
    if args.junit_xml:
        junit.write(args.junit_xml, report)
    if args.report:
        reporting.write_page(args.report, reporting.document("zoo check", data))
    failing = report.failing()
    if failing:
        more = f" (+{len(failing) - 5} more)" if len(failing) > 5 else ""
        raise CheckFailed(f"zoo check: {len(failing)} of {len(units)} checks failed or errored: {', '.join(failing[:5])}{more}")
    return EXIT_OK


class ZooCommand(Command):
    name = "zoo"
    help = "run a zoo of golden cases: every case x check, locally in parallel or on a Ray cluster"
    description = "Golden case zoos."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="zoo_command", required=True, parser_class=type(parser))
        chk = sub.add_parser("check", help="run every case x check under the folders; exit 1 when any fails",
                             description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_check_arguments(chk)

    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        return cmd_check(args, plugins)
