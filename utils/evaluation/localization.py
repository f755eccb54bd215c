"""Localisation metrics of explanation maps against ground-truth boxes (one or several per
image): the share of the map's energy inside the boxes, the pointing game and MaxBoxAccV2.

For a map M (H x W, min-max normalised to [0, 1] and upsampled to the image, as the AD/IC
protocol does: :func:`utils.evaluation.protocol.normalize_and_upsample`) and an image's
boxes B_1..B_K (pixel boxes ``[x0, x1) x [y0, y1)``, union U):

    energy in boxes = sum_{p in U} M(p) / sum_p M(p)                 (higher is better)
        the energy-based pointing game of Score-CAM (Wang et al., 2020); 0 for an all-zero map
    pointing game   = 1 if argmax_p M(p) lies in U, else 0           (higher is better)
        Zhang et al., 2016; the first maximum in raster order; a constant map has no point and
        counts as a miss. Strict by default (the point inside the tight box); Zhang et al. and
        TorchRay count a point within 15 pixels of the box at 224 px
        (:func:`usual_pointing_tolerance` scales it to other sizes)
    MaxBoxAccV2     = mean over delta in {0.3, 0.5, 0.7} of
                      max over tau of 1/N sum_n 1[ max_{b, k} IoU(b, B_k) >= delta ]
        (higher is better) Choe et al., "Evaluating Weakly Supervised Object Localization
        Methods Right", CVPR 2020: b runs over the tight boxes of every 8-connected component
        of {p : M(p) >= tau}, tau over the grid 0, 0.01, ..., 0.99; an image without any
        component at tau (e.g. a constant, hence all-zero, map for tau > 0) has no box and
        misses; at tau = 0 every pixel is in, so the box is the whole image.

All are averaged over the images and reported in percent. IoU is that of the pixel sets,
``|b & B| / |b | B|`` with ends exclusive.

Where the authors' code (``wsolevaluation``) differs: it thresholds the map quantised to 8
bits with a strict ``>`` (``cv2.threshold`` at ``int(tau * max)``), and it takes the boxes of
every contour ``cv2.findContours(RETR_TREE)`` finds, which adds the boxes of the holes of
the components; its boxes' right and bottom edges are clipped to ``W - 1``/``H - 1`` and its
IoU counts ``x1 - x0 + 1`` pixels. Here the definition of the paper is taken as written.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from utils.core.errors import UserValueError
from utils.core.files import atomic_open, write_json
from utils.data.boxes import boxes_for_samples, read_boxes_file
from utils.evaluation.protocol import _unpack, explain_predictions  # the protocol's reading of a batch
from utils.explainers.protocol import Classifier, Explainer

__all__ = [
    "CAM_THRESHOLDS",
    "IOU_THRESHOLDS",
    "LOCALIZATION_COLUMNS",
    "LOCALIZATION_TABLE_COLUMNS",
    "LocalizationMeter",
    "LocalizationResult",
    "best_iou_per_threshold",
    "box_iou",
    "box_masks",
    "energy_in_box",
    "evaluate_localization",
    "format_localization",
    "localization_cells",
    "localization_chart_scores",
    "localization_output",
    "localization_row",
    "load_sample_boxes",
    "max_box_accuracy",
    "pad_boxes",
    "peak_pixels",
    "pointing_ceiling",
    "pointing_game",
    "usual_pointing_tolerance",
    "write_localization",
]

CAM_THRESHOLDS = tuple(index / 100 for index in range(100))
IOU_THRESHOLDS = (0.3, 0.5, 0.7)
POINTING_TOLERANCE_AT_224 = 15  # pixels: the pointing game's usual tolerance (Zhang et al., 2016)
# (key of a summary or a comparison row, column title); percent, higher is better
LOCALIZATION_COLUMNS = (
    ("pointing_game", "pointing game % ↑"),
    ("energy_in_box", "energy in boxes % ↑"),
    ("max_box_acc_30", "MaxBoxAcc IoU 0.3 % ↑"),
    ("max_box_acc_50", "MaxBoxAcc IoU 0.5 % ↑"),
    ("max_box_acc_70", "MaxBoxAcc IoU 0.7 % ↑"),
    ("max_box_acc_v2", "MaxBoxAccV2 % ↑"),
)
# those and the most any map at the explainer's resolution, upsampled, can score in the
# pointing game (a bound, not a score: not drawn in the charts)
LOCALIZATION_TABLE_COLUMNS = (*LOCALIZATION_COLUMNS, ("pointing_game_ceiling", "pointing game ceiling %"))

BoxesLike = torch.Tensor | Sequence[torch.Tensor]


def pad_boxes(boxes: BoxesLike, count: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images' boxes as an N x K x 4 long tensor (padded with empty boxes) and an
    N x K mask of the real ones. Accepts N x 4 (one box each), N x K x 4, or a sequence of
    K_n x 4 tensors (K_n >= 1).

    Raises:
        ValueError: another shape, another number of images, an image without a box, or a
            box with ``x1 <= x0`` or ``y1 <= y0``.
    """
    if torch.is_tensor(boxes) and boxes.dim() == 2:
        boxes = boxes.unsqueeze(1)
    if torch.is_tensor(boxes):
        padded = boxes.to(device).long()
        valid = torch.ones(padded.shape[:2], dtype=torch.bool, device=padded.device)
    else:
        items = [torch.as_tensor(item).reshape(-1, 4) for item in boxes]
        width = max((len(item) for item in items), default=1)
        padded = torch.zeros(len(items), width, 4, dtype=torch.long)
        valid = torch.zeros(len(items), width, dtype=torch.bool)
        for row, item in enumerate(items):
            padded[row, : len(item)] = item.long()
            valid[row, : len(item)] = True
        padded, valid = padded.to(device), valid.to(device)
    if padded.dim() != 3 or padded.size(2) != 4 or padded.size(0) != count:
        raise UserValueError(
            f"'boxes' must be N x 4, N x K x 4 or N tensors of K x 4 (x0, y0, x1, y1) with N={count}, "
            f"got shape {tuple(padded.shape)}"
        )
    if count and not valid.any(dim=1).all():
        raise UserValueError("every image needs at least one box (leave the others out)")
    real = padded[valid]
    if (real[:, 2] <= real[:, 0]).any() or (real[:, 3] <= real[:, 1]).any():
        raise UserValueError("'boxes' must have x1 > x0 and y1 > y0 (end coordinates are exclusive)")
    return padded, valid


