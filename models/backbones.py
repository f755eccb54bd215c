"""Backbone families of the reference variants: VGG-16 (14x14 or 7x7 FMs) and ResNet-50.

Each family keeps the torchvision modules under the names the authors' snapshots use
(``features``/``classifier`` for VGG-16, ``conv1`` ... ``layer4``/``fc`` for ResNet-50)
and says how to split the classifier at the feature layer.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torchvision
from torch import nn

from models.lcam import LCAM
from utils.errors import state_dict_mismatch

__all__ = ["ResNet50LCAM", "VGG16LCAM", "load_torchvision_classifier"]

VGG16_CONV5_3 = 30  # features[:30]: conv5_3 + ReLU, 14 x 14 at 224 px
VGG16_POOL5 = 31  # features[:31]: after the last max-pool, 7 x 7 at 224 px


def load_torchvision_classifier(
    builder: Callable[..., nn.Module],
    weights_enum: type[torchvision.models.WeightsEnum],
    pretrained: bool | str | os.PathLike | None,
    num_classes: int = 1000,
) -> tuple[nn.Module, str]:
    """Build a torchvision classifier and load its weights.

    Args:
        builder: e.g. ``torchvision.models.vgg16``.
        weights_enum: e.g. ``torchvision.models.VGG16_Weights``.
        pretrained: ``True`` = the ImageNet weights the reference used (``IMAGENET1K_V1``,
            downloaded by torchvision on first use); ``False``/``None``/``"none"`` = random
            init; the name of a member of ``weights_enum`` (``"IMAGENET1K_V2"``); or a path
            to a torchvision-format state_dict.

    Returns:
        The model and a string naming its weights (stored in checkpoints).

    Raises:
        FileNotFoundError: a path that does not exist.
        RuntimeError: torchvision could not download the weights.
        ValueError: ImageNet weights asked for with ``num_classes != 1000``.
    """
    if pretrained is True:
        pretrained = "IMAGENET1K_V1"
    if pretrained is None or pretrained is False or pretrained == "none":
        return builder(weights=None, num_classes=num_classes), "none"
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"'pretrained' must be a bool, a weights name or a path, got {type(pretrained).__name__}")
    if isinstance(pretrained, str) and pretrained in weights_enum.__members__:
        if num_classes != 1000:
            raise ValueError(
                f"'pretrained={pretrained}' are ImageNet weights with 1000 classes, but num_classes={num_classes}; "
                "use pretrained=False or a state_dict with that many classes"
            )
        weights = weights_enum[pretrained]
        try:
            state_dict = weights.get_state_dict(progress=True)
        except Exception as error:  # network, proxy, disk: all mean the same to the user
            raise RuntimeError(
                f"could not download the {weights_enum.__name__}.{pretrained} weights ({error.__class__.__name__}: "
                f"{error}); connect to the internet, or pass pretrained=<path to a torchvision state_dict>"
            ) from error
        return _with_weights(builder, num_classes, state_dict), f"{weights_enum.__name__}.{pretrained}"
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone weights file not found: {path!r} (expected a torchvision state_dict, a name in "
            f"{list(weights_enum.__members__)}, True or False)"
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state_dict, dict) and "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    try:
        model = _with_weights(builder, num_classes, state_dict)
    except ValueError as error:
        raise ValueError(f"{path!r} is not a torchvision {builder.__name__} state_dict: {error}") from error
    return model, os.path.abspath(path)


def _with_weights(builder: Callable[..., nn.Module], num_classes: int, state_dict: dict) -> nn.Module:
    """The model built without its (slow, discarded) random init, holding ``state_dict``.

    Raises:
        ValueError: naming the missing and unexpected keys, or the mismatching shapes.
    """
    with torch.device("meta"):
        model = builder(weights=None, num_classes=num_classes)
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if problem:
        raise ValueError(problem)
    model.load_state_dict(state_dict, assign=True)
    return model


class VGG16LCAM(LCAM):
    """L-CAM on VGG-16: FMs after ``features[:30]`` (conv5_3, 512 x 14 x 14) or
    ``features[:31]`` (pool5, 512 x 7 x 7)."""

    def __init__(self, vgg: torchvision.models.VGG, feature_end: int = VGG16_CONV5_3, **settings) -> None:
        if feature_end not in (VGG16_CONV5_3, VGG16_POOL5):
            raise ValueError(f"'feature_end' must be {VGG16_CONV5_3} or {VGG16_POOL5}, got {feature_end!r}")
        super().__init__(in_channels=512, num_classes=vgg.classifier[-1].out_features, **settings)
        self.add_backbone_modules(
            features=vgg.features[:feature_end],
            pool5=nn.MaxPool2d(kernel_size=2, stride=2) if feature_end == VGG16_CONV5_3 else nn.Identity(),
            avgpool=nn.AdaptiveAvgPool2d((7, 7)),
            classifier=vgg.classifier,
        )

    @classmethod
    def build(cls, arch: str, pretrained=True, num_classes: int = 1000, feature_end: int = VGG16_CONV5_3, **settings):
        """Build the variant ``arch`` with torchvision's VGG-16 (see
        :func:`load_torchvision_classifier` for ``pretrained``)."""
        vgg, weights_name = load_torchvision_classifier(
            torchvision.models.vgg16, torchvision.models.VGG16_Weights, pretrained, num_classes
        )
        model = cls(vgg, feature_end=feature_end, **settings)
        model.arch, model.backbone_weights = arch, weights_name
        model.freeze_backbone()
        return model

    def feature_maps(self, normalized_images: torch.Tensor) -> torch.Tensor:
        return self.features(normalized_images)

    def classify_feature_maps(self, feature_maps: torch.Tensor) -> torch.Tensor:
        pooled = self.avgpool(self.pool5(feature_maps))
        return self.classifier(torch.flatten(pooled, 1))


class ResNet50LCAM(LCAM):
    """L-CAM on ResNet-50: FMs after ``layer4`` (2048 x 7 x 7)."""

    def __init__(self, resnet: torchvision.models.ResNet, **settings) -> None:
        super().__init__(in_channels=resnet.fc.in_features, num_classes=resnet.fc.out_features, **settings)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")
        self.add_backbone_modules(**{name: getattr(resnet, name) for name in names})

    @classmethod
    def build(cls, arch: str, pretrained=True, num_classes: int = 1000, **settings):
        """Build the variant ``arch`` with torchvision's ResNet-50 (see
        :func:`load_torchvision_classifier` for ``pretrained``)."""
        resnet, weights_name = load_torchvision_classifier(
            torchvision.models.resnet50, torchvision.models.ResNet50_Weights, pretrained, num_classes
        )
        model = cls(resnet, **settings)
        model.arch, model.backbone_weights = arch, weights_name
        model.freeze_backbone()
        return model

    def feature_maps(self, normalized_images: torch.Tensor) -> torch.Tensor:
        stem = self.maxpool(self.relu(self.bn1(self.conv1(normalized_images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(stem))))

    def classify_feature_maps(self, feature_maps: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(feature_maps), 1))
