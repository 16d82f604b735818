"""Per-pass records and the pipeline report, as a table or JSON."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from converter.compare import Comparison
from converter.text_table import table_lines


def jsonable(value: Any) -> Any:
    """Typed facts (dataclasses, enums, tuples) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return value


@dataclass
class PassRecord:
    name: str
    options: dict[str, Any]
    modified: bool
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    op_delta: dict[str, int] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    verify: Comparison | None = None
    batch_check: Any = None
    """A BatchCheck (batch N vs N stacked batch-1 runs) when --verify ran after a batch-changing pass."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "options": self.options,
            "seconds": round(self.seconds, 6),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "op_delta": self.op_delta,
            "modified": self.modified,
            "facts": jsonable(self.facts),
            "refused": self.refused,
            "verify": None if self.verify is None else self.verify.to_json(),
            "batch_check": None if self.batch_check is None else self.batch_check.to_json(),
        }


@dataclass
class PipelineReport:
    records: list[PassRecord] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.records]

    def table(self) -> str:
        if not self.records:
            return "(no passes)"
        head = ["pass", "time", "nodes", "changed", "op delta", "verify"]
        rows = []
        for r in self.records:
            delta = " ".join(f"{k}{v:+d}" for k, v in r.op_delta.items()) or "-"
            if len(delta) > 60:
                delta = delta[:57] + "..."
            verify = "-" if r.verify is None else ("ok" if r.verify else "DRIFT")
            if r.verify is not None:
                verify += f" (cos {min(o.cosine for o in r.verify.outputs):.6f})" if r.verify.outputs else ""
            rows.append([r.name, f"{r.seconds * 1000:.1f} ms", f"{r.nodes_before}->{r.nodes_after}", "yes" if r.modified else "no", delta, verify])
        lines = table_lines(head, rows)
        for r in self.records:
            if r.batch_check is not None:
                lines.append(f"{r.name}: batch check (batch N vs N stacked batch-1 runs): {'ok' if r.batch_check else 'FAILED'}")
                lines.append("  " + r.batch_check.table().replace("\n", "\n  "))
            for why in r.refused:
                lines.append(f"  {r.name}: left alone: {why}")
        return "\n".join(lines)
