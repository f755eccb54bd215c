"""The registry of L-CAM variants and backbone families.

``--arch`` names the module ``models/<arch>.py``, whose ``model`` builds the variant and names
its family; each family's record (:class:`models.families.BackboneFamily`: how to build its
classifier, where the attention mechanism reads it, what the baselines explain, the recipe's
defaults, the normalisation) is registered where its L-CAM class is defined.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from models.backbones import RESNET50_FAMILY, VGG16_FAMILY
from models.families import BackboneFamily, families, get_family
from models.generic import GENERIC_ARCH, GENERIC_FAMILY
from models.lcam import LCAM, LCAMLoss, LCAMOutput
from utils.core.errors import UserValueError

__all__ = [
    "ARCHS",
    "ARCH_CHOICES",
    "GENERIC",
    "GENERIC_FAMILY",
    "LCAM",
    "RESNET50_FAMILY",
    "VGG16_FAMILY",
    "BackboneFamily",
    "LCAMLoss",
    "LCAMOutput",
    "archs_of",
    "build_model",
    "families",
    "family_of",
    "get_family",
    "variant_builder",
]

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

GENERIC = GENERIC_ARCH  # L-CAM on any CNN (models/generic.py): settings backbone=..., layer=...
ARCH_CHOICES = (*ARCHS, GENERIC)


def variant_builder(arch: str) -> Callable[..., LCAM]:
    """``models.<arch>.model``: the builder of a registered variant (it carries ``family`` and
    ``settings``).

    Raises:
        ValueError: ``arch`` is not a registered variant (the message lists them).
    """
    if arch not in ARCH_CHOICES:
        raise UserValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCH_CHOICES)}")
    return importlib.import_module(f"models.{arch}").model


def build_model(
    arch: str, pretrained: Any = True, num_classes: int = 1000, backbone_mode: str = "reference", **settings
) -> LCAM:
    """``models.<arch>.model(...)`` for a variant named by string.

    Raises:
        ValueError: ``arch`` is not a registered variant (the message lists them).
    """
    return variant_builder(arch)(
        pretrained=pretrained, num_classes=num_classes, backbone_mode=backbone_mode, **settings
    )


def family_of(arch: str) -> BackboneFamily:
    """The backbone family the variant ``arch`` names in its file.

    Raises:
        ValueError: ``arch`` is not a registered variant.
    """
    return variant_builder(arch).family


def archs_of(family: BackboneFamily) -> tuple[str, ...]:
    """The registered variants of ``family``, in the order of :data:`ARCH_CHOICES`."""
    return tuple(arch for arch in ARCH_CHOICES if family_of(arch) is family)
