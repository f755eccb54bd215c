"""ROAD's noisy linear imputation, batched on the images' device.

The definition is pytorch-grad-cam's ``NoisyLinearImputer`` (``pytorch_grad_cam.metrics.road``,
taken from the ROAD authors' code); this module solves the same system for every image of a
batch at once instead of one scipy sparse solve per image.

Removal (:func:`removal_masks`, pytorch-grad-cam's ``RemoveMostRelevantFirst`` and
``RemoveLeastRelevantFirst``): with relevance ``m`` (MoRF) or ``1 - m`` (LeRF) of a map ``m``
(float32), ``t`` its q-th percentile (NumPy's default linear interpolation), the pixels with
``relevance >= t`` are removed: about (100 - q) % of them, the most relevant ones for MoRF,
the least relevant ones for LeRF.

Imputation: every removed pixel i takes the weighted mean of its neighbours j inside the
image, weights ``w`` 1/6 for the 4 side neighbours and 1/12 for the 4 diagonal ones,

    sum_j w_ij (x_i - x_j) = 0   for every removed i,   x_j = image_j for every kept j,

a sparse symmetric system in the removed pixels (one per channel, one matrix per image),
positive definite whenever the image keeps a pixel. It is solved in float64 by conjugate
gradients preconditioned by a multigrid V-cycle, the neighbour sums as 3 x 3 stencils,
every image and channel at once (10-30 iterations for ROAD's masks at 224 x 224), until
the largest residual is below ``tolerance`` (the default gives imputed values within 1e-6
of an exact solve at 224 x 224; ``tests/test_road.py`` and ``bench/road_imputation.py``
check against pytorch-grad-cam). Then Gaussian noise of standard deviation 0.01 is added at
the removed pixels.

An image with every pixel removed (a map whose ties reach the threshold, e.g. a constant
map) has a singular system; like pytorch-grad-cam's solver, ours returns 0 for it (black
plus the noise).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from utils.core.errors import UserValueError

__all__ = [
    "NOISE_STD",
    "RESIDUAL_TOLERANCE",
    "check_percentile",
    "imputation_noise",
    "linear_imputation",
    "noisy_linear_imputation",
    "removal_masks",
]

NOISE_STD = 0.01
RESIDUAL_TOLERANCE = 1e-8
_SIDE_WEIGHT, _DIAGONAL_WEIGHT = 1 / 6, 1 / 12


def _neighbour_sum(values: torch.Tensor) -> torch.Tensor:
    """``sum_j w_ij values_j`` over each pixel's 8 neighbours inside the image (... x H x W)."""
    padded = F.pad(values, (1, 1, 1, 1))
    diagonal = padded[..., :-2, :-2] + padded[..., :-2, 2:] + padded[..., 2:, :-2] + padded[..., 2:, 2:]
    side = padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
    return diagonal * _DIAGONAL_WEIGHT + side * _SIDE_WEIGHT


def check_percentile(percentile: float) -> float:
    """``percentile`` as a float if it is a number in (0, 100).

    Raises:
        ValueError: anything else.
    """
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) or not 0 < percentile < 100:
        raise UserValueError(f"ROAD percentiles must be numbers in (0, 100), got {percentile!r}")
    return float(percentile)


