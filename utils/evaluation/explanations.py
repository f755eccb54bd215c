"""Explaining images with a trained L-CAM model: each image's top-k (or chosen) classes, their CAMs, overlays and an index."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torchvision
from tqdm import tqdm

from models.lcam import LCAM
from utils.core.errors import UserFileNotFoundError, UserValueError
from utils.core.files import write_json
from utils.core.runtime import autocast
from utils.data.datalists import IMAGE_EXTENSIONS, read_datalist
from utils.evaluation.html_report import ExplanationReport, quantize_maps
from utils.evaluation.protocol import build_eval_loader, normalize_and_upsample
from utils.evaluation.visualize import overlay, save_grid, to_pil

__all__ = [
    "ExplainOptions",
    "Explanation",
    "ExplanationRun",
    "class_names_for",
    "collect_inputs",
    "describe_class",
    "explain_images",
]


@dataclass
class ExplainOptions:
    """What :func:`explain_images` explains, how it loads the images and what it writes.

    Attributes:
        topk: explain each image's ``topk`` most probable classes...
        classes: ...or these class indices for every image (None: the top-k).
        class_names: one name per class (None: :func:`class_names_for`).
        output_dir: where the PNGs and ``explanations.json`` go (None: nothing written).
        grid: also write a grid of the ``grid`` most probable classes per image (0: no).
        device: where the model runs (None: the model's device).
        amp: autocast the forward pass: ``"none"``, ``"bf16"`` or ``"fp16"``.
        input_size: Resize of the smaller edge.
        crop_size: CenterCrop: the size of the maps and overlays.
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
        alpha: heatmap opacity of the overlays.
        colormap: matplotlib colormap of the overlays.
        keep_maps: keep each image's crop and maps in the result (memory grows with the images).
        progress: show a progress bar.
        html_dir: also write the browsable page of every class's map there
            (:class:`utils.evaluation.html_report.ExplanationReport`; None: no page).
    """

    topk: int = 3
    classes: Sequence[int] | None = None
    class_names: Sequence[str] | None = None
    output_dir: str | os.PathLike | None = None
    grid: int = 0
    device: torch.device | str | None = None
    amp: str = "none"
    input_size: int = 256
    crop_size: int = 224
    batch_size: int = 16
    num_workers: int = 0
    alpha: float = 0.5
    colormap: str = "jet"
    keep_maps: bool = True
    progress: bool = True
    html_dir: str | os.PathLike | None = None


class Explanation(NamedTuple):
    """One image's explanation.

    Attributes:
        path: the image file.
        label: its label in the datalist, or -1.
        classes: the explained classes (top-k predictions, or the chosen ones).
        names: their names.
        probabilities: their softmax probabilities.
        maps: len(classes) x H x W CAMs min-max normalised to [0, 1] at the crop's size
            (None when not kept).
        image: the 3 x H x W crop in [0, 1] the maps belong to (None when not kept).
        files: the PNG files written (overlays, then the grid), if any.
    """

    path: str
    label: int
    classes: list[int]
    names: list[str]
    probabilities: list[float]
    maps: torch.Tensor | None
    image: torch.Tensor | None
    files: list[str]


class ExplanationRun(NamedTuple):
    """What :func:`explain_images` returns: the explanations, the images that could not
    be read (``{"path", "reason"}``) and the browsable page (``index.html``, or None)."""

    explanations: list[Explanation]
    unreadable: list[dict[str, str]]
    page: str | None = None


class _ExplainedBatch(NamedTuple):
    """One forward's result, on the CPU: the explained classes (N x k), the grid's classes
    (N x grid, or None), the probabilities of both and their maps at the crop's size; for
    the page, every class's probability (N x K) and quantised map (N x K x h x w uint8), or None."""

    chosen: torch.Tensor
    grid_classes: torch.Tensor | None
    probabilities: torch.Tensor
    maps: torch.Tensor
    all_probabilities: torch.Tensor | None = None
    all_maps: torch.Tensor | None = None

    def image(self, row: int) -> _ExplainedBatch:
        """The part of image ``row`` of the batch."""
        parts = [part[row] if part is not None else None for part in self]
        return _ExplainedBatch(*parts)


def collect_inputs(source: str | os.PathLike, img_dir: str | os.PathLike = "") -> list[tuple[str, int]]:
    """``(image path, label)`` pairs of one image file, of every image under a folder
    (recursively, sorted; label -1), or of a datalist (paths relative to ``img_dir``)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        found = sorted(
            os.path.join(directory, name)
            for directory, _, names in os.walk(source)
            for name in names
            if name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not found:
            raise UserValueError(f"--input {source!r}: no image ({', '.join(IMAGE_EXTENSIONS)}) in that folder")
        return [(path, -1) for path in found]
    if not os.path.isfile(source):
        raise UserFileNotFoundError(f"--input not found: {source!r}")
    if source.lower().endswith(IMAGE_EXTENSIONS):
        return [(source, -1)]
    return read_datalist(source, img_dir)


def class_names_for(num_classes: int, names_file: str | os.PathLike | None = None) -> list[str]:
    """Class names: one per line of ``names_file``; else torchvision's ImageNet categories
    when ``num_classes`` is 1000 (no download needed); else the indices."""
    if names_file:
        names_file = os.fspath(names_file)
        if not os.path.isfile(names_file):
            raise UserFileNotFoundError(f"--class_names file not found: {names_file!r}")
        with open(names_file, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
        if len(names) != num_classes:
            raise UserValueError(f"{names_file}: {len(names)} class names, but the model has {num_classes} classes")
        return names
    if num_classes == 1000:
        return list(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    return [str(index) for index in range(num_classes)]


def describe_class(index: int, name: str) -> str:
    """``"tabby (281)"``, or ``"class 3"`` when the names are the indices."""
    return f"class {index}" if name == str(index) else f"{name} ({index})"


def _slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()[:length] or "class"


def _stems(paths: Sequence[str]) -> list[str]:
    """File-name stems unique per image: the path relative to the images' common folder,
    without extension, folders joined by ``__``."""
    directories = [os.path.dirname(os.path.abspath(path)) for path in paths]
    common = os.path.commonpath(directories) if directories else ""
    stems = []
    for path in paths:
        relative = os.path.splitext(os.path.relpath(os.path.abspath(path), common))[0]
        stems.append(relative.replace(os.sep, "__"))
    return stems


def _checked_classes(options: ExplainOptions, num_classes: int) -> tuple[list[int] | None, list[str]]:
    """The chosen classes (None: the top-k) and the class names, both checked against the model.

    Raises:
        ValueError: ``topk``/``grid``/``classes``/``class_names`` do not fit ``num_classes``.
    """
    classes = None
    if options.classes is not None:
        classes = [int(index) for index in options.classes]
        outside = [index for index in classes if not 0 <= index < num_classes]
        if not classes or outside:
            raise UserValueError(f"'classes' must be class indices in [0, {num_classes}), got {list(options.classes)}")
    elif not 1 <= options.topk <= num_classes:
        raise UserValueError(f"'topk' must be in [1, {num_classes}], got {options.topk}")
    if not 0 <= options.grid <= num_classes:
        raise UserValueError(f"'grid' must be in [0, {num_classes}], got {options.grid}")
    names = list(options.class_names) if options.class_names is not None else class_names_for(num_classes)
    if len(names) != num_classes:
        raise UserValueError(f"{len(names)} class names for a model of {num_classes} classes")
    return classes, names


def explain_images(
    model: LCAM, paths: Sequence[str] | Sequence[tuple[str, int]], options: ExplainOptions | None = None
) -> ExplanationRun:
    """Explain each image of ``paths`` (files, or ``(file, label)`` pairs) with ``model``.

    The images are read by the evaluation loader (:func:`utils.evaluation.build_eval_loader`:
    Resize, CenterCrop, unreadable images reported). One forward pass per batch gives the
    plain logits and every class's CAM; the explained classes are the ``topk`` predictions,
    or ``classes`` for every image. Each map is the raw CAM min-max normalised per image and
    upsampled bilinearly to the crop (as in the evaluation). With ``output_dir``, writes per
    image ``<stem>_input.png`` (the crop), ``<stem>_<rank>_<class>_<name>.png`` overlays (the
    crop's size), with ``grid`` > 0 ``<stem>_grid.png`` (the ``grid`` most probable classes),
    and ``explanations.json``, each batch's files as soon as it is explained
    (``explanations.json`` is rewritten after every batch), so an interrupted run keeps what
    it did. Unreadable images are skipped and listed in the result (and in
    ``explanations.json``). With ``html_dir``, the web page of every class's map is written
    there as well (:class:`utils.evaluation.html_report.ExplanationReport`; unreadable images
    appear in it as named failures).

    Args:
        model: the L-CAM model, in eval mode.
        paths: the images.
        options: see :class:`ExplainOptions` (default: its defaults).

    Returns:
        :class:`ExplanationRun`.

    Raises:
        ValueError: ``topk``/``grid``/``classes`` out of range, or no readable image.
    """
    options = options if options is not None else ExplainOptions()
    classes, names = _checked_classes(options, model.num_classes)
    samples = [(item, -1) if isinstance(item, (str, os.PathLike)) else (item[0], int(item[1])) for item in paths]
    samples = [(os.fspath(path), label) for path, label in samples]
    if not samples:
        raise UserValueError("no image to explain")
    device = torch.device(options.device) if options.device is not None else next(model.parameters()).device
    stems = _stems([path for path, _ in samples])
    output_dir = None
    if options.output_dir is not None:
        output_dir = os.fspath(options.output_dir)
        os.makedirs(output_dir, exist_ok=True)
    loader = build_eval_loader(
        samples,
        options.input_size,
        options.crop_size,
        options.batch_size,
        options.num_workers,
        device,
        interpolation=model.interpolation,
    )
    report = None
    if options.html_dir is not None:
        report = ExplanationReport(options.html_dir, names, options.alpha, options.colormap)
    explanations: list[Explanation] = []
    unreadable: list[dict[str, str]] = []
    with tqdm(total=len(samples), unit="img", desc="explain", disable=not options.progress, dynamic_ncols=True) as bar:
        for batch in loader:
            for index, reason in batch.failed:
                unreadable.append({"path": samples[index][0], "reason": reason})
                if report is not None:
                    report.add_failure(samples[index][0], reason)
            if batch.images is not None:
                images = batch.images.to(device, non_blocking=True)
                explained = _explain_batch(
                    model, images, classes, options.topk, options.grid, options.amp, every_class=report is not None
                )
                for row, index in enumerate(batch.indices.tolist()):
                    explanation = _finish_image(
                        samples[index],
                        stems[index],
                        batch.images[row],
                        explained.image(row),
                        names,
                        output_dir,
                        options,
                    )
                    explanations.append(explanation)
                    if report is not None:
                        report.add_image(
                            explanation.path,
                            explanation.label,
                            batch.images[row],
                            explained.all_maps[row],
                            explained.all_probabilities[row],
                            explanation.classes,
                        )
            if output_dir is not None:
                _write_index(os.path.join(output_dir, "explanations.json"), explanations, unreadable)
            if report is not None:
                report.write_index()
            bar.update(len(batch.labels) + len(batch.failed))
    if not explanations:
        first = f"; first: {unreadable[0]['path']}: {unreadable[0]['reason']}" if unreadable else ""
        raise UserValueError(f"no readable image to explain ({len(unreadable)} unreadable{first})")
    return ExplanationRun(explanations, unreadable, report.index_path if report is not None else None)


def _explain_batch(
    model: LCAM,
    images: torch.Tensor,
    classes: list[int] | None,
    topk: int,
    grid: int,
    amp: str,
    every_class: bool = False,
) -> _ExplainedBatch:
    """One forward: the explained classes, the grid's classes, their probabilities and maps
    at the crop's size (and with ``every_class`` every class's probability and quantised
    map, :func:`utils.evaluation.html_report.quantize_maps`), moved to the CPU once."""
    with torch.inference_mode():
        with autocast(images.device, amp):
            out = model(images)
        probabilities = out.logits.float().softmax(dim=1)
        if classes is not None:
            chosen = torch.tensor(classes, device=images.device).expand(len(images), -1)
        else:
            chosen = probabilities.topk(topk, dim=1).indices
        wanted = chosen
        if grid:
            wanted = torch.cat([chosen, probabilities.topk(grid, dim=1).indices], dim=1)
        height, width = out.cams.shape[-2:]
        cams = out.cams.gather(1, wanted[:, :, None, None].expand(-1, -1, height, width))
        maps = normalize_and_upsample(cams.reshape(-1, 1, height, width), images.shape[-2:])
        maps = maps.reshape(len(images), wanted.size(1), *images.shape[-2:])
        wanted_probabilities = probabilities.gather(1, wanted)
        wanted, wanted_probabilities, maps = (tensor.cpu() for tensor in (wanted, wanted_probabilities, maps))
        all_probabilities = probabilities.cpu() if every_class else None
        all_maps = quantize_maps(out.cams).cpu() if every_class else None
    count = chosen.size(1)
    grid_classes = wanted[:, count:] if grid else None
    return _ExplainedBatch(wanted[:, :count], grid_classes, wanted_probabilities, maps, all_probabilities, all_maps)


def _finish_image(
    sample: tuple[str, int],
    stem: str,
    image: torch.Tensor,
    explained: _ExplainedBatch,
    names: Sequence[str],
    output_dir: str | None,
    options: ExplainOptions,
) -> Explanation:
    """The explanation of one image (``explained``: its part of the batch), its PNGs written."""
    count = len(explained.chosen)
    classes = explained.chosen.tolist()
    maps, probabilities = explained.maps, explained.probabilities
    files = []
    if output_dir is not None:
        to_pil(image).save(os.path.join(output_dir, f"{stem}_input.png"))
        for rank, index in enumerate(classes):
            file = os.path.join(output_dir, f"{stem}_{rank + 1}_{index}_{_slug(names[index])}.png")
            overlay(image, maps[rank], options.alpha, options.colormap).save(file)
            files.append(file)
        if explained.grid_classes is not None:
            grid_classes = explained.grid_classes.tolist()
            tiles = [
                overlay(image, maps[count + rank], options.alpha, options.colormap) for rank in range(len(grid_classes))
            ]
            titles = [
                f"{describe_class(index, names[index])[:32]}\np={float(probabilities[count + rank]):.3f}"
                for rank, index in enumerate(grid_classes)
            ]
            files.append(save_grid(tiles, os.path.join(output_dir, f"{stem}_grid.png"), titles))
    return Explanation(
        path=sample[0],
        label=sample[1],
        classes=classes,
        names=[names[index] for index in classes],
        probabilities=[float(value) for value in probabilities[:count]],
        maps=maps[:count].clone() if options.keep_maps else None,
        image=image.clone() if options.keep_maps else None,
        files=files,
    )


def _write_index(path: str, explanations: list[Explanation], unreadable: list[dict[str, str]]) -> None:
    document: dict[str, Any] = {
        "images": [
            {
                "path": item.path,
                "label": item.label,
                "classes": [
                    {"rank": rank + 1, "class": index, "name": name, "probability": probability}
                    for rank, (index, name, probability) in enumerate(zip(item.classes, item.names, item.probabilities))
                ],
                "files": item.files,
            }
            for item in explanations
        ],
        "unreadable": unreadable,
    }
    write_json(path, document, indent=1)
