"""Insertion and deletion (Petsiuk et al., "RISE: Randomized Input Sampling for Explanation
of Black-box Models", BMVC 2018), batched on the device, for any explainer.

Per image x (3 x H x W in [0, 1], P = H * W pixels), with the AD/IC protocol's explained
class and map (:mod:`utils.evaluation.protocol`: ``k = argmax softmax(f(x))``, the map
min-max normalised per image and upsampled bilinearly to H x W by
:func:`utils.evaluation.protocol.normalize_and_upsample`):

* the pixels are ranked by the map, most salient first; ties keep raster order (a stable
  descending sort): ``rank(j)`` is pixel j's place, 0 for the most salient;
* with ``s`` pixels per step, ``n = ceil(P / s)`` steps and ``c_i = min(i * s, P)`` pixels
  changed after step i (i = 0 .. n), the perturbed images are (the mask shared by the
  channels)

      deletion:   x_i^del = where(rank < c_i, substrate(x), x)
      insertion:  x_i^ins = where(rank < c_i, x, blur(x))

  where ``substrate`` is zeros (default), ``blur`` (below) or ``mean`` (each channel's mean
  over the image), and ``blur`` is the RISE paper's Gaussian blur, kernel 11, sigma 5
  (:func:`torchvision.transforms.functional.gaussian_blur`);
* the curves are ``d_i = softmax(f(x_i^del))[k]`` and ``e_i = softmax(f(x_i^ins))[k]``,
  n + 1 points each (the first deletion point is the plain image, the last insertion point
  too);
* their areas, by the trapezoidal rule on the normalised axis ``t_i = i / n`` over [0, 1]:

      AUC(curve) = (sum_{i=0}^{n} curve_i - (curve_0 + curve_n) / 2) / n

  deletion AUC: lower is better (the probability falls fast when the salient pixels go);
  insertion AUC: higher is better (it rises fast when they come back).

Where the RISE reference code differs: its blur pads with zeros (``conv2d`` with
``padding=5``), torchvision's reflects; its ``np.argsort`` breaks ties in no documented
order, ours in raster order.

Where torch-cam's ``DeletionInsertionMetric`` (torchcam 0.5.0, ``torchcam.metrics``)
differs:

* one baseline for both curves (zeros by default): its insertion starts from that
  baseline, not from a blurred copy (pass the blur as its ``baseline`` to match ours);
* ``steps`` intervals instead of pixels per step: its step is ``ceil(P / steps)`` pixels,
  and its x axis is the fraction actually changed (``c_i / P``), so a shorter last step
  counts less; ours spaces the n + 1 points evenly, as the RISE code does. The two agree
  when ``s`` divides P and ``steps = P / s``;
* the map is the CAM extractor's (normalised by the extractor), resized with
  ``F.interpolate`` (bilinear, ``align_corners=False``), not min-max normalised again;
  ranks are equal for a map already at the input size;
* maps with NaN are dropped and counted; here they raise no error but rank arbitrarily.

The two agree to float precision under those conditions (``tests/test_insertion_deletion.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torchvision.transforms.functional as TF
from tqdm import tqdm

from utils.core.errors import UserTypeError, UserValueError
from utils.core.runtime import autocast
from utils.evaluation.protocol import explain_predictions
from utils.explainers.protocol import Classifier, Explainer

__all__ = [
    "BLUR_KERNEL",
    "BLUR_SIGMA",
    "SUBSTRATES",
    "InsertionDeletionMeter",
    "InsertionDeletionResult",
    "auc",
    "blur",
    "evaluate_insertion_deletion",
    "insertion_deletion_curves",
    "insertion_deletion_row",
    "salience_ranks",
    "save_curves_figure",
    "substrate",
]

BLUR_KERNEL = 11
BLUR_SIGMA = 5.0
SUBSTRATES = ("zeros", "blur", "mean")


def blur(images: torch.Tensor) -> torch.Tensor:
    """The RISE paper's Gaussian blur (kernel 11, sigma 5) of N x C x H x W images."""
    return TF.gaussian_blur(images, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])


def substrate(images: torch.Tensor, name: str = "zeros") -> torch.Tensor:
    """What deletion puts in place of the removed pixels: ``zeros``, ``blur`` (:func:`blur`)
    or ``mean`` (each image's per-channel mean)."""
    if name == "zeros":
        return torch.zeros_like(images)
    if name == "blur":
        return blur(images)
    if name == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    raise UserValueError(f"'substrate' must be one of {', '.join(SUBSTRATES)}, got {name!r}")


