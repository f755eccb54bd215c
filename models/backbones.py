"""Backbone families of the reference variants: VGG-16 (14x14 or 7x7 FMs) and ResNet-50.

Each family keeps the torchvision modules under the names the authors' snapshots use
(``features``/``classifier`` for VGG-16, ``conv1`` ... ``layer4``/``fc`` for ResNet-50),
says how to split the classifier at the feature layer, and registers its record
(:data:`VGG16_FAMILY`, :data:`RESNET50_FAMILY`).
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torchvision
from torch import nn

from models.families import BackboneFamily, register_family
from models.lcam import LCAM
from utils.core.checkpoint import CheckpointReadError, read_torch_file
from utils.core.errors import (
    UserError,
    UserFileNotFoundError,
    UserTypeError,
    UserValueError,
    abbreviate,
    state_dict_mismatch,
)

__all__ = [
    "RESNET50_FAMILY",
    "VGG16_FAMILY",
    "ResNet50LCAM",
    "TorchvisionLCAM",
    "VGG16LCAM",
    "WeightsDownloadError",
    "load_torchvision_classifier",
    "read_state_dict",
]

VGG16_CONV5_3 = 30  # features[:30]: conv5_3 + ReLU, 14 x 14 at 224 px
VGG16_POOL5 = 31  # features[:31]: after the last max-pool, 7 x 7 at 224 px


class WeightsDownloadError(UserError, RuntimeError):
    """torchvision could not download a backbone's weights (no internet, a proxy, a full disk)."""


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
            to a torchvision-format state_dict. (The commands' ``--backbone_weights``.)

    Returns:
        The model and a string naming its weights (stored in checkpoints).

    Raises:
        FileNotFoundError: a path that does not exist.
        WeightsDownloadError: torchvision could not download the weights (a RuntimeError).
        ValueError: ImageNet weights asked for with ``num_classes != 1000``; a weights file
            that is not a state_dict of this network (one line each).
    """
    if pretrained is True:
        pretrained = "IMAGENET1K_V1"
    if pretrained is None or pretrained is False or pretrained == "none":
        return builder(weights=None, num_classes=num_classes), "none"
    if not isinstance(pretrained, (str, os.PathLike)):
        raise UserTypeError(f"'pretrained' must be a bool, a weights name or a path, got {type(pretrained).__name__}")
    if isinstance(pretrained, str) and pretrained in weights_enum.__members__:
        if num_classes != 1000:
            raise UserValueError(
                f"the {weights_enum.__name__}.{pretrained} backbone weights are ImageNet weights with 1000 classes, "
                f"but num_classes={num_classes} (--num_classes): pass --backbone_weights none (pretrained=False) "
                f"for a randomly initialised backbone, or --backbone_weights PATH (pretrained=PATH) to a "
                f"{builder.__name__} state_dict with {num_classes} classes"
            )
        weights = weights_enum[pretrained]
        try:
            state_dict = weights.get_state_dict(progress=True)
        except Exception as error:  # network, proxy, disk: all mean the same to the user
            reason = " ".join(str(getattr(error, "reason", error)).split())[:120]
            raise WeightsDownloadError(
                f"could not download the {weights_enum.__name__}.{pretrained} backbone weights "
                f"({error.__class__.__name__}: {reason}); connect to the internet once (torchvision keeps them in "
                f"{torch.hub.get_dir()}), or pass --backbone_weights PATH (pretrained=PATH) to a {builder.__name__} "
                "state_dict file, or --backbone_weights none (pretrained=False) for random weights"
            ) from None
        return _with_weights(builder, num_classes, state_dict), f"{weights_enum.__name__}.{pretrained}"
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(
            f"backbone weights file not found: {path!r} (--backbone_weights takes a {builder.__name__} state_dict "
            f"file, a weights name of {list(weights_enum.__members__)}, or none)"
        )
    state_dict = read_state_dict(path, builder.__name__)
    return _with_weights(builder, num_classes, state_dict, source=path), os.path.abspath(path)


def read_state_dict(path: str | os.PathLike, network_name: str) -> dict[str, torch.Tensor]:
    """The state_dict in a backbone weights file (plain, or under a ``"state_dict"`` key).

    Raises:
        ValueError: the file cannot be read (empty, truncated, text, foreign pickle: one line
            saying which, see :func:`utils.checkpoint.read_torch_file`) or holds no state_dict.
    """
    path = os.fspath(path)
    try:
        state_dict = read_torch_file(path)
    except CheckpointReadError as error:
        raise UserValueError(f"{path}: backbone weights (--backbone_weights) unreadable: {error.reason}") from None
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not state_dict or not all(map(torch.is_tensor, state_dict.values())):
        kind = (
            f"a dict with keys {abbreviate(sorted(map(str, state_dict)))}"
            if isinstance(state_dict, dict)
            else (f"a {type(state_dict).__name__}")
        )
        raise UserValueError(
            f"{path}: not a {network_name} state_dict (--backbone_weights): it holds {kind}, not parameter tensors"
        )
    return state_dict


def _with_weights(builder: Callable[..., nn.Module], num_classes: int, state_dict: dict, source: str = "") -> nn.Module:
    """The model built without its (slow, discarded) random init, holding ``state_dict``.

    Raises:
        ValueError: naming the missing and unexpected keys, or the mismatching shapes.
    """
    with torch.device("meta"):
        model = builder(weights=None, num_classes=num_classes)
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if problem:
        where = f"{source!r} is" if source else "the weights are"
        raise UserValueError(f"{where} not a torchvision {builder.__name__} state_dict: {problem}")
    model.load_state_dict(state_dict, assign=True)
    return model


class TorchvisionLCAM(LCAM):
    """L-CAM on the torchvision classifier of its family's record (``builder``, ``weights``);
    a subclass takes that classifier (and its own settings) in ``__init__``."""

    @classmethod
    def load_network(cls, pretrained=True, num_classes: int = 1000, **settings) -> tuple[nn.Module, str]:
        """The torchvision classifier (see :func:`load_torchvision_classifier` for ``pretrained``)."""
        return load_torchvision_classifier(cls.family.builder, cls.family.weights, pretrained, num_classes)

    @classmethod
    def build(cls, arch: str, pretrained=True, num_classes: int = 1000, **settings) -> TorchvisionLCAM:
        """Build the variant ``arch``: the classifier of :meth:`load_network`, frozen, with an AM."""
        network, weights_name = cls.load_network(pretrained, num_classes)
        model = cls(network, **settings)
        model.arch, model.backbone_weights = arch, weights_name
        model.freeze_backbone()
        return model


class VGG16LCAM(TorchvisionLCAM):
    """L-CAM on VGG-16: FMs after ``features[:30]`` (conv5_3, 512 x 14 x 14) or
    ``features[:31]`` (pool5, 512 x 7 x 7)."""

    def __init__(self, vgg: torchvision.models.VGG, feature_end: int = VGG16_CONV5_3, **settings) -> None:
        if feature_end not in (VGG16_CONV5_3, VGG16_POOL5):
            raise UserValueError(f"'feature_end' must be {VGG16_CONV5_3} or {VGG16_POOL5}, got {feature_end!r}")
        super().__init__(in_channels=512, num_classes=vgg.classifier[-1].out_features, **settings)
        self.add_backbone_modules(
            features=vgg.features[:feature_end],
            pool5=nn.MaxPool2d(kernel_size=2, stride=2) if feature_end == VGG16_CONV5_3 else nn.Identity(),
            avgpool=nn.AdaptiveAvgPool2d((7, 7)),
            classifier=vgg.classifier,
        )

    def feature_maps(self, normalized_images: torch.Tensor) -> torch.Tensor:
        return self.features(normalized_images)

    def classify_feature_maps(self, feature_maps: torch.Tensor) -> torch.Tensor:
        pooled = self.avgpool(self.pool5(feature_maps))
        return self.classifier(torch.flatten(pooled, 1))


VGG16_FAMILY = register_family(
    BackboneFamily(
        name="vgg16",
        title="VGG-16",
        feature_layer=f"features[:{VGG16_CONV5_3}]",
        lcam_class=VGG16LCAM,
        builder=torchvision.models.vgg16,
        weights=torchvision.models.VGG16_Weights,
        target_layer=f"features[{VGG16_CONV5_3 - 1}]",  # features[29]: conv5_3's ReLU, the 14 x 14 maps
        epochs=8,
        train_list="VGG16_train.txt",
        rise_masks=4000,
    )
)


class ResNet50LCAM(TorchvisionLCAM):
    """L-CAM on ResNet-50: FMs after ``layer4`` (2048 x 7 x 7)."""

    def __init__(self, resnet: torchvision.models.ResNet, **settings) -> None:
        super().__init__(in_channels=resnet.fc.in_features, num_classes=resnet.fc.out_features, **settings)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")
        self.add_backbone_modules(**{name: getattr(resnet, name) for name in names})

    def feature_maps(self, normalized_images: torch.Tensor) -> torch.Tensor:
        stem = self.maxpool(self.relu(self.bn1(self.conv1(normalized_images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(stem))))

    def classify_feature_maps(self, feature_maps: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(feature_maps), 1))


RESNET50_FAMILY = register_family(
    BackboneFamily(
        name="resnet50",
        title="ResNet-50",
        feature_layer="layer4",
        lcam_class=ResNet50LCAM,
        builder=torchvision.models.resnet50,
        weights=torchvision.models.ResNet50_Weights,
        target_layer="layer4[-1]",  # the last bottleneck block (layer4's output)
        epochs=26,
        train_list="ResNet50_train.txt",
        rise_masks=8000,
    )
)
