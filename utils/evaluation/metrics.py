"""Explanation metrics of the L-CAM protocol: Average Drop, Increase in Confidence, map
normalisation and top-pixel selection, top-k accuracy.

For N images with Y_i the softmax score of the explained class on the image and O_i the
same score on the image multiplied by its explanation map:

    AD = 100 / N * sum_i max(0, Y_i - O_i) / Y_i      (lower is better)
    IC = 100 / N * #{i : O_i > Y_i}                    (higher is better)

Note: pytorch-grad-cam's "drop in confidence" is an absolute drop, not this relative one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from utils.core.errors import UserValueError

# map normalisation and upsampling belong to the explainers; re-exported here for the protocol
from utils.explainers.maps import minmax_normalize, upsample_bilinear

__all__ = [
    "ADICMeter",
    "accuracy",
    "average_drop",
    "increase_in_confidence",
    "keep_top",
    "minmax_normalize",
    "upsample_bilinear",
]


def _as_float64(values, name: str) -> torch.Tensor:
    tensor = values.detach().cpu() if torch.is_tensor(values) else torch.as_tensor(np.asarray(values, dtype=np.float64))
    if tensor.dim() != 1:
        raise UserValueError(f"{name!r} must be one-dimensional, got shape {tuple(tensor.shape)}")
    return tensor.to(torch.float64)


def _check_pair(y, o) -> tuple[torch.Tensor, torch.Tensor]:
    y, o = _as_float64(y, "y"), _as_float64(o, "o")
    if y.shape != o.shape:
        raise UserValueError(f"'y' and 'o' must have the same length, got {len(y)} and {len(o)}")
    if len(y) == 0:
        raise UserValueError("'y' and 'o' are empty: no image to average over")
    return y, o


def average_drop(y, o) -> float:
    """Average Drop in percent: ``100 / N * sum(max(0, y - o) / y)``.

    Args:
        y: N scores of the explained class on the plain images (1-D array or tensor).
        o: N scores of that class on the explanation-masked images.
    """
    y, o = _check_pair(y, o)
    return float((y - o).clamp(min=0).div(y).sum() * (100.0 / len(y)))


def increase_in_confidence(y, o) -> float:
    """Increase in Confidence in percent: ``100 / N * count(o > y)``."""
    y, o = _check_pair(y, o)
    return float((o > y).sum().item() * (100.0 / len(y)))  # Python float64, as the reference


def keep_top(cams: torch.Tensor, percentage: float) -> torch.Tensor:
    """Zero all but the top ``1 - percentage`` of each map's pixels (reference
    ``drop_Npercent``, batched).

    Per image of ``cams`` (N x 1 x H x W): with ``k = int(H * W * percentage)`` and ``t``
    the k-th smallest value (``torch.kthvalue``), pixels below ``t`` become 0; then, while
    more than ``ceil((1 - percentage) * H * W)`` pixels are positive, pixels equal to ``t``
    are zeroed in raster order. Kept pixels keep their value. ``percentage`` 0 returns the
    maps unchanged (as a copy). Does not modify ``cams``.
    """
    if cams.dim() != 4 or cams.size(1) != 1:
        raise UserValueError(f"'cams' must be N x 1 x H x W, got shape {tuple(cams.shape)}")
    if not 0 <= percentage < 1:
        raise UserValueError(f"'percentage' must be in [0, 1), got {percentage!r}")
    num_images, _, height, width = cams.shape
    rank = int(height * width * percentage)
    if rank == 0:
        return cams.clone()
    flat = cams.reshape(num_images, -1)
    threshold = flat.kthvalue(rank, dim=1, keepdim=True).values
    kept = torch.where(flat < threshold, torch.zeros_like(flat), flat)
    num_pixels = math.ceil((1 - percentage) * height * width)
    excess = (kept > 0).sum(dim=1, keepdim=True) - num_pixels
    ties = flat == threshold
    tie_order = ties.cumsum(dim=1)
    kept = torch.where(ties & (tie_order <= excess), torch.zeros_like(kept), kept)
    return kept.reshape(cams.shape)


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Top-k accuracies in percent of ``logits`` (N x K) against ``target`` (N)."""
    maxk = min(max(topk), logits.size(1))
    predictions = logits.topk(maxk, dim=1).indices
    correct = predictions.eq(target.view(-1, 1).to(predictions.device))
    return [float(correct[:, :k].any(dim=1).float().mean() * 100) for k in topk]


class ADICMeter:
    """Accumulates (Y, O) pairs batch by batch; :meth:`summary` gives AD and IC in percent."""

    def __init__(self) -> None:
        self._y: list[torch.Tensor] = []
        self._o: list[torch.Tensor] = []

    def update(self, y: torch.Tensor, o: torch.Tensor) -> None:
        """Add a batch of plain-image scores ``y`` and masked-image scores ``o``."""
        self._y.append(_as_float64(y, "y"))
        self._o.append(_as_float64(o, "o"))

    @property
    def count(self) -> int:
        return sum(len(y) for y in self._y)

    def summary(self) -> dict[str, float]:
        y, o = torch.cat(self._y), torch.cat(self._o)
        return {
            "average_drop": average_drop(y, o),
            "increase_in_confidence": increase_in_confidence(y, o),
            "count": len(y),
        }
