"""The zoo check report: results in discovery order, the verdict table, the JSON data, the summary.

Units are listed by their discovery index whatever order they finished in, so a serial run, a
``--workers`` run and a Ray run of the same zoo give the same table but for the seconds column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from converter.errors import shorten
from converter.text_table import table_lines
from converter.zoo.runner import ERROR, FAILED, PASSED, SKIPPED, VERDICTS


@dataclass
class ZooReport:
    roots: list[str]
    mode: str
    """``serial``, ``processes`` or ``ray``."""
    workers: int
    backend: str | None = None
    ray: dict[str, Any] | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0

    def ordered(self) -> list[dict[str, Any]]:
        return sorted(self.results, key=lambda r: r["index"])

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in VERDICTS}
        for r in self.results:
            out[r["verdict"]] += 1
        return out

    @property
    def passed(self) -> bool:
        counts = self.counts()
        return counts[FAILED] == 0 and counts[ERROR] == 0

    def where(self) -> str:
        if self.mode == "serial":
            return "serially in this process"
        if self.mode == "processes":
            return f"in {self.workers} worker processes"
        assert self.ray is not None
        how = "started for this run" if self.ray["started_here"] else "at " + self.ray["address"]
        return f"on a Ray cluster {how} ({self.ray['cpus']:g} CPUs, {self.ray['gpus']:g} GPUs)"

    def summary(self) -> str:
        c = self.counts()
        cases = len({r["case_dir"] for r in self.results})
        return (f"zoo check: {len(self.results)} checks of {cases} cases: {c[PASSED]} passed, {c[FAILED]} failed, {c[ERROR]} errors, "
                f"{c[SKIPPED]} skipped; {self.wall_seconds:.1f} s {self.where()}")

    def table(self) -> str:
        head = ["case", "check", "verdict", "seconds", "worst cosine", "note"]
        rows = []
        for r in self.ordered():
            cosine = "-" if r["worst_cosine"] is None else f"{r['worst_cosine']:.6f}"
            rows.append([r["case"], r["check"], r["verdict"], f"{r['seconds']:.2f}", cosine, shorten(r["note"], 120) if r["note"] else ""])
        return "\n".join(table_lines(head, rows))

    def text(self) -> str:
        """The table, then each failed unit's per-output table, then the summary line."""
        parts = [self.table()]
        for r in self.ordered():
            if r["verdict"] == FAILED and r["details"]:
                parts.append(f"--- {r['case']} [{r['check']}]: failed\n{r['details']}")
        parts.append(self.summary())
        return "\n\n".join(parts)

    def failing(self) -> list[str]:
        return [f"{r['case']} [{r['check']}]" for r in self.ordered() if r["verdict"] in (FAILED, ERROR)]

    def to_json(self) -> dict[str, Any]:
        return {
            "roots": self.roots, "mode": self.mode, "workers": self.workers, "backend": self.backend, "ray": self.ray,
            "wall_seconds": self.wall_seconds, "passed": self.passed, "counts": self.counts(), "summary": self.summary(),
            "units": [dict(r) for r in self.ordered()],
        }
