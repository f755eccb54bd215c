"""The L-CAM core: attention mechanism, Fm/Img masking, forward pass and loss.

L-CAM (Gkartzonika, Gkalelis, Mezaris, "Learning visual explanations for DCNN-based
image classifiers using an attention mechanism", ECCV 2022 Workshops) trains a 1x1
convolution (the attention mechanism, AM) on the frozen classifier's last feature maps
(FMs) so that it outputs one class activation map (CAM) per class. During training the
sigmoid of the label's CAM is multiplied with the FMs (``"feature_maps"``, L-CAM-Fm) or
with the upsampled input image (``"image"``, L-CAM-Img) and the frozen classifier must
still recognise the class, while the maps stay small and smooth:

    L = 1.5 * CE(masked logits, y) + 2 * mean((M + 5e-4) ** 0.3) + 0.01 * TV(M)

with ``TV`` the squared total variation plus a 0.3 border penalty divided by
``2 * batch size``. The "A" variants train with the cross-entropy term alone.

A backbone family subclasses :class:`LCAM`, implements :meth:`LCAM.load_network`,
:meth:`LCAM.feature_maps` and :meth:`LCAM.classify_feature_maps`, and registers its record
(:class:`models.families.BackboneFamily`); a variant is :func:`variant` with its family and a
few declarative arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.families import IMAGENET_MEAN, IMAGENET_STD, BackboneFamily, rgb_triple
from utils.core.errors import UserValueError

__all__ = [
    "APPLY_TO",
    "BACKBONE_MODES",
    "LOSSES",
    "MASK_LOSS_MAPS",
    "AttentionMechanism",
    "LCAM",
    "LCAMLoss",
    "LCAMOutput",
    "area_loss",
    "lcam_loss",
    "select_loss_maps",
    "smoothness_loss",
    "variant",
]

APPLY_TO = ("feature_maps", "image")
LOSSES = ("lcam", "ce")
BACKBONE_MODES = ("reference", "frozen")
MASK_LOSS_MAPS = ("batch", "own")

CE_COEF = 1.5
AREA_COEF = 2.0
SMOOTHNESS_COEF = 0.01
AREA_POWER = 0.3
AREA_EPS = 0.0005
SMOOTHNESS_POWER = 2
BORDER_PENALTY = 0.3


class LCAMOutput(NamedTuple):
    """What :meth:`LCAM.forward` returns.

    Attributes:
        logits: N x K classifier logits; of the masked pass when labels were given,
            of the plain pass otherwise.
        cams: N x K x h x w raw attention-mechanism output (before the sigmoid),
            computed from the unmasked image.
    """

    logits: torch.Tensor
    cams: torch.Tensor


class LCAMLoss(NamedTuple):
    """The training objective and its terms, each already multiplied by its coefficient."""

    total: torch.Tensor
    ce: torch.Tensor
    area: torch.Tensor
    smoothness: torch.Tensor


class AttentionMechanism(nn.Module):
    """One 1x1 convolution from the C feature maps to one CAM per class."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(in_channels, num_classes, kernel_size=1, padding=0, bias=True)

    def forward(self, feature_maps: torch.Tensor) -> torch.Tensor:
        return self.op(feature_maps)


def area_loss(masks: torch.Tensor) -> torch.Tensor:
    """``mean((masks + 0.0005) ** 0.3)`` (the offset keeps the gradient finite at 0)."""
    return ((masks + AREA_EPS) ** AREA_POWER).mean()


def smoothness_loss(masks: torch.Tensor) -> torch.Tensor:
    """Squared total variation plus a 0.3 border penalty, over ``2 * masks.size(0)``.

    As in the reference, the sum runs over every map of ``masks`` (B x K x h x w) but is
    divided by the batch size B only, so it grows with K.
    """
    vertical = (masks[:, :, 1:, :] - masks[:, :, :-1, :]).abs().pow(SMOOTHNESS_POWER).sum()
    horizontal = (masks[:, :, :, 1:] - masks[:, :, :, :-1]).abs().pow(SMOOTHNESS_POWER).sum()
    # The reference adds the four edges elementwise (square maps only); summing each edge
    # separately is the same number and also works for non-square maps.
    edges = (masks[:, :, -1, :], masks[:, :, 0, :], masks[:, :, :, -1], masks[:, :, :, 0])
    border = BORDER_PENALTY * sum(edge.pow(SMOOTHNESS_POWER).sum() for edge in edges)
    return (vertical + horizontal + border) / float(SMOOTHNESS_POWER * masks.size(0))


