"""Tests of utils.evaluation.visualize: heatmap colours, overlays, boxes, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from utils.evaluation.visualize import draw_box, heatmap, overlay, save_grid, save_table, to_pil


def _image(height: int = 12, width: int = 10) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))


def test_heatmap_uses_the_colormap_ends():
    colours = heatmap(np.array([[0.0, 1.0], [2.0, -1.0]]), "jet")
    assert colours.shape == (2, 2, 3)
    np.testing.assert_allclose(colours[0, 0], [0, 0, 0.5], atol=1e-6)  # jet's dark blue
    np.testing.assert_allclose(colours[0, 1], [0.5, 0, 0], atol=1e-6)  # jet's dark red
    np.testing.assert_allclose(colours[1], colours[0, ::-1])  # values outside [0, 1] are clipped
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        heatmap(np.zeros((2, 2)), "nope")


def test_overlay_blends_image_and_heatmap_at_the_image_size():
    image = _image()
    saliency = torch.linspace(0, 1, 120).reshape(12, 10)
    picture = overlay(image, saliency, alpha=0.5)
    assert picture.size == (10, 12) and picture.mode == "RGB"
    expected = 0.5 * image.permute(1, 2, 0).numpy() + 0.5 * heatmap(saliency)
    np.testing.assert_allclose(np.asarray(picture) / 255.0, expected, atol=1 / 255)
    assert np.array_equal(np.asarray(overlay(image, saliency, alpha=0.0)), np.asarray(to_pil(image)))
    # a tensor, a float array, a uint8 array and a PIL image of the same picture agree
    as_uint8 = np.asarray(to_pil(image))
    for same in (as_uint8, Image.fromarray(as_uint8), as_uint8 / 255.0):
        assert np.array_equal(np.asarray(overlay(same, saliency)), np.asarray(overlay(as_uint8, saliency)))


def test_overlay_rejects_mismatched_maps_and_bad_alpha():
    with pytest.raises(ValueError, match=r"saliency map of size \(6, 5\) does not match the image's \(12, 10\)"):
        overlay(_image(), np.zeros((6, 5)))
    with pytest.raises(ValueError, match="'alpha' must be in"):
        overlay(_image(), np.zeros((12, 10)), alpha=2)
    with pytest.raises(ValueError, match="3 x H x W"):
        overlay(torch.rand(1, 12, 10), np.zeros((12, 10)))


def test_save_grid_and_table_write_pngs(tmp_path):
    tiles = [overlay(_image(), torch.rand(12, 10)) for _ in range(5)]
    path = save_grid(tiles, tmp_path / "sub" / "grid.png", titles=[f"class {i}" for i in range(5)], columns=3)
    with Image.open(path) as written:
        assert written.size == (600, 440)  # 3 x 2 cells of 2 inches at 100 dpi, plus the title band
    with pytest.raises(ValueError, match="2 titles for 5 tiles"):
        save_grid(tiles, tmp_path / "x.png", titles=["a", "b"])
    table = save_table(
        [[tiles[0], None], [tiles[1], tiles[2]]],
        tmp_path / "table.png",
        row_titles=["image 1", "image 2"],
        column_titles=["L-CAM", "Grad-CAM"],
    )
    with Image.open(table) as written:
        assert written.size == (400, 440)
    with pytest.raises(ValueError, match="no image"):
        save_table([], tmp_path / "empty.png")


def test_draw_box_outlines_a_copy_with_exclusive_ends():
    image = torch.zeros(3, 6, 7)
    boxed = draw_box(image, torch.tensor([1, 2, 5, 6]))
    assert image.abs().sum() == 0  # the input is not changed
    green = boxed[1] == 1
    assert green[2, 1:5].all() and green[5, 1:5].all() and green[2:6, 1].all() and green[2:6, 4].all()
    assert int(green.sum()) == 2 * 4 + 2 * 2 and boxed[0].abs().sum() == 0 and boxed[2].abs().sum() == 0
    with pytest.raises(ValueError, match=r"'box' must lie in the 7 x 6 image, got \(1, 2, 8, 6\)"):
        draw_box(image, (1, 2, 8, 6))
