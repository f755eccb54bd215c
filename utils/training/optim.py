"""The reference optimiser (``my_optim.get_finetune_optimizer``) and its per-epoch decay
(``my_optim.reduce_lr``)."""

from __future__ import annotations

import torch
from torch import nn

from utils.core.errors import UserValueError

__all__ = ["DECAY_FACTOR", "LAST_DECAY_EPOCH", "adjust_lr", "build_optimizer", "lr_at_epoch", "trainable_lrs"]

WEIGHT_LR_SCALE = 100.0
BIAS_LR_SCALE = 200.0
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
DECAY_FACTOR = 0.75
LAST_DECAY_EPOCH = 22


def build_optimizer(model: nn.Module, lr: float = 1e-4, fused: bool | None = None) -> torch.optim.SGD:
    """SGD (momentum 0.9, Nesterov, weight decay 5e-4) in the reference's four groups:
    ``[]`` at ``lr``, ``[]`` at ``2 * lr``, every weight at ``100 * lr``, every bias at
    ``200 * lr``.

    As in the reference, a condition that is always true sends every named parameter
    (frozen ones too) to the last two groups; the frozen ones never get a gradient, so they
    never step, and the layout is the reference's, so the optimizer state saved in the
    authors' snapshots loads into this one.

    ``fused=True`` uses PyTorch's fused kernel (one launch per step; with fp16 on CUDA it
    also lets the grad scaler skip a host sync per step); ``None`` lets PyTorch choose.
    """
    if lr <= 0:
        raise UserValueError(f"'lr' must be positive, got {lr!r}")
    named = list(model.named_parameters())
    if not any(parameter.requires_grad for _, parameter in named):
        raise UserValueError("the model has no trainable parameter")
    scales = (1.0, 2.0, WEIGHT_LR_SCALE, BIAS_LR_SCALE)
    members = (
        [],
        [],
        [p for n, p in named if "weight" in n],
        [p for n, p in named if "weight" not in n and "bias" in n],
    )
    groups = [{"params": params, "lr": lr * scale, "initial_lr": lr * scale} for params, scale in zip(members, scales)]
    return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True, fused=fused)


def trainable_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """The lr of each group that holds a trainable parameter (the reference's two empty
    groups and the frozen backbone left out): ``[weights lr, biases lr]`` for L-CAM."""
    return [group["lr"] for group in optimizer.param_groups if any(p.requires_grad for p in group["params"])]


def lr_at_epoch(initial_lr: float, epoch: int) -> float:
    """``initial_lr * 0.75 ** min(epoch, 22)``: the lr in force during ``epoch`` (0-based)."""
    if epoch < 0:
        raise UserValueError(f"'epoch' must be >= 0, got {epoch!r}")
    return initial_lr * DECAY_FACTOR ** min(epoch, LAST_DECAY_EPOCH)


def adjust_lr(optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Set every group's lr for ``epoch``; call before each epoch.

    The reference multiplies every lr by 0.75 before each epoch 1..22. This sets the same
    value from each group's ``initial_lr`` instead, so calling it again, or after resuming,
    gives the same lr.
    """
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = lr_at_epoch(group["initial_lr"], epoch)