def _check_maps(maps: torch.Tensor) -> torch.Tensor:
    if maps.dim() == 4 and maps.size(1) == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise UserValueError(f"'maps' must be N x 1 x H x W or N x H x W, got shape {tuple(maps.shape)}")
    if (maps < 0).any():
        raise UserValueError("'maps' must be non-negative (min-max normalise them first)")
    return maps


def box_masks(boxes: torch.Tensor, height: int, width: int, tolerance: int = 0) -> torch.Tensor:
    """... x H x W boolean masks of ... x 4 boxes (x0, y0, x1, y1; ends exclusive), each side
    moved ``tolerance`` pixels outwards."""
    boxes = torch.as_tensor(boxes).long()
    rows = torch.arange(height, device=boxes.device).view(height, 1)
    columns = torch.arange(width, device=boxes.device).view(1, width)
    x0, y0, x1, y1 = (boxes[..., index, None, None] for index in range(4))
    inside_rows = (rows >= y0 - tolerance) & (rows < y1 + tolerance)
    inside_columns = (columns >= x0 - tolerance) & (columns < x1 + tolerance)
    return inside_rows & inside_columns


def _union_masks(boxes: BoxesLike, maps: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """N x H x W: the union of each image's boxes."""
    padded, valid = pad_boxes(boxes, maps.size(0), maps.device)
    masks = box_masks(padded, maps.size(1), maps.size(2), tolerance) & valid[..., None, None]
    return masks.any(dim=1)


def energy_in_box(maps: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
    """Share (0..1, float64) of each map's sum that falls inside the union of its boxes; 0
    for an all-zero map.

    Args:
        maps: N x 1 x H x W or N x H x W non-negative maps at the boxes' resolution.
        boxes: per image one or several integer (x0, y0, x1, y1) pixel boxes, ends
            exclusive (see :func:`pad_boxes`).
    """
    maps = _check_maps(maps)
    masks = _union_masks(boxes, maps)
    total = maps.sum(dim=(1, 2), dtype=torch.float64)
    inside = (maps * masks).sum(dim=(1, 2), dtype=torch.float64)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(total))


def usual_pointing_tolerance(image_size: int) -> int:
    """The pointing game's usual tolerance, 15 pixels at 224 px (Zhang et al., 2016), scaled to
    ``image_size`` and rounded: 4 at 64 px."""
    return round(POINTING_TOLERANCE_AT_224 * image_size / 224)


def pointing_game(maps: torch.Tensor, boxes: BoxesLike, tolerance: int = 0) -> torch.Tensor:
    """Whether each map's maximum lies in one of its boxes (each moved ``tolerance`` pixels
    outwards). The first maximum in raster order is the point; a constant map has no point
    and counts as a miss."""
    if tolerance < 0:
        raise UserValueError(f"'tolerance' must be >= 0, got {tolerance!r}")
    maps = _check_maps(maps)
    masks = _union_masks(boxes, maps, tolerance)
    flat = maps.flatten(1)  # N x HW, also for N = 0
    peak = flat.argmax(dim=1)
    hit = masks.flatten(1).gather(1, peak.view(-1, 1)).squeeze(1)
    constant = flat.amax(dim=1) == flat.amin(dim=1)
    return hit & ~constant


def peak_pixels(grid: int, size: int) -> torch.Tensor:
    """Boolean (``size``,): the pixels of one axis where a map of ``grid`` cells, upsampled
    bilinearly (``align_corners=False``) to ``size`` pixels, can have its first maximum.

    Between two cell centres the upsampled map is linear, so its maximum is at a pixel next to
    a cell centre: the last pixel before an inner centre or the first after it, and for the two
    outer cells the first pixel of the constant run that ends (or starts) the axis. That is
    exact arithmetic; in float32, two neighbouring cells equal to about 1e-7 can put the peak
    anywhere between their centres."""
    if grid < 1 or size < 1:
        raise UserValueError(f"'grid' and 'size' must be >= 1, got {grid} and {size}")
    centres = ((torch.arange(size, dtype=torch.float64) + 0.5) * grid / size - 0.5).clamp(0, grid - 1)
    possible = torch.zeros(size, dtype=torch.bool)
    for cell in range(grid):
        at_or_after = torch.nonzero(centres >= cell)
        if len(at_or_after):
            possible[at_or_after[0]] = True
        at_or_before = torch.nonzero(centres <= cell)
        if 0 < cell < grid - 1 and len(at_or_before):
            possible[at_or_before[-1]] = True
    return possible


def pointing_ceiling(boxes: BoxesLike, grid: Sequence[int], size: Sequence[int], tolerance: int = 0) -> torch.Tensor:
    """Boolean (N,): whether each image's boxes hold a pixel where a map of ``grid`` (h, w)
    cells upsampled to ``size`` (H, W) can peak (:func:`peak_pixels`). Its mean bounds the
    :func:`pointing_game` of every map of that resolution from above: at 64 px an 8 x 8 map
    can peak at 14 pixels per axis, a 4 x 4 map at 6 (0, 23, 24, 39, 40, 56), so a small box
    between its cells' centres is missed whatever the map. A map of one cell is constant and
    never points."""
    height, width = int(size[0]), int(size[1])
    rows, columns = int(grid[0]), int(grid[1])
    reachable = peak_pixels(rows, height)[:, None] & peak_pixels(columns, width)[None, :]
    if rows == columns == 1:
        reachable = torch.zeros_like(reachable)
    count = boxes.size(0) if torch.is_tensor(boxes) else len(boxes)
    masks = _union_masks(boxes, reachable.expand(count, height, width), tolerance)
    return (masks & reachable.to(masks.device)).flatten(1).any(dim=1)


def box_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """A x B IoU (float64) of the pixel sets of A x 4 and B x 4 boxes (ends exclusive)."""
    first, second = first.double().reshape(-1, 1, 4), second.double().reshape(1, -1, 4)
    width = (torch.minimum(first[..., 2], second[..., 2]) - torch.maximum(first[..., 0], second[..., 0])).clamp(min=0)
    height = (torch.minimum(first[..., 3], second[..., 3]) - torch.maximum(first[..., 1], second[..., 1])).clamp(min=0)
    intersection = width * height

    def area(boxes: torch.Tensor) -> torch.Tensor:
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])

    union = area(first) + area(second) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-300), torch.zeros_like(union))


