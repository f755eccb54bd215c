"""One optimiser step of a model with a ``loss(out, labels)``: forward and loss under autocast, backward, step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from utils.core.checkpoint import _unwrap
from utils.core.runtime import autocast

__all__ = ["OptimizerStep", "StepOutput", "loss_terms"]


class StepOutput(NamedTuple):
    """What one step computed: the forward's output and the loss terms (name -> scalar
    tensor, ``"loss"`` first: the total that was minimised). Nothing is read back to the host."""

    out: Any
    terms: dict[str, torch.Tensor]


def loss_terms(loss: Any) -> dict[str, torch.Tensor]:
    """Name -> tensor of a loss result: an :class:`models.lcam.LCAMLoss` (its ``total`` is
    reported as ``loss``, first) or a plain scalar tensor."""
    if torch.is_tensor(loss):
        return {"loss": loss}
    terms = loss._asdict()
    return {"loss": terms.pop("total"), **terms}


class OptimizerStep:
    """The one place where a training step is written, for the training loop and the bench.

    Calling it with a batch on the device does: ``optimizer.zero_grad(set_to_none=True)``;
    the forward ``forward_model(images, labels)`` and ``model.loss(out, labels)`` inside the
    autocast context of ``amp`` (for the images' device); backward and ``optimizer.step()``,
    through ``scaler`` when it is enabled (fp16 on CUDA). One optimiser step per call.

    Args:
        model: the model whose ``loss`` is used (a DDP or compiled wrapper is unwrapped).
        optimizer: steps the model's trainable parameters.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (see :func:`utils.core.runtime.autocast`).
        scaler: a gradient scaler (:func:`utils.core.runtime.grad_scaler`); None or disabled: none.
        forward_model: what runs the forward pass (a DDP or compiled wrapper of ``model``);
            default ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        amp: str = "none",
        scaler: torch.amp.GradScaler | None = None,
        forward_model: nn.Module | None = None,
    ) -> None:
        self.forward = forward_model if forward_model is not None else model
        self.loss = _unwrap(model).loss
        self.optimizer = optimizer
        self.amp = amp
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        regularizer_weight: float = 1.0,
        probe: Callable[[Any, dict[str, torch.Tensor]], Any] | None = None,
    ) -> StepOutput:
        """One step; ``regularizer_weight`` < 1 scales the area and smoothness terms of an
        L-CAM loss in the total minimised (a warm-up; the terms are reported unscaled).
        ``probe(out, terms)`` is called after the loss and before the backward (e.g.
        :meth:`utils.training.diagnostics.TermGradientProbe.record`, which keeps the graph)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(images.device, self.amp):
            out = self.forward(images, labels)
            terms = loss_terms(self.loss(out, labels))
            if regularizer_weight != 1.0 and "area" in terms:
                terms["loss"] = terms["ce"] + regularizer_weight * (terms["area"] + terms["smoothness"])
        if probe is not None:
            probe(out, terms)
        total = terms["loss"]
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        return StepOutput(out, terms)
