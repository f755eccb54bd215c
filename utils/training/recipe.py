"""Training recipes: the authors' (``reference``) and one for a few thousand images (``small-data``).

A recipe is a set of defaults for the training flags; a flag given explicitly wins over it.

``reference`` is the authors' code exactly: SGD at 100 x / 200 x ``lr`` for weights / biases,
the lr x 0.75 before each epoch (:mod:`utils.training.optim`), the loss terms at full weight
from the first step, a randomly initialised head, the reference's map selection and backbone
mode.

``small-data`` (the default of ``--arch generic``; docs/small-data.md has the measurements
behind it): the head starts from the classifier's last linear layer where the network ends
with global pooling and one linear layer (its initial maps are the classifier's CAM), AdamW
at a plain lr with a cosine decay by optimiser steps (not by epochs), the area and smoothness
terms warmed up linearly over the first steps, each image's own-label map in the loss, the
classifier's BatchNorm/Dropout kept in eval mode, and, with a held-out list, the epoch of
lowest held-out AD kept as the best (from that start the masked-image accuracy is saturated
from the first epoch on, so it cannot tell the epochs apart).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from utils.core.errors import UserValueError
from utils.training.optim import adjust_lr, build_optimizer

__all__ = [
    "HEAD_INITS",
    "OPTIMIZERS",
    "RECIPES",
    "SCHEDULES",
    "Recipe",
    "StepSchedule",
    "build_recipe_optimizer",
    "lr_schedules",
    "regularizer_weight",
]

OPTIMIZERS = ("sgd-reference", "adamw")
SCHEDULES = ("epoch-decay", "cosine-steps")
HEAD_INITS = ("random", "classifier")


@dataclass(frozen=True)
class Recipe:
    """The defaults a recipe gives the training flags of the same names."""

    optimizer: str
    lr: float
    lr_schedule: str
    warmup_steps: int
    head_init: str
    head_init_scale: float
    mask_loss_maps: str
    backbone_mode: str
    weight_decay: float
    best_by: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "reference": Recipe(
        optimizer="sgd-reference",
        lr=1e-4,
        lr_schedule="epoch-decay",
        warmup_steps=0,
        head_init="random",
        head_init_scale=1.0,
        mask_loss_maps="batch",
        backbone_mode="reference",
        weight_decay=5e-4,
        best_by="masked_accuracy",
    ),
    "small-data": Recipe(
        optimizer="adamw",
        lr=1e-3,
        lr_schedule="cosine-steps",
        warmup_steps=100,
        head_init="classifier",
        head_init_scale=0.1,
        mask_loss_maps="own",
        backbone_mode="frozen",
        weight_decay=0.0,
        best_by="ad",
    ),
}


def build_recipe_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float | None = None, fused: bool | None = None
) -> torch.optim.Optimizer:
    """``"sgd-reference"``: :func:`utils.training.optim.build_optimizer` (the authors', bit for
    bit; ``weight_decay`` must be None or its 5e-4). ``"adamw"``: AdamW on the trainable
    parameters at ``lr`` (weights and biases alike), ``weight_decay`` [0].

    Raises:
        ValueError: an unknown ``name``, a non-positive ``lr``, or a weight decay the
            reference optimiser does not have.
    """
    if name not in OPTIMIZERS:
        raise UserValueError(f"'optimizer' must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if not lr > 0:
        raise UserValueError(f"'lr' must be positive, got {lr!r}")
    if name == "sgd-reference":
        if weight_decay is not None and weight_decay != RECIPES["reference"].weight_decay:
            raise UserValueError(f"the reference optimiser has weight decay 5e-4; got {weight_decay!r}")
        return build_optimizer(model, lr, fused=fused)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not parameters:
        raise UserValueError("the model has no trainable parameter")
    group = {"params": parameters, "lr": lr, "initial_lr": lr}
    return torch.optim.AdamW([group], lr=lr, weight_decay=weight_decay or 0.0, fused=fused)


class StepSchedule:
    """A cosine decay of every group's lr by optimiser step: ``initial_lr * 0.5 * (1 +
    cos(pi * step / total_steps))``, down to 0 at ``total_steps`` (held there after).
    Stateless: the lr of a step depends on the step alone, so a resumed run gets the same lrs.
    """

    def __init__(self, total_steps: int) -> None:
        if total_steps < 1:
            raise UserValueError(f"'total_steps' must be >= 1, got {total_steps!r}")
        self.total_steps = total_steps

    def factor(self, step: int) -> float:
        progress = min(max(step, 0), self.total_steps) / self.total_steps
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set the lrs for global step ``step`` (0-based: the step about to be taken)."""
        factor = self.factor(step)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def regularizer_weight(step: int, warmup_steps: int) -> float:
    """The factor on the area and smoothness terms at global step ``step`` (0-based):
    ``min(1, (step + 1) / warmup_steps)``, a linear warm-up; exactly 1.0 without one."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def _no_epoch_schedule(optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """The lr is set per step (``cosine-steps``), not per epoch."""


def lr_schedules(lr_schedule: str, total_steps: int) -> tuple[StepSchedule | None, Callable]:
    """``(step_schedule, epoch_schedule)`` of a ``--lr_schedule`` value for :func:`utils.training.fit`
    (its ``TrainOptions.step_schedule`` and ``lr_schedule``): ``"epoch-decay"``: no step
    schedule and the reference's :func:`utils.training.optim.adjust_lr`; ``"cosine-steps"``:
    :class:`StepSchedule` over ``total_steps`` and nothing per epoch.

    Raises:
        ValueError: an unknown ``lr_schedule``.
    """
    if lr_schedule == "epoch-decay":
        return None, adjust_lr
    if lr_schedule == "cosine-steps":
        return StepSchedule(total_steps), _no_epoch_schedule
    raise UserValueError(f"'lr_schedule' must be one of {', '.join(SCHEDULES)}, got {lr_schedule!r}")
