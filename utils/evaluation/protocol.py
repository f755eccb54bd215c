"""The AD/IC evaluation protocol of the paper (README, 'Evaluation (AD/IC)'), batched, for any explainer.

Per image, with ``p = softmax(classifier(image))`` computed in float32:

1. the explained class is the prediction ``k = argmax p`` and ``Y = p[k]``;
2. the explainer's map for ``k`` is min-max normalised per image and upsampled bilinearly
   (``align_corners=False``) to the input size;
3. :func:`utils.metrics.keep_top` keeps its top ``1 - percentage`` pixels (kept pixels keep
   their value);
4. ``O = softmax(classifier(image * map))[k]``, the image in [0, 1] space;
5. ``AD = 100 / N * sum(max(0, Y - O) / Y)``, ``IC = 100 / N * count(O > Y)``.

The plain forward is shared by all percentages of one pass, and by every method of
:func:`evaluate_many` that explains the same classifier. An *explainer* is any object
with ``explain(images, classes) -> maps`` (N x 3 x H x W images in [0, 1], N classes, N x 1
x h x w raw maps); one that also offers ``predict_and_explain(images) -> (logits, maps of
the predicted class)`` saves the separate plain forward (L-CAM: one pass gives both).
A *classifier* is a callable ``images in [0, 1] -> logits``.
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from utils.core.errors import UserTypeError, UserValueError, abbreviate
from utils.core.files import atomic_open, write_json
from utils.core.runtime import autocast
from utils.data.datalists import Batch, ImageList, build_loader, eval_transform
from utils.data.device_decode import DecodingLoader, DeviceDecoder, EncodedImageList, collate_encoded
from utils.evaluation.metrics import average_drop, increase_in_confidence, keep_top
from utils.explainers.maps import minmax_normalize, upsample_bilinear
from utils.explainers.protocol import Classifier, Explainer

__all__ = [
    "EvaluationResult",
    "build_eval_loader",
    "evaluate",
    "evaluate_many",
    "explain_predictions",
    "format_summary",
    "normalize_and_upsample",
    "parse_percentages",
    "percentage_key",
    "warn_unreadable",
    "write_result",
]

TOPK = (1, 5)
_COLUMNS = ("indices", "labels", "predicted", "y", "o", "top1", "top5", "masked_top1", "masked_top5")


def normalize_and_upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Steps 2 of the protocol: per-image min-max to [0, 1] (float32), then bilinear
    upsampling (``align_corners=False``, :func:`utils.metrics.upsample_bilinear`: maps equal
    by construction stay equal, whatever the batch) to ``size`` (H, W). Accepts N x 1 x h x w or
    N x h x w maps; returns N x 1 x H x W."""
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4 or maps.size(1) != 1:
        raise UserValueError(f"saliency maps must be N x 1 x h x w, got shape {tuple(maps.shape)}")
    normalized = minmax_normalize(maps.float())
    if tuple(normalized.shape[-2:]) == tuple(size):
        return normalized
    return upsample_bilinear(normalized, size)