def salience_ranks(maps: torch.Tensor) -> torch.Tensor:
    """N x P ranks of the pixels of N x 1 x H x W maps: 0 for the most salient, ties in
    raster order (stable descending sort)."""
    order = torch.argsort(maps.flatten(1), dim=1, descending=True, stable=True)
    return torch.argsort(order, dim=1)


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area of N x (n + 1) curves over evenly spaced points on [0, 1]."""
    if curves.size(-1) < 2:
        raise UserValueError(f"a curve needs at least 2 points, got {curves.size(-1)}")
    return (curves.sum(-1) - (curves[..., 0] + curves[..., -1]) / 2) / (curves.size(-1) - 1)


def _check_step(step: int, num_pixels: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int):
        raise UserTypeError(f"'step' must be an int, got {type(step).__name__}")
    if step < 1:
        raise UserValueError(f"'step' must be a positive number of pixels, got {step}")
    return -(-num_pixels // step)


def insertion_deletion_curves(
    classifier: Classifier,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    step: int,
    substrate_name: str = "zeros",
    chunk_size: int = 64,
    amp: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves (each N x (n + 1), float32, on the device) of one batch.

    Args:
        classifier: images in [0, 1] -> logits.
        images: N x 3 x H x W in [0, 1].
        maps: N x 1 x H x W, already normalised and upsampled (ranks only matter).
        classes: N explained classes.
        step: pixels changed per step.
        substrate_name: deletion's substrate, one of :data:`SUBSTRATES`.
        chunk_size: perturbed images per classifier forward (memory).
        amp: autocast mode of the forward passes (:func:`utils.core.runtime.autocast`).
    """
    if chunk_size < 1:
        raise UserValueError(f"'chunk_size' must be positive, got {chunk_size}")
    num_images, channels, height, width = images.shape
    num_pixels = height * width
    num_steps = _check_step(step, num_pixels)
    with torch.inference_mode():
        ranks = salience_ranks(maps)
        starts = {"deletion": images, "insertion": blur(images)}
        ends = {"deletion": substrate(images, substrate_name), "insertion": images}
        counts = torch.arange(num_steps + 1, device=images.device).mul(step).clamp(max=num_pixels)
        # jobs: (curve, image, point) flattened; each chunk builds its perturbed images at once
        image_index = torch.arange(num_images, device=images.device).repeat_interleave(num_steps + 1)
        point_index = torch.arange(num_steps + 1, device=images.device).repeat(num_images)
        curves = {}
        for name in ("deletion", "insertion"):
            start, end = starts[name].flatten(2), ends[name].flatten(2)
            scores = []
            for first in range(0, len(image_index), chunk_size):
                who = image_index[first : first + chunk_size]
                changed = ranks[who] < counts[point_index[first : first + chunk_size]].unsqueeze(1)
                perturbed = torch.where(changed.unsqueeze(1), end[who], start[who])
                with autocast(images.device, amp):
                    logits = classifier(perturbed.view(len(who), channels, height, width))
                probabilities = logits.float().softmax(dim=1)
                scores.append(probabilities.gather(1, classes[who].view(-1, 1)).squeeze(1))
            curves[name] = torch.cat(scores).view(num_images, num_steps + 1)
    return curves["deletion"], curves["insertion"]


