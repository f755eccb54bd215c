"""ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022) for any explainer, batched on the device.

Per image x (3 x H x W in [0, 1]) with the AD/IC protocol's explained class and map
(:func:`utils.evaluation.protocol.explain_predictions`: ``k = argmax softmax(f(x))``, the
map min-max normalised and upsampled to H x W) and each percentile q of a list Q
(10, 20, ..., 90 by default), the pixels whose relevance reaches the map's q-th percentile
are removed (about 100 - q % of them: the most relevant first, MoRF, or the least relevant
first, LeRF) and filled by noisy linear imputation
(:mod:`utils.evaluation.imputation`), giving ``x_q^MoRF`` and ``x_q^LeRF``. Two forms:

* the probability change (pytorch-grad-cam's ``ROAD*RelevantFirstAverage``):

      MoRF = mean_q (p_k(x_q^MoRF) - p_k(x))   (lower is better)
      LeRF = mean_q (p_k(x_q^LeRF) - p_k(x))   (higher is better)
      combined = (LeRF - MoRF) / 2              (higher is better)

* the accuracy form (the share of images whose top-1 class survives the removal, in %, as
  T-TAME reports ROAD), per percentile and averaged over Q:

      MoRF accuracy_q = 100 mean_x [argmax f(x_q^MoRF) = k]   (lower is better)
      LeRF accuracy_q = 100 mean_x [argmax f(x_q^LeRF) = k]   (higher is better)

Noise: image number i of a run (counting from 0 over the loader) draws its imputation noise
from a CPU generator seeded ``seed + i``, in pytorch-grad-cam's order (MoRF's percentiles,
then LeRF's), so its scores do not depend on the batch size and equal pytorch-grad-cam's
for that image run alone after ``torch.manual_seed(seed + i)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
from tqdm import tqdm

from utils.core.errors import UserValueError
from utils.core.runtime import autocast
from utils.evaluation.imputation import check_percentile, imputation_noise, noisy_linear_imputation, removal_masks
from utils.evaluation.protocol import explain_predictions
from utils.evaluation.reports import ResultsTable
from utils.explainers.protocol import Classifier, Explainer

__all__ = [
    "ROAD_PERCENTILES",
    "evaluate_road",
    "parse_road_percentiles",
    "road_scores",
    "write_road_table",
]

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
_ORDERS = ("morf", "lerf")


def parse_road_percentiles(percentiles: str | Sequence[float]) -> tuple[float, ...]:
    """``"10,20,...,90"`` (or numbers) -> ``(10.0, 20.0, ..., 90.0)``: each in (0, 100), at
    least one, no duplicates.

    Raises:
        ValueError: anything else, quoting what was received.
    """
    if isinstance(percentiles, str):
        try:
            values = tuple(float(text) for text in percentiles.split(",") if text.strip())
        except ValueError as error:
            raise UserValueError(
                f"ROAD percentiles must be comma-separated numbers in (0, 100), got {percentiles!r}"
            ) from error
    else:
        values = tuple(percentiles)
    if not values:
        raise UserValueError(f"no ROAD percentile given in {percentiles!r}")
    values = tuple(check_percentile(value) for value in values)
    if len(set(values)) != len(values):
        raise UserValueError(f"duplicate ROAD percentiles in {percentiles!r}")
    return values


def road_scores(
    classifier: Classifier,
    explainer: Explainer,
    images: torch.Tensor,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    seed: int = 0,
    first_index: int = 0,
    chunk_size: int = 64,
    amp: str = "none",
) -> dict[str, torch.Tensor]:
    """ROAD scores of one batch (``images`` N x 3 x H x W in [0, 1] on the device; image j
    draws its noise from a generator seeded ``seed + first_index + j``).

    Args:
        chunk_size: imputed images per solve and classifier forward (bounds the memory).

    Returns:
        ``{"morf", "lerf", "combined"}``: N float64 probability changes averaged over the
        percentiles; ``{"morf_change", "lerf_change"}``: N x P of them per percentile;
        ``{"morf_unchanged", "lerf_unchanged"}``: N x P bool, the top-1 class kept.
    """
    percentiles = parse_road_percentiles(percentiles)
    if chunk_size < 1:
        raise UserValueError(f"'chunk_size' must be positive, got {chunk_size}")
    device = images.device
    probabilities, _, predicted, maps = explain_predictions(classifier, explainer, images, device, amp)
    generators = [torch.Generator().manual_seed(seed + first_index + index) for index in range(len(images))]
    # Every (order, percentile, image) in pytorch-grad-cam's draw order, solved in chunks.
    jobs = [
        (order, column, row) for order in _ORDERS for column in range(len(percentiles)) for row in range(len(images))
    ]
    plain = probabilities.gather(1, predicted[:, None])[:, 0].double()
    changes = torch.empty(len(jobs), dtype=torch.float64, device=device)
    unchanged = torch.empty(len(jobs), dtype=torch.bool, device=device)
    with torch.inference_mode():
        removed_by_job = {
            (order, column): removal_masks(maps, percentile, most_relevant_first=order == "morf")
            for order in _ORDERS
            for column, percentile in enumerate(percentiles)
        }
        for start in range(0, len(jobs), chunk_size):
            chunk = jobs[start : start + chunk_size]
            rows = torch.tensor([row for _, _, row in chunk], device=device)
            removed = torch.stack([removed_by_job[order, column][row] for order, column, row in chunk])
            noise = imputation_noise(removed, images.size(1), generator=[generators[row] for _, _, row in chunk])
            imputed = noisy_linear_imputation(images[rows], removed, noise)
            with autocast(device, amp):
                logits = classifier(imputed)
            after = logits.float().softmax(dim=1)
            classes = predicted[rows]
            changes[start : start + len(chunk)] = after.gather(1, classes[:, None])[:, 0].double() - plain[rows]
            unchanged[start : start + len(chunk)] = after.argmax(dim=1) == classes
    # jobs run (order, percentile, image): N x P per order.
    changes = changes.view(len(_ORDERS), len(percentiles), len(images)).transpose(1, 2)
    unchanged = unchanged.view(len(_ORDERS), len(percentiles), len(images)).transpose(1, 2)
    morf, lerf = changes[0].mean(1), changes[1].mean(1)
    return {
        "morf": morf,
        "lerf": lerf,
        "combined": (lerf - morf) / 2,
        "morf_change": changes[0],
        "lerf_change": changes[1],
        "morf_unchanged": unchanged[0],
        "lerf_unchanged": unchanged[1],
    }


def evaluate_road(
    classifier: Classifier,
    explainer: Explainer,
    loader: Iterable,
    device: torch.device | str = "cpu",
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    limit: int | None = None,
    seed: int = 0,
    chunk_size: int = 64,
    amp: str = "none",
    progress: bool = True,
) -> dict[str, float | int | list[float]]:
    """Mean ROAD scores over the (first ``limit``; all when None) images of ``loader``
    (batches of :class:`utils.data.Batch` or ``(images, labels, ...)``; unreadable images
    are skipped).

    Returns:
        ``road_morf``, ``road_lerf``, ``road_combined`` (probability changes),
        ``road_morf_accuracy``, ``road_lerf_accuracy`` (% over images and percentiles),
        ``road_count``, ``road_percentiles`` and, per percentile, ``road_morf_by_percentile``,
        ``road_lerf_by_percentile``, ``road_morf_accuracy_by_percentile``,
        ``road_lerf_accuracy_by_percentile``.

    Raises:
        ValueError: bad percentiles, ``limit`` or ``chunk_size``, or no readable image.
    """
    percentiles = parse_road_percentiles(percentiles)
    if limit is not None and limit < 1:
        raise UserValueError(f"'limit' must be positive, got {limit}")
    device = torch.device(device)
    scores: dict[str, list[torch.Tensor]] = {}
    count = 0
    total = len(loader.dataset) if hasattr(getattr(loader, "dataset", None), "__len__") else None
    total = total if limit is None else min(limit, total or limit)
    with tqdm(total=total, unit="img", desc="ROAD", disable=not progress, dynamic_ncols=True) as bar:
        for batch in loader:
            images = batch[0]
            if images is None or len(images) == 0:
                continue
            if limit is not None:
                images = images[: limit - count]
            batch_scores = road_scores(
                classifier, explainer, images.to(device), percentiles, seed, count, chunk_size, amp
            )
            for name, values in batch_scores.items():
                scores.setdefault(name, []).append(values.cpu())
            count += len(images)
            bar.update(len(images))
            if limit is not None and count >= limit:
                break
    if not count:
        raise UserValueError("no readable image for ROAD")
    merged = {name: torch.cat(values) for name, values in scores.items()}
    summary: dict[str, float | int | list[float]] = {
        f"road_{name}": float(merged[name].mean()) for name in ("morf", "lerf", "combined")
    }
    for order in _ORDERS:
        accuracy = 100 * merged[f"{order}_unchanged"].double().mean(0)
        summary[f"road_{order}_accuracy"] = float(accuracy.mean())
        summary[f"road_{order}_by_percentile"] = merged[f"{order}_change"].mean(0).tolist()
        summary[f"road_{order}_accuracy_by_percentile"] = accuracy.tolist()
    return summary | {"road_count": count, "road_percentiles": list(percentiles)}


def write_road_table(rows: Sequence[dict], path: str | os.PathLike) -> str:
    """``path`` (CSV): one line per row with ROAD scores (a dict with ``family``, ``method``
    and :func:`evaluate_road`'s keys) and percentile: probability changes and accuracies."""
    header = ["backbone", "method", "percentile", "MoRF change", "LeRF change", "MoRF accuracy %", "LeRF accuracy %"]
    lines = [
        [row["family"], row["method"], percentile]
        + [
            round(row[f"road_{key}_by_percentile"][column], 6)
            for key in ("morf", "lerf", "morf_accuracy", "lerf_accuracy")
        ]
        for row in rows
        if "road_percentiles" in row
        for column, percentile in enumerate(row["road_percentiles"])
    ]
    return ResultsTable(header, lines).write_csv(path)