def parse_percentages(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0,0.5,0.85"`` (or a sequence of numbers) -> ``(0.0, 0.5, 0.85)``; each in [0, 1),
    no duplicates."""
    if isinstance(text, str):
        fields = [field.strip() for field in text.split(",") if field.strip()]
        try:
            values = tuple(float(field) for field in fields)
        except ValueError as error:
            raise UserValueError(f"percentages must be comma-separated numbers in [0, 1), got {text!r}") from error
    else:
        values = tuple(float(value) for value in text)
    if not values:
        raise UserValueError(f"no percentage given in {text!r}")
    bad = [value for value in values if not 0 <= value < 1]
    if bad:
        raise UserValueError(f"percentages must be in [0, 1) (the fraction of pixels dropped), got {bad}")
    if len(set(values)) != len(values):
        raise UserValueError(f"duplicate percentages in {text!r}")
    return values


def percentage_key(percentage: float) -> str:
    """The key of a percentage in results, JSON and CSV columns: ``0.5`` -> ``"0.5"``."""
    return f"{percentage:g}"


@dataclass
class EvaluationResult:
    """Per-image scores and per-percentage summaries of one evaluation pass.

    Per image (readable images, in dataset order): ``indices``, ``paths``, ``labels``,
    ``predicted`` (k), ``y`` (Y = p[k]), ``top1``/``top5`` (hits of the plain image), and per
    percentage ``o`` (O), ``masked_top1``/``masked_top5`` (P x N). ``unreadable`` lists
    ``{"index", "path", "reason"}`` of the images excluded.
    """

    percentages: tuple[float, ...]
    indices: torch.Tensor
    paths: list[str | None]
    labels: torch.Tensor
    predicted: torch.Tensor
    y: torch.Tensor
    o: torch.Tensor
    top1: torch.Tensor
    top5: torch.Tensor
    masked_top1: torch.Tensor
    masked_top5: torch.Tensor
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def num_images(self) -> int:
        return len(self.y)

    @property
    def num_unreadable(self) -> int:
        return len(self.unreadable)

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else float("nan")

    @property
    def summary(self) -> list[dict[str, float]]:
        """One entry per percentage: AD, IC (percent), top-1/top-5 of plain and masked
        images (percent), and the number of images averaged."""
        entries = []
        for row, percentage in enumerate(self.percentages):
            entries.append(
                {
                    "percentage": percentage,
                    "kept_percent": round(100 * (1 - percentage), 6),
                    "average_drop": average_drop(self.y, self.o[row]),
                    "increase_in_confidence": increase_in_confidence(self.y, self.o[row]),
                    "top1": _percent(self.top1),
                    "top5": _percent(self.top5),
                    "masked_top1": _percent(self.masked_top1[row]),
                    "masked_top5": _percent(self.masked_top5[row]),
                    "count": self.num_images,
                }
            )
        return entries

    @property
    def records(self) -> list[dict[str, Any]]:
        """Per-image dicts: index, path, label, predicted, y, and per percentage o,
        masked_top1, masked_top5 (keyed by :func:`percentage_key`)."""
        keys = [percentage_key(percentage) for percentage in self.percentages]
        records = []
        for column in range(self.num_images):
            records.append(
                {
                    "index": int(self.indices[column]),
                    "path": self.paths[column],
                    "label": int(self.labels[column]),
                    "predicted": int(self.predicted[column]),
                    "y": float(self.y[column]),
                    "o": {key: float(self.o[row, column]) for row, key in enumerate(keys)},
                    "top1": bool(self.top1[column]),
                    "top5": bool(self.top5[column]),
                    "masked_top1": {key: bool(self.masked_top1[row, column]) for row, key in enumerate(keys)},
                    "masked_top5": {key: bool(self.masked_top5[row, column]) for row, key in enumerate(keys)},
                }
            )
        return records


def _percent(hits: torch.Tensor) -> float:
    return float(hits.double().mean() * 100) if len(hits) else float("nan")


def _check_maps(maps: torch.Tensor, num_images: int, explainer: object) -> torch.Tensor:
    if not torch.is_tensor(maps):
        raise UserTypeError(f"{type(explainer).__name__}.explain must return a tensor, got {type(maps).__name__}")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4 or maps.size(0) != num_images or maps.size(1) != 1:
        raise UserValueError(
            f"{type(explainer).__name__} returned maps of shape {tuple(maps.shape)}, expected {num_images} x 1 x h x w"
        )
    return maps


def _hits(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 and top-5 hits per image (top-min(5, K) when there are fewer classes)."""
    top = probabilities.topk(min(max(TOPK), probabilities.size(1)), dim=1).indices
    correct = top.eq(labels.view(-1, 1))
    return correct[:, :1].any(dim=1), correct.any(dim=1)


def _unpack(batch, position: int) -> Batch:
    """A :class:`utils.data.Batch`, or an ``(images, labels[, indices])`` tuple as one."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        images, labels = batch[0], torch.as_tensor(batch[1])
        indices = torch.as_tensor(batch[2]) if len(batch) == 3 else torch.arange(position, position + len(labels))
        return Batch(images, labels, indices, [])
    raise UserTypeError(
        f"the loader must yield utils.data.Batch or (images, labels[, indices]), got {type(batch).__name__}"
    )


def evaluate(
    classifier: Classifier,
    explainer: Explainer,
    loader: Iterable,
    percentages: Sequence[float] = (0.0,),
    *options: Any,
    **keyword_options: Any,
) -> EvaluationResult:
    """Run the protocol of the module docstring over ``loader`` at every percentage
    (:func:`evaluate_many` with one pair; ``options`` are its further arguments, below, in
    its order: ``device``, ``amp``, ``channels_last``, ``disp_interval``, ``progress``,
    ``description``).

    Args:
        classifier: images in [0, 1] (N x 3 x H x W) -> logits (N x K); run under
            ``torch.inference_mode`` for the plain and the masked images.
        explainer: see :class:`Explainer`. Its ``explain`` is called outside inference mode
            (gradient methods need autograd); ``predict_and_explain`` is used when present.
        loader: yields :class:`utils.data.Batch` (as built by :func:`build_eval_loader`; its
            ``failed`` images go to the result's ``unreadable``, not into the averages; see
            :func:`warn_unreadable`) or ``(images, labels[, indices])``.
        percentages: fractions of pixels dropped (0 keeps all, 0.85 keeps 15 %).
        device (option): where the computation runs.
        amp (option): ``"none"``, ``"bf16"`` or ``"fp16"``: autocast around the classifier and the
            explainer; softmax, normalisation and masking stay in float32.
        channels_last: feed the images in channels_last memory format.
        disp_interval: show the running AD/IC every this many batches (0: never; each
            display waits for the device).
        progress: show a tqdm bar (images/s).
        description: the bar's label.

    Returns:
        :class:`EvaluationResult`.

    Raises:
        ValueError: no readable image in ``loader``, or maps of a wrong shape.
    """
    return evaluate_many([(classifier, explainer)], loader, percentages, *options, **keyword_options)[0]


def evaluate_many(
    methods: Sequence[tuple[Classifier, Explainer]],
    loader: Iterable,
    percentages: Sequence[float] = (0.0,),
    device: torch.device | str = "cpu",
    amp: str = "none",
    channels_last: bool = False,
    disp_interval: int = 0,
    progress: bool = True,
    description: str = "AD/IC",
) -> list[EvaluationResult]:
    """:func:`evaluate` for several ``(classifier, explainer)`` pairs in one pass over ``loader``:
    each batch is read and moved to the device once, and the plain forward of a classifier
    is run once per batch for all the explainers of that classifier (the same object) that
    have no ``predict_and_explain``. Each result equals that of :func:`evaluate` with the pair
    alone; ``seconds`` is the whole pass's, and the running AD/IC shown is the first pair's.
    Arguments as for :func:`evaluate`.

    Raises:
        ValueError: no pair, no readable image in ``loader``, or maps of a wrong shape.
    """
    if not methods:
        raise UserValueError("evaluate_many needs at least one (classifier, explainer) pair")
    percentages = parse_percentages(percentages)
    device = torch.device(device)
    samples = getattr(getattr(loader, "dataset", None), "samples", None)
    paths = [path for path, _ in samples] if samples is not None else None
    total = len(loader.dataset) if hasattr(getattr(loader, "dataset", None), "__len__") else None
    columns: list[dict[str, list[torch.Tensor]]] = [{name: [] for name in _COLUMNS} for _ in methods]
    unreadable: list[dict[str, Any]] = []
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    bar = tqdm(total=total, unit="img", desc=description, disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    seen = 0
    try:
        for batch_number, raw_batch in enumerate(loader, start=1):
            batch = _unpack(raw_batch, seen)
            seen += len(batch.labels) + len(batch.failed)
            for index, reason in batch.failed:
                unreadable.append({"index": index, "path": paths[index] if paths else None, "reason": reason})
            if batch.images is None or len(batch.labels) == 0:
                bar.update(len(batch.failed))
                continue
            images = batch.images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = batch.labels.to(device, non_blocking=True)
            plain_passes: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
            for (classifier, explainer), method_columns in zip(methods, columns):
                scores = _evaluate_batch(
                    classifier, explainer, images, labels, percentages, device, amp, memory_format, plain_passes
                )
                for name, value in scores.items():
                    method_columns[name].append(value)
                method_columns["indices"].append(batch.indices)
                method_columns["labels"].append(batch.labels)
            bar.update(len(batch.labels) + len(batch.failed))
            if disp_interval and batch_number % disp_interval == 0:
                y, o = torch.cat(columns[0]["y"]), torch.cat(columns[0]["o"], dim=1)
                bar.set_postfix(AD=f"{average_drop(y, o[0]):.2f}", IC=f"{increase_in_confidence(y, o[0]):.2f}")
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if not columns[0]["y"]:
        first = (
            f"; first: {unreadable[0]['path'] or unreadable[0]['index']}: {unreadable[0]['reason']}"
            if unreadable
            else ""
        )
        raise UserValueError(f"no readable image to evaluate ({len(unreadable)} unreadable{first})")
    return [_result(method_columns, percentages, paths, unreadable, seconds) for method_columns in columns]


def _result(
    columns: dict[str, list[torch.Tensor]],
    percentages: tuple[float, ...],
    paths: list[str] | None,
    unreadable: list[dict[str, Any]],
    seconds: float,
) -> EvaluationResult:
    """One method's columns, gathered on the host, as an :class:`EvaluationResult`."""
    merged = {name: torch.cat([value.cpu() for value in values], dim=-1) for name, values in columns.items()}
    return EvaluationResult(
        percentages=percentages,
        indices=merged["indices"],
        paths=[paths[int(index)] for index in merged["indices"]] if paths else [None] * len(merged["indices"]),
        labels=merged["labels"],
        predicted=merged["predicted"],
        y=merged["y"],
        o=merged["o"],
        top1=merged["top1"],
        top5=merged["top5"],
        masked_top1=merged["masked_top1"],
        masked_top5=merged["masked_top5"],
        unreadable=list(unreadable),
        seconds=seconds,
    )


def explain_predictions(
    classifier: Classifier,
    explainer: Explainer,
    images: torch.Tensor,
    device: torch.device,
    amp: str = "none",
    plain_passes: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-2 of the protocol for one batch on the device: the plain softmax
    ``probabilities`` (float32), the predicted class's score ``y`` and index ``predicted``,
    and the explainer's maps of that class, min-max normalised and upsampled to the images'
    size (N x 1 x H x W). One forward when the explainer has ``predict_and_explain``;
    otherwise the classifier's plain pass (cached in ``plain_passes`` by the classifier's
    ``id`` when given, so several explainers of one classifier share it), then ``explain``
    outside inference mode (gradient methods need autograd)."""
    if hasattr(explainer, "predict_and_explain"):
        with autocast(device, amp):
            logits, maps = explainer.predict_and_explain(images)
        with torch.inference_mode():
            probabilities = logits.float().softmax(dim=1)
            y, predicted = probabilities.max(dim=1)
    else:
        plain_passes = {} if plain_passes is None else plain_passes
        if id(classifier) not in plain_passes:
            with torch.inference_mode(), autocast(device, amp):
                logits = classifier(images)
            with torch.inference_mode():
                probabilities = logits.float().softmax(dim=1)
                plain_passes[id(classifier)] = (probabilities, *probabilities.max(dim=1))
        probabilities, y, predicted = plain_passes[id(classifier)]
        # A clone made outside inference mode is a normal tensor, usable under autograd.
        with autocast(device, amp):
            maps = explainer.explain(images, predicted.clone())
    with torch.inference_mode():
        maps = normalize_and_upsample(_check_maps(maps, len(images), explainer), images.shape[-2:])
    return probabilities, y, predicted, maps


def _evaluate_batch(
    classifier: Classifier,
    explainer: Explainer,
    images: torch.Tensor,
    labels: torch.Tensor,
    percentages: tuple[float, ...],
    device: torch.device,
    amp: str,
    memory_format: torch.memory_format,
    plain_passes: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Scores of one batch (on the device), left on the device (no host synchronisation).
    ``plain_passes`` caches each classifier's plain ``(probabilities, y, predicted)`` of the
    batch by ``id``, for the explainers that need a separate plain forward."""
    probabilities, y, predicted, maps = explain_predictions(classifier, explainer, images, device, amp, plain_passes)
    with torch.inference_mode():
        top1, top5 = _hits(probabilities, labels)
        o, masked_top1, masked_top5 = [], [], []
        for percentage in percentages:
            masked = (images * keep_top(maps, percentage)).contiguous(memory_format=memory_format)
            with autocast(device, amp):
                masked_logits = classifier(masked)
            masked_probabilities = masked_logits.float().softmax(dim=1)
            o.append(masked_probabilities.gather(1, predicted.view(-1, 1)).squeeze(1))
            hit1, hit5 = _hits(masked_probabilities, labels)
            masked_top1.append(hit1)
            masked_top5.append(hit5)
        return {
            "predicted": predicted,
            "y": y,
            "o": torch.stack(o),
            "top1": top1,
            "top5": top5,
            "masked_top1": torch.stack(masked_top1),
            "masked_top5": torch.stack(masked_top5),
        }


def format_summary(result: EvaluationResult) -> list[str]:
    """The reference's printed lines (``Average Drop is: ...``, ``Increase in confidence
    is: ...``, ``Top1: ... Top5: ...`` of the plain then the masked images), under a
    header per percentage when there are several, then the unreadable-image count."""
    lines = []
    for entry in result.summary:
        if len(result.percentages) > 1:
            lines.append(
                f"== percentage {entry['percentage']:g} (top {entry['kept_percent']:g} % of the pixels kept) =="
            )
        lines.append(f"Average Drop is:  {entry['average_drop']}")
        lines.append(f"Increase in confidence is:  {entry['increase_in_confidence']}")
        lines.append(f"Top1: {entry['top1']} Top5: {entry['top5']}")
        lines.append(f"Top1: {entry['masked_top1']} Top5: {entry['masked_top5']}")
    lines.append(
        f"{result.num_images} images evaluated in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s); "
        f"{result.num_unreadable} unreadable image(s) excluded"
    )
    return lines


def warn_unreadable(unreadable: Sequence[dict[str, Any]], listed_in: str | None = None) -> None:
    """One warning line naming the images that could not be read (decoded) and were left out,
    e.g. ``1 image(s) could not be read and were left out: ['a.png'] (first: UnidentifiedImageError)``;
    nothing when there is none. ``listed_in``: the result file that lists them all."""
    if not unreadable:
        return
    names = [entry["path"] or f"image {entry['index']}" for entry in unreadable]
    reason = str(unreadable[0]["reason"]).split(":", 1)[0]
    listed = f"; all listed in {listed_in}" if listed_in else ""
    warnings.warn(
        f"{len(names)} image(s) could not be read and were left out: {abbreviate(names, shown=3)} "
        f"(first: {reason}){listed}",
        stacklevel=2,
    )


def write_result(
    result: EvaluationResult, output: str | os.PathLike, run: dict[str, Any] | None = None
) -> tuple[str, str]:
    """Write ``output`` (JSON: ``run``, ``summary``, ``unreadable``, per-image ``images``)
    and a CSV of the per-image scores next to it (same name, ``.csv``). Returns both paths."""
    output = os.fspath(output)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    document = {
        "run": dict(run or {}),
        "percentages": list(result.percentages),
        "num_images": result.num_images,
        "num_unreadable": result.num_unreadable,
        "seconds": result.seconds,
        "images_per_second": result.images_per_second if math.isfinite(result.images_per_second) else None,
        "summary": result.summary,
        "unreadable": result.unreadable,
        "images": result.records,
    }
    write_json(output, document, indent=1, default=_json_default)
    csv_path = os.path.splitext(output)[0] + ".csv"
    keys = [percentage_key(percentage) for percentage in result.percentages]
    header = ["index", "path", "label", "predicted", "y", "top1", "top5"]
    for key in keys:
        header += [f"o@{key}", f"masked_top1@{key}", f"masked_top5@{key}"]

    with atomic_open(csv_path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for record in result.records:
            row = [record[name] for name in ("index", "path", "label", "predicted")]
            row += [repr(record["y"]), int(record["top1"]), int(record["top5"])]
            for key in keys:
                row += [repr(record["o"][key]), int(record["masked_top1"][key]), int(record["masked_top5"][key])]
            writer.writerow(row)
    return output, csv_path


def _json_default(value):
    if torch.is_tensor(value):
        return value.tolist()
    return str(value)


def build_eval_loader(
    samples: Sequence[tuple[str, int]],
    input_size: int = 256,
    crop_size: int = 224,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    decode: str = "pil",
    interpolation: str = "bilinear",
) -> Iterable[Batch]:
    """The evaluation loader, in dataset order, yielding :class:`utils.data.Batch` with the
    unreadable images reported: the reference eval transform (Resize, CenterCrop, ToTensor)
    in the workers (``decode="pil"``), or JPEGs decoded, resized and cropped on ``device``
    (``decode="device"``, :mod:`utils.data.device_decode`; not bit-identical to PIL). The
    resize uses ``interpolation`` (the model's: ``model.interpolation``)."""
    device = torch.device(device)
    if decode == "device":
        loader = build_loader(
            EncodedImageList(samples), batch_size, device, num_workers=num_workers, collate_fn=collate_encoded
        )
        return DecodingLoader(
            loader, DeviceDecoder(input_size, crop_size, train=False, interpolation=interpolation), device
        )
    if decode != "pil":
        raise UserValueError(f"'decode' must be 'pil' or 'device', got {decode!r}")
    return build_loader(
        ImageList(samples, eval_transform(input_size, crop_size, interpolation)),
        batch_size,
        device,
        num_workers=num_workers,
    )
