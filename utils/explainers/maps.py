"""Operations on saliency maps shared by every explainer and the evaluation: per-image
min-max normalisation and bilinear upsampling that keeps ties exact."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["minmax_normalize", "upsample_bilinear"]


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
    return (
        along_width.index_select(-2, rows_low) * rows_low_weight
        + along_width.index_select(-2, rows_high) * rows_high_weight
    )
