"""An embedded dataset with ground-truth boxes: scikit-learn's bundled handwritten digits
(1797 real 8 x 8 scans, no download) upscaled and placed on larger canvases among clutter
made of fragments of other digits, written as PNG files, datalists and a box file.

Layout written under ``root`` (paths in the lists and the box file are relative to it)::

    images/{train,val,test}/{split}_{i:05d}.png     grayscale PNGs, canvas_size x canvas_size
    train.txt, val.txt, test.txt                     "<image path> <digit>" datalists
    boxes.csv                                        image,split,label,x0,y0,x1,y1,source
    digits.json                                      the generation settings and counts

A box is the tight pixel box [x0, x1) x [y0, y1) (ends exclusive) of the digit's ink
(upscaled scan values above ``INK_THRESHOLD``). The source scans are split 60/20/20 per
class into train/val/test before any canvas is drawn, so held-out canvases show scans the
classifier never saw. Clutter fragments (a 3-4 x 3-4 crop of another scan, i.e. part of a
stroke, never a whole digit) are placed outside the box and its margin. Everything is
drawn from ``numpy.random.default_rng`` seeded by ``seed`` and the split: the same
arguments write byte-identical files.
"""

from __future__ import annotations

import csv
import json
import os
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils.core.errors import UserValueError
from utils.core.files import atomic_open, write_json
from utils.data.boxes import boxes_for_samples, read_boxes_file
from utils.data.datalists import ImageList, check_images_exist, read_datalist

__all__ = [
    "CLASS_NAMES",
    "INK_THRESHOLD",
    "DatasetSettingsError",
    "SPLITS",
    "DigitsDataset",
    "DigitsSplit",
    "load_split",
    "make_digits_dataset",
    "read_boxes",
    "render_canvas",
    "reusable",
    "split_sources",
    "write_box_file",
]

SPLITS = ("train", "val", "test")
CLASS_NAMES = tuple(str(digit) for digit in range(10))
INK_THRESHOLD = 0.1
SOURCE_FRACTIONS = (0.6, 0.2, 0.2)
BOX_MARGIN = 2
NOISE_STD = 0.03
SETTINGS_FILE = "digits.json"
FORMAT_VERSION = 1


class DatasetSettingsError(UserValueError):
    """The folder holds a digits dataset made with other settings."""


class DigitsDataset(NamedTuple):
    """Where :func:`make_digits_dataset` wrote the dataset (absolute paths)."""

    root: str
    train_list: str
    val_list: str
    test_list: str
    boxes_file: str
    num_classes: int

    def list_of(self, split: str) -> str:
        """The datalist of ``split`` (one of :data:`SPLITS`)."""
        if split not in SPLITS:
            raise UserValueError(f"'split' must be one of {SPLITS}, got {split!r}")
        return getattr(self, f"{split}_list")


class Canvas(NamedTuple):
    """One rendered canvas: image (H x W float in [0, 1]), box (x0, y0, x1, y1) and the
    boolean mask of the digit's ink."""

    image: np.ndarray
    box: tuple[int, int, int, int]
    ink: np.ndarray


