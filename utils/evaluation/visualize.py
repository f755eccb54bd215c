"""Pictures of explanations: heatmaps of saliency maps, overlays on the image, and grids
(matplotlib colormaps, PIL images; no pyplot state, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from utils.core.errors import UserValueError

__all__ = ["draw_box", "heatmap", "overlay", "save_grid", "save_table", "to_pil"]


def _as_float_image(image) -> np.ndarray:
    """H x W x 3 float array in [0, 1] from a 3 x H x W tensor in [0, 1], an H x W x 3 array
    (uint8 or float in [0, 1]) or a PIL image."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if torch.is_tensor(image):
        if image.dim() != 3 or image.size(0) != 3:
            raise UserValueError(f"'image' tensor must be 3 x H x W, got shape {tuple(image.shape)}")
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise UserValueError(f"'image' must be H x W x 3 (or a 3 x H x W tensor), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def _as_map(saliency) -> np.ndarray:
    if torch.is_tensor(saliency):
        saliency = saliency.detach().float().cpu().numpy()
    array = np.squeeze(np.asarray(saliency, dtype=np.float32))
    if array.ndim != 2:
        raise UserValueError(f"'saliency' must be one H x W map, got shape {np.shape(saliency)}")
    return array


def to_pil(image) -> Image.Image:
    """An RGB PIL image of a 3 x H x W tensor in [0, 1] or an H x W x 3 array."""
    return Image.fromarray(np.round(_as_float_image(image) * 255).astype(np.uint8))


def heatmap(saliency, colormap: str = "jet") -> np.ndarray:
    """The H x W x 3 float colours (in [0, 1]) of a map with values in [0, 1] (clipped)."""
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError as error:
        raise UserValueError(f"unknown colormap {colormap!r}; e.g. jet, turbo, viridis, inferno, magma") from error
    return cmap(np.clip(_as_map(saliency), 0.0, 1.0))[..., :3].astype(np.float32)


def overlay(image, saliency, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """``(1 - alpha) * image + alpha * heatmap(saliency)`` as an RGB PIL image of the
    image's size. ``saliency`` (values in [0, 1]) must have the image's height and width."""
    if not 0 <= alpha <= 1:
        raise UserValueError(f"'alpha' must be in [0, 1], got {alpha!r}")
    picture = _as_float_image(image)
    colours = heatmap(saliency, colormap)
    if colours.shape[:2] != picture.shape[:2]:
        raise UserValueError(f"saliency map of size {colours.shape[:2]} does not match the image's {picture.shape[:2]}")
    blended = (1 - alpha) * picture + alpha * colours
    return Image.fromarray(np.round(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8))


def draw_box(
    image: torch.Tensor, box: Sequence[int] | torch.Tensor, colour: Sequence[float] = (0.0, 1.0, 0.0)
) -> torch.Tensor:
    """A copy of ``image`` (3 x H x W in [0, 1]) with the one-pixel outline of ``box``
    ``(x0, y0, x1, y1)`` (ends exclusive, as the digits' boxes) drawn in ``colour``."""
    if image.dim() != 3 or image.size(0) != 3:
        raise UserValueError(f"'image' must be 3 x H x W, got shape {tuple(image.shape)}")
    x0, y0, x1, y1 = (int(value) for value in box)
    if not (0 <= x0 < x1 <= image.size(2) and 0 <= y0 < y1 <= image.size(1)):
        raise UserValueError(f"'box' must lie in the {image.size(2)} x {image.size(1)} image, got {(x0, y0, x1, y1)}")
    boxed = image.clone()
    paint = torch.tensor(colour, dtype=image.dtype, device=image.device).view(3, 1)
    boxed[:, y0, x0:x1] = boxed[:, y1 - 1, x0:x1] = boxed[:, y0:y1, x0] = boxed[:, y0:y1, x1 - 1] = paint
    return boxed


def save_table(
    cells: Sequence[Sequence[Image.Image | None]],
    path: str | os.PathLike,
    row_titles: Sequence[str] | None = None,
    column_titles: Sequence[str] | None = None,
    cell_titles: Sequence[Sequence[str]] | None = None,
    cell_inches: float = 2.0,
    dpi: int = 100,
) -> str:
    """Save a figure of images in rows and columns (e.g. a row per image, a column per
    method), with optional titles; an empty cell is None. Returns the path."""
    rows = len(cells)
    columns = max((len(row) for row in cells), default=0)
    if rows == 0 or columns == 0:
        raise UserValueError("'cells' holds no image")
    figure = Figure(figsize=(cell_inches * columns, cell_inches * rows + 0.4), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        for column in range(columns):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            cell = cells[row][column] if column < len(cells[row]) else None
            if cell is None:
                axis.set_axis_off()
                continue
            axis.imshow(np.asarray(cell))
            title = cell_titles[row][column] if cell_titles is not None and column < len(cell_titles[row]) else ""
            if row == 0 and column_titles is not None:
                title = f"{column_titles[column]}\n{title}" if title else column_titles[column]
            if title:
                axis.set_title(title, fontsize=8)
            if column == 0 and row_titles is not None:
                axis.set_ylabel(row_titles[row], fontsize=8)
    figure.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    return path


def save_grid(
    tiles: Sequence[Image.Image],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    cell_inches: float = 2.0,
) -> str:
    """Save ``tiles`` in a grid (``columns`` per row, default about square), each with its
    title. Returns the path."""
    if not tiles:
        raise UserValueError("'tiles' is empty")
    columns = columns or int(np.ceil(np.sqrt(len(tiles))))
    cells = [list(tiles[start : start + columns]) for start in range(0, len(tiles), columns)]
    cell_titles = None
    if titles is not None:
        if len(titles) != len(tiles):
            raise UserValueError(f"{len(titles)} titles for {len(tiles)} tiles")
        cell_titles = [list(titles[start : start + columns]) for start in range(0, len(titles), columns)]
    return save_table(cells, path, cell_titles=cell_titles, cell_inches=cell_inches)
