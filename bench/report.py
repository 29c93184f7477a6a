"""The benchmark's report: a table and the targets for the terminal, JSON and a bar chart."""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .results import MIN_VS_SEED_PATTERN, Summary, Target
from .servers import ORM_FLOOR, RAW_ASYNCPG, SEED_PATTERN

COLUMNS = (
    "app",
    "endpoint",
    "req/s",
    "p50 ms",
    "p99 ms",
    "non-2xx",
    "sock err",
    "vs seed",
    "vs floor",
    "vs raw",
)
REFERENCE_COLORS = {SEED_PATTERN: "#b0b0b0", ORM_FLOOR: "#808080", RAW_ASYNCPG: "#505050"}
VARIANT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")


def table(summaries: Sequence[Summary]) -> str:
    """Per app and endpoint: medians over the rounds, failures in all rounds, ratios."""
    rows = [COLUMNS] + [
        (
            summary.app,
            summary.endpoint,
            f"{summary.requests_per_second:.0f}",
            f"{summary.p50_ms:.1f}",
            f"{summary.p99_ms:.1f}",
            str(summary.non_2xx),
            str(summary.socket_errors),
            _times(summary.vs_seed_pattern),
            _times(summary.vs_orm_floor),
            _times(summary.vs_raw_asyncpg),
        )
        for summary in summaries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    lines = [
        "  ".join(
            # Text columns to the left, numbers to the right.
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines) + "\n"


def targets(checked: Sequence[Target]) -> str:
    """One line per target: met, missed, or not measured, with the numbers."""
    verdicts = {True: "met", False: "MISSED", None: "n/a"}
    return "".join(
        f"  {verdicts[target.met]:<6}  {target.description}  ({target.detail})\n"
        for target in checked
    )


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def write_chart(path: Path, summaries: Sequence[Summary], subtitle: str) -> None:
    """Bars of req/s per app, grouped by endpoint, each labelled with its ratios to the
    references. Drawn with Agg, straight to a file: no screen needed."""
    endpoints = list(dict.fromkeys(summary.endpoint for summary in summaries))
    apps = list(dict.fromkeys(summary.app for summary in summaries))
    variant_colors = iter(VARIANT_COLORS)
    colors = {app: REFERENCE_COLORS.get(app) or next(variant_colors) for app in apps}
    width = 0.8 / len(apps)

    figure = Figure(figsize=(4 + 2.2 * len(apps), 6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for index, app in enumerate(apps):
        for summary in (s for s in summaries if s.app == app):
            x = endpoints.index(summary.endpoint) + (index - (len(apps) - 1) / 2) * width
            axes.bar(
                x,
                summary.requests_per_second,
                width,
                color=colors[app],
                label=app if summary.endpoint == endpoints[0] else None,
            )
            axes.annotate(
                _bar_label(summary),
                (x, summary.requests_per_second),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                # Readable where the target line crosses it.
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"},
                zorder=3,
            )
    for position, endpoint in enumerate(endpoints):
        seed_pattern = next(
            (s for s in summaries if (s.app, s.endpoint) == (SEED_PATTERN, endpoint)), None
        )
        if seed_pattern:
            axes.hlines(
                MIN_VS_SEED_PATTERN * seed_pattern.requests_per_second,
                position - 0.45,
                position + 0.45,
                colors="black",
                linestyles="dashed",
                linewidth=1,
                label=f"target: {MIN_VS_SEED_PATTERN:g}x {SEED_PATTERN}" if position == 0 else None,
            )
    axes.set_xticks(range(len(endpoints)), endpoints)
    axes.set_ylabel("requests per second (median over rounds)")
    axes.margins(y=0.2)
    figure.legend(loc="outside lower center", ncols=len(apps) + 1)
    axes.set_title(f"Cities service: rendered variants and references\n{subtitle}", fontsize=10)
    figure.savefig(path, dpi=120)


def _bar_label(summary: Summary) -> str:
    lines = [f"{summary.requests_per_second:.0f}"]
    if summary.app != SEED_PATTERN:
        lines.append(f"{_times(summary.vs_seed_pattern)} seed")
    if summary.app not in (SEED_PATTERN, ORM_FLOOR):
        lines.append(f"{_times(summary.vs_orm_floor)} floor")
    if summary.app != RAW_ASYNCPG:
        lines.append(f"{_times(summary.vs_raw_asyncpg)} raw")
    return "\n".join(lines)


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"
