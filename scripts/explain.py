"""Explain images with a trained L-CAM model: the top-k predicted classes (or chosen
classes) of each image, each class's CAM overlaid on the image as a heatmap (PNG, the size
of the shown crop), and optionally a grid of many classes, all from one forward pass.

    python -m scripts.explain --arch VGG16_L_CAM_Img --restore_from CKPT --input photos/ --topk 3 --grid 16
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torchvision
from torch.utils.data import DataLoader
from tqdm import tqdm

from models import ARCH_CHOICES
from models.lcam import LCAM
from utils.core.cli import REPO_ROOT, HelpFormatter, run_cli
from utils.core.errors import UserFileNotFoundError, UserValueError
from utils.core.files import ensure_writable, write_json
from utils.core.runtime import AMP_CHOICES, autocast, resolve_device
from utils.data.datalists import (
    IMAGE_EXTENSIONS,
    ImageList,
    check_images_exist,
    collate_skip_unreadable,
    eval_transform,
    read_datalist,
)
from utils.evaluation import (
    load_lcam_model,
    normalize_and_upsample,
    resolve_checkpoint,
    warn_unreadable,
)
from utils.evaluation.visualize import overlay, save_grid, to_pil

__all__ = [
    "Explanation",
    "ExplanationRun",
    "class_names_for",
    "collect_inputs",
    "explain_images",
    "get_args_parser",
    "main",
]


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
    """What :func:`explain_images` returns: the explanations and the images that could not
    be read (``{"path", "reason"}``)."""

    explanations: list[Explanation]
    unreadable: list[dict[str, str]]


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
            raise FileNotFoundError(f"--class_names file not found: {names_file!r}")
        with open(names_file, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
        if len(names) != num_classes:
            raise ValueError(f"{names_file}: {len(names)} class names, but the model has {num_classes} classes")
        return names
    if num_classes == 1000:
        return list(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    return [str(index) for index in range(num_classes)]


def _slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()[:length] or "class"


def _describe(index: int, name: str) -> str:
    """``"tabby (281)"``, or ``"class 3"`` when the names are the indices."""
    return f"class {index}" if name == str(index) else f"{name} ({index})"


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


def explain_images(
    model: LCAM,
    paths: Sequence[str] | Sequence[tuple[str, int]],
    topk: int = 3,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    grid: int = 0,
    device: torch.device | str | None = None,
    amp: str = "none",
    input_size: int = 256,
    crop_size: int = 224,
    batch_size: int = 16,
    num_workers: int = 0,
    alpha: float = 0.5,
    colormap: str = "jet",
    keep_maps: bool = True,
    progress: bool = True,
) -> ExplanationRun:
    """Explain each image of ``paths`` (files, or ``(file, label)`` pairs) with ``model``.

    One forward pass per batch gives the plain logits and every class's CAM; the explained
    classes are the ``topk`` predictions, or ``classes`` for every image. Each map is the raw
    CAM min-max normalised per image and upsampled bilinearly to the crop (as in the
    evaluation). With ``output_dir``, writes per image ``<stem>_input.png`` (the crop),
    ``<stem>_<rank>_<class>_<name>.png`` overlays (the crop's size), with ``grid`` > 0
    ``<stem>_grid.png`` (the ``grid`` most probable classes), and ``explanations.json``, each
    batch's files as soon as it is explained (``explanations.json`` is rewritten after every
    batch), so an interrupted run keeps what it did. Unreadable images are skipped and listed
    in the result (and in ``explanations.json``).

    Returns:
        :class:`ExplanationRun`.

    Raises:
        ValueError: ``topk``/``grid``/``classes`` out of range, or no readable image.
    """
    num_classes = model.num_classes
    if classes is not None:
        classes = [int(index) for index in classes]
        outside = [index for index in classes if not 0 <= index < num_classes]
        if not classes or outside:
            raise ValueError(f"'classes' must be class indices in [0, {num_classes}), got {list(classes)}")
    elif not 1 <= topk <= num_classes:
        raise ValueError(f"'topk' must be in [1, {num_classes}], got {topk}")
    if not 0 <= grid <= num_classes:
        raise ValueError(f"'grid' must be in [0, {num_classes}], got {grid}")
    names = list(class_names) if class_names is not None else class_names_for(num_classes)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model of {num_classes} classes")
    samples = [(item, -1) if isinstance(item, (str, os.PathLike)) else (item[0], int(item[1])) for item in paths]
    samples = [(os.fspath(path), label) for path, label in samples]
    if not samples:
        raise ValueError("no image to explain")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    stems = _stems([path for path, _ in samples])
    if output_dir is not None:
        output_dir = os.fspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)
    loader = DataLoader(
        ImageList(samples, eval_transform(input_size, crop_size)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_skip_unreadable,
        pin_memory=device.type == "cuda",
    )
    explanations: list[Explanation] = []
    unreadable: list[dict[str, str]] = []
    with tqdm(total=len(samples), unit="img", desc="explain", disable=not progress, dynamic_ncols=True) as bar:
        for batch in loader:
            for index, reason in batch.failed:
                unreadable.append({"path": samples[index][0], "reason": reason})
            if batch.images is not None:
                chosen, grid_classes, probabilities, maps = _explain_batch(
                    model, batch.images.to(device, non_blocking=True), classes, topk, grid, amp
                )
                for row, index in enumerate(batch.indices.tolist()):
                    explanations.append(
                        _finish_image(
                            samples[index],
                            stems[index],
                            batch.images[row],
                            chosen[row],
                            grid_classes[row] if grid_classes is not None else None,
                            probabilities[row],
                            maps[row],
                            names,
                            output_dir,
                            alpha,
                            colormap,
                            keep_maps,
                        )
                    )
            if output_dir is not None:
                _write_index(os.path.join(output_dir, "explanations.json"), explanations, unreadable)
            bar.update(len(batch.labels) + len(batch.failed))
    if not explanations:
        first = f"; first: {unreadable[0]['path']}: {unreadable[0]['reason']}" if unreadable else ""
        raise ValueError(f"no readable image to explain ({len(unreadable)} unreadable{first})")
    return ExplanationRun(explanations, unreadable)


def _explain_batch(
    model: LCAM, images: torch.Tensor, classes: list[int] | None, topk: int, grid: int, amp: str
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One forward: the explained classes (N x k), the grid's classes (N x grid or None),
    the probabilities of all of them and their maps at the crop's size, moved to the CPU
    once."""
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
    count = chosen.size(1)
    grid_classes = wanted[:, count:] if grid else None
    return wanted[:, :count], grid_classes, wanted_probabilities, maps