def select_loss_maps(cams: torch.Tensor, labels: torch.Tensor, mask_loss_maps: str = "batch") -> torch.Tensor:
    """The sigmoid maps the area and smoothness terms are computed on, in float32.

    ``"batch"`` follows the reference code (``a[:, labels]``): every image's maps for every
    label of the batch, N x N x h x w. ``"own"`` follows the paper: each image's map for
    its own label, N x 1 x h x w.
    """
    if mask_loss_maps == "batch":
        return torch.sigmoid(cams[:, labels].float())
    if mask_loss_maps == "own":
        return torch.sigmoid(_own_maps(cams, labels).float())
    raise UserValueError(f"'mask_loss_maps' must be one of {MASK_LOSS_MAPS}, got {mask_loss_maps!r}")


def lcam_loss(
    logits: torch.Tensor,
    cams: torch.Tensor,
    labels: torch.Tensor,
    loss: str = "lcam",
    mask_loss_maps: str = "batch",
) -> LCAMLoss:
    """The L-CAM objective (``get_loss`` of the reference), computed in float32.

    Args:
        logits: N x K masked-pass logits.
        cams: N x K x h x w raw AM output.
        labels: N class indices.
        loss: ``"lcam"`` (1.5 CE + 2 area + 0.01 smoothness) or ``"ce"`` (CE alone; area
            and smoothness are returned as zeros).
        mask_loss_maps: see :func:`select_loss_maps`.

    Returns:
        :class:`LCAMLoss` with ``total`` and its weighted terms.
    """
    labels = labels.long()
    cross_entropy = F.cross_entropy(logits.float(), labels)
    if loss == "ce":
        zero = cross_entropy.new_zeros(())
        return LCAMLoss(cross_entropy, cross_entropy, zero, zero)
    if loss != "lcam":
        raise UserValueError(f"'loss' must be one of {LOSSES}, got {loss!r}")
    # Select the maps before converting them: under autocast the float32 copy (and its
    # gradient) then covers N x N maps, not all N x K.
    masks = select_loss_maps(cams, labels, mask_loss_maps)
    ce = CE_COEF * cross_entropy
    area = AREA_COEF * area_loss(masks)
    smoothness = SMOOTHNESS_COEF * smoothness_loss(masks)
    return LCAMLoss(ce + area + smoothness, ce, area, smoothness)


