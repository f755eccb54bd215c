"""Energy in box and pointing game (utils/evaluation/localization.py), on hand-computed maps."""

from __future__ import annotations

import pytest
import torch

from utils.evaluation.localization import LocalizationMeter, box_masks, energy_in_box, pointing_game


def test_box_masks_have_exclusive_ends_and_tolerance():
    mask = box_masks(torch.tensor([[1, 2, 3, 4]]), 5, 6)[0]
    assert mask.sum() == 4 and mask[2:4, 1:3].all()
    assert box_masks(torch.tensor([[1, 2, 3, 4]]), 5, 6, tolerance=1)[0].sum() == 4 * 4


def test_energy_in_box_hand_computed():
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = 3.0  # inside the box [0, 2) x [0, 2)
    maps[0, 0, 3, 3] = 1.0  # outside
    maps[1, 0] = 1.0  # uniform: 4 of 16 pixels inside
    boxes = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]])
    torch.testing.assert_close(energy_in_box(maps, boxes), torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert energy_in_box(torch.zeros(1, 4, 4), boxes[:1]).item() == 0.0


def test_pointing_game_hits_misses_tolerance_and_constant_maps():
    maps = torch.zeros(3, 5, 5)
    maps[0, 1, 1] = 1.0  # in the box
    maps[1, 4, 4] = 1.0  # out of it, one pixel away from its corner (3, 3) at (x=4, y=4)
    boxes = torch.tensor([[0, 0, 4, 4]] * 3)
    assert pointing_game(maps, boxes).tolist() == [True, False, False]  # third: constant map
    assert pointing_game(maps, boxes, tolerance=1).tolist() == [True, True, False]


def test_meter_averages_in_percent_and_checks_inputs():
    meter = LocalizationMeter()
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = 1.0
    maps[1, 0, 3, 3] = 1.0
    meter.update(maps, torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]]))
    assert meter.summary() == {"energy_in_box": 50.0, "pointing_game": 50.0, "count": 2}
    with pytest.raises(ValueError, match="non-negative"):
        energy_in_box(-maps, torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="x1 > x0"):
        pointing_game(maps, torch.tensor([[2, 0, 2, 2], [0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="N x 4"):
        energy_in_box(maps, torch.tensor([[0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="no batch"):
        LocalizationMeter().summary()
