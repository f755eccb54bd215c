"""ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022) for any explainer, through pytorch-grad-cam's implementation.

For each percentile q the pixels of the map above (MoRF: most relevant first) or below
(LeRF: least relevant first) its q-th percentile are removed and filled by noisy linear
imputation from their neighbours; the score is the change of the softmax probability of
the explained class k (the prediction), averaged over the percentiles:

    MoRF = mean_q (p_k(MoRF-imputed image) - p_k(image))   (lower is better)
    LeRF = mean_q (p_k(LeRF-imputed image) - p_k(image))   (higher is better)
    combined = (LeRF - MoRF) / 2                             (higher is better)

Maps go through the AD/IC protocol's step 2 (per-image min-max, bilinear upsampling to the
input size); the imputation works on the [0, 1] image, as the AD/IC masking does. The
imputer draws noise from torch's global generator: :func:`road_scores` seeds it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from utils.core.errors import UserValueError
from utils.evaluation.protocol import normalize_and_upsample
from utils.explainers.protocol import Classifier, Explainer

__all__ = ["ROAD_PERCENTILES", "evaluate_road", "road_scores"]

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def road_scores(
    classifier: Classifier,
    explainer: Explainer,
    images: torch.Tensor,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """ROAD scores of one batch (``images`` N x 3 x H x W in [0, 1] on the device).

    Returns:
        ``{"morf", "lerf", "combined"}``, each N float64 values (probability changes).
    """
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    if not percentiles or any(not 0 < percentile < 100 for percentile in percentiles):
        raise UserValueError(f"'percentiles' must be numbers in (0, 100), got {list(percentiles)}")
    with torch.inference_mode():
        classes = classifier(images).argmax(dim=1)
    maps = explainer.explain(images, classes.clone())
    with torch.inference_mode():
        maps = normalize_and_upsample(maps.detach(), images.shape[-2:])[:, 0].cpu().numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(k)) for k in classes]
    torch.manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        # pytorch-grad-cam's imputer calls np.argwhere on torch tensors, which NumPy 2 flags
        # as deprecated once per image; the results are unaffected.
        warnings.filterwarnings("ignore", message="__array_wrap__ must accept context", category=DeprecationWarning)
        morf = ROADMostRelevantFirstAverage(list(percentiles))(images, maps, targets, classifier)
        lerf = ROADLeastRelevantFirstAverage(list(percentiles))(images, maps, targets, classifier)
    morf, lerf = (
        torch.from_numpy(np.asarray(morf, dtype=np.float64)),
        torch.from_numpy(np.asarray(lerf, dtype=np.float64)),
    )
    return {"morf": morf, "lerf": lerf, "combined": (lerf - morf) / 2}


def evaluate_road(
    classifier: Classifier,
    explainer: Explainer,
    loader: Iterable,
    device: torch.device | str = "cpu",
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Mean ROAD scores over the (first ``limit``) images of ``loader`` (batches of
    :class:`utils.data.Batch` or ``(images, labels, ...)``; unreadable images are skipped).

    Returns:
        ``{"road_morf", "road_lerf", "road_combined", "road_count"}``.
    """
    device = torch.device(device)
    scores: dict[str, list[torch.Tensor]] = {"morf": [], "lerf": [], "combined": []}
    count = 0
    with tqdm(total=limit, unit="img", desc="ROAD", disable=not progress, dynamic_ncols=True) as bar:
        for batch_number, batch in enumerate(loader):
            images = batch[0]
            if images is None:
                continue
            if limit is not None:
                images = images[: limit - count]
            batch_scores = road_scores(classifier, explainer, images.to(device), percentiles, seed + batch_number)
            for name, values in batch_scores.items():
                scores[name].append(values)
            count += len(images)
            bar.update(len(images))
            if limit is not None and count >= limit:
                break
    if not count:
        raise UserValueError("no readable image for ROAD")
    return {f"road_{name}": float(torch.cat(values).mean()) for name, values in scores.items()} | {"road_count": count}