def _load_scans() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_sources(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of the scans of each split: per class, a seeded 60/20/20 partition."""
    rng = np.random.default_rng([seed, 7919])
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        first = round(len(members) * SOURCE_FRACTIONS[0])
        second = first + round(len(members) * SOURCE_FRACTIONS[1])
        for split, chunk in zip(SPLITS, (members[:first], members[first:second], members[second:])):
            parts[split].append(chunk)
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def _upscale(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    image = Image.fromarray(patch, mode="F").resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def render_canvas(
    scan: np.ndarray,
    fragment_scans: list[np.ndarray],
    rng: np.random.Generator,
    canvas_size: int = 64,
    digit_size: tuple[int, int] = (20, 32),
) -> Canvas:
    """Draw one canvas: ``scan`` (8 x 8 in [0, 1]) upscaled to a random side in
    ``digit_size`` at a random place, one fragment of each of ``fragment_scans`` outside
    the digit's box, and a little Gaussian noise.

    Raises:
        ValueError: the digit does not fit on the canvas.
    """
    low, high = digit_size
    if not 8 <= low <= high <= canvas_size:
        raise UserValueError(
            f"'digit_size' must satisfy 8 <= low <= high <= canvas_size={canvas_size}, got {digit_size!r}"
        )
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.float32)
    side = int(rng.integers(low, high + 1))
    digit = _upscale(scan, side, side)
    top, left = (int(value) for value in rng.integers(0, canvas_size - side + 1, size=2))
    ink = np.zeros_like(canvas, dtype=bool)
    ink[top : top + side, left : left + side] = digit > INK_THRESHOLD
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    box = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
    canvas[top : top + side, left : left + side] = digit
    scale = side / 8.0
    for fragment_scan in fragment_scans:
        crop_height, crop_width = (int(value) for value in rng.integers(3, 5, size=2))
        row, column = int(rng.integers(0, 9 - crop_height)), int(rng.integers(0, 9 - crop_width))
        crop = fragment_scan[row : row + crop_height, column : column + crop_width]
        height, width = max(2, round(crop_height * scale)), max(2, round(crop_width * scale))
        fragment = _upscale(np.ascontiguousarray(crop), height, width) * float(rng.uniform(0.6, 1.0))
        place = _free_place(rng, canvas_size, height, width, box)
        if place is not None:
            y, x = place
            canvas[y : y + height, x : x + width] = np.maximum(canvas[y : y + height, x : x + width], fragment)
    canvas = np.clip(canvas + rng.normal(0.0, NOISE_STD, size=canvas.shape).astype(np.float32), 0.0, 1.0)
    return Canvas(canvas, box, ink)


def _free_place(rng: np.random.Generator, size: int, height: int, width: int, box, tries: int = 20):
    """A top-left corner where a height x width patch misses the box and its margin."""
    x0, y0, x1, y1 = box[0] - BOX_MARGIN, box[1] - BOX_MARGIN, box[2] + BOX_MARGIN, box[3] + BOX_MARGIN
    if height > size or width > size:
        return None
    for _ in range(tries):
        y, x = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
        if y + height <= y0 or y >= y1 or x + width <= x0 or x >= x1:
            return y, x
    return None


def _settings(seed, canvas_size, counts, digit_size, fragments) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "canvas_size": canvas_size,
        "counts": dict(zip(SPLITS, counts)),
        "digit_size": list(digit_size),
        "fragments": list(fragments),
    }


def _differences(existing: dict, asked: dict) -> str:
    """``"seed 0 there, 1 asked; ..."`` for the settings that differ."""
    keys = [key for key in asked if existing.get(key) != asked[key]]
    return "; ".join(f"{key} {existing.get(key)} there, {asked[key]} asked" for key in keys)


def make_digits_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    canvas_size: int = 64,
    num_train: int = 4000,
    num_val: int = 500,
    num_test: int = 500,
    digit_size: tuple[int, int] | None = None,
    fragments: tuple[int, int] = (2, 4),
    overwrite: bool = False,
    progress: bool = True,
) -> DigitsDataset:
    """Write the digits dataset under ``root`` (see the module docstring) and return its paths.

    When ``root`` already holds a dataset made with the same arguments it is reused as is
    (nothing is rewritten); one made with other arguments is an error unless ``overwrite``.

    Args:
        seed: the seed of everything random.
        canvas_size: side of the square canvases (64-96 px suit the demo).
        num_train, num_val, num_test: canvases per split.
        digit_size: (min, max) side of the upscaled digit; default ``(canvas_size // 3,
            canvas_size // 2)``.
        fragments: (min, max) number of clutter fragments per canvas.

    Raises:
        ValueError: bad sizes or counts.
        DatasetSettingsError: ``root`` holds a dataset made with other settings (a
            ``ValueError``; the message names them).
    """
    counts = (num_train, num_val, num_test)
    if any(not isinstance(count, int) or count < 1 for count in counts):
        raise UserValueError(f"'num_train', 'num_val', 'num_test' must be positive integers, got {counts}")
    if not isinstance(canvas_size, int) or canvas_size < 16:
        raise UserValueError(f"'canvas_size' must be an integer >= 16, got {canvas_size!r}")
    if digit_size is None:
        digit_size = (canvas_size // 3, canvas_size // 2)
    if not 0 <= fragments[0] <= fragments[1]:
        raise UserValueError(f"'fragments' must be (min, max) with 0 <= min <= max, got {fragments!r}")
    root = os.path.abspath(os.fspath(root))
    dataset = DigitsDataset(
        root,
        *(os.path.join(root, f"{split}.txt") for split in SPLITS),
        os.path.join(root, "boxes.csv"),
        len(CLASS_NAMES),
    )
    settings = _settings(seed, canvas_size, counts, digit_size, fragments)
    settings_path = os.path.join(root, SETTINGS_FILE)
    if not overwrite and reusable(settings_path, settings, dataset[1:5], "digits"):
        return dataset
    scans, labels = _load_scans()
    sources = split_sources(labels, seed)
    rows = []
    for split_index, (split, count) in enumerate(zip(SPLITS, counts)):
        rng = np.random.default_rng([seed, split_index])
        directory = os.path.join(root, "images", split)
        os.makedirs(directory, exist_ok=True)
        pool = sources[split]
        lines = []
        for index in tqdm(range(count), desc=f"digits {split}", disable=not progress, leave=False):
            source = int(pool[rng.integers(len(pool))])
            others = rng.choice(pool, size=int(rng.integers(fragments[0], fragments[1] + 1)))
            canvas = render_canvas(scans[source], [scans[other] for other in others], rng, canvas_size, digit_size)
            relative = f"images/{split}/{split}_{index:05d}.png"
            Image.fromarray(np.round(canvas.image * 255).astype(np.uint8), mode="L").save(os.path.join(root, relative))
            lines.append(f"{relative} {labels[source]}\n")
            rows.append((relative, split, int(labels[source]), *canvas.box, source))
        with atomic_open(os.path.join(root, f"{split}.txt")) as handle:
            handle.writelines(lines)
    write_box_file(dataset.boxes_file, rows)
    write_json(settings_path, {"settings": settings, "classes": list(CLASS_NAMES)})
    return dataset


def reusable(settings_path: str, settings: dict, files, kind: str) -> bool:
    """Whether a generated dataset's folder can be reused as is: True when its settings file
    records ``settings`` and every one of ``files`` exists; False when there is no settings
    file (or a file is missing: write it again).

    Raises:
        DatasetSettingsError: the folder holds a dataset made with other settings.
    """
    if not os.path.isfile(settings_path):
        return False
    with open(settings_path, encoding="utf-8") as handle:
        existing = json.load(handle).get("settings") or {}
    if existing != settings:
        raise DatasetSettingsError(
            f"{os.path.dirname(settings_path)} holds a {kind} dataset made with other settings "
            f"({_differences(existing, settings)}); choose another directory or pass overwrite=True"
        )
    return all(os.path.isfile(path) for path in files)


def write_box_file(path: str, rows) -> None:
    """``boxes.csv``: a header and one ``image,split,label,x0,y0,x1,y1,source`` row per image."""
    with atomic_open(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("image", "split", "label", "x0", "y0", "x1", "y1", "source"))
        writer.writerows(rows)


def read_boxes(boxes_file: str | os.PathLike) -> dict[str, tuple[int, int, int, int]]:
    """``{absolute image path: (x0, y0, x1, y1)}`` of a ``boxes.csv`` (paths relative to its
    directory), read by :func:`utils.data.boxes.read_boxes_file`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``file:line`` of a malformed row.
    """
    box_file = read_boxes_file(boxes_file)
    root = os.path.dirname(os.path.abspath(box_file.path))
    return {
        os.path.join(root, image): tuple(int(value) for value in boxes[-1][:4])
        for image, boxes in box_file.boxes.items()
    }


class DigitsSplit(NamedTuple):
    """One split in memory: images (N x 3 x H x W float in [0, 1]), labels (N), boxes
    (N x 4 long, x0 y0 x1 y1) and the image paths, in datalist order."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    paths: list[str]


def load_split(dataset: DigitsDataset, split: str, limit: int | None = None) -> DigitsSplit:
    """Read the first ``limit`` (default all) images of ``split`` through its datalist
    (:func:`utils.data.read_datalist`, :class:`utils.data.ImageList`) with their boxes.

    Raises:
        FileNotFoundError: a missing list, box file or image.
        ValueError: an unreadable image or an image without a box.
    """
    list_path = dataset.list_of(split)
    samples = read_datalist(list_path, dataset.root, dataset.num_classes)[:limit]
    check_images_exist(samples, list_path)
    boxes = boxes_for_samples(samples, read_boxes_file(dataset.boxes_file), dataset.root)
    missing = [path for (path, _), found in zip(samples, boxes) if found is None]
    if missing:
        raise UserValueError(f"{dataset.boxes_file}: no box for {missing[0]!r} ({len(missing)} images without a box)")
    images = []
    for tensor, _, _, reason in ImageList(samples):
        if reason is not None:
            raise UserValueError(f"{list_path}: unreadable image: {reason}")
        images.append(tensor)
    return DigitsSplit(
        torch.stack(images),
        torch.tensor([label for _, label in samples], dtype=torch.long),
        torch.cat(boxes),  # one box per canvas
        [path for path, _ in samples],
    )
