"""The registry of L-CAM variants: ``--arch`` names the module ``models/<arch>.py``."""

from __future__ import annotations

import importlib

from models.lcam import LCAM, LCAMLoss, LCAMOutput

__all__ = ["ARCHS", "ARCH_CHOICES", "GENERIC", "LCAM", "LCAMLoss", "LCAMOutput", "build_model"]

ARCHS = (
    "VGG16_L_CAM_Fm",
    "VGG16_L_CAM_FmA",
    "VGG16_L_CAM_Img",
    "VGG16_L_CAM_ImgA",
    "VGG16_7x7_L_CAM_Img",
    "ResNet50_L_CAM_Fm",
    "ResNet50_L_CAM_FmA",
    "ResNet50_L_CAM_Img",
    "ResNet50_L_CAM_ImgA",
)

GENERIC = "generic"  # L-CAM on any CNN (models/generic.py): settings backbone=..., layer=...
ARCH_CHOICES = (*ARCHS, GENERIC)


def build_model(
    arch: str, pretrained=True, num_classes: int = 1000, backbone_mode: str = "reference", **settings
) -> LCAM:
    """``models.<arch>.model(...)`` for a variant named by string.

    Raises:
        ValueError: ``arch`` is not a registered variant (the message lists them).
    """
    if arch not in ARCH_CHOICES:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCH_CHOICES)}")
    module = importlib.import_module(f"models.{arch}")
    return module.model(pretrained=pretrained, num_classes=num_classes, backbone_mode=backbone_mode, **settings)