def _component_boxes(image_map: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tight boxes (C x 4, x0 y0 x1 y1, ends exclusive) of the 8-connected components of
    ``{image_map >= level}`` for every level, and each box's level index (C)."""
    boxes, owners = [], []
    row_peaks, column_peaks = image_map.max(axis=1), image_map.max(axis=0)
    for index, level in enumerate(levels):
        rows, columns = np.flatnonzero(row_peaks >= level), np.flatnonzero(column_peaks >= level)
        if not len(rows):
            continue
        top, left = rows[0], columns[0]  # label only the box around the thresholded pixels
        mask = (image_map[top : rows[-1] + 1, left : columns[-1] + 1] >= level).view(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if count > 1:  # label 0 is the background
            found = stats[1:, :4].astype(np.int64)  # x, y, width, height
            found[:, 2:] += found[:, :2]
            found += [left, top, left, top]
            boxes.append(found)
            owners.append(np.full(len(found), index))
    if not boxes:
        return np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(boxes), np.concatenate(owners)


def _best_ious(image_map: np.ndarray, boxes: torch.Tensor, levels: np.ndarray) -> torch.Tensor:
    """One image's best IoU per level (T, float64)."""
    found, owners = _component_boxes(image_map, levels)
    best = torch.zeros(len(levels), dtype=torch.float64)
    if len(found):
        ious = box_iou(torch.from_numpy(found), boxes).amax(dim=1)
        best = best.scatter_reduce(0, torch.from_numpy(owners), ious, reduce="amax")
    return best


def best_iou_per_threshold(
    maps: torch.Tensor, boxes: BoxesLike, thresholds: Sequence[float] = CAM_THRESHOLDS
) -> torch.Tensor:
    """N x T (float64, host): per image and CAM threshold tau, the best IoU between the
    tight box of any 8-connected component of ``{M >= tau}`` and any of the image's boxes
    (0 when the thresholded map is empty). The components of each thresholded map come from
    OpenCV's ``connectedComponentsWithStats`` (their boxes directly), the images of a batch
    on a thread each (OpenCV releases the GIL), the IoUs vectorised."""
    maps = _check_maps(maps)
    padded, valid = pad_boxes(boxes, maps.size(0))
    levels = np.asarray(thresholds, dtype=np.float64)
    images = maps.detach().double().cpu().numpy()
    jobs = [(images[row], padded[row][valid[row]], levels) for row in range(len(images))]
    if len(jobs) <= 1:
        rows = [_best_ious(*job) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            rows = list(pool.map(lambda job: _best_ious(*job), jobs))
    return torch.stack(rows) if rows else torch.zeros(0, len(levels), dtype=torch.float64)


def max_box_accuracy(best_ious: torch.Tensor, iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[str, float]:
    """From :func:`best_iou_per_threshold`'s N x T IoUs: ``max_box_acc_<delta x 100>`` (the
    best over tau of the share of images with IoU >= delta, percent) per delta,
    ``max_box_acc_v2`` (their mean) and ``best_threshold_<delta x 100>`` (the first tau
    index reaching the max); NaN for N = 0."""
    summary: dict[str, float] = {}
    for delta in iou_thresholds:
        key = f"{round(delta * 100)}"
        if len(best_ious):
            accuracy = (best_ious >= delta - 1e-12).double().mean(dim=0) * 100
            summary[f"max_box_acc_{key}"] = float(accuracy.max())
            summary[f"best_threshold_{key}"] = int(accuracy.argmax())
        else:
            summary[f"max_box_acc_{key}"] = math.nan
            summary[f"best_threshold_{key}"] = -1
    summary["max_box_acc_v2"] = sum(summary[f"max_box_acc_{round(d * 100)}"] for d in iou_thresholds) / len(
        iou_thresholds
    )
    return summary


class LocalizationMeter:
    """Accumulates energy in boxes, pointing game and the best IoUs of MaxBoxAccV2 batch by
    batch; :meth:`summary` gives them in percent."""

    def __init__(self, tolerance: int = 0, thresholds: Sequence[float] = CAM_THRESHOLDS) -> None:
        self.tolerance = tolerance
        self.thresholds = tuple(thresholds)
        self._energy: list[torch.Tensor] = []
        self._hits: list[torch.Tensor] = []
        self._best_ious: list[torch.Tensor] = []

    def update(self, maps: torch.Tensor, boxes: BoxesLike) -> None:
        """Add a batch of maps (N x 1 x H x W, non-negative) and their boxes (see :func:`pad_boxes`)."""
        self._energy.append(energy_in_box(maps, boxes).cpu())
        self._hits.append(pointing_game(maps, boxes, self.tolerance).cpu())
        self._best_ious.append(best_iou_per_threshold(maps, boxes, self.thresholds))

    @property
    def count(self) -> int:
        return sum(len(energy) for energy in self._energy)

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every image's energy share (0..1), pointing-game hit and best IoU per threshold."""
        if not self._energy:
            raise UserValueError("LocalizationMeter: no batch was added")
        return torch.cat(self._energy), torch.cat(self._hits), torch.cat(self._best_ious)

    def summary(self) -> dict[str, float]:
        """``energy_in_box``, ``pointing_game``, ``max_box_acc_30/50/70``, ``max_box_acc_v2``
        in percent (NaN when every batch added was empty, e.g. no image was classified
        correctly), the best threshold index per IoU and ``count``."""
        energy, hits, best_ious = self.per_image()
        return {
            "energy_in_box": float(energy.mean() * 100),
            "pointing_game": float(hits.double().mean() * 100),
            **max_box_accuracy(best_ious),
            "count": len(energy),
        }


@dataclass
class LocalizationResult:
    """Per-image localisation scores of :func:`evaluate_localization` (images with a box,
    in loader order) and their summary."""

    indices: torch.Tensor
    labels: torch.Tensor
    predicted: torch.Tensor
    energy: torch.Tensor
    hits: torch.Tensor
    best_ious: torch.Tensor
    without_box: int
    correct_only: bool
    summary: dict

    @property
    def count(self) -> int:
        return len(self.indices)


class _MapSizeNoting:
    """Passes an explainer through (``explain``, and ``predict_and_explain`` when it has one)
    and notes the size (h, w) of the maps it returns, before they are upsampled."""

    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer
        self.map_size: tuple[int, int] | None = None
        if hasattr(explainer, "predict_and_explain"):
            self.predict_and_explain = self._predict_and_explain

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self._noted(self.explainer.explain(images, classes))

    def _predict_and_explain(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, maps = self.explainer.predict_and_explain(images)
        return logits, self._noted(maps)

    def _noted(self, maps: torch.Tensor) -> torch.Tensor:
        if torch.is_tensor(maps):
            self.map_size = (int(maps.shape[-2]), int(maps.shape[-1]))
        return maps


def evaluate_localization(
    classifier: Classifier,
    explainer: Explainer,
    loader: Iterable,
    boxes: Sequence[torch.Tensor | None],
    device: torch.device | str = "cpu",
    amp: str = "none",
    correct_only: bool = True,
    progress: bool = True,
    pointing_tolerance: int = 0,
) -> LocalizationResult:
    """The localisation metrics of the module docstring over ``loader``'s images, with the
    AD/IC protocol's explained class and map (:func:`utils.evaluation.protocol.explain_predictions`).

    Args:
        boxes: per dataset index (the ``indices`` of the loader's batches), the image's
            boxes on the evaluated image (:func:`utils.data.boxes.boxes_for_samples`) or None.
        correct_only: score only the images whose prediction (the explained class) is their
            label, so that the map explains the boxed object's class (the default; the demo's
            rule). Otherwise every image with a box.
        pointing_tolerance: pixels around each box where the pointing game still hits (0: the
            tight box; see :func:`usual_pointing_tolerance`); kept in the summary.

    Returns:
        :class:`LocalizationResult`; its summary is NaN when no image was scored. The summary
        also holds ``map_size`` (the explainer's maps before upsampling) and
        ``pointing_game_ceiling``, the most any map of that size could score in the pointing
        game on these images (:func:`pointing_ceiling`, same tolerance).
    """
    device = torch.device(device)
    meter = LocalizationMeter(pointing_tolerance)
    explainer = _MapSizeNoting(explainer)
    reachable: list[torch.Tensor] = []
    kept: dict[str, list[torch.Tensor]] = {"indices": [], "labels": [], "predicted": []}
    without_box = seen = 0
    total = len(loader.dataset) if hasattr(getattr(loader, "dataset", None), "__len__") else None
    with tqdm(total=total, unit="img", desc="localisation", disable=not progress, dynamic_ncols=True) as bar:
        for raw_batch in loader:
            batch = _unpack(raw_batch, seen)
            seen += len(batch.labels) + len(batch.failed)
            bar.update(len(batch.labels) + len(batch.failed))
            if batch.images is None or len(batch.labels) == 0:
                continue
            has_box = torch.tensor([boxes[int(index)] is not None for index in batch.indices], dtype=torch.bool)
            without_box += int((~has_box).sum())
            if not has_box.any():
                continue
            images = batch.images[has_box].to(device, non_blocking=True)
            _, _, predicted, maps = explain_predictions(classifier, explainer, images, device, amp)
            predicted, labels, indices = predicted.cpu(), batch.labels[has_box], batch.indices[has_box]
            chosen = predicted == labels if correct_only else torch.ones_like(labels, dtype=torch.bool)
            if not chosen.any():
                continue
            chosen_boxes = [boxes[int(index)] for index in indices[chosen]]
            meter.update(maps[chosen.to(maps.device)], chosen_boxes)
            reachable.append(pointing_ceiling(chosen_boxes, explainer.map_size, maps.shape[-2:], pointing_tolerance))
            for name, values in (("indices", indices), ("labels", labels), ("predicted", predicted)):
                kept[name].append(values[chosen])
    if meter.count:
        energy, hits, best_ious = meter.per_image()
        summary = meter.summary()
        summary["pointing_game_ceiling"] = float(torch.cat(reachable).double().mean() * 100)
        summary["map_size"] = list(explainer.map_size)
    else:
        energy, hits = torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
        best_ious = torch.zeros(0, len(CAM_THRESHOLDS), dtype=torch.float64)
        summary = {key: math.nan for key, _ in LOCALIZATION_TABLE_COLUMNS} | {"count": 0}
    summary["without_box"] = without_box
    summary["pointing_tolerance"] = pointing_tolerance
    return LocalizationResult(
        *(torch.cat(kept[name]) if kept[name] else torch.zeros(0, dtype=torch.long) for name in kept),
        energy=energy,
        hits=hits,
        best_ious=best_ious,
        without_box=without_box,
        correct_only=correct_only,
        summary=summary,
    )


def load_sample_boxes(
    path: str | os.PathLike,
    samples: Sequence[tuple[str, int]],
    img_dir: str | os.PathLike = "",
    input_size: int | None = None,
    crop_size: int | None = None,
) -> list[torch.Tensor | None]:
    """Read the box file ``path`` (any format of :mod:`utils.data.boxes`) and map each
    sample's boxes onto its evaluated image (Resize ``input_size``, CenterCrop
    ``crop_size``); one warning counts the images without a box (left out of localisation).
    Run it before the evaluation, so a bad box file stops the run at once."""
    boxes = boxes_for_samples(samples, read_boxes_file(path), img_dir, input_size, crop_size)
    missing = sum(found is None for found in boxes)
    if missing:
        warnings.warn(
            f"{missing} of {len(boxes)} images of the list have no box in {os.fspath(path)} (or none inside the "
            "crop): left out of the localisation metrics",
            stacklevel=2,
        )
    return boxes


def localization_output(output: str | os.PathLike) -> str:
    """Where the localisation results of an evaluation written to ``output`` go:
    ``<output without extension>_localization.json``."""
    return os.path.splitext(os.fspath(output))[0] + "_localization.json"


def localization_row(result: LocalizationResult) -> dict[str, float | int]:
    """The columns a comparison row gains (:data:`LOCALIZATION_TABLE_COLUMNS`), the number of
    images scored and of images without a box."""
    return {
        **{key: result.summary[key] for key, _ in LOCALIZATION_TABLE_COLUMNS},
        "pointing_tolerance": result.summary.get("pointing_tolerance", 0),
        "localized_images": result.count,
        "images_without_box": result.without_box,
    }


def localization_cells(row: dict) -> list[float]:
    """The row's :data:`LOCALIZATION_TABLE_COLUMNS` values rounded for a table (NaN when absent)."""
    return [round(row.get(key, math.nan), 2) for key, _ in LOCALIZATION_TABLE_COLUMNS]


def localization_chart_scores(row: dict) -> dict[str, float]:
    """The row's localisation scores for the bar chart's localisation panel (empty without any)."""
    return {key: row[key] for key, _ in LOCALIZATION_COLUMNS if key in row}


def format_localization(result: LocalizationResult) -> list[str]:
    """Lines for the screen: the scores in percent and which images were scored."""
    summary = result.summary
    which = "correctly classified images with a box" if result.correct_only else "images with a box"
    tolerance = summary.get("pointing_tolerance", 0)
    pointing = f"Pointing game (tolerance {tolerance} px)" if tolerance else "Pointing game"
    ceiling = ""
    if "map_size" in summary:
        height, width = summary["map_size"]
        ceiling = f" (at most {summary['pointing_game_ceiling']:.2f} % for maps of {height} x {width}, upsampled)"
    return [
        f"{pointing}: {summary['pointing_game']:.2f} %{ceiling}  Energy in boxes: {summary['energy_in_box']:.2f} %",
        "MaxBoxAccV2: {:.2f} % (IoU 0.3: {:.2f} %, 0.5: {:.2f} %, 0.7: {:.2f} %)".format(
            *(summary[key] for key in ("max_box_acc_v2", "max_box_acc_30", "max_box_acc_50", "max_box_acc_70"))
        ),
        f"{result.count} {which} localised; {result.without_box} image(s) without a box left out",
    ]


def write_localization(
    result: LocalizationResult, output: str | os.PathLike, run: dict | None = None
) -> tuple[str, str]:
    """Write ``output`` (JSON: ``run``, ``summary``, per-image scores) and a CSV of the
    per-image scores beside it (same name, ``.csv``). Returns both paths."""
    output = os.fspath(output)
    thresholds = list(CAM_THRESHOLDS)
    best_threshold = result.best_ious.argmax(dim=1) if result.count else torch.zeros(0, dtype=torch.long)
    records = [
        {
            "index": int(result.indices[row]),
            "label": int(result.labels[row]),
            "predicted": int(result.predicted[row]),
            "energy_in_box": float(result.energy[row]),
            "pointing_game": bool(result.hits[row]),
            "best_iou": float(result.best_ious[row].max()),
            "best_iou_threshold": thresholds[int(best_threshold[row])],
        }
        for row in range(result.count)
    ]
    document = {"run": dict(run or {}), "cam_thresholds": thresholds, "summary": result.summary, "images": records}
    write_json(output, document, indent=1)
    csv_path = os.path.splitext(output)[0] + ".csv"
    fields = ("index", "label", "predicted", "energy_in_box", "pointing_game", "best_iou", "best_iou_threshold")
    with atomic_open(csv_path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        writer.writerows([record[name] for name in fields] for record in records)
    return output, csv_path
