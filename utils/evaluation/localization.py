"""Localisation metrics of explanation maps against ground-truth boxes: the share of a map's
energy inside the box and the pointing game.

For a non-negative map M (H x W, e.g. min-max normalised and upsampled to the image) and a
box B = [x0, x1) x [y0, y1) in pixel coordinates:

    energy in box = sum_{p in B} M(p) / sum_p M(p)          (Wang et al., Score-CAM, 2020)
    pointing game = 1 if argmax_p M(p) lies in B, else 0     (Zhang et al., 2016)

Both are averaged over the images and reported in percent (higher is better).
"""

from __future__ import annotations

import torch

from utils.core.errors import UserValueError

__all__ = ["LocalizationMeter", "box_masks", "energy_in_box", "pointing_game"]


def _check(maps: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if maps.dim() == 4:
        if maps.size(1) != 1:
            raise UserValueError(f"'maps' must be N x 1 x H x W or N x H x W, got shape {tuple(maps.shape)}")
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise UserValueError(f"'maps' must be N x 1 x H x W or N x H x W, got shape {tuple(maps.shape)}")
    boxes = torch.as_tensor(boxes, device=maps.device)
    if boxes.shape != (maps.size(0), 4):
        raise UserValueError(
            f"'boxes' must be N x 4 (x0, y0, x1, y1) with N={maps.size(0)}, got shape {tuple(boxes.shape)}"
        )
    if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise UserValueError("'boxes' must have x1 > x0 and y1 > y0 (end coordinates are exclusive)")
    if (maps < 0).any():
        raise UserValueError("'maps' must be non-negative (min-max normalise them first)")
    return maps, boxes.long()


def box_masks(boxes: torch.Tensor, height: int, width: int, tolerance: int = 0) -> torch.Tensor:
    """N x H x W boolean masks of the boxes (x0, y0, x1, y1; ends exclusive), each side
    moved ``tolerance`` pixels outwards."""
    boxes = torch.as_tensor(boxes).long()
    rows = torch.arange(height, device=boxes.device).view(1, height, 1)
    columns = torch.arange(width, device=boxes.device).view(1, 1, width)
    x0, y0, x1, y1 = (boxes[:, index].view(-1, 1, 1) for index in range(4))
    inside_rows = (rows >= y0 - tolerance) & (rows < y1 + tolerance)
    inside_columns = (columns >= x0 - tolerance) & (columns < x1 + tolerance)
    return inside_rows & inside_columns


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Share (0..1) of each map's sum that falls inside its box; 0 for an all-zero map.

    Args:
        maps: N x 1 x H x W or N x H x W non-negative maps at the boxes' resolution.
        boxes: N x 4 integer (x0, y0, x1, y1) pixel boxes, x1 and y1 exclusive.
    """
    maps, boxes = _check(maps, boxes)
    masks = box_masks(boxes, maps.size(1), maps.size(2))
    total = maps.sum(dim=(1, 2), dtype=torch.float64)
    inside = (maps * masks).sum(dim=(1, 2), dtype=torch.float64)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(total))


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Whether each map's maximum lies in its box (moved ``tolerance`` pixels outwards).

    The first maximum in raster order is the point; a constant map has no point and
    counts as a miss.
    """
    if tolerance < 0:
        raise UserValueError(f"'tolerance' must be >= 0, got {tolerance!r}")
    maps, boxes = _check(maps, boxes)
    flat = maps.flatten(1)  # N x HW, also for N = 0
    peak = flat.argmax(dim=1)
    rows, columns = peak // maps.size(2), peak % maps.size(2)
    masks = box_masks(boxes, maps.size(1), maps.size(2), tolerance)
    hit = masks[torch.arange(maps.size(0), device=maps.device), rows, columns]
    constant = flat.amax(dim=1) == flat.amin(dim=1)
    return hit & ~constant


class LocalizationMeter:
    """Accumulates energy-in-box and pointing-game results batch by batch."""

    def __init__(self, tolerance: int = 0) -> None:
        self.tolerance = tolerance
        self._energy: list[torch.Tensor] = []
        self._hits: list[torch.Tensor] = []

    def update(self, maps: torch.Tensor, boxes: torch.Tensor) -> None:
        """Add a batch of maps (N x 1 x H x W, non-negative) and their boxes (N x 4)."""
        self._energy.append(energy_in_box(maps, boxes).cpu())
        self._hits.append(pointing_game(maps, boxes, self.tolerance).cpu())

    @property
    def count(self) -> int:
        return sum(len(energy) for energy in self._energy)

    def summary(self) -> dict[str, float]:
        """``energy_in_box`` and ``pointing_game`` in percent (NaN when every batch added was
        empty, e.g. no image was classified correctly), and ``count``."""
        if not self._energy:
            raise UserValueError("LocalizationMeter.summary(): no batch was added")
        energy, hits = torch.cat(self._energy), torch.cat(self._hits)
        return {
            "energy_in_box": float(energy.mean() * 100),
            "pointing_game": float(hits.double().mean() * 100),
            "count": len(energy),
        }
