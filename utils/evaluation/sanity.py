"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018): model-parameter randomisation (cascading or independent) and label
randomisation, scored by rank correlation and SSIM, with their tables and figures.

The question: does an explanation depend on what the model learned? If a method's maps stay
the same when the classifier's weights are replaced by random ones, they do not explain the
classifier (they may be edge detectors or reflect the input alone).

* **Cascading randomisation**: on a deep copy of the network (the original is never
  changed), the parameterised layers are re-initialised one group at a time from the output
  towards the input (:func:`layer_groups`), cumulatively; after each step every explainer is
  asked again for the map of the *original* prediction ``k`` and compared with its map on the
  trained network. ``mode="independent"`` re-initialises each group alone instead (the rest
  trained).
* **Label randomisation** (the paper's test, as a class swap): on the trained network each
  image is explained for a random other class ``c != k`` (for L-CAM: another class's map of
  the same forward pass; for Grad-CAM and its family: back-propagating class c) and compared
  with the map of k.

Maps are treated as in the AD/IC protocol (:mod:`utils.evaluation.protocol`): the explained
class is the original classifier's prediction ``k = argmax softmax(f(x))``, and each map is
min-max normalised per image and upsampled bilinearly to the input size
(:func:`utils.evaluation.protocol.normalize_and_upsample`). Per image, between the original
map ``a`` and the randomised map ``b`` (H x W):

* ``spearman``: Spearman's rank correlation of the pixels of ``a`` and ``b`` (average ranks
  for ties: Pearson's correlation of the ranks); in [-1, 1], 1 for maps of the same order.
  Min-max normalisation and bilinear upsampling keep the ranks of the raw map, so this is
  the raw maps' correlation ("without absolute value" in the paper);
* ``spearman_abs``: the same on the maps of ``|raw map|`` (the paper's "with absolute
  value"; equal to ``spearman`` for maps that are never negative, like the ReLU'd CAMs;
  L-CAM's raw maps are signed);
* ``ssim``: the structural similarity (Wang et al. 2004) of the [0, 1] maps: Gaussian window
  of 11 pixels, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, averaged over the pixels
  whose window lies inside the map (``skimage.metrics.structural_similarity(a, b,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``).

A constant map (a ReLU'd map of a random network is often all zeros) has no rank order: its
rank correlation with a map that has one counts as 0, with another constant map as 1. A map
with a non-finite value gives NaN; the summaries average the finite values and count the
others (``undefined``) and the images whose randomised map is constant (``constant``). A high
correlation after randomisation means the check failed: the map did not depend on those
weights.

An L-CAM model is randomised as a whole: its classifier's groups first (the head, trained on
that frozen classifier, kept: its maps change only through the feature maps it reads), then
its attention head ``attnM`` as the last step (everything random). The baselines built on an
L-CAM model explain its classifier, which the head does not touch: the head step leaves their
maps as they were (a control).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from models.lcam import LCAM
from utils.core.errors import UserTypeError, UserValueError
from utils.core.files import write_json
from utils.core.runtime import autocast
from utils.evaluation.comparison import Entry
from utils.evaluation.protocol import _unpack, explain_predictions, normalize_and_upsample
from utils.evaluation.reports import ResultsTable, save_with_legend, write_markdown
from utils.evaluation.visualize import heatmap, save_table, to_pil

__all__ = [
    "HEAD_NAME",
    "LABEL_STEP",
    "METRICS",
    "MODES",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "LayerGroup",
    "SanityResult",
    "average_ranks",
    "layer_groups",
    "randomize_",
    "run_sanity_checks",
    "save_sanity_curves",
    "save_sanity_maps",
    "spearman_correlation",
    "ssim",
    "write_sanity_tables",
]

MODES = ("cascading", "independent")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
HEAD_NAME = "attnM (L-CAM head)"
LABEL_STEP = "random label"
METRICS = ("spearman", "spearman_abs", "ssim")
METRIC_TITLES = {"spearman": "Spearman ρ", "spearman_abs": "Spearman ρ (abs)", "ssim": "SSIM"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORMALIZATIONS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


# -- the metrics ---------------------------------------------------------------------------------


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based, float) of each row of N x P ``values``, ties given the mean of their
    places (``scipy.stats.rankdata(method="average") - 1``), computed exactly on the device."""
    if values.dim() != 2:
        raise UserValueError(f"'values' must be N x P, got shape {tuple(values.shape)}")
    count = values.size(1)
    sorted_values, order = values.sort(dim=1)
    positions = torch.arange(count, device=values.device).expand_as(order)
    starts = torch.ones_like(order, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
    last_flipped = torch.where(ends, positions, torch.full_like(positions, count)).flip(1).cummin(dim=1).values
    dtype = _accumulation_dtype(values.device)
    tied = (first + last_flipped.flip(1)).to(dtype) / 2
    return torch.empty_like(tied).scatter_(1, order, tied)


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def spearman_correlation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each pair of maps (N x ... each, flattened per image):
    Pearson's correlation of their average ranks (``scipy.stats.spearmanr``). Where that is
    undefined: 0 when one map of the pair is constant and the other is not (a blank map
    keeps none of the other's order), 1 when both are constant (two blank maps); NaN where a
    map holds a non-finite value. Returns N float32 values."""
    if first.shape != second.shape:
        raise UserValueError(f"maps of different shapes: {tuple(first.shape)} and {tuple(second.shape)}")
    first, second = first.flatten(1), second.flatten(1)
    finite = torch.isfinite(first).all(dim=1) & torch.isfinite(second).all(dim=1)
    centre = (first.size(1) - 1) / 2  # the mean of average ranks, whatever the ties
    first_ranks = average_ranks(first) - centre
    second_ranks = average_ranks(second) - centre
    covariance = (first_ranks * second_ranks).sum(dim=1)
    scale = (first_ranks.square().sum(dim=1) * second_ranks.square().sum(dim=1)).sqrt()
    correlation = covariance / scale.clamp(min=torch.finfo(scale.dtype).tiny)
    first_constant = first_ranks.square().sum(dim=1) == 0
    second_constant = second_ranks.square().sum(dim=1) == 0
    correlation = torch.where(first_constant | second_constant, torch.zeros_like(correlation), correlation)
    correlation = torch.where(first_constant & second_constant, torch.ones_like(correlation), correlation)
    return torch.where(finite, correlation, torch.full_like(correlation, math.nan)).float()


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    offsets = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    weights = torch.exp(-offsets.square() / (2 * sigma**2))
    return weights / weights.sum()


def ssim(
    first: torch.Tensor,
    second: torch.Tensor,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
    data_range: float = 1.0,
) -> torch.Tensor:
    """The mean structural similarity (Wang et al. 2004) of each pair of N x 1 x H x W (or
    N x H x W) maps: local means, variances and covariance under a Gaussian window
    (``window`` pixels, ``sigma``), ``S = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 +
    C1)(var_a + var_b + C2))`` with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = data_range``,
    averaged over the positions whose window lies inside the map (no padding). Returns N
    float32 values (1 for identical maps).

    Raises:
        ValueError: maps of different shapes, or smaller than the window.
    """
    if first.shape != second.shape:
        raise UserValueError(f"maps of different shapes: {tuple(first.shape)} and {tuple(second.shape)}")
    if first.dim() == 3:
        first, second = first.unsqueeze(1), second.unsqueeze(1)
    if first.dim() != 4 or first.size(1) != 1:
        raise UserValueError(f"maps must be N x 1 x H x W or N x H x W, got shape {tuple(first.shape)}")
    if min(first.shape[-2:]) < window:
        raise UserValueError(f"maps of {tuple(first.shape[-2:])} pixels are smaller than the {window}-pixel window")
    dtype = _accumulation_dtype(first.device)
    first, second = first.to(dtype), second.to(dtype)
    weights = _gaussian_window(window, sigma, first.device, dtype)
    stacked = torch.cat([first, second, first * first, second * second, first * second], dim=1)
    filtered = F.conv2d(stacked.reshape(-1, 1, *stacked.shape[-2:]), weights.view(1, 1, 1, -1))
    filtered = F.conv2d(filtered, weights.view(1, 1, -1, 1))
    filtered = filtered.view(first.size(0), 5, *filtered.shape[-2:])
    mean_first, mean_second, square_first, square_second, product = filtered.unbind(dim=1)
    variance_first = square_first - mean_first.square()
    variance_second = square_second - mean_second.square()
    covariance = product - mean_first * mean_second
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    similarity = ((2 * mean_first * mean_second + c1) * (2 * covariance + c2)) / (
        (mean_first.square() + mean_second.square() + c1) * (variance_first + variance_second + c2)
    )
    return similarity.mean(dim=(-2, -1)).float()


# -- the layers and their randomisation ------------------------------------------------------------


@dataclass(frozen=True)
class LayerGroup:
    """Layers re-initialised together in one step: a block (a ResNet bottleneck, an MBConv),
    a layer with the normalisation that follows it (``conv1+bn1``), or an L-CAM head.

    Attributes:
        name: the modules' dotted paths in the network, joined by ``+``.
        modules: the modules; each is re-initialised with all its submodules, except those of
            ``own_only`` (a module's own parameters, e.g. a class token, without its children).
        own_only: the modules whose own parameters only are re-initialised.
    """

    name: str
    modules: tuple[nn.Module, ...]
    own_only: tuple[nn.Module, ...] = ()

    def parameters(self) -> list[nn.Parameter]:
        """The parameters this group re-initialises."""
        found: dict[int, nn.Parameter] = {}
        for module in self.modules:
            recurse = not any(module is own for own in self.own_only)
            for parameter in module.parameters(recurse=recurse):
                found.setdefault(id(parameter), parameter)
        return list(found.values())


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _walk(module: nn.Module, prefix: str, in_container: bool, groups: list[LayerGroup], skip: nn.Module | None) -> None:
    """Groups of ``module``'s children, input side first (registration order: the forward
    order of torchvision's classifiers)."""
    if next(module.parameters(recurse=False), None) is not None:
        groups.append(LayerGroup(f"{prefix or 'network'} (own parameters)", (module,), (module,)))
    previous_in_this_parent = False
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if child is skip or not _has_parameters(child):
            continue
        if isinstance(child, _CONTAINERS):
            _walk(child, path, True, groups, skip)
            previous_in_this_parent = False
        elif isinstance(child, _NORMALIZATIONS) and previous_in_this_parent:
            last = groups[-1]
            groups[-1] = LayerGroup(f"{last.name}+{name}", (*last.modules, child), last.own_only)
        elif in_container or not any(True for _ in child.children()):
            groups.append(LayerGroup(path, (child,)))
            previous_in_this_parent = True
        else:  # a network inside a wrapper (a classifier in its NormalizedClassifier): look inside
            _walk(child, path, False, groups, skip)
            previous_in_this_parent = False


def layer_groups(network: nn.Module) -> list[LayerGroup]:
    """The parameterised layers of ``network`` in randomisation order: from the output
    towards the input.

    The module tree is read in registration order (the forward order of torchvision's
    classifiers and of the L-CAM variants); a group is a parameterised module inside a
    ``Sequential``/``ModuleList``/``ModuleDict`` (a VGG convolution, a ResNet bottleneck) or
    a parameterised leaf elsewhere (ResNet's ``conv1``, ``fc``); a normalisation layer joins
    the layer before it in the same parent (``conv1+bn1``); other modules (a network inside
    a wrapper) are looked into. For an L-CAM model (or a wrapper of one), the attention head
    ``attnM`` comes last (see the module docstring).

    Raises:
        ValueError: ``network`` has no parameter.
    """
    if not isinstance(network, nn.Module):
        raise UserTypeError(f"'network' must be a torch.nn.Module, got {type(network).__name__}")
    head = next((module.attnM for module in network.modules() if isinstance(module, LCAM)), None)
    groups: list[LayerGroup] = []
    _walk(network, "", False, groups, head)
    groups.reverse()
    if head is not None:
        groups.append(LayerGroup(HEAD_NAME, (head,)))
    if not groups:
        raise UserValueError(f"{type(network).__name__} has no parameter to randomise")
    return groups


def _reinitialize(module: nn.Module, recurse: bool) -> None:
    """Re-initialise ``module`` (and its submodules when ``recurse``) as at construction:
    ``reset_parameters()`` where a module has it (BatchNorm's also resets its running
    statistics); otherwise its own parameters are redrawn: Kaiming-uniform for matrices and
    kernels (``nn.Linear``'s default), a normal of the parameter's own spread for vectors."""
    for submodule in module.modules() if recurse else (module,):
        reset = getattr(submodule, "reset_parameters", None)
        if callable(reset) and recurse:
            reset()
            continue
        for parameter in submodule.parameters(recurse=False):
            if parameter.dim() >= 2:
                nn.init.kaiming_uniform_(parameter, a=math.sqrt(5))
            else:
                spread = float(parameter.detach().float().std()) if parameter.numel() > 1 else 0.0
                nn.init.normal_(parameter, 0.0, spread if math.isfinite(spread) and spread > 0 else 0.02)


@torch.no_grad()
def randomize_(group: LayerGroup, seed: int) -> None:
    """Re-initialise the layers of ``group`` in place, seeded (the global RNG is left as it was)."""
    devices = sorted({parameter.device.index or 0 for parameter in group.parameters() if parameter.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in group.modules:
            _reinitialize(module, recurse=not any(module is own for own in group.own_only))


# -- the run ---------------------------------------------------------------------------------------


class _RawMaps:
    """Passes an explainer through and keeps the raw maps it last returned (the protocol's
    step gives them normalised; the absolute-value correlation needs them raw)."""

    def __init__(self, explainer: Any) -> None:
        self.explainer = explainer
        self.maps: torch.Tensor | None = None
        if hasattr(explainer, "predict_and_explain"):
            self.predict_and_explain = self._predict_and_explain

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        self.maps = self.explainer.explain(images, classes)
        return self.maps

    def _predict_and_explain(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, self.maps = self.explainer.predict_and_explain(images)
        return logits, self.maps


@dataclass
class _Step:
    test: str  # "cascading", "independent" or "label"
    index: int
    randomized: str
    groups: tuple[LayerGroup, ...] = ()


@dataclass
class SanityResult:
    """What :func:`run_sanity_checks` measured.

    Attributes:
        rows: one dict per (step, method): ``test``, ``step``, ``randomized``, ``method``,
            ``family``, and per metric of ``spearman``, ``spearman_abs``, ``ssim`` its mean
            over the images where it is defined and ``<metric>_std``; ``images`` and
            ``undefined`` (images whose rank correlation is not finite) and ``constant``
            (images whose map after the step is constant).
        methods: the methods' names, in order.
        steps: the randomised groups' names (``original`` first), then ``random label``.
        figure_images: the images of the maps figure (n x 3 x H x W, CPU).
        figure_maps: per step name, per method, the n maps (n x 1 x H x W in [0, 1], CPU).
        num_images: images compared.
        unreadable: images of the loader that could not be read.
    """

    rows: list[dict[str, Any]]
    methods: list[str]
    steps: list[str]
    figure_images: torch.Tensor
    figure_maps: dict[str, dict[str, torch.Tensor]]
    num_images: int
    unreadable: list[Any] = field(default_factory=list)


def _steps(groups: Sequence[LayerGroup], mode: str) -> list[_Step]:
    return [_Step(mode, index, group.name, (group,)) for index, group in enumerate(groups, start=1)]


def _cached_batches(loader: Iterable, limit: int | None) -> tuple[list[torch.Tensor], list[Any]]:
    """The readable images of ``loader`` (CPU batches, at most ``limit`` images) and the failed ones."""
    batches, unreadable, count = [], [], 0
    for raw_batch in loader:
        batch = _unpack(raw_batch, count)
        unreadable += list(batch.failed)
        if batch.images is None or len(batch.labels) == 0:
            continue
        images = batch.images[: limit - count] if limit is not None else batch.images
        batches.append(images.cpu())
        count += len(images)
        if limit is not None and count >= limit:
            break
    if not batches:
        raise UserValueError(f"no readable image to check ({len(unreadable)} unreadable)")
    return batches, unreadable


def _explain(explainer: Any, images: torch.Tensor, classes: torch.Tensor, device: torch.device, amp: str):
    with autocast(device, amp):
        return explainer.explain(images, classes.clone())


def _normalized_pair(raw: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The protocol's maps of ``raw`` and of ``|raw|``."""
    with torch.inference_mode():
        raw = raw.detach().float()
        return normalize_and_upsample(raw, size), normalize_and_upsample(raw.abs(), size)


def _scores(original: torch.Tensor, randomized: torch.Tensor, size: Sequence[int]) -> dict[str, torch.Tensor]:
    first, first_abs = _normalized_pair(original, size)
    second, second_abs = _normalized_pair(randomized, size)
    with torch.inference_mode():
        return {
            "spearman": spearman_correlation(first, second).cpu(),
            "spearman_abs": spearman_correlation(first_abs, second_abs).cpu(),
            "ssim": ssim(first, second).cpu(),
            "constant": (second.flatten(1).amax(dim=1) == 0).cpu(),  # min-max makes a constant map all zeros
        }


def _class_shifts(count: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Per image a shift s in [1, K): the random other class of class k is ``(k + s) mod K``,
    uniform over the K - 1 others (one draw per image, shared by the methods)."""
    if num_classes < 2:
        raise UserValueError("the label randomisation test needs at least 2 classes")
    return torch.randint(1, num_classes, (count,), generator=generator)


def run_sanity_checks(
    network: nn.Module,
    build_entries: Callable[[nn.Module], Sequence[Entry]],
    loader: Iterable,
    device: torch.device | str = "cpu",
    mode: str = "cascading",
    label_test: bool = True,
    seed: int = 0,
    limit: int | None = None,
    amp: str = "none",
    channels_last: bool = False,
    figure_images: int = 1,
    progress: bool = True,
) -> SanityResult:
    """Run the model-parameter randomisation (``mode``: ``"cascading"`` or ``"independent"``)
    and, with ``label_test``, the label randomisation test; see the module docstring.

    Args:
        network: the module whose layers are randomised (:func:`layer_groups`): an L-CAM
            model, or the classifier the baselines explain. Never modified: the randomised
            network is a deep copy.
        build_entries: builds the explainers of a network (the original and its copy):
            ``network -> [Entry(name, family, classifier, explainer, source), ...]``; each
            classifier (images in [0, 1] -> logits) gives the explained class on the
            original network, each explainer ``explain(images, classes) -> maps``.
        loader: yields :class:`utils.data.Batch` or ``(images, labels[, indices])``; its
            images are read once and kept on the CPU.
        device: where the networks are and the computation runs.
        seed: seeds the re-initialisations (group i of the order gets ``seed + i``) and the
            random classes of the label test.
        limit: at most this many images.
        amp: autocast around the explainers (``"none"``, ``"bf16"``, ``"fp16"``).
        channels_last: feed the images in channels_last memory format.
        figure_images: the first images whose maps are kept for :func:`save_sanity_maps`.
        progress: a tqdm bar over steps x images.

    Raises:
        ValueError: an unknown ``mode``, no readable image, or no explainer.
    """
    if mode not in MODES:
        raise UserValueError(f"'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    device = torch.device(device)
    batches, unreadable = _cached_batches(loader, limit)
    entries = list(build_entries(network))
    if not entries:
        raise UserValueError("no explainer to check: build_entries returned none")
    randomized_network = copy.deepcopy(network)
    randomized_entries = list(build_entries(randomized_network))
    groups = layer_groups(randomized_network)
    steps = _steps(groups, mode) + ([_Step("label", len(groups) + 1, LABEL_STEP)] if label_test else [])
    original_state = copy.deepcopy(network.state_dict()) if mode == "independent" else None
    run = _Run(batches, device, amp, channels_last, figure_images)
    bar = tqdm(
        total=run.num_images * (len(steps) + 1), unit="img", desc="sanity", disable=not progress, dynamic_ncols=True
    )
    try:
        run.explain_originals(entries, seed if label_test else None, bar)
        for step in steps:
            if original_state is not None:
                randomized_network.load_state_dict(original_state)
            for group in step.groups:
                randomize_(group, seed + step.index)
            run.compare(step, entries if step.test == "label" else randomized_entries, bar)
    finally:
        bar.close()
    return SanityResult(
        rows=[
            _summary_row(step, entry, run.scores[(step.index, entry.name)], run.num_images)
            for step in steps
            for entry in entries
        ],
        methods=[entry.name for entry in entries],
        steps=["original", *(step.randomized for step in steps)],
        figure_images=batches[0][: run.figure_count].clone(),
        figure_maps=run.figure_maps,
        num_images=run.num_images,
        unreadable=unreadable,
    )


class _Run:
    """The images of a run (CPU batches), the trained network's explained classes and raw
    maps per batch and method, and the scores and figure maps gathered step by step."""

    def __init__(
        self, batches: list[torch.Tensor], device: torch.device, amp: str, channels_last: bool, figure_images: int
    ) -> None:
        self.batches = batches
        self.device, self.amp = device, amp
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.num_images = sum(len(images) for images in batches)
        self.figure_count = min(figure_images, len(batches[0]))
        # per batch, per method: (the explained class k, the random other class, the raw map of k)
        self.originals: list[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        self.scores: dict[tuple[int, str], dict[str, list[torch.Tensor]]] = {}
        self.figure_maps: dict[str, dict[str, torch.Tensor]] = {}

    def _on_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device).contiguous(memory_format=self.memory_format)

    def _keep_for_figure(self, step_name: str, method: str, maps: torch.Tensor, size: Sequence[int]) -> None:
        if self.figure_count:
            with torch.inference_mode():
                shown = normalize_and_upsample(maps[: self.figure_count].float(), size).cpu()
            self.figure_maps.setdefault(step_name, {})[method] = shown

    def explain_originals(self, entries: Sequence[Entry], label_seed: int | None, bar: tqdm) -> None:
        """On the trained network: each method's explained class k (its classifier's
        prediction) and raw map of k; a random other class per image (seeded by
        ``label_seed``; None: no label test)."""
        generator = torch.Generator().manual_seed(label_seed or 0)
        for batch_index, images in enumerate(self.batches):
            images = self._on_device(images)
            per_method, plain_passes, shifts = {}, {}, None
            for entry in entries:
                recorder = _RawMaps(entry.explainer)
                probabilities, _, predicted, _ = explain_predictions(
                    entry.classifier, recorder, images, self.device, self.amp, plain_passes
                )
                num_classes = probabilities.size(1)
                if shifts is None:
                    shifts = _class_shifts(len(images), num_classes, generator) if label_seed is not None else 0
                others = (predicted + torch.as_tensor(shifts, device=self.device)) % num_classes
                per_method[entry.name] = (predicted.clone(), others, recorder.maps.detach().float().cpu())
                if batch_index == 0:
                    self._keep_for_figure("original", entry.name, recorder.maps.detach(), images.shape[-2:])
            self.originals.append(per_method)
            bar.update(len(images))

    def compare(self, step: _Step, entries: Sequence[Entry], bar: tqdm) -> None:
        """Explain every image again with ``entries`` (k, or the other class for the label
        test) and score the maps against the originals."""
        for batch_index, images in enumerate(self.batches):
            images = self._on_device(images)
            for entry in entries:
                predicted, others, original_maps = self.originals[batch_index][entry.name]
                classes = others if step.test == "label" else predicted
                maps = _explain(entry.explainer, images, classes, self.device, self.amp).detach().float()
                measured = _scores(original_maps.to(self.device), maps, images.shape[-2:])
                slot = self.scores.setdefault((step.index, entry.name), {name: [] for name in measured})
                for name, values in measured.items():
                    slot[name].append(values)
                if batch_index == 0:
                    self._keep_for_figure(step.randomized, entry.name, maps, images.shape[-2:])
            bar.update(len(images))


def _summary_row(step: _Step, entry: Entry, values: dict[str, list[torch.Tensor]], num_images: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "test": step.test,
        "step": step.index,
        "randomized": step.randomized,
        "method": entry.name,
        "family": entry.family,
    }
    for name in METRICS:
        measured = torch.cat(values[name]).double()
        defined = measured[torch.isfinite(measured)]
        row[name] = float(defined.mean()) if len(defined) else math.nan
        row[f"{name}_std"] = float(defined.std(correction=0)) if len(defined) else math.nan
    row["images"] = num_images
    row["undefined"] = int((~torch.isfinite(torch.cat(values["spearman"]))).sum())
    row["constant"] = int(torch.cat(values["constant"]).sum())
    return row


# -- tables and figures ----------------------------------------------------------------------------

_CSV_FIELDS = (
    "test",
    "step",
    "randomized",
    "method",
    "family",
    "spearman",
    "spearman_std",
    "spearman_abs",
    "spearman_abs_std",
    "ssim",
    "ssim_std",
    "images",
    "undefined",
    "constant",
)

TABLE_NOTE = (
    "Each cell: Spearman rank correlation ρ / ρ of the absolute maps / SSIM between the method's map of the "
    "originally predicted class on the trained network and its map after the step (means over the images; "
    "1 = unchanged). Cascading: the named group and every group above it randomised; independent: the named "
    "group alone; random label: the trained network, the map of a random other class. A method passes when "
    "the values fall towards 0 as the layers are randomised; values near 1 mean the maps do not depend on "
    "those weights."
)


def _rounded(value: float, digits: int = 4) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def _cell(row: dict[str, Any]) -> str:
    return " / ".join("–" if not math.isfinite(row[name]) else f"{row[name]:.2f}" for name in METRICS)


def write_sanity_tables(result: SanityResult, output_dir: str, run: dict[str, Any] | None = None) -> tuple[str, ...]:
    """``sanity.json`` (the run's settings and every row), ``sanity.csv`` (a row per step
    and method) and ``sanity.md`` (a row per step, a column per method); returns their paths."""
    json_path = write_json(
        os.path.join(output_dir, "sanity.json"),
        {
            "run": dict(run or {}),
            "num_images": result.num_images,
            "num_unreadable": len(result.unreadable),
            "methods": result.methods,
            "steps": result.steps,
            "results": [
                {key: _rounded(value, 6) if isinstance(value, float) else value for key, value in row.items()}
                for row in result.rows
            ],
        },
        indent=1,
    )
    long_table = ResultsTable(
        list(_CSV_FIELDS),
        [
            [_rounded(row[name]) if isinstance(row[name], float) else row[name] for name in _CSV_FIELDS]
            for row in result.rows
        ],
    )
    csv_path = long_table.write_csv(os.path.join(output_dir, "sanity.csv"))
    by_step: dict[tuple[str, int, str], dict[str, dict[str, Any]]] = {}
    for row in result.rows:
        by_step.setdefault((row["test"], row["step"], row["randomized"]), {})[row["method"]] = row
    header = ["test", "step", "randomised", *(f"{method} ρ / ρ(abs) / SSIM" for method in result.methods)]
    cells = [
        [test, index, name, *(_cell(rows[method]) for method in result.methods)]
        for (test, index, name), rows in by_step.items()
    ]
    title = f"# Sanity checks: {result.num_images} images"
    markdown_path = write_markdown(
        os.path.join(output_dir, "sanity.md"), title, ResultsTable(header, cells).markdown(), TABLE_NOTE
    )
    return json_path, csv_path, markdown_path


def _heatmap_image(saliency: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.round(heatmap(saliency) * 255).astype(np.uint8))


def save_sanity_maps(result: SanityResult, path: str | os.PathLike, cell_inches: float = 1.6) -> str:
    """The paper's figure: a row per step (the trained network's maps, then after each
    randomisation, then the random label's), a column per method (after the image; a block of
    columns per image when there are several), the maps as heatmaps. Returns the path."""
    images = result.figure_images
    if len(images) == 0:
        raise UserValueError("no image kept for the maps figure (figure_images=0)")
    cells, row_titles = [], []
    for step in result.steps:
        row = []
        for index, image in enumerate(images):
            row.append(to_pil(image))
            row += [_heatmap_image(result.figure_maps[step][method][index]) for method in result.methods]
        cells.append(row)
        row_titles.append(step)
    column_titles = [title for _ in images for title in ("image", *result.methods)]
    return save_table(cells, path, row_titles=row_titles, column_titles=column_titles, cell_inches=cell_inches)


def save_sanity_curves(result: SanityResult, path: str | os.PathLike) -> str:
    """A panel per metric: its mean against the randomisation step (the trained network at
    1, by definition), a line per method; the random label's value as a separate point at
    the right. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layer_steps = [row for row in result.rows if row["test"] != "label"]
    names = ["original", *dict.fromkeys(row["randomized"] for row in layer_steps)]
    has_label = any(row["test"] == "label" for row in result.rows)
    figure = Figure(figsize=(5.0 * len(METRICS), 4.0 + 0.09 * max(len(name) for name in names)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(METRICS), squeeze=False)[0]
    for axis, metric in zip(axes, METRICS):
        for method in result.methods:
            rows = [row for row in layer_steps if row["method"] == method]
            values = [1.0] + [row[metric] for row in rows]
            line = axis.plot(range(len(values)), values, marker="o", markersize=3, label=method)[0]
            label_rows = [row for row in result.rows if row["test"] == "label" and row["method"] == method]
            if label_rows:
                axis.plot([len(names) + 0.5], [label_rows[0][metric]], marker="s", color=line.get_color())
        ticks = list(range(len(names))) + ([len(names) + 0.5] if has_label else [])
        axis.set_xticks(ticks, names + ([LABEL_STEP] if has_label else []), rotation=90, fontsize=7)
        axis.axhline(0.0, color="grey", linewidth=0.5)
        axis.set_ylim(-1.05 if metric != "ssim" else -0.05, 1.05)
        axis.set_title(f"{METRIC_TITLES[metric]} with the original maps", fontsize=10)
        axis.set_xlabel("randomised (output → input)", fontsize=8)
    return save_with_legend(figure, axes[0], path)
