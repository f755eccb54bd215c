"""What every explainer offers: ``explain(images, classes) -> maps``, and what a classifier is."""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch

__all__ = ["Classifier", "Explainer"]

# A classifier: images N x 3 x H x W in [0, 1] -> logits N x K.
Classifier = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class Explainer(Protocol):
    """What :func:`evaluate` needs from an explanation method."""

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Raw saliency maps (N x 1 x h x w, any h, w, any range) of ``classes`` (N)
        for ``images`` (N x 3 x H x W in [0, 1], on the device)."""
        ...