def _own_maps(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each image's map for its own label, N x 1 x h x w."""
    return cams[torch.arange(cams.size(0), device=cams.device), labels].unsqueeze(1)


class LCAM(nn.Module):
    """A frozen classifier with a trainable attention mechanism on its feature maps.

    Subclasses register the classifier's modules as direct children (so the state-dict
    keys are those of the authors' snapshots) and implement :meth:`feature_maps`,
    :meth:`classify_feature_maps` and :meth:`classify`. The AM is the child ``attnM``.

    Args:
        in_channels: channels of the feature maps the AM reads.
        num_classes: number of classes (CAMs).
        apply_cam_to: ``"feature_maps"`` (L-CAM-Fm) or ``"image"`` (L-CAM-Img).
        loss: ``"lcam"`` or ``"ce"`` (the "A" variants).
        backbone_mode: ``"reference"``: ``train()``/``eval()`` act on the whole model as in
            the authors' code (dropout on in the masked pass, BatchNorm statistics drift);
            ``"frozen"``: the backbone stays in eval mode whatever ``train()`` says.
        mask_loss_maps: ``"batch"`` (reference, N x N maps) or ``"own"`` (paper) maps in
            the loss; see :func:`select_loss_maps`.
        normalize_first_pass: whether the pass that feeds the AM sees the normalised
            image. Only ResNet50_L_CAM_ImgA sets it False by default (reference quirk).
        mean, std: the normalisation of the [0, 1] images (per RGB channel) [the family's;
            ImageNet's for a class of no family].

    Attributes:
        family: the class's backbone family (set when the family is registered, see
            :func:`models.families.register_family`); None for a class of no family.
        interpolation: the resize filter of the images the network expects (a torchvision
            ``InterpolationMode`` name), for the commands' transforms: ``"bilinear"``.
        image_sizes: the (Resize of the smaller edge, square crop) of the images it expects,
            the commands' ``--input_size``/``--crop_size`` when not given: the reference's
            ``(256, 224)``.
    """

    arch: str = "LCAM"
    interpolation: str = "bilinear"
    image_sizes: tuple[int, int] = (256, 224)
    family: ClassVar[BackboneFamily | None] = None

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 1000,
        apply_cam_to: str = "image",
        loss: str = "lcam",
        backbone_mode: str = "reference",
        mask_loss_maps: str = "batch",
        normalize_first_pass: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_choice("apply_cam_to", apply_cam_to, APPLY_TO)
        _check_choice("loss", loss, LOSSES)
        _check_choice("backbone_mode", backbone_mode, BACKBONE_MODES)
        _check_choice("mask_loss_maps", mask_loss_maps, MASK_LOSS_MAPS)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise UserValueError(f"'num_classes' must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.apply_cam_to = apply_cam_to
        self.loss_name = loss
        self.backbone_mode = backbone_mode
        self.mask_loss_maps = mask_loss_maps
        self.normalize_first_pass = normalize_first_pass
        family_mean, family_std = (self.family.mean, self.family.std) if self.family else (IMAGENET_MEAN, IMAGENET_STD)
        self.normalization = (
            rgb_triple(family_mean if mean is None else mean, "mean"),
            rgb_triple(family_std if std is None else std, "std"),
        )
        self.register_buffer("mean", torch.tensor(self.normalization[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.normalization[1]).view(1, 3, 1, 1), persistent=False)
        self.attnM = AttentionMechanism(in_channels, num_classes)

    # -- what a backbone family provides -------------------------------------------------
    @classmethod
    def load_network(cls, pretrained: Any = True, num_classes: int = 1000, **settings) -> tuple[nn.Module, str]:
        """The family's classifier alone (images normalised with ``mean``/``std`` -> logits)
        and a string naming its weights."""
        raise NotImplementedError

    def feature_maps(self, normalized_images: torch.Tensor) -> torch.Tensor:
        """The FMs the AM reads (N x C x h x w)."""
        raise NotImplementedError

    def classify_feature_maps(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """The rest of the classifier after :meth:`feature_maps` (the Fm masked pass)."""
        raise NotImplementedError

    def classify(self, normalized_images: torch.Tensor) -> torch.Tensor:
        """The whole classifier (the Img masked pass)."""
        return self.classify_feature_maps(self.feature_maps(normalized_images))

    # -- the shared core -------------------------------------------------------------------
    def add_backbone_modules(self, **modules: nn.Module) -> None:
        """Register the classifier's modules as children, before ``attnM``: parameters and
        state-dict keys then come in the reference's order (backbone first), so the
        authors' optimizer states line up with :func:`utils.optim.build_optimizer`'s."""
        attention = self._modules.pop("attnM")
        for name, module in modules.items():
            self.add_module(name, module)
        self._modules["attnM"] = attention

    def freeze_backbone(self) -> None:
        """Stop gradients to every parameter but the attention mechanism's."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name.startswith("attnM."))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's normalisation (ImageNet's for the reference variants) of images in [0, 1]."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def train(self, mode: bool = True) -> LCAM:
        super().train(mode)
        if self.backbone_mode == "frozen":
            for child in self.children():
                if child is not self.attnM:
                    child.train(False)
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> LCAMOutput:
        """Classify ``images`` (N x 3 x H x W, RGB in [0, 1]) and compute all CAMs.

        With ``labels`` (training path) the sigmoid of each image's own-label CAM masks
        the FMs or the image and ``logits`` come from that masked pass; without, they are
        the plain classifier's. ``cams`` are always the raw AM output of the unmasked image.
        """
        if images.dim() != 4 or images.size(1) != 3:
            raise UserValueError(f"'images' must be N x 3 x H x W, got shape {tuple(images.shape)}")
        normalized = self.normalize(images)
        # Reference quirk (ResNet50_L_CAM_ImgA): the AM's pass sees the unnormalised image.
        feature_maps = self.feature_maps(normalized if self.normalize_first_pass else images)
        cams = self.attnM(feature_maps)
        if labels is None:
            if self.normalize_first_pass:
                logits = self.classify_feature_maps(feature_maps)
            else:
                logits = self.classify(normalized)
            return LCAMOutput(logits, cams)
        if labels.shape != (images.size(0),):
            raise UserValueError(f"'labels' must have shape ({images.size(0)},), got {tuple(labels.shape)}")
        own_masks = torch.sigmoid(_own_maps(cams, labels.long()))
        if self.apply_cam_to == "feature_maps":
            logits = self.classify_feature_maps(feature_maps * own_masks)
        else:
            # The reference upsamples to a hard-coded 224 x 224; we use the input's size.
            upsampled = F.interpolate(own_masks, size=images.shape[-2:], mode="bilinear", align_corners=False)
            logits = self.classify(self.normalize(images * upsampled))
        return LCAMOutput(logits, cams)

    def loss(self, out: LCAMOutput, labels: torch.Tensor) -> LCAMLoss:
        """The training objective of this variant for a training-path output."""
        return lcam_loss(out.logits, out.cams, labels, self.loss_name, self.mask_loss_maps)

    def build_settings(self) -> dict[str, Any]:
        """The keyword settings that rebuild this model with its family's ``build``
        (stored in checkpoints)."""
        return {
            "apply_cam_to": self.apply_cam_to,
            "loss": self.loss_name,
            "backbone_mode": self.backbone_mode,
            "mask_loss_maps": self.mask_loss_maps,
            "normalize_first_pass": self.normalize_first_pass,
        }

    @property
    def backbone_label(self) -> str:
        """The classifier this model explains, for tables and file names: its family's name
        (``"vgg16"``), or the class's name for a model of no family."""
        return self.family.name if self.family else type(self).__name__

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes: the AM's parameters and every buffer (BatchNorm statistics
        drift in reference mode)."""
        trainable = {name for name, parameter in self.named_parameters() if parameter.requires_grad}
        buffers = {name for name, _ in self.named_buffers()}
        return {key: value for key, value in self.state_dict().items() if key in trainable | buffers}

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, apply_cam_to={self.apply_cam_to!r}, loss={self.loss_name!r}, "
            f"backbone_mode={self.backbone_mode!r}, mask_loss_maps={self.mask_loss_maps!r}"
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserValueError(f"{name!r} must be one of {choices}, got {value!r}")


def variant(family: BackboneFamily, arch: str, doc: str, **settings) -> Callable[..., LCAM]:
    """Make the ``model(pretrained=True, num_classes=1000, backbone_mode="reference")``
    builder of a named variant: ``family.lcam_class.build(arch=arch, **settings, **kwargs)``.
    The builder keeps its ``family`` and ``settings`` as attributes."""

    def model(pretrained=True, num_classes: int = 1000, backbone_mode: str = "reference", **kwargs) -> LCAM:
        options = {**settings, **kwargs}
        return family.lcam_class.build(
            arch=arch, pretrained=pretrained, num_classes=num_classes, backbone_mode=backbone_mode, **options
        )

    model.__doc__ = doc
    model.__name__ = "model"
    model.__qualname__ = f"{arch}.model"
    model.family = family
    model.settings = dict(settings)
    return model
