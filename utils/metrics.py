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
        raise ValueError(f"{name!r} must be one-dimensional, got shape {tuple(tensor.shape)}")
    return tensor.to(torch.float64)


def _check_pair(y, o) -> tuple[torch.Tensor, torch.Tensor]:
    y, o = _as_float64(y, "y"), _as_float64(o, "o")
    if y.shape != o.shape:
        raise ValueError(f"'y' and 'o' must have the same length, got {len(y)} and {len(o)}")
    if len(y) == 0:
        raise ValueError("'y' and 'o' are empty: no image to average over")
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


def minmax_normalize(cams: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1]: ``(cam - min) / (max - min)`` per image (over all
    dimensions but the first). A constant map becomes all zeros (the reference divides by
    zero there). Returns a new tensor."""
    flat = cams.reshape(cams.size(0), -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    span = torch.where(span > 0, span, torch.ones_like(span))
    return ((flat - low) / span).reshape(cams.shape)


def _source_positions(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """For each output position along one axis: the two source indices and their weights,
    as ``F.interpolate(..., mode="bilinear", align_corners=False)`` computes them."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32, device=device)
    source = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    # past the last source pixel both indices are the same: weight it 1, so that the value
    # is that pixel's exactly (v * (1 - w) + v * w can differ from v in the last bit)
    upper_weight = torch.where(upper > lower, source - lower, torch.zeros_like(source))
    return lower, upper, 1 - upper_weight, upper_weight


def upsample_bilinear(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling of N x C x h x w ``maps`` to ``size`` (H, W) with
    ``align_corners=False``: the values of ``F.interpolate`` to float rounding, and every
    output pixel computed by the same element-wise arithmetic whatever the batch size,
    thread count or CPU.

    That matters for :func:`keep_top`: pixels whose values are equal by construction (the
    plateaus at the borders, rows and columns with the same interpolation weights) come out
    exactly equal, so its tie rule sees them as ties. ``F.interpolate``'s vectorised CPU
    kernels round some of them differently (by one unit in the last place) depending on how
    the work is split across SIMD lanes and threads, which can move the threshold across a
    plateau of hundreds of pixels.
    """
    height, width = int(size[0]), int(size[1])
    rows_low, rows_high, rows_low_weight, rows_high_weight = _source_positions(maps.size(-2), height, maps.device)
    cols_low, cols_high, cols_low_weight, cols_high_weight = _source_positions(maps.size(-1), width, maps.device)
    dtype = maps.dtype
    along_width = maps.index_select(-1, cols_low) * cols_low_weight.to(dtype) + maps.index_select(
        -1, cols_high
    ) * cols_high_weight.to(dtype)
    rows_low_weight, rows_high_weight = rows_low_weight.to(dtype)[:, None], rows_high_weight.to(dtype)[:, None]
    return along_width.index_select(-2, rows_low) * rows_low_weight + along_width.index_select(
        -2, rows_high
    ) * rows_high_weight


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
        raise ValueError(f"'cams' must be N x 1 x H x W, got shape {tuple(cams.shape)}")
    if not 0 <= percentage < 1:
        raise ValueError(f"'percentage' must be in [0, 1), got {percentage!r}")
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
