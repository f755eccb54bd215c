"""Baseline explainers of the L-CAM comparison (Grad-CAM, Grad-CAM++, Score-CAM, RISE) and
pytorch-grad-cam's catalogue, behind one interface and one registry.

Every explainer has ``explain(images, classes) -> maps``: ``images`` N x 3 x H x W RGB in
[0, 1] on the classifier's device, ``classes`` N class indices (the explained class, the
prediction k in the L-CAM protocol), ``maps`` N x 1 x h x w float32 saliency maps in [0, 1]
(min-max normalised per image). The evaluator (:mod:`utils.evaluation`) then min-max
normalises them again (a no-op up to rounding), upsamples them bilinearly
(``align_corners=False``) to H x W, keeps the top pixels and masks the [0, 1] image.

What each method returns (as in the paper's comparison; the reference used a third-party ``cam.py`` and
the RISE authors' code, whose formulas are reproduced here):

============================  ============  ==========================================
name                          resolution    map
============================  ============  ==========================================
``gradcam``                   h x w         ReLU(sum_c mean(g_c) A_c) on the logits,
                                            computed by ``pytorch_grad_cam.GradCAM``
                                            (identical to the reference, see the tests)
``gradcampp``                 h x w         reference Grad-CAM++ on the softmax output
``scorecam``                  H x W         reference Score-CAM on the logits
``rise``                      H x W         RISE on the softmax output (no ReLU)
``gradcam-pkg:<Method>``      h x w         pytorch-grad-cam's method on the logits,
                                            ReLU'd and min-max normalised by the package
============================  ============  ==========================================

h x w is the target layer's size (the family's ``target_layer``: 14 x 14 for VGG-16
``features[29]``, 7 x 7 for ResNet-50 ``layer4[-1]`` at 224 px; a generic model's feature
maps, for a transformer its patch tokens on the patch grid through the model's own reshape,
which plays the part of pytorch-grad-cam's ``reshape_transform``); H x W is the input size. Called directly, pytorch-grad-cam
resizes its maps to the input size with OpenCV and then min-max normalises them *again*
(the reference normalises only before upsampling, so those maps differ); the adapter keeps
them at the layer's size so that every CAM method, like L-CAM, is upsampled by the same
evaluator step. The package's maps are divided by ``max + 1e-7``; the evaluator's min-max
normalisation makes that exact. The package's own
Score-CAM and Grad-CAM++ differ from the reference's (min subtracted and a softmax over
channel scores; a different alpha, no exp, gradients of the logits) and give other AD/IC.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.families import BackboneFamily, families, get_family
from models.generic import GENERIC_FAMILY
from models.lcam import LCAM
from utils.core.checkpoint import save_checkpoint
from utils.core.errors import UserTypeError, UserValueError
from utils.explainers.maps import minmax_normalize

__all__ = [
    "BASELINES",
    "PACKAGE_METHODS",
    "GradCAMPlusPlus",
    "NormalizedClassifier",
    "PackageCAM",
    "RISE",
    "ScoreCAM",
    "build_explainer",
    "capture_activations",
    "generate_rise_masks",
]

PACKAGE_PREFIX = "gradcam-pkg:"
PACKAGE_METHODS = (
    "GradCAM",
    "XGradCAM",
    "LayerCAM",
    "EigenCAM",
    "HiResCAM",
    "AblationCAM",
    "ScoreCAM",
    "GradCAMPlusPlus",
)
GRADIENT_PACKAGE_METHODS = ("GradCAM", "XGradCAM", "LayerCAM", "HiResCAM", "GradCAMPlusPlus")
# RISE defaults of the reference comparison: s = 7, p1 = 0.5 (N: the family's ``rise_masks``).
RISE_GRID_SIZE = 7
RISE_KEEP_PROBABILITY = 0.5


class _LCAMClassifier(nn.Module):
    """The classifier inside an L-CAM model, on normalised images. Its identity module
    ``feature_maps_output`` outputs the feature maps the attention mechanism reads: a target
    layer that every L-CAM model has, whatever its network."""

    def __init__(self, lcam_model: LCAM) -> None:
        super().__init__()
        self.lcam_model = lcam_model
        self.feature_maps_output = nn.Identity()

    def forward(self, normalized_images: torch.Tensor) -> torch.Tensor:
        # A transformer's maps are its tokens on the patch grid (the model's own reshape, the
        # role of pytorch-grad-cam's reshape_transform); its class token goes back in after.
        with getattr(self.lcam_model, "same_image", contextlib.nullcontext)():
            feature_maps = self.feature_maps_output(self.lcam_model.feature_maps(normalized_images))
            return self.lcam_model.classify_feature_maps(feature_maps)


class NormalizedClassifier(nn.Module):
    """Images in [0, 1] -> the family's normalisation -> a classifier -> logits.

    Baselines get [0, 1] images like L-CAM; the methods that mask the normalised input
    (Score-CAM, RISE) use :meth:`normalize` and :attr:`classifier` directly.

    Args:
        classifier: a module taking normalised images and returning logits.
        target_layer: the layer whose output the CAM methods read.
        family: the classifier's backbone family (a record or its name): RISE's default
            number of masks and the normalisation; None: the generic family (any CNN).
        mean, std: the normalisation, when not the family's.

    Attributes:
        target_layers: ``[target_layer]`` (a plain list, so the layer is not registered
            twice in the state dict; pytorch-grad-cam's convention).
        gradients_reach_layer: whether the logits' gradient reaches the target layer's output
            (False at a ViT's last block, read only through its class token: the gradient
            methods then refuse, rather than return empty maps).
        layer_name: the target layer, for messages.
    """

    gradients_reach_layer: bool = True
    layer_name: str = "the target layer"

    def __init__(
        self,
        classifier: nn.Module,
        target_layer: nn.Module,
        family: BackboneFamily | str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.target_layers = [target_layer]
        self.family = get_family(family) if isinstance(family, str) else family or GENERIC_FAMILY
        mean = self.family.mean if mean is None else mean
        std = self.family.std if std is None else std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def target_layer(self) -> nn.Module:
        return self.target_layers[0]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's normalisation of images in [0, 1]."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.normalize(images))

    @classmethod
    def from_torchvision(cls, model: nn.Module, family: BackboneFamily | str | None = None) -> NormalizedClassifier:
        """Wrap a torchvision classifier of a family with a target layer (VGG-16 ``features[29]``,
        ResNet-50 ``layer4[-1]``); ``family`` None: the first such family whose target layer
        ``model`` has (any torchvision ResNet is then explained at ``layer4[-1]``).

        Raises:
            TypeError: ``model`` has no such layer.
        """
        if isinstance(family, str):
            family = get_family(family)
        candidates = [family] if family is not None else [each for each in families() if each.target_layer]
        for candidate in candidates:
            target_layer = candidate.find_target_layer(model)
            if target_layer is not None:
                return cls(model, target_layer, candidate)
        expected = " or ".join(f"{each.title} ({each.target_layer})" for each in candidates)
        raise UserTypeError(f"'model' must be a torchvision {expected} classifier, got {type(model).__name__}")

    @classmethod
    def from_lcam(cls, lcam_model: LCAM) -> NormalizedClassifier:
        """The classifier an L-CAM model explains, ``classify_feature_maps(feature_maps(x))``
        on its own normalisation, at its family's target layer (VGG-16 ``features[29]``,
        ResNet-50 ``layer4[-1]``) or, for a family that names none (generic), at the feature
        maps its attention mechanism reads."""
        if not isinstance(lcam_model, LCAM):
            raise UserTypeError(f"'lcam_model' must be an L-CAM model, got {type(lcam_model).__name__}")
        classifier = _LCAMClassifier(lcam_model)
        family = lcam_model.family
        target_layer = family.find_target_layer(lcam_model) if family is not None else None
        if target_layer is None:
            target_layer = classifier.feature_maps_output
        mean, std = lcam_model.normalization
        wrapped = cls(classifier, target_layer, family, mean=mean, std=std)
        if target_layer is classifier.feature_maps_output:
            wrapped.gradients_reach_layer = getattr(lcam_model, "grid_reaches_output", True)
            wrapped.layer_name = f"{getattr(lcam_model, 'layer', 'feature_maps')!r} of {lcam_model.backbone_label}"
        return wrapped


def _check_gradients_reach(classifier: NormalizedClassifier, method: str) -> None:
    """Refuse a gradient method where the logits' gradient never reaches the layer."""
    if not classifier.gradients_reach_layer:
        raise UserValueError(
            f"{method} at {classifier.layer_name}: the logits do not depend on the maps there (after this layer "
            "the network reads only its class token), so every gradient is zero and every map empty; explain "
            "an L-CAM model trained at an earlier layer (--layer, e.g. the block before the last)"
        )


