"""Box files (utils/data/boxes.py): the three formats read to the same boxes, bad files fail
with file:line, and boxes follow the evaluation's Resize/CenterCrop like a rendered mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data.boxes import boxes_for_samples, crop_geometry, read_boxes_file, transform_boxes
from utils.data.datalists import eval_transform

BOXES = {
    "ILSVRC2012_val_00000001": [("n01", 10, 20, 30, 40), ("n01", 5, 6, 7, 8)],
    "ILSVRC2012_val_00000002": [("n02", 0, 0, 64, 48.5)],
}


def _xml(boxes) -> str:
    objects = "".join(
        f"<object><name>{wnid}</name><pose>x</pose><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>\n"
        for wnid, x0, y0, x1, y1 in boxes
    )
    return f"<annotation>\n<folder>val</folder>\n<size><width>64</width><height>64</height></size>\n{objects}</annotation>\n"


@pytest.fixture
def three_formats(tmp_path):
    loc = tmp_path / "LOC_val_solution.csv"
    loc.write_text(
        "ImageId,PredictionString\n"
        + "".join(f"{name},{' '.join(' '.join(map(str, box)) for box in boxes)} \n" for name, boxes in BOXES.items())
    )
    folder = tmp_path / "xml"
    folder.mkdir()
    for name, boxes in BOXES.items():
        (folder / f"{name}.xml").write_text(_xml(boxes))
    plain = tmp_path / "boxes.csv"
    plain.write_text(
        "".join(f"{name}.JPEG,{x0},{y0},{x1},{y1}\n" for name, boxes in BOXES.items() for _, x0, y0, x1, y1 in boxes)
    )
    return loc, folder, plain


def test_three_formats_read_to_the_same_boxes(three_formats):
    loc, folder, plain = three_formats
    read = [read_boxes_file(path) for path in three_formats]
    for name, expected in BOXES.items():
        coordinates = [[list(box[:4]) for box in found.lookup(f"/data/{name}.JPEG", "/data")] for found in read]
        assert coordinates[0] == coordinates[1] == coordinates[2] == [list(map(float, box[1:])) for box in expected]
    assert [box.label for box in read[0].boxes["ILSVRC2012_val_00000001"]] == ["n01", "n01"]
    assert [box.label for box in read[1].boxes["ILSVRC2012_val_00000002"]] == ["n02"]
    assert read[0].boxes["ILSVRC2012_val_00000002"][0].where == f"{loc}:3"


def test_plain_csv_with_header_and_other_columns_and_lookup_by_relative_path(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("split,image,x1,y1,x0,y0\ntest,a/img.png,5,6,1,2\ntest,a/img.png,9,9,0,0\n")
    found = read_boxes_file(path)
    assert [tuple(box[:4]) for box in found.lookup(str(tmp_path / "a" / "img.png"), tmp_path)] == [
        (1, 2, 5, 6),
        (0, 0, 9, 9),
    ]
    assert found.lookup(str(tmp_path / "b" / "other.png"), tmp_path) is None


@pytest.mark.parametrize(
    "content, line, message",
    [
        ("ImageId,PredictionString\nimg1,n01 1 2 3 4\nimg2,n01 1 2 3\n", 3, "malformed row"),
        ("ImageId,PredictionString\nimg1,n01 1 2 3 4\nimg2,n01 -1 2 3 4\n", 3, "negative"),
        ("ImageId,PredictionString\nimg1,n01 5 2 3 4\n", 2, "empty or inverted"),
        ("ImageId,PredictionString\nimg1,n01 1 2 x 4\n", 2, "numbers"),
        ("image,x0,y0,x1,y1\na.png,1,2,3,4\n\nb.png,1,2,3\n", 4, "malformed row"),
        ("a.png,1,2,3,4\nb.png,1,2,3,2\n", 2, "empty or inverted"),
        ("image,x,y\n", 1, "expected a header"),
    ],
)
def test_bad_box_files_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "boxes.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"{path}:{line}: .*{message}"):
        read_boxes_file(path)


def test_bad_xml_names_file_and_line(tmp_path):
    folder = tmp_path / "xml"
    folder.mkdir()
    (folder / "a.xml").write_text(_xml([("n01", 1, 2, 3, 4)]))
    bad = folder / "b.xml"
    bad.write_text(
        "<annotation>\n<object><name>n01</name>\n<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax></bndbox>\n"
    )
    with pytest.raises(ValueError, match=f"{bad}:3: <bndbox> without <ymax>"):
        read_boxes_file(folder)
    bad.write_text("<annotation>\n<object>\n</annotation>\n")
    with pytest.raises(ValueError, match=f"{bad}:3: malformed XML"):
        read_boxes_file(folder)
    with pytest.raises(FileNotFoundError, match="box file not found"):
        read_boxes_file(tmp_path / "missing.csv")


def _rendered_box(width, height, box, input_size, crop_size):
    """The box of a rendered box mask after the evaluation transform (pixels >= 0.5)."""
    mask = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    inside = eval_transform(input_size, crop_size)(Image.fromarray(mask).convert("RGB"))[0] >= 0.5
    if not inside.any():
        return None
    rows, columns = torch.nonzero(inside, as_tuple=True)
    return [columns.min().item(), rows.min().item(), columns.max().item() + 1, rows.max().item() + 1]


def test_boxes_follow_resize_and_center_crop_like_a_rendered_mask():
    """Exactly where no mapped edge is within a quarter pixel of a pixel centre (there the
    antialiased mask is about 0.5: a tie), within one pixel everywhere."""
    generator = np.random.default_rng(0)
    exact = 0
    for _ in range(120):
        width, height = (int(value) for value in generator.integers(40, 120, size=2))
        x0, x1 = sorted(int(value) for value in generator.choice(width + 1, 2, replace=False))
        y0, y1 = sorted(int(value) for value in generator.choice(height + 1, 2, replace=False))
        input_size = int(generator.integers(24, 70))
        crop_size = int(generator.integers(16, input_size + 1))
        ours = transform_boxes(torch.tensor([[x0, y0, x1, y1]]), (width, height), input_size, crop_size)
        rendered = _rendered_box(width, height, (x0, y0, x1, y1), input_size, crop_size)
        scale_x, scale_y, left, top = crop_geometry(width, height, input_size, crop_size)
        edges = np.array([x0 * scale_x - left, x1 * scale_x - left, y0 * scale_y - top, y1 * scale_y - top])
        inside = edges[(edges > 0) & (edges < crop_size)]  # the others are clipped to the crop
        tie = inside.size > 0 and np.abs((inside - 0.5) - np.round(inside - 0.5)).min() < 0.25
        if rendered is None:
            assert tie or len(ours) == 0
            continue
        assert len(ours) == 1
        difference = (ours[0] - torch.tensor(rendered)).abs().max().item()
        assert difference <= 1
        if not tie:
            assert difference == 0
            exact += 1
    assert exact >= 10


def test_crop_geometry_is_torchvisions_and_boxes_are_clipped():
    # 100 x 50 -> Resize(32): 64 x 32 -> CenterCrop(24): left 20, top 4
    assert crop_geometry(100, 50, 32, 24) == (0.64, 0.64, 20.0, 4.0)
    assert crop_geometry(10, 10, None, 16) == (1.0, 1.0, -3.0, -3.0)  # padded by CenterCrop
    boxes = transform_boxes(torch.tensor([[0, 0, 100, 50], [0, 0, 10, 10]]), (100, 50), 32, 24)
    assert boxes.tolist() == [[0, 0, 24, 24]]  # the second falls outside the crop: dropped
    assert transform_boxes(torch.tensor([[1, 2, 3, 4]]), (8, 8)).tolist() == [[1, 2, 3, 4]]


def test_boxes_for_samples_reads_sizes_and_fails_when_no_image_has_a_box(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "b.png")
    path = tmp_path / "boxes.csv"
    path.write_text("a,0,0,100,50\n")
    samples = [(str(tmp_path / "a.png"), 0), (str(tmp_path / "b.png"), 1)]
    found = boxes_for_samples(samples, read_boxes_file(path), tmp_path, 32, 24)
    assert found[0].tolist() == [[0, 0, 24, 24]] and found[1] is None
    path.write_text("c.png,0,0,1,1\n")
    with pytest.raises(ValueError, match="no image of the list has a box"):
        boxes_for_samples(samples, read_boxes_file(path), tmp_path, 32, 24)
