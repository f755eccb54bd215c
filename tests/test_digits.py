"""The embedded digits dataset (utils/data/digits.py): deterministic files, boxes around the digit."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.checksums import file_checksums
from utils.data.datalists import read_datalist
from utils.data.digits import (
    INK_THRESHOLD,
    SPLITS,
    load_split,
    make_digits_dataset,
    read_boxes,
    render_canvas,
    split_sources,
)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    options = {"num_train": 12, "num_val": 4, "num_test": 4, "progress": False}
    first = make_digits_dataset(tmp_path / "a", seed=3, **options)
    second = make_digits_dataset(tmp_path / "b", seed=3, **options)
    third = make_digits_dataset(tmp_path / "c", seed=4, **options)
    digests = file_checksums(first.root)
    assert len(digests) == 20 + 5  # images, three lists, boxes.csv, digits.json
    assert digests == file_checksums(second.root)
    other = file_checksums(third.root)
    assert other["images/train/train_00000.png"] != digests["images/train/train_00000.png"]


def test_lists_and_boxes_describe_the_images(tmp_path):
    dataset = make_digits_dataset(tmp_path, canvas_size=72, num_train=30, num_val=5, num_test=5, progress=False)
    boxes = read_boxes(dataset.boxes_file)
    for split in SPLITS:
        samples = read_datalist(dataset.list_of(split), dataset.root, num_classes=dataset.num_classes)
        assert len(samples) == {"train": 30, "val": 5, "test": 5}[split]
        for path, _ in samples:
            x0, y0, x1, y1 = boxes[path]
            assert 0 <= x0 < x1 <= 72 and 0 <= y0 < y1 <= 72
            with Image.open(path) as image:
                assert image.size == (72, 72)
                pixels = np.asarray(image, dtype=np.float32) / 255
            assert pixels[y0:y1, x0:x1].max() > 0.5  # the digit's ink is in its box
    labels = [label for _, label in read_datalist(dataset.train_list, dataset.root)]
    assert len(set(labels)) > 5


def test_rendered_box_is_the_tight_box_of_the_ink():
    rng = np.random.default_rng(0)
    scans = np.random.default_rng(1).uniform(0, 1, size=(6, 8, 8)).astype(np.float32)
    for _ in range(20):
        canvas = render_canvas(scans[0], list(scans[1:]), rng, canvas_size=64, digit_size=(20, 32))
        x0, y0, x1, y1 = canvas.box
        rows, columns = np.nonzero(canvas.ink)
        assert (rows.min(), rows.max() + 1, columns.min(), columns.max() + 1) == (y0, y1, x0, x1)
        assert canvas.ink.sum() > 20 and canvas.image[canvas.ink].min() > INK_THRESHOLD - 0.15
    with pytest.raises(ValueError, match="digit_size"):
        render_canvas(scans[0], [], rng, canvas_size=16, digit_size=(20, 32))


def test_source_scans_are_split_without_overlap():
    labels = np.repeat(np.arange(10), 20)
    parts = split_sources(labels, seed=0)
    assert [len(parts[split]) for split in SPLITS] == [120, 40, 40]
    assert not set(parts["train"]) & set(parts["test"]) and not set(parts["val"]) & set(parts["test"])


def test_existing_dataset_is_reused_and_other_settings_refused(tmp_path):
    options = {"num_train": 3, "num_val": 2, "num_test": 2, "progress": False}
    dataset = make_digits_dataset(tmp_path, **options)
    stamp = os.path.getmtime(dataset.train_list)
    assert make_digits_dataset(tmp_path, **options) == dataset
    assert os.path.getmtime(dataset.train_list) == stamp
    with pytest.raises(ValueError, match="other settings"):
        make_digits_dataset(tmp_path, seed=1, **options)
    with pytest.raises(ValueError, match="positive integers"):
        make_digits_dataset(tmp_path / "x", num_train=0)


def test_load_split_reads_images_labels_and_boxes_in_list_order(tmp_path):
    dataset = make_digits_dataset(tmp_path, num_train=6, num_val=2, num_test=3, progress=False)
    split = load_split(dataset, "test", limit=2)
    assert split.images.shape == (2, 3, 64, 64) and 0 <= split.images.min() and split.images.max() <= 1
    samples = read_datalist(dataset.test_list, dataset.root)[:2]
    assert split.paths == [path for path, _ in samples] and split.labels.tolist() == [label for _, label in samples]
    boxes = read_boxes(dataset.boxes_file)
    assert split.boxes.tolist() == [list(boxes[path]) for path in split.paths]
    with pytest.raises(ValueError, match="'split' must be one of"):
        load_split(dataset, "validation")
