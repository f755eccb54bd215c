"""The generated shapes dataset (utils/data/shapes.py): deterministic files, tight boxes, clutter outside them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.checksums import file_checksums
from utils.core.errors import UserValueError
from utils.data.digits import DatasetSettingsError, load_split, read_boxes
from utils.data.shapes import BOX_MARGIN, CLASS_NAMES, make_shapes_dataset, render_shape_image


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    options = {"canvas_size": 32, "num_train": 12, "num_val": 3, "num_test": 3, "progress": False}
    first = make_shapes_dataset(tmp_path / "a", seed=3, **options)
    second = make_shapes_dataset(tmp_path / "b", seed=3, **options)
    third = make_shapes_dataset(tmp_path / "c", seed=4, **options)
    digests = file_checksums(first.root)
    assert len(digests) == 18 + 5  # images, three lists, boxes.csv, shapes.json
    assert digests == file_checksums(second.root)
    assert file_checksums(third.root)["images/train/train_00000.png"] != digests["images/train/train_00000.png"]
    assert make_shapes_dataset(tmp_path / "a", seed=3, **options) == first  # reused as is
    with pytest.raises(DatasetSettingsError, match="seed 3 there, 5 asked"):
        make_shapes_dataset(tmp_path / "a", seed=5, **options)


@pytest.mark.parametrize("label", range(len(CLASS_NAMES)))
def test_box_is_the_tight_box_of_the_shape_and_clutter_stays_out(label):
    rng = np.random.default_rng(label)
    for _ in range(5):
        drawn = render_shape_image(label, rng, canvas_size=48, shape_size=(12, 24), clutter=12)
        x0, y0, x1, y1 = drawn.box
        rows, columns = np.nonzero(drawn.mask)
        assert (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)
        assert 12 * 0.5 <= max(x1 - x0, y1 - y0) <= 24
        shape_colour = drawn.image[drawn.mask].mean(0)
        # inside the box and its margin: only the shape's colour or the background (noise std 0.04)
        ys, xs = np.mgrid[0:48, 0:48]
        near = (xs >= x0 - BOX_MARGIN) & (xs < x1 + BOX_MARGIN) & (ys >= y0 - BOX_MARGIN) & (ys < y1 + BOX_MARGIN)
        background = drawn.image[near & ~drawn.mask]
        background_colour = np.median(drawn.image[~near], axis=0) if (~near).any() else background.mean(0)
        assert np.abs(background - background_colour).max() < 0.3
        assert np.abs(drawn.image[drawn.mask] - shape_colour).max() < 0.3


def test_load_split_reads_images_labels_and_boxes(tmp_path):
    dataset = make_shapes_dataset(tmp_path, canvas_size=32, num_train=12, num_val=2, num_test=2, progress=False)
    train = load_split(dataset, "train")
    assert train.images.shape == (12, 3, 32, 32) and dataset.num_classes == 6
    assert train.labels.tolist() == [index % 6 for index in range(12)]
    assert train.boxes.tolist() == [list(read_boxes(dataset.boxes_file)[path]) for path in train.paths]


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(UserValueError, match="'label' must be in"):
        render_shape_image(6, np.random.default_rng(0))
    with pytest.raises(UserValueError, match="'shape_size' must satisfy"):
        render_shape_image(0, np.random.default_rng(0), canvas_size=32, shape_size=(8, 40))
    with pytest.raises(UserValueError, match="'canvas_size' must be an integer >= 24"):
        make_shapes_dataset(tmp_path, canvas_size=16)
