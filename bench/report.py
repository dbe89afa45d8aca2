"""Figures with their baselines and targets: the printed table and the JSON document."""

from __future__ import annotations

import importlib
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Compare = Literal["ratio>=", "ratio<=", "value>=", "value<="]


@dataclass(frozen=True)
class Figure:
    """One measured figure next to its baseline; `target` applies to the value or the ratio."""

    key: str
    name: str
    value: float
    unit: str
    baseline: float
    baseline_name: str
    target: float | None = None
    compare: Compare | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """value ÷ baseline."""
        return self.value / self.baseline if self.baseline else None

    @property
    def passed(self) -> bool | None:
        """Whether the target is met (None: no target)."""
        if self.target is None or self.compare is None:
            return None
        measured = self.ratio if self.compare.startswith("ratio") else self.value
        if measured is None:
            return False
        return measured >= self.target if self.compare.endswith(">=") else measured <= self.target

    @property
    def target_text(self) -> str:
        """The target as printed, e.g. `ratio ≥ 0.4`."""
        if self.target is None or self.compare is None:
            return "-"
        what, sign = self.compare[:-2], self.compare[-2:]
        symbol = "≥" if sign == ">=" else "≤"
        return f"{what} {symbol} {self.target:g}"

    def to_json(self) -> dict[str, Any]:
        """The figure with its derived fields."""
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed, "target": self.target}


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    psutil: Any = importlib.import_module("psutil")  # no type stubs; it comes with pgserver
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor() or "unknown",
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        # Other work on the machine skews every figure: recorded so a run can be judged.
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def table(figures: Sequence[Figure]) -> str:
    """The figures as an aligned text table."""
    header = ("figure", "value", "baseline", "ratio", "target", "result")
    rows = [header]
    for f in figures:
        result = {True: "pass", False: "FAIL", None: "-"}[f.passed]
        rows.append(
            (
                f.name,
                _number(f.value, f.unit),
                f"{_number(f.baseline, f.unit)} ({f.baseline_name})",
                _number(f.ratio) if f.ratio is not None else "-",
                f.target_text,
                result,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def document(figures: Sequence[Figure], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: machine, run settings and every figure."""
    return {"machine": machine(), **meta, "figures": [f.to_json() for f in figures]}


def write(path: Path, figures: Sequence[Figure], meta: dict[str, Any]) -> None:
    """Write the JSON document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document(figures, meta), indent=2, default=str) + "\n")
