"""A generated dataset with ground-truth boxes: one coloured geometric shape per image (six
classes) on a noisy coloured background among clutter of thin line segments and dots,
written as PNG files, datalists and a box file in the layout of :mod:`utils.data.digits`.

Layout written under ``root`` (paths in the lists and the box file are relative to it)::

    images/{train,val,test}/{split}_{i:05d}.png     RGB PNGs, canvas_size x canvas_size
    train.txt, val.txt, test.txt                     "<image path> <class index>" datalists
    boxes.csv                                        image,split,label,x0,y0,x1,y1,source
    shapes.json                                      the generation settings and class names

A box is the tight pixel box [x0, x1) x [y0, y1) (ends exclusive) of the shape's pixels.
The shape's size, rotation, colour and place are random; the clutter (line segments and
dots in random colours) is drawn only outside the box and its margin, so a box holds the
shape and background alone. The ``source`` column is -1 (no source image). Everything is
drawn from ``numpy.random.default_rng`` seeded by ``seed`` and the split: the same arguments
write byte-identical files. :func:`utils.data.digits.load_split` and
:func:`utils.data.digits.read_boxes` read it.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from utils.core.errors import UserValueError
from utils.core.files import atomic_open, write_json
from utils.data.digits import SPLITS, DigitsDataset, reusable, write_box_file

__all__ = [
    "CLASS_NAMES",
    "SPLITS",
    "ShapeImage",
    "ShapesDataset",
    "make_shapes_dataset",
    "render_shape_image",
]

CLASS_NAMES = ("circle", "square", "triangle", "cross", "diamond", "ring")
BOX_MARGIN = 2
NOISE_STD = 0.04
SETTINGS_FILE = "shapes.json"
FORMAT_VERSION = 1


class ShapesDataset(DigitsDataset):
    """Where :func:`make_shapes_dataset` wrote the dataset (absolute paths); the fields and
    ``list_of`` of :class:`utils.data.digits.DigitsDataset`, so ``load_split`` reads it."""

    __slots__ = ()


class ShapeImage(NamedTuple):
    """One rendered image: image (H x W x 3 float in [0, 1]), box (x0, y0, x1, y1) and the
    boolean mask of the shape's pixels."""

    image: np.ndarray
    box: tuple[int, int, int, int]
    mask: np.ndarray


def _outline(label: int, center: tuple[float, float], radius: float, angle: float) -> list[tuple[float, float]]:
    """The polygon of the polygonal classes (square, triangle, diamond), rotated by ``angle``."""
    corners = {1: 4, 2: 3, 4: 4}[label]
    offset = {1: math.pi / 4, 2: -math.pi / 2, 4: 0.0}[label]
    stretch = (1.0, 0.6) if label == 4 else (1.0, 1.0)  # a diamond is a rhombus
    points = []
    for corner in range(corners):
        theta = offset + 2 * math.pi * corner / corners
        x, y = radius * stretch[1] * math.cos(theta), radius * stretch[0] * math.sin(theta)
        points.append(
            (
                center[0] + x * math.cos(angle) - y * math.sin(angle),
                center[1] + x * math.sin(angle) + y * math.cos(angle),
            )
        )
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, label: int, center, radius: float, angle: float, fill) -> None:
    cx, cy = center
    if label == 0:
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif label == 5:
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius), outline=fill, width=max(2, round(radius / 3))
        )
    elif label == 3:
        radius /= math.sqrt(1 + 1 / 9)  # the arms' corners on the circle of the other shapes
        arm = radius / 3
        for ends in (((-radius, -arm), (radius, arm)), ((-arm, -radius), (arm, radius))):
            corners = [(x, y) for x in (ends[0][0], ends[1][0]) for y in (ends[0][1], ends[1][1])]
            rotated = [
                (cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle))
                for x, y in (corners[0], corners[1], corners[3], corners[2])
            ]
            draw.polygon(rotated, fill=fill)
    else:
        draw.polygon(_outline(label, center, radius, angle), fill=fill)


def _colour(rng: np.random.Generator, lightness: tuple[float, float]) -> np.ndarray:
    """A random saturated colour (RGB in [0, 1]) of a random hue and a lightness in the range."""
    hue = float(rng.uniform(0, 1))
    value = float(rng.uniform(*lightness))
    channels = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)  # hue wheel
    return (value * (0.35 + 0.65 * channels)).astype(np.float32)


