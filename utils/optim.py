"""The reference optimiser (``my_optim.get_finetune_optimizer``) and its per-epoch decay
(``my_optim.reduce_lr``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DECAY_FACTOR", "LAST_DECAY_EPOCH", "adjust_lr", "build_optimizer", "lr_at_epoch"]

WEIGHT_LR_SCALE = 100.0
BIAS_LR_SCALE = 200.0
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
DECAY_FACTOR = 0.75
LAST_DECAY_EPOCH = 22


def build_optimizer(model: nn.Module, lr: float = 1e-4, fused: bool | None = None) -> torch.optim.SGD:
    """SGD (momentum 0.9, Nesterov, weight decay 5e-4) over the trainable parameters:
    weights at ``100 * lr``, biases at ``200 * lr``.

    ``fused=True`` uses PyTorch's fused kernel (one launch per step; with fp16 on CUDA it
    also lets the grad scaler skip a host sync per step); ``None`` lets PyTorch choose.

    The reference builds four groups but a condition that is always true sends every
    parameter to the last two (x100 and x200); parameters without gradients (the frozen
    backbone) never step, so only the trainable ones are passed here.
    """
    if lr <= 0:
        raise ValueError(f"'lr' must be positive, got {lr!r}")
    weights, biases = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (biases if name.endswith("bias") else weights).append(parameter)
    if not weights and not biases:
        raise ValueError("the model has no trainable parameter")
    groups = [
        {"params": weights, "lr": lr * WEIGHT_LR_SCALE, "initial_lr": lr * WEIGHT_LR_SCALE},
        {"params": biases, "lr": lr * BIAS_LR_SCALE, "initial_lr": lr * BIAS_LR_SCALE},
    ]
    return torch.optim.SGD(
        [group for group in groups if group["params"]],
        lr=lr,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        nesterov=True,
        fused=fused,
    )


def lr_at_epoch(initial_lr: float, epoch: int) -> float:
    """``initial_lr * 0.75 ** min(epoch, 22)``: the lr in force during ``epoch`` (0-based)."""
    if epoch < 0:
        raise ValueError(f"'epoch' must be >= 0, got {epoch!r}")
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
