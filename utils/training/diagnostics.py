"""An opt-in look inside L-CAM training: every N steps, the gradient norm of each loss term at
the attention head's parameters, the sigmoid's saturation and the share of collapsed maps."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from utils.core.checkpoint import _unwrap
from utils.core.errors import UserValueError
from utils.core.files import write_json

__all__ = [
    "COLLAPSE_BELOW",
    "SATURATION_BOUNDS",
    "TERMS",
    "TermGradientProbe",
    "head_parameters",
    "own_mask_statistics",
    "save_gradient_curves",
    "term_gradient_norms",
]

TERMS = ("ce", "area", "smoothness")
SATURATION_BOUNDS = (0.01, 0.99)  # a mask value below the first or above the second is saturated
COLLAPSE_BELOW = 0.05  # an own-label mask whose mean is below this keeps (almost) none of the image
GRADIENTS_NAME = "term_gradients.json"


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of the model's attention mechanism (``attnM``).

    Raises:
        ValueError: the model has no ``attnM`` or none of its parameters is trainable.
    """
    head = getattr(_unwrap(model), "attnM", None)
    parameters = [parameter for parameter in head.parameters() if parameter.requires_grad] if head else []
    if not parameters:
        raise UserValueError("the model has no trainable attention mechanism ('attnM') to measure gradients at")
    return parameters


def term_gradient_norms(
    terms: dict[str, torch.Tensor], parameters: Sequence[torch.Tensor], regularizer_weight: float = 1.0
) -> dict[str, float]:
    """``{"grad_ce": ..., "grad_area": ..., "grad_smoothness": ...}``: the L2 norm, over all of
    ``parameters`` together, of the gradient of each term as minimised (area and smoothness
    times ``regularizer_weight``, the warm-up factor). The graph is kept for the step's own
    backward. A term that does not reach the parameters has norm 0."""
    norms = {}
    for name in TERMS:
        weight = 1.0 if name == "ce" else regularizer_weight
        term = terms[name] * weight
        if not term.requires_grad:
            norms[f"grad_{name}"] = 0.0
            continue
        gradients = torch.autograd.grad(term, list(parameters), retain_graph=True, allow_unused=True)
        squares = sum(float(gradient.detach().float().pow(2).sum()) for gradient in gradients if gradient is not None)
        norms[f"grad_{name}"] = math.sqrt(squares)
    return norms


@torch.no_grad()
def own_mask_statistics(cams: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Of the sigmoid of each image's own-label map: ``saturated`` (share of values outside
    :data:`SATURATION_BOUNDS`), ``mask_mean`` (mean value), ``collapsed`` (share of images
    whose map's mean is below :data:`COLLAPSE_BELOW`) and ``collapsed_by_class`` / ``images_by_class``
    (per class: the collapsed maps and the images of the batch)."""
    labels = labels.long()
    masks = torch.sigmoid(cams[torch.arange(cams.size(0), device=cams.device), labels].float())
    low, high = SATURATION_BOUNDS
    collapsed = masks.flatten(1).mean(1) < COLLAPSE_BELOW
    return {
        "saturated": float(((masks < low) | (masks > high)).float().mean()),
        "mask_mean": float(masks.mean()),
        "collapsed": float(collapsed.float().mean()),
        "collapsed_by_class": torch.bincount(labels[collapsed], minlength=num_classes).tolist(),
        "images_by_class": torch.bincount(labels, minlength=num_classes).tolist(),
    }


class TermGradientProbe:
    """Records :func:`term_gradient_norms` and :func:`own_mask_statistics` every ``every``
    global steps (the step about to be taken, 0-based: steps 0, N, 2N, ...) and writes them
    to ``term_gradients.json`` in the snapshot folder. It costs three extra backward passes
    through the loss at the recorded steps, nothing at the others.

    Raises:
        ValueError: ``every`` < 1.
    """

    def __init__(self, every: int) -> None:
        if not isinstance(every, int) or every < 1:
            raise UserValueError(f"'every' must be a positive integer, got {every!r}")
        self.every = every
        self.records: list[dict[str, Any]] = []

    def wants(self, global_step: int) -> bool:
        return global_step % self.every == 0

    def record(
        self,
        model: nn.Module,
        out: Any,
        terms: dict[str, torch.Tensor],
        labels: torch.Tensor,
        global_step: int,
        epoch: int,
        regularizer_weight: float = 1.0,
    ) -> dict[str, Any]:
        """Measure one step (before its backward) and keep the record; returns it."""
        entry: dict[str, Any] = {"step": global_step, "epoch": epoch, "regularizer_weight": regularizer_weight}
        entry.update({name: float(terms[name].detach()) for name in TERMS})
        entry.update(term_gradient_norms(terms, head_parameters(model), regularizer_weight))
        entry.update(own_mask_statistics(out.cams.detach(), labels, out.cams.size(1)))
        self.records.append(entry)
        return entry

    def write(self, snapshot_dir: str) -> str:
        """``term_gradients.json`` (``{"every": N, "records": [...]}``) and the figure
        ``term_gradients.png`` in ``snapshot_dir``; returns the JSON's path."""
        path = os.path.join(snapshot_dir, GRADIENTS_NAME)
        write_json(path, {"every": self.every, "records": self.records})
        save_gradient_curves(self.records, os.path.join(snapshot_dir, "term_gradients.png"))
        return path


def save_gradient_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> str:
    """Two panels over the global step: each term's gradient norm at the head (log scale),
    and the saturated and collapsed shares of the own-label masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [record["step"] for record in records]
    figure, (gradients, masks) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in TERMS:
        values = [max(record[f"grad_{name}"], 1e-12) for record in records]
        gradients.plot(steps, values, label=name)
    gradients.set_yscale("log")
    gradients.set_xlabel("global step")
    gradients.set_ylabel("gradient norm at the head")
    gradients.legend()
    for key, label in (("saturated", "saturated values"), ("collapsed", "collapsed maps"), ("mask_mean", "mask mean")):
        masks.plot(steps, [record[key] for record in records], label=label)
    masks.set_xlabel("global step")
    masks.set_ylim(-0.02, 1.02)
    masks.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return os.fspath(path)
