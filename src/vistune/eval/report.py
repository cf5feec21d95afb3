"""One writer for every evaluation report: a JSON file, a Markdown page and a PNG chart.

A `Report` carries the figures (`data`, written as JSON unchanged), the tables, the notes that explain
how to read them (what each variant means, chance levels, failure counts) and `warnings`: findings a
reader must not miss (a type where the model does not beat its control, answers that failed). The
Markdown page puts the warnings first, then the tables, then the notes; the chart draws one bar
group per row with optional 95 % intervals and chance markers.

Also here: the bootstrap interval and mean ± standard deviation that the reports quote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vistune.utils.io import atomic_path, atomic_write_json, atomic_write_text


@dataclass
class Table:
    """A Markdown table: the first column labels the rows."""

    header: list[str]
    """Column titles."""
    rows: list[list[Any]]
    """Cells; floats are printed with one decimal, None as a dash."""
    caption: str = ""
    """A line printed above the table."""


@dataclass
class Chart:
    """Grouped bars: one group per label in `groups`, one bar per series."""

    groups: list[str]
    """x-axis labels."""
    series: dict[str, list[float | None]]
    """Legend name -> one value per group (None draws no bar)."""
    title: str
    """Chart title."""
    ylabel: str
    """y-axis label."""
    ylim: tuple[float, float] | None = (0.0, 105.0)
    """y-axis range (None: matplotlib's choice)."""
    intervals: dict[str, list[tuple[float, float] | None]] = field(default_factory=dict)
    """Series -> a (low, high) 95 % interval per group, drawn as error bars."""
    chance: list[float | None] | None = None
    """A chance level per group, drawn as a short black line across the group."""


@dataclass
class Report:
    """Everything one report page says."""

    title: str
    """The page's heading."""
    data: dict
    """The figures, written as JSON exactly as given."""
    tables: list[Table] = field(default_factory=list)
    """Tables, in order."""
    notes: list[str] = field(default_factory=list)
    """How to read the report: definitions, what each variant means, chance levels, failure counts."""
    warnings: list[str] = field(default_factory=list)
    """Findings listed first under "Attention" (a type not above its control, failed answers)."""
    chart: Chart | None = None
    """The PNG chart (None: no PNG)."""


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: floats with `digits` decimals, None as a dash, anything else as text."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    if report.warnings:
        lines += ["**Attention**", ""] + [f"- {w}" for w in report.warnings] + [""]
    for table in report.tables:
        if table.caption:
            lines += [table.caption, ""]
        lines.append("| " + " | ".join(table.header) + " |")
        lines.append("|---|" + "---:|" * (len(table.header) - 1))
        lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in table.rows]
        lines.append("")
    if report.notes:
        lines += ["## How to read this report", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(lines)


def draw_chart(chart: Chart, path: str | os.PathLike) -> None:
    """Write the grouped bar chart as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(chart.series)
    x = np.arange(len(chart.groups))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(chart.groups) + 0.4 * len(names)), 3.8))
    for i, name in enumerate(names):
        values = chart.series[name]
        pos = x + (i - (len(names) - 1) / 2) * width
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(pos, heights, width, label=name)
        ax.bar_label(bars, labels=[fmt(v) if v is not None else "" for v in values], fontsize=7)
        ci = chart.intervals.get(name)
        if ci:
            keep = [j for j, c in enumerate(ci) if c is not None and values[j] is not None]
            if keep:
                lo = [values[j] - ci[j][0] for j in keep]
                hi = [ci[j][1] - values[j] for j in keep]
                ax.errorbar(pos[keep], [values[j] for j in keep], yerr=[lo, hi], fmt="none", ecolor="black",
                            capsize=3, linewidth=0.8)
    if chart.chance is not None:
        labelled = False
        for j, c in enumerate(chart.chance):
            if c is not None:
                ax.hlines(c, x[j] - 0.45, x[j] + 0.45, colors="black", linestyles="dashed", linewidth=1,
                          label=None if labelled else "chance")
                labelled = True
    ax.set_xticks(x, chart.groups, rotation=30 if len(chart.groups) > 4 else 0)
    if chart.ylim is not None:
        ax.set_ylim(*chart.ylim)
    ax.set_ylabel(chart.ylabel)
    ax.set_title(chart.title)
    if len(names) > 1 or chart.chance is not None:
        ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(report: Report, out_dir: str | os.PathLike, json_name: str = "report.json",
                 md_name: str = "report.md", png_name: str = "report.png") -> dict[str, Path]:
    """Write the JSON, the Markdown page and (with a chart) the PNG; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / json_name, "md": out / md_name}
    atomic_write_json(paths["json"], report.data)
    atomic_write_text(paths["md"], render_markdown(report))
    if report.chart is not None:
        paths["png"] = out / png_name
        draw_chart(report.chart, paths["png"])
    return paths


# ----------------------------------------------------------------------------- spread


def bootstrap_ci(n_units: int, statistic: Callable[[np.ndarray], np.ndarray], resamples: int = 2000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap over units (questions): resample `n_units` indices with replacement.

    `statistic` maps an index array (B, n_units) to B values. None when there are fewer than 2 units.
    """
    if n_units < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, resamples, 250):
        idx = rng.integers(0, n_units, size=(min(250, resamples - start), n_units))
        values.append(np.asarray(statistic(idx), dtype=float))
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    alpha = (1 - level) / 2
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