def removal_masks(maps: torch.Tensor, percentile: float, most_relevant_first: bool = True) -> torch.Tensor:
    """The pixels ROAD removes at ``percentile`` q (N x H x W bool, True = removed) from maps
    in [0, 1] (N x H x W or N x 1 x H x W, compared in float32): ``relevance >= t``, ``t`` the
    q-th percentile of ``relevance`` = ``maps`` (MoRF) or ``1 - maps`` (LeRF), as NumPy's
    ``np.percentile`` computes it for a float32 array (the same float32 rounding)."""
    percentile = check_percentile(percentile)
    if maps.dim() == 4 and maps.size(1) == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise UserValueError(f"maps must be N x H x W or N x 1 x H x W, got shape {tuple(maps.shape)}")
    relevance = maps.float() if most_relevant_first else 1 - maps.float()
    ordered = relevance.flatten(1).sort(dim=1).values
    count = ordered.size(1)
    # np.percentile's linear method: index (n - 1) q, interpolated in the array's dtype, from
    # the nearer end when the fraction is at least 0.5.
    quantile = percentile / 100
    index = count * quantile + (1 - quantile) - 1
    below = min(int(index), count - 1)
    fraction = index - below
    lower, upper = ordered[:, below], ordered[:, min(below + 1, count - 1)]
    step = upper - lower
    threshold = upper - step * (1 - fraction) if fraction >= 0.5 else lower + step * fraction
    return relevance >= threshold[:, None, None]


