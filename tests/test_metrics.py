"""AD, IC, min-max normalisation, upsampling, keep_top and accuracy on hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.evaluation.metrics import (
    ADICMeter,
    accuracy,
    average_drop,
    increase_in_confidence,
    keep_top,
    minmax_normalize,
    upsample_bilinear,
)


def test_average_drop_and_increase_in_confidence_by_hand():
    y = [0.8, 0.5, 0.4, 0.9]
    o = [0.4, 0.6, 0.4, 0.0]
    # drops: 0.4/0.8 = 0.5, 0 (increase), 0 (equal), 0.9/0.9 = 1 -> 100/4 * 1.5
    assert average_drop(y, o) == pytest.approx(37.5)
    # only the second image increases (equal is not an increase)
    assert increase_in_confidence(y, o) == pytest.approx(25.0)
    assert average_drop(torch.tensor(y), torch.tensor(o)) == pytest.approx(37.5, rel=1e-6)
    assert increase_in_confidence(np.array(y), np.array(o)) == 25.0


def test_ad_ic_reject_bad_input():
    with pytest.raises(ValueError, match="same length"):
        average_drop([0.5, 0.4], [0.5])
    with pytest.raises(ValueError, match="empty"):
        increase_in_confidence([], [])
    with pytest.raises(ValueError, match="one-dimensional"):
        average_drop([[0.5]], [[0.4]])


def test_meter_accumulates_batches():
    meter = ADICMeter()
    meter.update(torch.tensor([0.8, 0.5]), torch.tensor([0.4, 0.6]))
    meter.update(torch.tensor([0.4, 0.9]), torch.tensor([0.4, 0.0]))
    assert meter.count == 4
    assert meter.summary() == {"average_drop": pytest.approx(37.5), "increase_in_confidence": 25.0, "count": 4}


def test_minmax_normalize_per_image_and_constant_maps():
    cams = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[-2.0, -2.0], [0.0, 2.0]]], [[[7.0, 7.0], [7.0, 7.0]]]])
    out = minmax_normalize(cams)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    torch.testing.assert_close(out[1, 0], torch.tensor([[0.0, 0.0], [0.5, 1.0]]))
    assert torch.equal(out[2], torch.zeros(1, 2, 2))
    assert cams[0, 0, 0, 0] == 1.0  # input untouched


def _reference_drop_npercent(cam: torch.Tensor, percent: float) -> torch.Tensor:
    """Step 3 of the AD/IC protocol (keep-top) for one image, written as the reference loop does it."""
    if percent == 0:
        return cam.clone()
    cam = cam.clone()
    _, _, height, width = cam.shape
    threshold = torch.kthvalue(cam.flatten(), int(height * width * percent)).values
    cam[cam < threshold] = 0
    excess = int(torch.count_nonzero(cam > 0)) - math.ceil((1 - percent) * height * width)
    if excess >= 1:
        for index in torch.nonzero(cam == threshold)[:excess]:
            cam[tuple(index)] = 0
    return cam


def test_keep_top_hand_worked_with_ties():
    cam = torch.tensor([[[[0.1, 0.5, 0.5, 0.5], [0.5, 0.9, 0.2, 1.0]]]])  # 8 pixels
    # percentage 0.5: k = 4, 4th smallest = 0.5; keep ceil(4) = 4 pixels.
    # Below 0.5 -> 0: 0.1 and 0.2. Positive left: six (four ties at 0.5, 0.9, 1.0); two
    # ties too many, zeroed in raster order: (0,1) and (0,2).
    expected = torch.tensor([[[[0.0, 0.0, 0.0, 0.5], [0.5, 0.9, 0.0, 1.0]]]])
    out = keep_top(cam, 0.5)
    assert torch.equal(out, expected)
    assert int((out > 0).sum()) == 4
    assert torch.equal(keep_top(cam, 0.0), cam)
    assert cam[0, 0, 0, 1] == 0.5  # input untouched


@pytest.mark.parametrize("percentage", [0.0, 0.5, 0.85, 0.3])
def test_keep_top_batched_equals_reference_per_image(percentage):
    generator = torch.Generator().manual_seed(3)
    cams = torch.rand(5, 1, 12, 12, generator=generator)
    cams[1] = torch.round(cams[1] * 4) / 4  # many ties
    cams[2] = 0.5  # all tied
    cams[3, 0, :6] = 0  # many zeros
    cams = minmax_normalize(cams)
    batched = keep_top(cams, percentage)
    for index in range(len(cams)):
        assert torch.equal(batched[index : index + 1], _reference_drop_npercent(cams[index : index + 1], percentage))
    kept = (batched[0] > 0).sum().item()
    assert kept == math.ceil((1 - percentage) * 144) - (1 if percentage == 0 else 0)  # the min pixel is 0


def test_keep_top_rejects_bad_arguments():
    with pytest.raises(ValueError, match="N x 1 x H x W"):
        keep_top(torch.rand(2, 3, 4, 4), 0.5)
    with pytest.raises(ValueError, match="'percentage' must be in"):
        keep_top(torch.rand(2, 1, 4, 4), 1.0)


def test_accuracy_top1_top5():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.9, 0.0, 0.05, 0.01, 0.02, 0.03]])
    top1, top5 = accuracy(logits, torch.tensor([1, 1]), topk=(1, 5))
    assert top1 == 50.0
    assert top5 == 50.0  # the second image's class 1 is its 6th
    assert accuracy(logits, torch.tensor([1, 2]), topk=(1, 5)) == [50.0, 100.0]


@pytest.mark.parametrize(
    ("low", "high"), [((2, 2), (48, 48)), ((7, 7), (224, 224)), ((3, 5), (17, 40)), ((8, 8), (6, 5))]
)
def test_upsample_bilinear_gives_the_values_of_interpolate(low, high):
    maps = torch.rand(3, 1, *low, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(maps, size=high, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_bilinear(maps, high), expected, rtol=0, atol=3e-7)


def test_upsample_bilinear_keeps_ties_exact_whatever_the_batch_and_threads():
    # a 2 x 2 map at 48 px: each 12 x 12 corner is the corner's value, and the pixels of a
    # row inside the top band share their interpolation weights with every other row there
    maps = minmax_normalize(torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(1)))
    default_threads = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(upsample_bilinear(maps, (48, 48)))
            results.append(torch.cat([upsample_bilinear(maps[index : index + 1], (48, 48)) for index in range(4)]))
    finally:
        torch.set_num_threads(default_threads)
    batched = results[0]
    assert all(torch.equal(result, batched) for result in results)
    for image in batched[:, 0]:
        assert torch.equal(image[:12, :12], image[0, 0].expand(12, 12))
        assert (image[:12] == image[0]).all()  # rows of the top band are equal
        assert (image[:, 36:] == image[:, 47:]).all()  # columns of the right band are equal
