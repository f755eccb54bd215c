"""Ground-truth boxes: reading them (ImageNet's ``LOC_val_solution.csv``, a folder of
ImageNet's XML annotations, or a plain CSV) and mapping them through the evaluation
transform (Resize of the smaller edge, CenterCrop) onto the pixels of the evaluated image.

A box ``(x0, y0, x1, y1)`` is read as the corners of ``[x0, x1) x [y0, y1)`` in the pixels of
the original image (a pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``), whatever the
format. ImageNet's ``xmax``/``ymax`` are usually taken as the last pixel inside the box:
read as corners, such a box loses one column and one row of the original image (about half
a pixel after the resize to 256).

Formats (picked from the path and the first line):

* ``LOC_val_solution.csv``: the header ``ImageId,PredictionString``, then
  ``<image id>,<wnid> x0 y0 x1 y1 [<wnid> x0 y0 x1 y1 ...]``;
* a folder of XML files (PASCAL VOC style, ImageNet's ``val/*.xml``): one file per image,
  named after it, with ``<object><name>wnid</name><bndbox><xmin>..<ymin>..<xmax>..<ymax>..``;
* a plain CSV ``image,x0,y0,x1,y1`` (a header naming those columns, in any order, other
  columns allowed: e.g. the digits' ``boxes.csv``; or no header and exactly those five
  columns), one row per box, several rows per image allowed.

Rules: a malformed row, a negative coordinate or an empty box (``x1 <= x0`` or
``y1 <= y0``) is an error naming ``file:line``. Boxes of images that are not evaluated are
ignored (a box file usually covers the whole validation set); an evaluated image without a
box is left out of the localisation metrics (the caller counts and reports them), and a list
of which no image has a box is an error. An image is matched by its path relative to the
image folder, then its file name, then its file name without extension (ImageNet's ids).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import NamedTuple
from xml.parsers import expat

import torch
from PIL import Image

from utils.core.errors import UserFileNotFoundError, UserValueError

__all__ = [
    "LOC_HEADER",
    "Box",
    "BoxFile",
    "boxes_for_samples",
    "crop_geometry",
    "read_boxes_file",
    "read_loc_solution",
    "transform_boxes",
]

LOC_HEADER = "ImageId,PredictionString"
_COORDINATES = ("x0", "y0", "x1", "y1")
_XML_COORDINATES = ("xmin", "ymin", "xmax", "ymax")


class Box(NamedTuple):
    """One ground-truth box in original-image pixels (corners, ends exclusive), its class
    name when the format gives one (a wnid), and where it was read (``file:line``)."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str | None
    where: str


class BoxFile(NamedTuple):
    """The boxes of a box file by image key (as written in the file), and the file."""

    path: str
    boxes: dict[str, list[Box]]

    def lookup(self, image_path: str, img_dir: str | os.PathLike = "") -> list[Box] | None:
        """The boxes of ``image_path``: by its path relative to ``img_dir``, its file name,
        or its file name without extension (the first key found); None when it has none."""
        relative = os.path.relpath(image_path, os.fspath(img_dir) or os.curdir).replace(os.sep, "/")
        name = os.path.basename(image_path)
        for key in (relative, os.path.splitext(relative)[0], name, os.path.splitext(name)[0], image_path):
            if key in self.boxes:
                return self.boxes[key]
        return None


def _box(values: Sequence[str], label: str | None, where: str) -> Box:
    """A checked :class:`Box` from four coordinate strings."""
    try:
        x0, y0, x1, y1 = (float(value) for value in values)
    except ValueError as error:
        raise UserValueError(f"{where}: box coordinates must be numbers, got {' '.join(values)!r}") from error
    if not all(math.isfinite(value) for value in (x0, y0, x1, y1)):
        raise UserValueError(f"{where}: box coordinates must be finite, got {' '.join(values)!r}")
    if min(x0, y0, x1, y1) < 0:
        raise UserValueError(f"{where}: negative box coordinate in ({x0:g}, {y0:g}, {x1:g}, {y1:g})")
    if x1 <= x0 or y1 <= y0:
        raise UserValueError(
            f"{where}: empty or inverted box ({x0:g}, {y0:g}, {x1:g}, {y1:g}): x1 > x0 and y1 > y0 are needed"
        )
    return Box(x0, y0, x1, y1, label, where)