def _check_removed(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4:
        raise UserValueError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
    if removed.dim() == 4 and removed.size(1) == 1:
        removed = removed[:, 0]
    if tuple(removed.shape) != (images.size(0), *images.shape[-2:]):
        raise UserValueError(
            f"the removal masks must be N x H x W = {(images.size(0), *images.shape[-2:])}, got {tuple(removed.shape)}"
        )
    return removed.to(device=images.device, dtype=torch.bool)


def _system_product(unknown: torch.Tensor, weight_sums: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The neighbour system's matrix times ``values`` (0 outside the ``unknown`` pixels):
    ``sum_j w_ij (values_i - values_j)`` at every unknown pixel i."""
    return unknown * (weight_sums * values - _neighbour_sum(values))


class _MultigridPreconditioner:
    """One symmetric V-cycle for the neighbour system (a symmetric positive definite
    preconditioner, so conjugate gradients keep converging): damped Jacobi smoothing
    (weight 2/3, ``sweeps`` before and after), restriction to a grid of half the size by
    summing 2 x 2 blocks, where a coarse unknown is a block whose pixels are all unknown, the
    same stencil there, and prolongation by copying back (the restriction's transpose); at
    the coarsest grid (side at most 4) 30 Jacobi sweeps."""

    def __init__(self, unknown: torch.Tensor, sweeps: int = 2) -> None:
        self.sweeps = sweeps
        self.levels = []
        while True:
            weight_sums = _neighbour_sum(torch.ones_like(unknown))
            self.levels.append((unknown, weight_sums, unknown / weight_sums))
            if min(unknown.shape[-2:]) <= 4:
                break
            unknown = -F.max_pool2d(-unknown, 2, ceil_mode=True)  # all four pixels unknown

    def apply(self, level: int, values: torch.Tensor) -> torch.Tensor:
        """The system's matrix at ``level`` times ``values`` (0 outside the unknowns)."""
        unknown, weight_sums, _ = self.levels[level]
        return _system_product(unknown, weight_sums, values)

    def __call__(self, residual: torch.Tensor, level: int = 0) -> torch.Tensor:
        unknown, _, inverse_diagonal = self.levels[level]
        coarsest = level == len(self.levels) - 1
        sweeps = 30 if coarsest else self.sweeps
        correction = inverse_diagonal * residual * (2 / 3)
        for _ in range(sweeps - 1):
            correction += inverse_diagonal * (residual - self.apply(level, correction)) * (2 / 3)
        if coarsest:
            return correction
        coarse_residual = (
            F.avg_pool2d(residual - self.apply(level, correction), 2, ceil_mode=True, divisor_override=1)
            * self.levels[level + 1][0]
        )
        coarse = self(coarse_residual, level + 1)
        height, width = residual.shape[-2:]
        correction += unknown * coarse.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :height, :width]
        for _ in range(sweeps):
            correction += inverse_diagonal * (residual - self.apply(level, correction)) * (2 / 3)
        return correction


def linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    tolerance: float = RESIDUAL_TOLERANCE,
    max_iterations: int = 1000,
) -> torch.Tensor:
    """The noise-free imputation of the module docstring: ``images`` (N x C x H x W) with
    the ``removed`` pixels (N x H x W bool) replaced by the solution of the neighbour
    system, in ``images``' dtype, on their device.

    Raises:
        ValueError: mismatched shapes, or no convergence within ``max_iterations``.
    """
    removed = _check_removed(images, removed)
    known = images.double()
    unknown = removed[:, None].double()
    weight_sums = _neighbour_sum(torch.ones_like(unknown))
    # The V-cycle in float32 (half the memory traffic); the iteration itself stays in float64.
    preconditioner = _MultigridPreconditioner(unknown.float())
    residual = unknown * _neighbour_sum(known * (1 - unknown))
    solution = torch.zeros_like(residual)
    preconditioned = preconditioner(residual.float()).double()
    direction = preconditioned.clone()
    product = (residual * preconditioned).sum((-2, -1), keepdim=True)
    done = residual.abs().amax((-2, -1), keepdim=True) <= tolerance
    tiny = torch.finfo(torch.float64).tiny
    for _ in range(max_iterations):
        if bool(done.all()):
            return torch.where(removed[:, None], solution.to(images.dtype), images)
        image_of_direction = _system_product(unknown, weight_sums, direction)
        curvature = (direction * image_of_direction).sum((-2, -1), keepdim=True)
        step = torch.where(done, 0.0, product / curvature.clamp_min(tiny))
        solution += step * direction
        residual -= step * image_of_direction
        previous = preconditioned
        preconditioned = preconditioner(residual.float()).double()
        new_product = (residual * preconditioned).sum((-2, -1), keepdim=True)
        # The flexible (Polak-Ribiere) update: robust to the float32 V-cycle's rounding.
        ratio = (new_product - (residual * previous).sum((-2, -1), keepdim=True)) / product.clamp_min(tiny)
        direction = preconditioned + torch.where(done, 0.0, ratio) * direction
        product = new_product
        done |= residual.abs().amax((-2, -1), keepdim=True) <= tolerance
    raise UserValueError(f"the imputation did not converge in {max_iterations} iterations")


def imputation_noise(
    removed: torch.Tensor,
    channels: int = 3,
    std: float = NOISE_STD,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """The imputation's noise (N x C x H x W float32, 0 at kept pixels, on ``removed``'s
    device), drawn as pytorch-grad-cam draws it: per image in batch order, on the CPU from
    ``generator`` (torch's global one by default; a sequence: one per image), a
    C x (removed pixels) standard normal draw (its ``randn_like`` of scipy's column-major
    solution, transposed: contiguous), the removed pixels in raster order, times ``std``."""
    removed = removed[:, 0] if removed.dim() == 4 else removed
    generators = generator if isinstance(generator, Sequence) else [generator] * len(removed)
    if len(generators) != len(removed):
        raise UserValueError(f"one generator per image: {len(removed)} images, {len(generators)} generators")
    noise = torch.zeros(removed.size(0), *removed.shape[-2:], channels)
    for index, image_removed in enumerate(removed.cpu()):
        draws = torch.randn(channels, int(image_removed.sum()), generator=generators[index])
        noise[index][image_removed] = (std * draws).t()
    return noise.permute(0, 3, 1, 2).to(removed.device)


def noisy_linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: torch.Tensor | None = None,
    tolerance: float = RESIDUAL_TOLERANCE,
) -> torch.Tensor:
    """pytorch-grad-cam's ``NoisyLinearImputer`` for a batch: :func:`linear_imputation`
    plus ``noise`` (N x C x H x W; :func:`imputation_noise` of the global generator by
    default) at the removed pixels."""
    removed = _check_removed(images, removed)
    if noise is None:
        noise = imputation_noise(removed, images.size(1))
    imputed = linear_imputation(images, removed, tolerance)
    return torch.where(removed[:, None], imputed + noise.to(imputed), images)