def _finish_image(
    sample: tuple[str, int],
    stem: str,
    image: torch.Tensor,
    chosen: torch.Tensor,
    grid_classes: torch.Tensor | None,
    probabilities: torch.Tensor,
    maps: torch.Tensor,
    names: Sequence[str],
    output_dir: str | None,
    alpha: float,
    colormap: str,
    keep_maps: bool,
) -> Explanation:
    count = len(chosen)
    classes = chosen.tolist()
    files = []
    if output_dir is not None:
        to_pil(image).save(os.path.join(output_dir, f"{stem}_input.png"))
        for rank, index in enumerate(classes):
            file = os.path.join(output_dir, f"{stem}_{rank + 1}_{index}_{_slug(names[index])}.png")
            overlay(image, maps[rank], alpha, colormap).save(file)
            files.append(file)
        if grid_classes is not None:
            tiles = [overlay(image, maps[count + rank], alpha, colormap) for rank in range(len(grid_classes))]
            titles = [
                f"{_describe(index, names[index])[:32]}\np={float(probabilities[count + rank]):.3f}"
                for rank, index in enumerate(grid_classes.tolist())
            ]
            files.append(save_grid(tiles, os.path.join(output_dir, f"{stem}_grid.png"), titles))
    return Explanation(
        path=sample[0],
        label=sample[1],
        classes=classes,
        names=[names[index] for index in classes],
        probabilities=[float(value) for value in probabilities[:count]],
        maps=maps[:count].clone() if keep_maps else None,
        image=image.clone() if keep_maps else None,
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


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Explain images with a trained L-CAM model: heatmap overlays of the top-k classes' CAMs.",
        add_help=add_help,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--input", required=True, help="an image, a folder of images (recursive) or a datalist")
    parser.add_argument("--img_dir", default="", help="folder the datalist's image paths are relative to")
    parser.add_argument(
        "--arch", default="VGG16_L_CAM_Img", choices=ARCH_CHOICES, metavar="ARCH", help=", ".join(ARCH_CHOICES)
    )
    parser.add_argument("--restore_from", default="", help="checkpoint file (or folder) [the newest in --snapshot_dir]")
    parser.add_argument("--snapshot_dir", default=None, help="training run folder [ROOT/snapshots/ARCH]")
    parser.add_argument("--root_dir", default=REPO_ROOT, help="project root for the default paths")
    parser.add_argument("--num_classes", type=int, default=None, help="classes of the model [the checkpoint's]")
    parser.add_argument(
        "--backbone_weights", default=None, help="for head-only checkpoints: weights name, path or 'none' [recorded]"
    )
    parser.add_argument("--topk", type=int, default=3, help="explain the k most probable classes")
    parser.add_argument("--classes", default=None, help="explain these class indices instead, e.g. 1,2 [the top-k]")
    parser.add_argument("--grid", type=int, default=0, help="also save a grid of the N most probable classes (0: no)")
    parser.add_argument("--class_names", default=None, help="file with one class name per line [ImageNet's for 1000]")
    parser.add_argument("--output_dir", default=None, help="where the PNGs go [ROOT/runs/explain]")
    parser.add_argument("--input_size", type=int, default=256, help="Resize of the smaller edge")
    parser.add_argument("--crop_size", type=int, default=224, help="CenterCrop (the overlays' size)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    parser.add_argument("--colormap", default="jet", help="matplotlib colormap")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument(
        "--skip_missing",
        action="store_true",
        help="go on without the listed images that do not exist (one warning); by default they stop the run",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    parser.add_argument("--amp", default="none", choices=AMP_CHOICES, help="autocast the forward pass")
    return parser


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> ExplanationRun:
    """Restore the model, explain ``--input``, print each image's classes, write the PNGs."""
    parser = parser or get_args_parser()
    classes = None
    if args.classes:
        try:
            classes = [int(field) for field in args.classes.split(",") if field.strip()]
        except ValueError:
            parser.error(f"--classes must be comma-separated class indices, got {args.classes!r}")
    for name in ("topk", "batch_size", "input_size", "crop_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    snapshot_dir = args.snapshot_dir or os.path.join(args.root_dir, "snapshots", args.arch)
    output_dir = args.output_dir or os.path.join(args.root_dir, "runs", "explain")
    ensure_writable(output_dir, "--output_dir", is_folder=True)
    device = resolve_device(args.device)
    samples = collect_inputs(args.input, args.img_dir)[: args.limit]
    samples = check_images_exist(samples, args.input, skip_missing=args.skip_missing)
    checkpoint = resolve_checkpoint(args.restore_from, snapshot_dir)
    model, metadata = load_lcam_model(args.arch, checkpoint, args.num_classes, args.backbone_weights, device)
    names = class_names_for(model.num_classes, args.class_names)
    print(f"Explaining {len(samples)} image(s) with {args.arch} from {metadata['path']} on {device}")
    run = explain_images(
        model,
        samples,
        topk=args.topk,
        classes=classes,
        class_names=names,
        output_dir=output_dir,
        grid=args.grid,
        device=device,
        amp=args.amp,
        input_size=args.input_size,
        crop_size=args.crop_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        alpha=args.alpha,
        colormap=args.colormap,
        keep_maps=False,
    )
    for item in run.explanations:
        ranked = "; ".join(
            f"{_describe(index, name)} {probability:.3f}"
            for index, name, probability in zip(item.classes, item.names, item.probabilities)
        )
        print(f"{item.path}: {ranked}")
    warn_unreadable(run.unreadable, listed_in=os.path.join(output_dir, "explanations.json"))
    print(f"Overlays written to {output_dir}")
    return run


if __name__ == "__main__":
    run_cli(main, get_args_parser())
