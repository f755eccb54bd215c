"""The tables and figures the commands write: a results table (Markdown, CSV), the AD/IC bar chart and the overlay grid."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.core.errors import UserValueError
from utils.core.files import atomic_open
from utils.evaluation.visualize import draw_box, overlay, save_table, to_pil

__all__ = [
    "MethodScores",
    "ResultsTable",
    "kept_label",
    "save_overlay_grid",
    "save_scores_chart",
    "save_with_legend",
    "write_markdown",
]


def kept_label(percentage: float) -> str:
    """The share of each map's pixels kept when ``percentage`` of them are dropped:
    ``0.0`` -> ``"100%"``, ``0.85`` -> ``"15%"``."""
    return f"{100 * (1 - percentage):g}%"


@dataclass(frozen=True)
class ResultsTable:
    """A table of results: a header and rows of cells (written as they are: round or
    format the numbers first)."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> ResultsTable:
        """The ``fields`` of each record, with the field names as the header."""
        return cls(list(fields), [[record[name] for name in fields] for record in records])

    def markdown(self) -> str:
        """The table in Markdown (no trailing newline)."""
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike) -> str:
        """Write the header and rows to ``path`` as CSV, atomically; returns the path."""
        with atomic_open(path, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.rows)
        return os.fspath(path)


def write_markdown(path: str | os.PathLike, *blocks: str) -> str:
    """Write the non-empty ``blocks`` (a title, a table, notes) to ``path``, a blank line
    between them, atomically; returns the path."""
    with atomic_open(path) as handle:
        handle.write("\n\n".join(block for block in blocks if block) + "\n")
    return os.fspath(path)


@dataclass(frozen=True)
class MethodScores:
    """One method's bars in :func:`save_scores_chart`.

    Attributes:
        label: the method's name in the legend.
        average_drop: its AD (%) at each percentage.
        increase_in_confidence: its IC (%) at each percentage.
        localisation: its localisation scores (%) by name (``energy_in_box``, ...), if any.
    """

    label: str
    average_drop: Sequence[float]
    increase_in_confidence: Sequence[float]
    localisation: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, label: str, summary: Sequence[Mapping[str, float]]) -> MethodScores:
        """From :attr:`utils.evaluation.EvaluationResult.summary` (one entry per percentage)."""
        return cls(
            label,
            [entry["average_drop"] for entry in summary],
            [entry["increase_in_confidence"] for entry in summary],
        )


def save_scores_chart(scores: Sequence[MethodScores], percentages: Sequence[float], path: str | os.PathLike) -> str:
    """Bar charts, one panel each: AD and IC (a group of bars per percentage, a bar per
    method), and the localisation scores when any method has them; the legend on the right.
    Returns the path."""
    if not scores:
        raise UserValueError("'scores' is empty: no method to draw")
    groups = [f"top {kept_label(percentage)}" for percentage in percentages]
    panels = [
        ("AD (lower is better)", groups, [method.average_drop for method in scores]),
        ("IC (higher is better)", groups, [method.increase_in_confidence for method in scores]),
    ]
    names = list(dict.fromkeys(name for method in scores for name in method.localisation))
    if names:
        values = [[method.localisation.get(name, math.nan) for name in names] for method in scores]
        panels.append(("localisation (higher is better)", [name.replace("_", " ") for name in names], values))
    figure = Figure(figsize=(5.0 * len(panels), 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    width = 0.8 / len(scores)
    for axis, (title, labels, values) in zip(axes, panels):
        for index, (method, heights) in enumerate(zip(scores, values)):
            positions = [group + (index - (len(scores) - 1) / 2) * width for group in range(len(labels))]
            axis.bar(positions, heights, width, label=method.label)
        axis.set_xticks(range(len(labels)), labels)
        axis.set_ylabel("%")
        axis.set_title(title, fontsize=10)
    return save_with_legend(figure, axes[0], path)


def save_with_legend(figure: Figure, axis, path: str | os.PathLike) -> str:
    """Save ``figure`` to ``path`` with ``axis``'s legend at its right (one legend for all
    the panels); returns the path."""
    handles, labels = axis.get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    path = os.fspath(path)
    figure.savefig(path, bbox_inches="tight")
    return path


def save_overlay_grid(
    images: torch.Tensor,
    maps: Sequence[torch.Tensor],
    method_titles: Sequence[str],
    path: str | os.PathLike,
    *,
    boxes: torch.Tensor | None = None,
    map_titles: Sequence[Sequence[str]] | None = None,
    cell_inches: float = 2.0,
) -> str:
    """A row per image, a column per method: the image (with its box, when ``boxes`` are
    given), then each method's map overlaid on it. Returns the path.

    Args:
        images: N x 3 x H x W images in [0, 1].
        maps: per method, its N x 1 x H x W (or N x H x W) maps in [0, 1] at the images' size.
        method_titles: per method, the title of its column.
        path: the PNG to write.
        boxes: N x 4 ``(x0, y0, x1, y1)`` boxes (ends exclusive), drawn on the first column.
        map_titles: per method, a title for each image's map (e.g. the explained class).
        cell_inches: the side of a cell.
    """
    if len(maps) != len(method_titles):
        raise UserValueError(f"{len(maps)} methods' maps for {len(method_titles)} titles")
    images = images.detach().cpu()
    cells = []
    for row, image in enumerate(images):
        shown = draw_box(image, boxes[row]) if boxes is not None else image
        cells.append([to_pil(shown)] + [overlay(image, method_maps[row]) for method_maps in maps])
    cell_titles = None
    if map_titles is not None:
        cell_titles = [[""] + [titles[row] for titles in map_titles] for row in range(len(images))]
    column_titles = ["image, box" if boxes is not None else "image", *method_titles]
    return save_table(cells, path, column_titles=column_titles, cell_titles=cell_titles, cell_inches=cell_inches)
