"""Toy models for tests that need many images: a shallow, well-conditioned L-CAM."""

from __future__ import annotations

import torch

from models.lcam import LCAM

__all__ = ["TinyLCAM", "tiny_lcam"]


class TinyLCAM(LCAM):
    """A shallow L-CAM (two convolutions, 8 x 8 CAMs at 32 px) whose outputs are well
    conditioned (unlike a random ResNet-50 at init, whose predictions bf16 rounding can
    change), for tests of the evaluator and the explain command."""

    arch = "TinyLCAM"

    def __init__(self, num_classes: int = 6) -> None:
        super().__init__(in_channels=16, num_classes=num_classes)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(16, num_classes)

    def feature_maps(self, normalized_images: torch.Tensor) -> torch.Tensor:
        return self.features(normalized_images)

    def classify_feature_maps(self, feature_maps: torch.Tensor) -> torch.Tensor:
        return self.head(feature_maps.mean(dim=(2, 3)))


def tiny_lcam(num_classes: int = 6, seed: int = 3) -> TinyLCAM:
    """A seeded :class:`TinyLCAM` in eval mode, logits scaled to a useful spread."""
    torch.manual_seed(seed)
    model = TinyLCAM(num_classes).eval()
    with torch.no_grad():
        model.head.weight.mul_(5.0)
    return model
