"""One record per backbone family: everything the commands need to know about a classifier
that L-CAM explains, in one place (as timm keeps a model's default config beside it).

A family is registered where its L-CAM class is defined (:mod:`models.backbones` for VGG-16
and ResNet-50, :mod:`models.generic` for any other CNN), and every variant file names its
family (``variant(VGG16_FAMILY, "VGG16_L_CAM_Img", ...)``). The commands, the bench and the
baselines ask the record (:func:`models.family_of` for an ``--arch``, :func:`get_family` for a
family name, ``model.family`` for a built model), never the arch's spelling.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from torch import nn
from torchvision.transforms import InterpolationMode

from utils.core.errors import UserValueError, closest_names

if TYPE_CHECKING:
    import torchvision

    from models.lcam import LCAM

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneFamily",
    "families",
    "find_submodule",
    "get_family",
    "interpolation_mode",
    "register_family",
    "rgb_triple",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PATH_PART = re.compile(r"^(?P<name>\w+)(?:\[(?P<index>-?\d+)\])?$")


@dataclass(frozen=True)
class BackboneFamily:
    """The facts about one backbone family.

    Attributes:
        name: the family's name in the commands (``--classifier NAME=...``, the bench's
            ``--families``, the "backbone" column of the comparison).
        title: the name people write (``"VGG-16"``).
        feature_layer: the modules whose output the attention mechanism reads, as written in
            the model (``"features[:30]"``), or how the model chooses them.
        lcam_class: the family's L-CAM class; its ``build`` makes every variant and its
            ``load_network`` the classifier alone.
        builder: the torchvision builder of the classifier (``torchvision.models.vgg16``);
            None when the network is a setting of each model (generic: ``backbone=``).
        weights: the builder's weights enum (``VGG16_Weights``); None with ``builder``.
        target_layer: the module whose output the gradient baselines explain, a path such as
            ``"features[29]"`` or ``"layer4[-1]"`` resolved by :func:`find_submodule`; None:
            the feature maps the model's attention mechanism reads (generic).
        epochs: training epochs of the reference recipe.
        train_list: default training datalist, a file name under ``datalist/ILSVRC/``; None:
            ``--train_list`` must be given.
        rise_masks: RISE's number of masks N in the reference comparison.
        mean, std: the normalisation of [0, 1] RGB images before the classifier (a generic
            model records its own, see :class:`models.generic.GenericLCAM`).
    """

    name: str
    title: str
    feature_layer: str
    lcam_class: type[LCAM]
    builder: Callable[..., nn.Module] | None
    weights: type[torchvision.models.WeightsEnum] | None
    target_layer: str | None
    epochs: int
    train_list: str | None
    rise_masks: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def find_target_layer(self, network: nn.Module) -> nn.Module | None:
        """The module :attr:`target_layer` names in ``network``; None when ``network`` has no
        such module (or the family names none)."""
        return find_submodule(network, self.target_layer) if self.target_layer else None

    def load_classifier(self, pretrained: Any = True, num_classes: int = 1000, **settings) -> tuple[nn.Module, str]:
        """The family's classifier alone and a string naming its weights (``pretrained`` as
        ``models.<arch>.model``'s; generic: ``backbone=`` names the network)."""
        return self.lcam_class.load_network(pretrained, num_classes, **settings)


def find_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path`` in ``root``: dotted names, each with an optional index into a
    sequence (``"features[29]"``, ``"layer4[-1]"``, ``"network.layer4"``); None when absent."""
    module = root
    for part in path.split("."):
        match = _PATH_PART.match(part)
        if match is None:
            raise UserValueError(f"module path {path!r}: {part!r} is not 'name' or 'name[index]'")
        module = getattr(module, match["name"], None)
        if match["index"] is not None:
            if not isinstance(module, (nn.Sequential, nn.ModuleList)):
                return None
            index = int(match["index"])
            if not -len(module) <= index < len(module):
                return None
            module = module[index]
        if not isinstance(module, nn.Module):
            return None
    return module


_FAMILIES: dict[str, BackboneFamily] = {}


def register_family(family: BackboneFamily) -> BackboneFamily:
    """Add ``family`` to the registry and give its L-CAM class its record (``lcam_class.family``).

    Raises:
        ValueError: a family of that name is already registered.
    """
    if family.name in _FAMILIES:
        raise UserValueError(f"a backbone family named {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    family.lcam_class.family = family
    return family


def families() -> tuple[BackboneFamily, ...]:
    """Every registered family, in the order of registration."""
    return tuple(_FAMILIES.values())


def get_family(name: str) -> BackboneFamily:
    """The family registered as ``name``.

    Raises:
        UserValueError: an unknown name (with the closest registered names).
    """
    if name not in _FAMILIES:
        raise UserValueError(f"unknown backbone family {name!r}; {closest_names(name, _FAMILIES)}")
    return _FAMILIES[name]


def interpolation_mode(name: str = "bilinear") -> InterpolationMode:
    """torchvision's resize interpolation by name (``"bilinear"``, ``"bicubic"``, ``"nearest"``...).

    Raises:
        ValueError: no such interpolation.
    """
    try:
        return InterpolationMode(name)
    except ValueError:
        names = ", ".join(mode.value for mode in InterpolationMode)
        raise UserValueError(f"unknown interpolation {name!r} (one of {names})") from None


def rgb_triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    """``values`` (a normalisation mean or std) as three floats, one per RGB channel.

    Raises:
        UserValueError: not three numbers.
    """
    triple = tuple(float(value) for value in values)
    if len(triple) != 3:
        raise UserValueError(f"{name!r} must hold 3 numbers (one per RGB channel), got {list(values)!r}")
    return triple  # type: ignore[return-value]