def read_loc_solution(path: str | os.PathLike) -> dict[str, list[Box]]:
    """``{image id: [Box(..., label=wnid)]}`` of ImageNet's ``LOC_val_solution.csv``
    (``ImageId,PredictionString`` rows, the string ``wnid x0 y0 x1 y1`` repeated).

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``file:line`` of a missing header, a malformed row or a bad box.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"box file not found: {path!r}")
    boxes: dict[str, list[Box]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, [])
        if ",".join(field.strip() for field in header) != LOC_HEADER:
            raise UserValueError(f"{path}:1: expected the header {LOC_HEADER!r}, got {','.join(header)!r}")
        for row in rows:
            where = f"{path}:{rows.line_num}"
            if not row or not "".join(row).strip():
                continue
            fields = row[1].split() if len(row) == 2 else []
            if len(row) != 2 or not row[0].strip() or not fields or len(fields) % 5:
                raise UserValueError(
                    f"{where}: malformed row {','.join(row)!r}: expected '<image id>,<wnid> x0 y0 x1 y1 [...]'"
                )
            boxes.setdefault(row[0].strip(), []).extend(
                _box(fields[start + 1 : start + 5], fields[start], where) for start in range(0, len(fields), 5)
            )
    return boxes


def _read_plain_csv(path: str) -> dict[str, list[Box]]:
    """Rows ``image,x0,y0,x1,y1`` (with a header naming them, other columns allowed, or none)."""
    boxes: dict[str, list[Box]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        header = [field.strip() for field in next(rows, [])]
        if {"image", *_COORDINATES} <= set(header):
            columns = [header.index(name) for name in ("image", *_COORDINATES)]
            label_column = header.index("label") if "label" in header else None
        elif len(header) == 5:  # no header: the first row is a box
            columns, label_column = list(range(5)), None
            handle.seek(0)
            rows = csv.reader(handle)
        else:
            raise UserValueError(
                f"{path}:1: expected a header with the columns image,x0,y0,x1,y1 or rows of exactly those "
                f"five fields, got {','.join(header)!r}"
            )
        for row in rows:
            where = f"{path}:{rows.line_num}"
            if not row or not "".join(row).strip():
                continue
            if len(row) <= max(columns) or not row[columns[0]].strip():
                raise UserValueError(f"{where}: malformed row {','.join(row)!r}: expected image,x0,y0,x1,y1")
            label = row[label_column].strip() if label_column is not None and len(row) > label_column else None
            image = row[columns[0]].strip()
            boxes.setdefault(image, []).append(_box([row[column] for column in columns[1:]], label, where))
    return boxes


def _read_xml(path: str) -> list[Box]:
    """The boxes of one PASCAL VOC style annotation file."""
    boxes: list[Box] = []
    stack: list[str] = []
    current: dict[str, str] = {}
    state = {"text": "", "name": None, "line": 0}
    parser = expat.ParserCreate()

    def start(tag: str, attributes: dict) -> None:
        stack.append(tag)
        state["text"] = ""
        if tag == "object":
            state["name"] = None
        if tag == "bndbox":
            current.clear()
            state["line"] = parser.CurrentLineNumber

    def end(tag: str) -> None:
        stack.pop()
        text = state["text"].strip()
        if tag == "name" and stack and stack[-1] == "object":
            state["name"] = text
        elif tag in _XML_COORDINATES and stack and stack[-1] == "bndbox":
            current[tag] = text
        elif tag == "bndbox":
            where = f"{path}:{state['line']}"
            missing = [name for name in _XML_COORDINATES if name not in current]
            if missing:
                raise UserValueError(f"{where}: <bndbox> without <{'>, <'.join(missing)}>")
            boxes.append(_box([current[name] for name in _XML_COORDINATES], state["name"], where))
        state["text"] = ""

    def text(data: str) -> None:
        state["text"] += data

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    with open(path, "rb") as handle:
        try:
            parser.ParseFile(handle)
        except expat.ExpatError as error:
            raise UserValueError(f"{path}:{error.lineno}: malformed XML ({expat.ErrorString(error.code)})") from None
    return boxes


def _read_xml_folder(folder: str) -> dict[str, list[Box]]:
    """``{file name without .xml: boxes}`` of every XML file under ``folder``."""
    boxes: dict[str, list[Box]] = {}
    for directory, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.lower().endswith(".xml"):
                found = _read_xml(os.path.join(directory, name))
                if found:
                    boxes[os.path.splitext(name)[0]] = found
    if not boxes:
        raise UserValueError(f"{folder}: no XML annotation with a <bndbox> in this folder")
    return boxes


def read_boxes_file(path: str | os.PathLike) -> BoxFile:
    """Read a box file in any of the module's formats (a folder: XML annotations).

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: ``file:line`` of the first malformed row or bad box.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return BoxFile(path, _read_xml_folder(path))
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"box file not found: {path!r}")
    if path.lower().endswith(".xml"):
        return BoxFile(path, {os.path.splitext(os.path.basename(path))[0]: _read_xml(path)})
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    if first.replace(" ", "").startswith(LOC_HEADER):
        return BoxFile(path, read_loc_solution(path))
    return BoxFile(path, _read_plain_csv(path))