# -- shared helpers --------------------------------------------------------------------------


@contextlib.contextmanager
def capture_activations(layer: nn.Module, as_leaf: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of ``layer`` during forward passes; the hook is removed on exit
    (also after an error).

    With ``as_leaf``, each output is replaced by a detached tensor that requires a gradient:
    the rest of the network runs on it, so gradients with respect to it are those with
    respect to the layer's output, and autograd records nothing before the layer (a frozen
    backbone's lower layers then keep no activations for a backward pass)."""
    outputs: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if as_leaf:
            output = output.detach().requires_grad_(True)
        outputs.append(output)
        return output

    handle = layer.register_forward_hook(hook, prepend=as_leaf)  # other hooks then see the leaf
    try:
        yield outputs
    finally:
        handle.remove()


@contextlib.contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval mode on exit (pytorch-grad-cam calls ``eval()``)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_inputs(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(images) or images.dim() != 4 or images.size(1) != 3:
        raise UserValueError(f"'images' must be an N x 3 x H x W tensor, got {getattr(images, 'shape', type(images))}")
    classes = torch.as_tensor(classes, device=images.device).long().reshape(-1)
    if classes.numel() != images.size(0):
        raise UserValueError(f"'classes' must hold {images.size(0)} class indices, got {classes.numel()}")
    return classes


def _class_scores(outputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return outputs.gather(1, classes.view(-1, 1)).squeeze(1)


def _masked_probabilities(
    classifier: NormalizedClassifier, normalized_image: torch.Tensor, masks: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    """Softmax probability of class ``k`` (float32) for the normalised image (3 x H x W)
    multiplied by each of ``masks`` (M x 1 x H x W): M values."""
    logits = classifier.classifier(normalized_image * masks.to(normalized_image.dtype))
    return F.softmax(logits.float(), dim=1)[:, k]


def _relu_minmax(cams: torch.Tensor) -> torch.Tensor:
    """The reference's final step of every CAM method: ReLU, then min-max per image."""
    return minmax_normalize(F.relu(cams.float()))


def _gradients_at_layer(
    classifier: NormalizedClassifier,
    images: torch.Tensor,
    classes: torch.Tensor,
    output_transform: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target-layer activations A, gradients g of ``output_transform(logits)[k]`` w.r.t. A,
    and the scores ``output_transform(logits)[k]``, for every image of the batch at once
    (images are independent in eval mode, so the gradient of the sum is each image's)."""
    with torch.enable_grad(), capture_activations(classifier.target_layer, as_leaf=True) as outputs:
        scores = _class_scores(output_transform(classifier(images.detach())), classes)
        activations = outputs[-1]
        (gradients,) = torch.autograd.grad(scores.sum(), activations)
    return activations.detach().float(), gradients.float(), scores.detach().float()


# -- hand-written methods in the reference's form --------------------------------------------


class GradCAMPlusPlus:
    """Grad-CAM++ as the reference computed it (the model wrapped with a softmax).

    With s_k the softmax probability of class k, g = ds_k/dA and A the target layer's output:

        alpha = g^2 / (2 g^2 + sum_space(A g^3))   (a zero denominator -> 1, then + 1e-7)
        w_c   = sum_space(alpha * ReLU(exp(s_k) g))
        map   = minmax(ReLU(sum_c w_c A_c))        (h x w)
    """

    def __init__(self, classifier: NormalizedClassifier) -> None:
        _check_gradients_reach(classifier, "Grad-CAM++")
        self.classifier = classifier

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        classes = _check_inputs(images, classes)
        activations, gradients, scores = _gradients_at_layer(
            self.classifier, images, classes, lambda logits: F.softmax(logits, dim=1)
        )
        squared = gradients.pow(2)
        denominator = 2 * squared + (activations * gradients.pow(3)).sum(dim=(2, 3), keepdim=True)
        denominator = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = squared / (denominator + 1e-7)
        positive_gradients = F.relu(scores.exp().view(-1, 1, 1, 1) * gradients)
        weights = (alpha * positive_gradients).sum(dim=(2, 3), keepdim=True)
        return _relu_minmax((weights * activations).sum(dim=1, keepdim=True))


class ScoreCAM:
    """Score-CAM as the reference computed it, batched over channels.

    Each channel of ReLU(A), upsampled bilinearly to H x W, is divided by its (max - min)
    (1 where that is 0; the min is *not* subtracted) and multiplies the normalised image;
    w_c = softmax probability of k for that masked image (the logits' softmax); map =
    minmax(ReLU(sum_c w_c M_c)) at H x W.

    Args:
        classifier: the wrapped classifier.
        chunk_size: masked images per forward pass.
    """

    def __init__(self, classifier: NormalizedClassifier, chunk_size: int = 128) -> None:
        if chunk_size < 1:
            raise UserValueError(f"'chunk_size' must be positive, got {chunk_size}")
        self.classifier = classifier
        self.chunk_size = chunk_size

    @torch.no_grad()
    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        classes = _check_inputs(images, classes)
        normalized = self.classifier.normalize(images)
        with capture_activations(self.classifier.target_layer) as outputs:
            self.classifier.classifier(normalized)
        activations = F.interpolate(
            F.relu(outputs[-1].float()), size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        flat = activations.flatten(2)
        span = flat.max(dim=2).values - flat.min(dim=2).values
        span = torch.where(span != 0, span, torch.ones_like(span))
        channel_masks = activations / span[:, :, None, None]
        cams = []
        for image, channel_mask, k in zip(normalized, channel_masks, classes):
            chunks = channel_mask.unsqueeze(1).split(self.chunk_size)  # C x 1 x H x W masks
            weights = torch.cat([_masked_probabilities(self.classifier, image, chunk, k) for chunk in chunks])
            cams.append((weights[:, None, None] * channel_mask).sum(dim=0, keepdim=True))
        return _relu_minmax(torch.stack(cams))


def generate_rise_masks(
    num_masks: int,
    input_size: tuple[int, int],
    grid_size: int = RISE_GRID_SIZE,
    keep_probability: float = RISE_KEEP_PROBABILITY,
    seed: int = 0,
    chunk_size: int = 500,
) -> torch.Tensor:
    """RISE masks as the RISE authors make them, seeded (on the CPU).

    Each mask: an s x s grid whose cells are 1 with probability p1, upsampled bilinearly to
    (s + 1) x cell size (cell = ceil(H / s)) and cropped to H x W at a random shift in
    [0, cell). (The RISE authors resize with scikit-image, which reflects at the borders;
    torch's bilinear upsampling clamps, which differs only in the outermost half cell.)

    Returns:
        ``num_masks`` x 1 x H x W float32 masks in [0, 1].
    """
    if num_masks < 1 or grid_size < 1 or not 0 < keep_probability <= 1:
        raise UserValueError(
            f"need num_masks >= 1, grid_size >= 1 and 0 < keep_probability <= 1, got "
            f"{num_masks}, {grid_size}, {keep_probability}"
        )
    height, width = input_size
    cell_height, cell_width = math.ceil(height / grid_size), math.ceil(width / grid_size)
    upsampled_size = ((grid_size + 1) * cell_height, (grid_size + 1) * cell_width)
    generator = torch.Generator().manual_seed(seed)
    grids = (torch.rand(num_masks, 1, grid_size, grid_size, generator=generator) < keep_probability).float()
    shifts_y = torch.randint(0, cell_height, (num_masks,), generator=generator).tolist()
    shifts_x = torch.randint(0, cell_width, (num_masks,), generator=generator).tolist()
    masks = torch.empty(num_masks, 1, height, width)
    for start in range(0, num_masks, chunk_size):
        upsampled = F.interpolate(
            grids[start : start + chunk_size], size=upsampled_size, mode="bilinear", align_corners=False
        )
        for offset, mask in enumerate(upsampled):
            y, x = shifts_y[start + offset], shifts_x[start + offset]
            masks[start + offset] = mask[:, y : y + height, x : x + width]
    return masks


class RISE:
    """RISE (Petsiuk et al. 2018) on the softmax output, batched over masks.

    saliency_k = sum_i p_k(x_norm * mask_i) mask_i / (N p1), min-max normalised (no ReLU),
    at H x W; the masks multiply the *normalised* input, as in the reference comparison.

    Args:
        classifier: the wrapped classifier.
        num_masks: N; ``None``: the classifier's family's ``rise_masks`` (the reference's
            4000 for VGG-16, 8000 for ResNet-50).
        grid_size: s (7). keep_probability: p1 (0.5). seed: seeds the masks.
        mask_path: a ``.pt`` file caching the masks: loaded when it exists (and checked
            against the settings), written after generation otherwise. ``None``: no file.
        chunk_size: masked images per forward pass.
    """

    def __init__(
        self,
        classifier: NormalizedClassifier,
        num_masks: int | None = None,
        grid_size: int = RISE_GRID_SIZE,
        keep_probability: float = RISE_KEEP_PROBABILITY,
        seed: int = 0,
        mask_path: str | os.PathLike | None = None,
        chunk_size: int = 250,
    ) -> None:
        if num_masks is None:
            num_masks = classifier.family.rise_masks
        if num_masks < 1 or chunk_size < 1:
            raise UserValueError(f"'num_masks' and 'chunk_size' must be positive, got {num_masks} and {chunk_size}")
        self.classifier = classifier
        self.settings = {
            "num_masks": int(num_masks),
            "grid_size": int(grid_size),
            "keep_probability": float(keep_probability),
            "seed": int(seed),
        }
        self.mask_path = os.fspath(mask_path) if mask_path is not None else None
        self.chunk_size = chunk_size
        self._masks: torch.Tensor | None = None

    def masks(self, input_size: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The N x 1 x H x W masks for ``input_size``: from memory, from ``mask_path``, or
        generated (and then saved to ``mask_path``).

        Raises:
            ValueError: ``mask_path`` holds masks made with other settings or another size.
        """
        input_size = tuple(int(size) for size in input_size)
        if self._masks is None or tuple(self._masks.shape[-2:]) != input_size:
            if self.mask_path is not None and os.path.isfile(self.mask_path):
                masks = self._load(input_size)
            else:
                masks = generate_rise_masks(input_size=input_size, **self.settings)
                if self.mask_path is not None:
                    self._save(masks)
            self._masks = masks
        self._masks = self._masks.to(device)
        return self._masks

    def _save(self, masks: torch.Tensor) -> None:
        save_checkpoint({"masks": masks.cpu(), "input_size": list(masks.shape[-2:]), **self.settings}, self.mask_path)

    def _load(self, input_size: tuple[int, int]) -> torch.Tensor:
        stored = torch.load(self.mask_path, map_location="cpu", weights_only=True)
        expected = {**self.settings, "input_size": list(input_size)}
        found = {key: stored.get(key) for key in expected}
        if found != expected or "masks" not in stored:
            raise UserValueError(
                f"RISE mask file {self.mask_path!r} holds masks for {found}, but {expected} are asked for; "
                "delete it or pass another mask path"
            )
        return stored["masks"]

    @torch.no_grad()
    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        classes = _check_inputs(images, classes)
        masks = self.masks(images.shape[-2:], images.device)
        normalized = self.classifier.normalize(images)
        num_masks = masks.size(0)
        flat_masks = masks.flatten(1)
        saliency = []
        for image, k in zip(normalized, classes):
            total = torch.zeros(flat_masks.size(1), device=images.device)
            for start in range(0, num_masks, self.chunk_size):
                probabilities = _masked_probabilities(self.classifier, image, masks[start : start + self.chunk_size], k)
                total += probabilities @ flat_masks[start : start + self.chunk_size]
            saliency.append(total / (num_masks * self.settings["keep_probability"]))
        saliency = torch.stack(saliency).view(images.size(0), 1, *images.shape[-2:])
        return minmax_normalize(saliency)


# -- pytorch-grad-cam's catalogue --------------------------------------------------------------


def _native_resolution(package_class: type) -> type:
    """A subclass of a pytorch-grad-cam method that keeps its maps at the target layer's
    size (the package would resize them to the input with OpenCV)."""

    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
        activations = self.activations_and_grads.activations[-1]
        return int(activations.shape[-1]), int(activations.shape[-2])

    return type(
        f"Native{package_class.__name__}", (package_class,), {"get_target_width_height": get_target_width_height}
    )


class PackageCAM:
    """A pytorch-grad-cam method (``pytorch_grad_cam.<method>``) as an explainer.

    The package explains ``ClassifierOutputTarget(k)`` (the logit of k) at the wrapped
    classifier's target layer, ReLUs the map and min-max normalises it (dividing by
    ``max + 1e-7``); by default we keep its h x w size. Hooks are removed and every submodule's
    train/eval mode restored after each call; autocast is disabled inside (the package
    computes in NumPy float32).

    Args:
        classifier: the wrapped classifier.
        method: a name of ``PACKAGE_METHODS``.
        batch_size: channels per forward pass for ScoreCAM and AblationCAM.
        layer_resolution: ``True``: maps at the target layer's size, upsampled later by the
            evaluator like every CAM; ``False``: exactly what the package returns when called
            directly (input-sized with OpenCV, then min-max normalised again).
    """

    def __init__(
        self, classifier: NormalizedClassifier, method: str, batch_size: int = 64, layer_resolution: bool = True
    ) -> None:
        if method not in PACKAGE_METHODS:
            raise UserValueError(f"unknown pytorch-grad-cam method {method!r}; valid: {', '.join(PACKAGE_METHODS)}")
        if method in GRADIENT_PACKAGE_METHODS:
            _check_gradients_reach(classifier, method)
        import pytorch_grad_cam

        self.classifier = classifier
        self.method = method
        self.batch_size = batch_size
        package_class = getattr(pytorch_grad_cam, method)
        self._cam_class = _native_resolution(package_class) if layer_resolution else package_class

    def _build(self):
        options = {}
        if self.method == "AblationCAM":
            from pytorch_grad_cam import AblationLayer

            options = {"ablation_layer": AblationLayer(), "batch_size": self.batch_size}
        cam = self._cam_class(self.classifier, self.classifier.target_layers, **options)
        if self.method == "ScoreCAM":
            cam.batch_size = self.batch_size
        return cam

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        classes = _check_inputs(images, classes)
        targets = [ClassifierOutputTarget(int(k)) for k in classes]
        with _modes_restored(self.classifier), torch.autocast(images.device.type, enabled=False):
            cam = self._build()
            # A gradient method needs the target layer's output to require a gradient, which a
            # frozen backbone's does not: make it a leaf (as our own methods do) rather than
            # back-propagating to the input. Methods that need the input's gradient keep theirs.
            as_leaf = cam.uses_gradients and not cam.compute_input_gradient
            leaf = (
                capture_activations(self.classifier.target_layer, as_leaf=True) if as_leaf else contextlib.nullcontext()
            )
            try:
                with torch.enable_grad(), leaf:
                    maps = cam(input_tensor=images.detach().float(), targets=targets)
            finally:
                cam.activations_and_grads.release()
        return torch.from_numpy(maps).to(images.device).unsqueeze(1).float()


# -- the registry ------------------------------------------------------------------------------


def _package_factory(method: str) -> Callable[..., PackageCAM]:
    def build(classifier: NormalizedClassifier, batch_size: int = 64, layer_resolution: bool = True, **_) -> PackageCAM:
        return PackageCAM(classifier, method, batch_size=batch_size, layer_resolution=layer_resolution)

    return build


BASELINES: dict[str, Callable[..., object]] = {
    # Grad-CAM: pytorch-grad-cam gives the reference's maps (tests/test_baselines.py).
    "gradcam": lambda classifier, layer_resolution=True, **_: PackageCAM(
        classifier, "GradCAM", layer_resolution=layer_resolution
    ),
    "gradcampp": lambda classifier, **_: GradCAMPlusPlus(classifier),
    "scorecam": lambda classifier, chunk_size=128, **_: ScoreCAM(classifier, chunk_size=chunk_size),
    "rise": lambda classifier, rise_masks=None, rise_mask_path=None, rise_seed=0, chunk_size=250, **_: RISE(
        classifier, num_masks=rise_masks, seed=rise_seed, mask_path=rise_mask_path, chunk_size=chunk_size
    ),
    **{PACKAGE_PREFIX + method: _package_factory(method) for method in PACKAGE_METHODS},
}


def build_explainer(name: str, classifier: NormalizedClassifier, **options):
    """The baseline ``name`` of :data:`BASELINES` for ``classifier``.

    Options (ignored by methods that do not use them): ``rise_masks`` (N), ``rise_mask_path``,
    ``rise_seed``, ``chunk_size`` (Score-CAM/RISE images per forward), ``batch_size``
    (pytorch-grad-cam's ScoreCAM/AblationCAM), ``layer_resolution`` (pytorch-grad-cam
    methods, see :class:`PackageCAM`).

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if name not in BASELINES:
        raise UserValueError(f"unknown method {name!r}; valid: {', '.join(BASELINES)}")
    if not isinstance(classifier, NormalizedClassifier):
        raise UserTypeError(
            f"'classifier' must be a NormalizedClassifier (use NormalizedClassifier.from_torchvision or "
            f".from_lcam), got {type(classifier).__name__}"
        )
    return BASELINES[name](classifier, **options)
