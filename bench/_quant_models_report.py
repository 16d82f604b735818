"""Tables of bench/bench_quant_models.py: one per model and a summary, as text and as markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from _quant_models_measure import Contender
from _quant_report import fmt_table


@dataclass
class Table:
    title: str
    notes: list[str]
    head: list[str]
    rows: list[list[str]]
    footer: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join([self.title, *self.notes, "", fmt_table(self.head, self.rows), *self.footer])

    def markdown(self) -> str:
        esc = [[c.replace("|", "\\|") for c in r] for r in self.rows]
        lines = [f"**{self.title}**", "", *(f"- {n}" for n in self.notes), ""] if self.notes else [f"**{self.title}**", ""]
        lines += ["| " + " | ".join(self.head) + " |", "|" + "|".join("---" for _ in self.head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in esc]
        return "\n".join(lines + ([""] + [f"- {f}" for f in self.footer] if self.footer else []))


@dataclass
class ModelResult:
    id: str
    title: str
    notes: list[str]
    metric_names: list[str]
    contenders: list[Contender]
    batches: tuple[int, ...]
    error: str = ""

    def fp32(self) -> Contender:
        return self.contenders[0]

    def ort_best(self) -> Contender | None:
        """ORT's config with the highest cosine as run by default (fused kernels), ties to the faster at batch 1."""
        ok = [c for c in self.contenders if c.kind == "ort" and not c.error and not math.isnan(c.metrics.get("cosine", (math.nan,))[0])]
        return max(ok, key=lambda c: (round(c.metrics["cosine"][0], 4), -c.ms.get(1, math.inf)), default=None)

    def ours_default(self) -> Contender | None:
        return next((c for c in self.contenders if c.kind == "ours" and c.config == "percentile"), None)


def _pair(v: tuple[float, float] | None, digits: int, same: bool = False) -> str:
    if v is None:
        return "-"
    a, b = (f"{x:.{digits}f}" if not math.isnan(x) else "nan" for x in v)
    return a if same else f"{a} / {b}"


def digits(metric: str) -> int:
    return 4 if metric in ("cosine", "pooled cos") else 3


def _ratio(ref: Contender | None, c: Contender, b: int) -> str:
    if ref is None or b not in ref.ms or b not in c.ms:
        return "-"
    return f"{ref.ms[b] / c.ms[b]:.2f}x"


def _calib(c: Contender) -> tuple[str, str]:
    if c.calib is None:
        return "-", "-"
    return f"{c.calib.wall_s:.1f}", (f"{c.calib.rss_mib:.0f}" if c.calib.ok else f"> {c.calib.rss_mib:.0f}")


def model_table(r: ModelResult) -> Table:
    fp32, best = r.fp32(), r.ort_best()
    head = ["contender", "cosine"] + r.metric_names
    for b in r.batches:
        head += [f"b{b} ms", "x fp32", "x ORT-best"]
    head += ["int8 layers (ORT-optimized graph)", "quant s", "RSS MiB", "MB", "note"]
    rows = []
    for c in r.contenders:
        row = [c.name + (" [ORT-best]" if c is best else "")]
        for m in ["cosine", *r.metric_names]:
            row.append(_pair(c.metrics.get(m), digits(m), same=c.kind == "fp32"))
        for b in r.batches:
            row += [f"{c.ms[b]:.2f}" if b in c.ms else "-", _ratio(fp32, c, b), _ratio(best, c, b)]
        size = f"{c.path.stat().st_size / 1e6:.2f}" if c.path.exists() else "-"
        row += [c.fused, *_calib(c), size, c.error[:110] if c.error else ("not timed" if not c.timed else "")]
        rows.append(row)
    footer = [("cosine and task metrics: 'fused / exact' = ORT session as run by default (its int8 kernels fused, what a user gets on this CPU) / "
               "with session.disable_quant_qdq=1 (every Q/DQ computed as written: the quantization itself); ours -b ort is already lowered to "
               "ORT's integer ops (QLinearConv...), so its two figures are one computation: the exact arithmetic of our quantization is its -b onnx row"),
              "speed ratios = reference median / this median (higher is faster); ORT-best = ORT's config with the highest fused cosine"]
    return Table(f"{r.id}: {r.title}", r.notes, head, rows, footer)


def summary_table(results: list[ModelResult]) -> Table:
    head = ["model", "contender", "cosine fused / exact", "task metric fused / exact", "b1 ms", "x fp32", "b8 ms", "x fp32", "quant s", "RSS MiB"]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.id, "model failed", r.error[:100], "", "", "", "", "", "", ""])
            continue
        fp32, metric = r.fp32(), r.metric_names[0]
        picks = [("fp32", fp32), (f"ORT-best: {r.ort_best().name}" if r.ort_best() else "ORT-best: none ran", r.ort_best()), ("ours default (percentile)", r.ours_default())]
        for label, c in picks:
            if c is None:
                rows.append([r.id, label, "-", "-", "-", "-", "-", "-", "-", "-"])
                continue
            row = [r.id, label + (f" (error: {c.error[:60]})" if c.error else ""), _pair(c.metrics.get("cosine"), 4, c is fp32),
                   f"{metric}: {_pair(c.metrics.get(metric), digits(metric), c is fp32)}"]
            for b in (1, 8):
                row += [f"{c.ms[b]:.2f}" if b in c.ms else "-", _ratio(fp32, c, b)]
            rows.append(row + list(_calib(c)))
    return Table("summary: per model fp32, ORT's most accurate config (cosine as run by default) and ours with its defaults", [], head, rows,
                 ["fused / exact: ORT as run by default / with session.disable_quant_qdq=1; - in b8: static batch 1 or the run failed"])