def crop_geometry(
    width: int, height: int, input_size: int | None, crop_size: int | None
) -> tuple[float, float, float, float]:
    """``(scale_x, scale_y, left, top)`` of the evaluation transform (torchvision's
    ``Resize(input_size)`` of the smaller edge, then ``CenterCrop(crop_size)``) on a
    ``width`` x ``height`` image: a point ``x`` of the original lands at ``x * scale_x - left``.
    ``None`` skips that step."""
    scale_x = scale_y = 1.0
    if input_size is not None:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(input_size * long / short)  # torchvision's rounding of the long edge
        new_width, new_height = (input_size, new_long) if width <= height else (new_long, input_size)
        scale_x, scale_y = new_width / width, new_height / height
        width, height = new_width, new_height
    left = top = 0.0
    if crop_size is not None:
        left, top = (
            int(round((size - crop_size) / 2.0)) if size >= crop_size else -((crop_size - size) // 2)
            for size in (width, height)
        )
    return scale_x, scale_y, float(left), float(top)


def transform_boxes(
    boxes: Sequence[Box] | torch.Tensor,
    image_size: tuple[int, int],
    input_size: int | None = None,
    crop_size: int | None = None,
) -> torch.Tensor:
    """Boxes of a ``(width, height)`` image mapped onto the pixels of the transformed image
    (:func:`crop_geometry`): K' x 4 long ``(x0, y0, x1, y1)``, ends exclusive, the pixels
    whose centre lies inside the mapped box, clipped to the crop; boxes that fall outside
    it or cover no pixel centre are dropped (so K' <= K)."""
    width, height = image_size
    scale_x, scale_y, left, top = crop_geometry(width, height, input_size, crop_size)
    out_width = crop_size if crop_size is not None else round(width * scale_x)
    out_height = crop_size if crop_size is not None else round(height * scale_y)
    corners = torch.as_tensor([list(box[:4]) for box in boxes] if not torch.is_tensor(boxes) else boxes)
    corners = corners.double().reshape(-1, 4)
    corners[:, 0::2] = corners[:, 0::2].clamp(0, width) * scale_x - left
    corners[:, 1::2] = corners[:, 1::2].clamp(0, height) * scale_y - top
    # pixel i is inside when x0 <= i + 0.5 < x1, i.e. i in [ceil(x0 - 0.5), ceil(x1 - 0.5))
    pixels = torch.ceil(corners - 0.5 - 1e-9).long()
    pixels[:, 0::2] = pixels[:, 0::2].clamp(0, out_width)
    pixels[:, 1::2] = pixels[:, 1::2].clamp(0, out_height)
    keep = (pixels[:, 2] > pixels[:, 0]) & (pixels[:, 3] > pixels[:, 1])
    return pixels[keep]


def boxes_for_samples(
    samples: Sequence[tuple[str, int]],
    box_file: BoxFile,
    img_dir: str | os.PathLike = "",
    input_size: int | None = None,
    crop_size: int | None = None,
) -> list[torch.Tensor | None]:
    """Per sample, its boxes on the evaluated image (:func:`transform_boxes`; the original
    size read from the image's header), or None for an image without a box (or whose boxes
    all fall outside the crop).

    Raises:
        ValueError: no image of ``samples`` has a box in ``box_file`` (wrong file or names).
    """
    found: list[torch.Tensor | None] = []
    for path, _ in samples:
        boxes = box_file.lookup(path, img_dir)
        if not boxes:
            found.append(None)
            continue
        try:
            with Image.open(path) as image:
                size = image.size
        except Exception:  # unreadable: the evaluation reports it and leaves it out
            found.append(None)
            continue
        mapped = transform_boxes(boxes, size, input_size, crop_size)
        found.append(mapped if len(mapped) else None)
    if samples and all(boxes is None for boxes in found):
        example = os.path.relpath(samples[0][0], os.fspath(img_dir) or os.curdir)
        keys = list(box_file.boxes)[:2]
        raise UserValueError(
            f"{box_file.path}: no image of the list has a box (e.g. {example!r}; the file's images are named "
            f"like {', '.join(map(repr, keys)) or 'nothing'})"
        )
    return found