class InsertionDeletionMeter:
    """Accumulates deletion and insertion curves batch by batch; :meth:`summary` gives the
    mean AUCs (deletion: lower is better; insertion: higher is better) and mean curves."""

    def __init__(self) -> None:
        self._deletion: list[torch.Tensor] = []
        self._insertion: list[torch.Tensor] = []

    def update(self, deletion: torch.Tensor, insertion: torch.Tensor) -> None:
        """Add N x (n + 1) deletion and insertion curves (any device)."""
        if deletion.shape != insertion.shape or deletion.dim() != 2:
            raise UserValueError(
                f"curves must both be N x (n + 1), got {tuple(deletion.shape)} and {tuple(insertion.shape)}"
            )
        if self._deletion and deletion.size(1) != self._deletion[0].size(1):
            raise UserValueError(f"curves of {deletion.size(1)} points after curves of {self._deletion[0].size(1)}")
        self._deletion.append(deletion.detach().double().cpu())
        self._insertion.append(insertion.detach().double().cpu())

    @property
    def count(self) -> int:
        return sum(len(curves) for curves in self._deletion)

    def curves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All deletion and insertion curves so far (float64, on the host)."""
        if not self._deletion:
            raise UserValueError("no curve to summarise: update the meter first")
        return torch.cat(self._deletion), torch.cat(self._insertion)

    def summary(self) -> dict[str, float | int | list[float]]:
        deletion, insertion = self.curves()
        return {
            "deletion_auc": float(auc(deletion).mean()),
            "insertion_auc": float(auc(insertion).mean()),
            "count": len(deletion),
            "deletion_curve": deletion.mean(0).tolist(),
            "insertion_curve": insertion.mean(0).tolist(),
        }


@dataclass
class InsertionDeletionResult:
    """Per-image AUCs (float64, host) and the mean curves of :func:`evaluate_insertion_deletion`."""

    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor
    predicted: torch.Tensor
    step: int
    substrate: str
    summary: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.deletion_auc)


def evaluate_insertion_deletion(
    classifier: Classifier,
    explainer: Explainer,
    loader: Iterable,
    device: torch.device | str = "cpu",
    step: int = 224,
    substrate: str = "zeros",
    chunk_size: int = 64,
    limit: int | None = None,
    amp: str = "none",
    progress: bool = True,
) -> InsertionDeletionResult:
    """Insertion and deletion of the module docstring over the (first ``limit``) images of
    ``loader`` (batches of :class:`utils.data.Batch` or ``(images, labels, ...)``; unreadable
    images are skipped).

    Args:
        classifier: images in [0, 1] -> logits.
        explainer: ``explain(images, classes) -> maps`` (or also ``predict_and_explain``).
        device: where the computation runs.
        step: pixels changed per step (224 at 224 x 224: 224 steps, the RISE code's).
        substrate: deletion's substrate, one of :data:`SUBSTRATES`.
        chunk_size: perturbed images per classifier forward (bounds the memory).
        limit: images used (all when None).
        amp: autocast mode of the forward passes.
        progress: show a tqdm bar.

    Raises:
        ValueError: a bad ``step``/``substrate``/``chunk_size``, or no readable image.
    """
    if substrate not in SUBSTRATES:
        raise UserValueError(f"'substrate' must be one of {', '.join(SUBSTRATES)}, got {substrate!r}")
    if limit is not None and limit < 1:
        raise UserValueError(f"'limit' must be positive, got {limit}")
    device = torch.device(device)
    meter = InsertionDeletionMeter()
    predicted_all = []
    with tqdm(total=limit, unit="img", desc="insertion/deletion", disable=not progress, dynamic_ncols=True) as bar:
        for batch in loader:
            images = batch[0]
            if images is None or len(images) == 0:
                continue
            if limit is not None:
                images = images[: limit - meter.count]
            images = images.to(device)
            _, _, predicted, maps = explain_predictions(classifier, explainer, images, device, amp)
            deletion, insertion = insertion_deletion_curves(
                classifier, images, maps, predicted, step, substrate, chunk_size, amp
            )
            meter.update(deletion, insertion)
            predicted_all.append(predicted.cpu())
            bar.update(len(images))
            if limit is not None and meter.count >= limit:
                break
    if not meter.count:
        raise UserValueError("no readable image for insertion/deletion")
    deletion, insertion = meter.curves()
    return InsertionDeletionResult(
        deletion_auc=auc(deletion),
        insertion_auc=auc(insertion),
        deletion_curve=deletion.mean(0),
        insertion_curve=insertion.mean(0),
        predicted=torch.cat(predicted_all),
        step=step,
        substrate=substrate,
        summary=meter.summary(),
    )


def insertion_deletion_row(result: InsertionDeletionResult) -> dict[str, float | int | str | list[float]]:
    """The columns a comparison row gains: mean AUCs, the image count, the settings and the
    mean curves (plain numbers, for JSON)."""
    return {
        "deletion_auc": float(result.deletion_auc.mean()),
        "insertion_auc": float(result.insertion_auc.mean()),
        "id_count": result.count,
        "id_step": result.step,
        "id_substrate": result.substrate,
        "deletion_curve": result.deletion_curve.tolist(),
        "insertion_curve": result.insertion_curve.tolist(),
    }


def save_curves_figure(rows: Sequence[dict], path: str | os.PathLike) -> str:
    """Two panels, deletion and insertion: the mean curve of each row (a dict with ``label``,
    ``deletion_curve``, ``insertion_curve``, ``deletion_auc``, ``insertion_auc``) against the
    fraction of pixels changed, the AUC in the legend. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise UserValueError("no insertion/deletion curve to draw")
    figure = Figure(figsize=(10.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for axis, name, direction in zip(axes, ("deletion", "insertion"), ("lower", "higher")):
        for row in rows:
            curve = row[f"{name}_curve"]
            steps = max(len(curve) - 1, 1)
            axis.plot([i / steps for i in range(len(curve))], curve, label=f"{row['label']} ({row[f'{name}_auc']:.3f})")
        axis.set_xlabel("fraction of pixels " + ("deleted" if name == "deletion" else "inserted"))
        axis.set_ylabel("probability of the explained class")
        axis.set_title(f"{name} (AUC: {direction} is better)", fontsize=10)
        axis.set_xlim(0, 1)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = os.fspath(path)
    figure.savefig(path, bbox_inches="tight")
    return path
