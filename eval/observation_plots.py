"""The figures of eval/observation.py, drawn with matplotlib's object API (no pyplot state, no display needed)."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

# Images are shown at most this many pixels wide: enough to judge them, small enough for 1024-px models.
PANEL_PIXELS = 320
PANEL_INCHES = 2.0
WARNING_COLOR = "tab:red"


def _panel(image: Image.Image) -> Image.Image:
    if image.width > PANEL_PIXELS or image.height > PANEL_PIXELS:
        image = image.copy()
        image.thumbnail((PANEL_PIXELS, PANEL_PIXELS))
    return image


def _show(ax, image: Image.Image) -> None:
    # nearest: tiny 32-px images stay sharp blocks instead of a blur
    ax.imshow(_panel(image), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _headline(fig: Figure, title: str, warning: str | None) -> None:
    """The title above; a warning (random weights) in red below, wrapped to the figure's width."""
    fig.suptitle(title, fontsize=11)
    if warning:
        width = max(40, int(fig.get_figwidth() * 12))  # about 12 characters of 10-pt text per inch
        fig.supxlabel(textwrap.fill(warning, width), fontsize=10, color=WARNING_COLOR)


def observation_figure(
    rows: Sequence[tuple[str, Sequence[Image.Image]]],
    column_titles: Sequence[str],
    title: str,
    warning: str | None = None,
) -> Figure:
    """A grid of images: one row per text schedule (its label on the left), one column per step shown."""
    columns = len(column_titles)
    if any(len(images) != columns for _, images in rows):
        raise ValueError(f"every row needs {columns} images, one per column")
    fig = Figure(figsize=(PANEL_INCHES * columns + 1.2, PANEL_INCHES * len(rows) + 1.2), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for row_axes, (label, images) in zip(axes, rows):
        for ax, image in zip(row_axes, images):
            _show(ax, image)
        row_axes[0].set_ylabel(label, fontsize=10)
    for ax, column_title in zip(axes[0], column_titles):
        ax.set_title(column_title, fontsize=10)
    _headline(fig, title, warning)
    return fig


def convergence_figure(
    table: Sequence[dict[str, Any]], marks: dict[str, int], title: str, warning: str | None = None
) -> Figure:
    """Relative change per step, one line per level (rows of ``observation_probes.level_means``).

    ``marks`` draws a labelled vertical line at each given step (the split, the paper's gate).
    """
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    levels = list(dict.fromkeys(row["level"] for row in table))
    for level in levels:
        points = [row for row in table if row["level"] == level]
        ax.plot([row["step"] for row in points], [row["relative_change"] for row in points], marker="o",
                markersize=3, label=f"{level} ({points[0]['tokens']} tokens, {_count(points[0]['modules'], 'module')})")
    for (label, step), style in zip(marks.items(), ("--", ":", "-.")):
        ax.axvline(step, color="gray", linestyle=style, label=label)
    if table and all(row["relative_change"] > 0 for row in table):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("denoising step (compared with the step before)")
    ax.set_ylabel("relative change of cross-attention output\n||A_t - A_t-1|| / ||A_t-1||, mean over level")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _headline(fig, title, warning)
    return fig


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def gate_sweep_figure(
    panels: Sequence[tuple[str, Image.Image]], title: str, warning: str | None = None
) -> Figure:
    """The final image of each gate step side by side, each titled with its gate, MACs and time."""
    fig = Figure(figsize=(PANEL_INCHES * 1.2 * len(panels) + 0.5, PANEL_INCHES * 1.2 + 1.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (caption, image) in zip(axes, panels):
        _show(ax, image)
        ax.set_title(caption, fontsize=9)
    _headline(fig, title, warning)
    return fig
