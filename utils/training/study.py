"""The steps of a small-data study of an explainer: train a classifier on images in memory,
write its predictions as a datalist, and score an explainer of it on held-out images with
boxes (AD/IC at 100/50/15 % kept, energy in the box, pointing game, MaxBoxAccV2, and
optionally the deletion and insertion AUCs)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from utils.core.errors import UserValueError
from utils.core.files import atomic_open
from utils.evaluation import evaluate, normalize_and_upsample
from utils.evaluation.insertion_deletion import InsertionDeletionMeter, insertion_deletion_curves
from utils.evaluation.localization import (
    LocalizationMeter,
    pointing_ceiling,
    pointing_game,
    usual_pointing_tolerance,
)
from utils.evaluation.road import evaluate_road
from utils.explainers.baselines import NormalizedClassifier
from utils.training.loop import TrainOptions, fit

__all__ = [
    "KEPT_FRACTIONS",
    "SCORE_COLUMNS",
    "predict",
    "score_explainer",
    "tensor_loader",
    "train_classifier",
    "write_predicted_datalist",
]

KEPT_FRACTIONS = (0.0, 0.5, 0.85)  # fractions of pixels dropped: 100 %, 50 %, 15 % kept
SCORE_COLUMNS = ("AD100", "IC100", "AD50", "IC50", "AD15", "IC15", "energy_in_box", "pointing_game")


def tensor_loader(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """Batches ``(images, labels, indices)`` of tensors in memory; shuffled by a seeded generator."""
    dataset = TensorDataset(images, labels, torch.arange(len(labels)))
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


class _ClassifierObjective(nn.Module):
    """The classifier as :func:`utils.training.fit` trains a model: ``forward(images,
    labels)`` -> logits of the [0, 1] images, ``loss(logits, labels)`` -> cross-entropy."""

    def __init__(self, classifier: NormalizedClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(images)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)


def _cosine_by_epoch(epochs: int):
    def schedule(optimizer: torch.optim.Optimizer, epoch: int) -> None:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * epoch / epochs))

    return schedule


def train_classifier(
    network: nn.Module,
    target_layer: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str,
    epochs: int = 5,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> NormalizedClassifier:
    """Train ``network`` (taking ImageNet-normalised images) on ``images`` in [0, 1] with
    AdamW (weight decay 1e-4) and a cosine lr by epoch, through :func:`utils.training.fit`;
    returns it wrapped as a :class:`NormalizedClassifier` reading ``target_layer``, in eval
    mode on ``device``.

    Raises:
        ValueError: no epoch, or images and labels of different lengths.
    """
    if epochs < 1:
        raise UserValueError(f"'epochs' must be >= 1, got {epochs!r}")
    if len(images) != len(labels):
        raise UserValueError(f"{len(images)} images but {len(labels)} labels")
    torch.manual_seed(seed)
    classifier = NormalizedClassifier(network, target_layer).to(device)
    objective = _ClassifierObjective(classifier)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=1e-4)
    loader = tensor_loader(images, labels, batch_size, shuffle=True, seed=seed)
    options = TrainOptions(device=torch.device(device), disp_interval=20, progress=progress)
    fit(objective, loader, optimizer, epochs, options, lr_schedule=_cosine_by_epoch(epochs))
    return classifier.eval()


@torch.no_grad()
def predict(classifier: nn.Module, images: torch.Tensor, device: torch.device | str, batch_size: int = 256):
    """Predicted classes of ``images`` (in [0, 1]) by ``classifier``, in eval mode (on the CPU)."""
    classifier.eval()
    return torch.cat(
        [classifier(images[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    )


def write_predicted_datalist(path: str, image_paths: Sequence[str], labels: torch.Tensor, root: str) -> None:
    """A datalist ``"<image path relative to root> <label>"`` per line (e.g. a classifier's
    predictions: the "model truth" labels the reference trains L-CAM on)."""
    if len(image_paths) != len(labels):
        raise UserValueError(f"{len(image_paths)} image paths but {len(labels)} labels")
    with atomic_open(path) as handle:
        for image_path, label in zip(image_paths, labels.tolist()):
            handle.write(f"{os.path.relpath(image_path, root)} {label}\n")


class _RecordingExplainer:
    """Passes ``explain`` through and keeps every map and class (on the CPU), so the maps of
    the AD/IC pass also serve the localisation metrics and ROAD without recomputation."""

    def __init__(self, explainer: Any) -> None:
        self.explainer = explainer
        self.maps: list[torch.Tensor] = []
        self.classes: list[torch.Tensor] = []

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        maps = self.explainer.explain(images, classes)
        self.maps.append(maps.detach().float().cpu())
        self.classes.append(classes.detach().cpu())
        return maps


class _ReplayingExplainer:
    """Gives back the maps a :class:`_RecordingExplainer` kept, image after image in the same
    order; a batch whose classes differ from those recorded is explained afresh."""

    def __init__(self, recorder: _RecordingExplainer) -> None:
        self.explainer = recorder.explainer
        self.maps, self.classes = torch.cat(recorder.maps), torch.cat(recorder.classes)
        self.position = 0

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        span = slice(self.position, self.position + len(images))
        self.position += len(images)
        if torch.equal(self.classes[span], classes.detach().cpu()):
            return self.maps[span].to(images.device)
        return self.explainer.explain(images, classes)


def score_explainer(
    classifier: nn.Module,
    explainer: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    boxes: torch.Tensor,
    device: torch.device | str,
    batch_size: int = 50,
    description: str = "",
    progress: bool = True,
    id_step: int | None = None,
    road_images: int = 0,
    road_seed: int = 0,
) -> tuple[dict[str, float], torch.Tensor]:
    """AD and IC at 100, 50 and 15 % of the map kept (the explained class the prediction;
    :func:`utils.evaluation.evaluate`) and, on the correctly classified images, the energy in
    the box and the pointing game, all in percent (:data:`SCORE_COLUMNS`), the pointing game
    with its usual tolerance (``pointing_game_tolerant``, ``pointing_tolerance`` pixels: 15 at
    224 px, :func:`utils.evaluation.localization.usual_pointing_tolerance`), the most any map
    at the explainer's resolution can score in the strict pointing game
    (``pointing_game_ceiling``, :func:`utils.evaluation.localization.pointing_ceiling`) and
    ``max_box_acc_v2``; with ``id_step``, the mean ``deletion_auc`` and ``insertion_auc`` of
    the same maps, ``id_step`` pixels per step, in percent of a curve at probability 1
    (:mod:`utils.evaluation.insertion_deletion`); with ``road_images`` > 0, ROAD on the first
    ``road_images`` images (:func:`utils.evaluation.road.evaluate_road`, noise seeded
    ``road_seed``): ``road_morf_accuracy`` and ``road_lerf_accuracy`` (% of images whose top-1
    class survives, over the percentiles 10..90), ``road_combined`` (the probability form, in
    %) and ``road_images``; with ``images`` and ``localised_images``
    (the counts) and ``seconds``; and the maps (N x 1 x H x W in [0, 1], on the CPU).
    """
    recorder = _RecordingExplainer(explainer)
    loader = tensor_loader(images, labels, batch_size, shuffle=False)
    result = evaluate(
        classifier, recorder, loader, KEPT_FRACTIONS, device=device, description=description, progress=progress
    )
    raw_maps = torch.cat(recorder.maps)
    maps = normalize_and_upsample(raw_maps, images.shape[-2:])
    correct = result.predicted == result.labels
    meter = LocalizationMeter()
    meter.update(maps[correct], boxes[correct])
    row: dict[str, float] = {}
    for entry in result.summary:
        kept = f"{round(entry['kept_percent'])}"
        row[f"AD{kept}"] = entry["average_drop"]
        row[f"IC{kept}"] = entry["increase_in_confidence"]
    localisation = meter.summary()
    tolerance = usual_pointing_tolerance(max(images.shape[-2:]))
    tolerant_hits = pointing_game(maps[correct], boxes[correct], tolerance)
    reachable = pointing_ceiling(boxes[correct], raw_maps.shape[-2:], images.shape[-2:])
    row.update(
        energy_in_box=localisation["energy_in_box"],
        pointing_game=localisation["pointing_game"],
        pointing_game_tolerant=float(tolerant_hits.double().mean() * 100),
        pointing_tolerance=tolerance,
        pointing_game_ceiling=float(reachable.double().mean() * 100),
        max_box_acc_v2=localisation["max_box_acc_v2"],
        images=result.num_images,
        localised_images=localisation["count"],
        seconds=result.seconds,
    )
    if id_step is not None:
        curves = InsertionDeletionMeter()
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            curves.update(
                *insertion_deletion_curves(
                    classifier,
                    images[part].to(device),
                    maps[part].to(device),
                    result.predicted[part].to(device),
                    id_step,
                )
            )
        summary = curves.summary()
        row.update(deletion_auc=summary["deletion_auc"] * 100, insertion_auc=summary["insertion_auc"] * 100)
    if road_images > 0:
        road = evaluate_road(
            classifier,
            _ReplayingExplainer(recorder),  # the same images and classes in the same order
            tensor_loader(images, labels, batch_size, shuffle=False),
            device,
            limit=road_images,
            seed=road_seed,
            progress=progress,
        )
        row.update(
            road_morf_accuracy=road["road_morf_accuracy"],
            road_lerf_accuracy=road["road_lerf_accuracy"],
            road_combined=road["road_combined"] * 100,
            road_images=road["road_count"],
        )
    return row, maps