def render_shape_image(
    label: int,
    rng: np.random.Generator,
    canvas_size: int = 64,
    shape_size: tuple[int, int] = (16, 32),
    clutter: int = 6,
) -> ShapeImage:
    """Draw one image: the shape of class ``label`` (:data:`CLASS_NAMES`) with a random side
    in ``shape_size``, rotation, colour and place, on a dark noisy background of a random
    colour, and ``clutter`` line segments or dots outside the shape's box and its margin.

    Raises:
        ValueError: an unknown label, or a shape that does not fit on the canvas.
    """
    if not 0 <= label < len(CLASS_NAMES):
        raise UserValueError(f"'label' must be in [0, {len(CLASS_NAMES)}), got {label!r}")
    low, high = shape_size
    if not 6 <= low <= high <= canvas_size:
        raise UserValueError(
            f"'shape_size' must satisfy 6 <= low <= high <= canvas_size={canvas_size}, got {shape_size!r}"
        )
    side = int(rng.integers(low, high + 1))
    top, left = (int(value) for value in rng.integers(0, canvas_size - side + 1, size=2))
    center = (left + side / 2 - 0.5, top + side / 2 - 0.5)
    layer = Image.new("L", (canvas_size, canvas_size), 0)
    _draw_shape(ImageDraw.Draw(layer), label, center, side / 2 - 0.5, float(rng.uniform(0, 2 * math.pi)), 255)
    mask = np.asarray(layer) > 127
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)

    image = np.broadcast_to(_colour(rng, (0.1, 0.35)), (canvas_size, canvas_size, 3)).copy()
    clutter_layer = Image.new("RGB", (canvas_size, canvas_size), (0, 0, 0))
    clutter_mask = Image.new("L", (canvas_size, canvas_size), 0)
    for _ in range(clutter):
        fill = tuple(int(value) for value in np.round(_colour(rng, (0.5, 1.0)) * 255))
        if rng.uniform() < 0.5:
            x, y = (float(value) for value in rng.uniform(0, canvas_size, size=2))
            length, theta = float(rng.uniform(canvas_size / 8, canvas_size / 3)), float(rng.uniform(0, math.pi))
            ends = (x, y, x + length * math.cos(theta), y + length * math.sin(theta))
            ImageDraw.Draw(clutter_layer).line(ends, fill=fill, width=1)
            ImageDraw.Draw(clutter_mask).line(ends, fill=255, width=1)
        else:
            x, y = (float(value) for value in rng.uniform(0, canvas_size, size=2))
            radius = float(rng.uniform(1, max(1.5, canvas_size / 24)))
            ImageDraw.Draw(clutter_layer).ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
            ImageDraw.Draw(clutter_mask).ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    keep_clutter = np.asarray(clutter_mask) > 127
    x0, y0, x1, y1 = box
    keep_clutter[max(0, y0 - BOX_MARGIN) : y1 + BOX_MARGIN, max(0, x0 - BOX_MARGIN) : x1 + BOX_MARGIN] = False
    image[keep_clutter] = np.asarray(clutter_layer, dtype=np.float32)[keep_clutter] / 255
    image[mask] = _colour(rng, (0.6, 1.0))
    image = np.clip(image + rng.normal(0.0, NOISE_STD, size=image.shape).astype(np.float32), 0.0, 1.0)
    return ShapeImage(image, box, mask)


def _settings(seed, canvas_size, counts, shape_size, clutter) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "canvas_size": canvas_size,
        "counts": dict(zip(SPLITS, counts)),
        "shape_size": list(shape_size),
        "clutter": list(clutter),
    }


def make_shapes_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    canvas_size: int = 64,
    num_train: int = 2000,
    num_val: int = 300,
    num_test: int = 300,
    shape_size: tuple[int, int] | None = None,
    clutter: tuple[int, int] = (4, 10),
    overwrite: bool = False,
    progress: bool = True,
) -> ShapesDataset:
    """Write the shapes dataset under ``root`` (see the module docstring) and return its paths.

    When ``root`` already holds a dataset made with the same arguments it is reused as is;
    one made with other arguments is an error unless ``overwrite``. Classes are balanced in
    every split (image ``i`` shows class ``i % 6``; the lists are in that order).

    Args:
        seed: the seed of everything random.
        canvas_size: side of the square images (>= 24).
        num_train, num_val, num_test: images per split.
        shape_size: (min, max) side of the shape's square; default ``(canvas_size // 4,
            canvas_size // 2)``.
        clutter: (min, max) number of clutter segments and dots per image.

    Raises:
        ValueError: bad sizes or counts.
        utils.data.digits.DatasetSettingsError: ``root`` holds a dataset made with other settings.
    """
    counts = (num_train, num_val, num_test)
    if any(not isinstance(count, int) or count < 1 for count in counts):
        raise UserValueError(f"'num_train', 'num_val', 'num_test' must be positive integers, got {counts}")
    if not isinstance(canvas_size, int) or canvas_size < 24:
        raise UserValueError(f"'canvas_size' must be an integer >= 24, got {canvas_size!r}")
    if shape_size is None:
        shape_size = (canvas_size // 4, canvas_size // 2)
    if not 0 <= clutter[0] <= clutter[1]:
        raise UserValueError(f"'clutter' must be (min, max) with 0 <= min <= max, got {clutter!r}")
    root = os.path.abspath(os.fspath(root))
    dataset = ShapesDataset(
        root,
        *(os.path.join(root, f"{split}.txt") for split in SPLITS),
        os.path.join(root, "boxes.csv"),
        len(CLASS_NAMES),
    )
    settings = _settings(seed, canvas_size, counts, shape_size, clutter)
    settings_path = os.path.join(root, SETTINGS_FILE)
    if not overwrite and reusable(settings_path, settings, dataset[1:5], "shapes"):
        return dataset
    rows = []
    for split_index, (split, count) in enumerate(zip(SPLITS, counts)):
        rng = np.random.default_rng([seed, 104729, split_index])
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        lines = []
        for index in tqdm(range(count), desc=f"shapes {split}", disable=not progress, leave=False):
            label = index % len(CLASS_NAMES)
            drawn = render_shape_image(
                label, rng, canvas_size, shape_size, int(rng.integers(clutter[0], clutter[1] + 1))
            )
            relative = f"images/{split}/{split}_{index:05d}.png"
            Image.fromarray(np.round(drawn.image * 255).astype(np.uint8), mode="RGB").save(os.path.join(root, relative))
            lines.append(f"{relative} {label}\n")
            rows.append((relative, split, label, *drawn.box, -1))
        with atomic_open(os.path.join(root, f"{split}.txt")) as handle:
            handle.writelines(lines)
    write_box_file(dataset.boxes_file, rows)
    write_json(settings_path, {"settings": settings, "classes": list(CLASS_NAMES)})
    return dataset
