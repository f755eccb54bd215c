"""utils.evaluation.insertion_deletion: batched insertion/deletion against a per-image loop
written from the RISE paper, known answers, and torch-cam's DeletionInsertionMetric."""

from __future__ import annotations

import contextlib
import functools
import math

import pytest
import torch
from torch import nn

from utils.core.errors import UserValueError
from utils.evaluation.insertion_deletion import (
    InsertionDeletionMeter,
    auc,
    blur,
    evaluate_insertion_deletion,
    insertion_deletion_curves,
    salience_ranks,
    substrate,
)
from utils.evaluation.protocol import normalize_and_upsample

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_net(seed: int = 0, num_classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, num_classes)
    ).eval()
    with torch.no_grad():
        net[-1].weight.mul_(8)
    return net


class _PoolExplainer:
    """A low-resolution map (the image's mean over channels, 4 x average-pooled): upsampled
    by the protocol, as CAMs are."""

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(images.mean(1, keepdim=True), 4) * (1 + classes.view(-1, 1, 1, 1))


def _reference(classifier, image, saliency, k, step, finish_image, start_image):
    """One image, straight from the paper: rank the pixels by saliency (Python's stable sort,
    ties in raster order), then from ``start_image`` copy ``step`` pixels of ``finish_image``
    per step, scoring softmax[k] before each step and after the last; trapezoidal AUC on [0, 1]."""
    height, width = image.shape[-2:]
    num_pixels = height * width
    values = saliency.flatten().tolist()
    order = sorted(range(num_pixels), key=lambda j: -values[j])
    num_steps = math.ceil(num_pixels / step)
    current = start_image.clone().reshape(3, -1)
    finish = finish_image.reshape(3, -1)
    scores = []
    with torch.no_grad():
        for i in range(num_steps + 1):
            probabilities = classifier(current.reshape(1, 3, height, width)).softmax(dim=1)
            scores.append(float(probabilities[0, k]))
            if i < num_steps:
                for j in order[i * step : (i + 1) * step]:
                    current[:, j] = finish[:, j]
    area = sum((scores[i] + scores[i + 1]) / 2 / num_steps for i in range(num_steps))
    return scores, area


@pytest.mark.parametrize(("size", "step", "name"), [(16, 5, "zeros"), (20, 16, "blur"), (24, 37, "mean")])
def test_batched_curves_equal_a_per_image_loop(images, size, step, name):
    classifier = _tiny_net()
    x = images(3, size, seed=size)
    before = x.clone()
    result = evaluate_insertion_deletion(classifier, _PoolExplainer(), [(x, torch.zeros(3))], step=step,
                                         substrate=name, chunk_size=7, progress=False)  # fmt: skip
    assert torch.equal(x, before)  # inputs not mutated
    predicted = classifier(x).argmax(1)
    assert torch.equal(result.predicted, predicted)
    maps = normalize_and_upsample(_PoolExplainer().explain(x, predicted), (size, size))
    deletion_curves = []
    for n in range(3):
        k = int(predicted[n])
        finish = {"zeros": torch.zeros_like(x[n]), "blur": blur(x[n : n + 1])[0]}.get(
            name, x[n].mean(dim=(1, 2), keepdim=True).expand_as(x[n])
        )
        deletion, deletion_area = _reference(classifier, x[n], maps[n, 0], k, step, finish, x[n])
        insertion, insertion_area = _reference(classifier, x[n], maps[n, 0], k, step, x[n], blur(x[n : n + 1])[0])
        assert len(deletion) == math.ceil(size * size / step) + 1
        assert result.deletion_auc[n] == pytest.approx(deletion_area, abs=1e-5)
        assert result.insertion_auc[n] == pytest.approx(insertion_area, abs=1e-5)
        deletion_curves.append(deletion)
    mean_curve = torch.tensor(deletion_curves, dtype=torch.float64).mean(0)
    assert torch.allclose(result.deletion_curve, mean_curve, atol=1e-5)
    assert result.summary["deletion_auc"] == pytest.approx(float(result.deletion_auc.mean()))


def test_chunking_and_batching_do_not_change_the_curves(images):
    classifier = _tiny_net(1)
    x = images(4, 16, seed=2)
    maps = normalize_and_upsample(_PoolExplainer().explain(x, torch.zeros(4)), (16, 16))
    classes = classifier(x).argmax(1)
    whole = insertion_deletion_curves(classifier, x, maps, classes, 8, chunk_size=1000)
    small = insertion_deletion_curves(classifier, x, maps, classes, 8, chunk_size=3)
    for a, b in zip(whole, small):
        assert torch.allclose(a, b, atol=1e-6)
    loader = [(x[:1], torch.zeros(1)), (x[1:], torch.zeros(3))]
    split = evaluate_insertion_deletion(classifier, _PoolExplainer(), loader, step=8, progress=False)
    assert torch.allclose(split.deletion_auc, auc(whole[0].double()), atol=1e-6)
    limited = evaluate_insertion_deletion(classifier, _PoolExplainer(), loader, step=8, limit=2, progress=False)
    assert limited.count == 2


class _RegionScore(nn.Module):
    """Two classes; class 0's logit is 20 * (mean of the top-left 4 x 4 region - 0.5)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        region = images[:, :, :4, :4].mean(dim=(1, 2, 3))
        return torch.stack([20 * (region - 0.5), torch.zeros_like(region)], dim=1)


def _region_image() -> torch.Tensor:
    image = torch.zeros(1, 3, 16, 16)
    image[:, :, :4, :4] = 1
    return image


def test_a_map_equal_to_the_region_deletes_fast_and_inserts_fast():
    image = _region_image()
    region_map = image[:, :1].clone()
    deletion, insertion = insertion_deletion_curves(_RegionScore(), image, region_map, torch.tensor([0]), 4)
    assert deletion.shape == (1, 65) and insertion.shape == (1, 65)
    assert deletion[0, 0] > 0.99 and deletion[0, 4:].max() < 1e-4  # region gone after 4 steps of 4 pixels
    assert insertion[0, 4:].min() > 0.99 and insertion[0, 0] < 0.5  # blurred start, region back after 4 steps
    assert float(auc(deletion)) < 0.05 and float(auc(insertion)) > 0.93
    inverse = 1 - region_map  # the region last: the opposite answer
    late_deletion, late_insertion = insertion_deletion_curves(_RegionScore(), image, inverse, torch.tensor([0]), 4)
    assert float(auc(late_deletion)) > 0.93
    # insertion stays at the blurred image's score until the region comes back, at the end
    assert float(auc(late_insertion)) == pytest.approx(float(insertion[0, 0]), abs=0.05)


def test_a_constant_map_ranks_pixels_in_raster_order():
    image = _region_image()
    constant = torch.full((1, 1, 16, 16), 0.3)
    assert torch.equal(salience_ranks(constant), torch.arange(256).view(1, -1))
    raster = -torch.arange(256.0).view(1, 1, 16, 16)  # strictly decreasing in raster order
    for a, b in zip(
        insertion_deletion_curves(_RegionScore(), image, constant, torch.tensor([0]), 16),
        insertion_deletion_curves(_RegionScore(), image, raster, torch.tensor([0]), 16),
    ):
        assert torch.equal(a, b)
    # raster deletion of the top-left region: one row of 16 pixels per step, 4 region pixels each
    deletion = insertion_deletion_curves(_RegionScore(), image, constant, torch.tensor([0]), 16)[0][0]
    expected = [torch.sigmoid(torch.tensor(20 * (1 - rows / 4 - 0.5))) for rows in range(5)]
    assert torch.allclose(deletion[:5], torch.stack(expected), atol=1e-6)


def test_bad_arguments_fail_in_one_line():
    image = _region_image()
    with pytest.raises(UserValueError, match="'step' must be a positive"):
        insertion_deletion_curves(_RegionScore(), image, image[:, :1], torch.tensor([0]), 0)
    with pytest.raises(UserValueError, match="'substrate' must be one of zeros, blur, mean, got 'noise'"):
        substrate(image, "noise")
    with pytest.raises(UserValueError, match="'substrate' must be one of"):
        evaluate_insertion_deletion(_RegionScore(), _PoolExplainer(), [(image, torch.zeros(1))], substrate="noise")
    with pytest.raises(UserValueError, match="no readable image"):
        evaluate_insertion_deletion(_RegionScore(), _PoolExplainer(), [], progress=False)
    with pytest.raises(UserValueError, match="update the meter first"):
        InsertionDeletionMeter().summary()


class _FixedMaps:
    """The interface torch-cam's metrics call on a CAM extractor, returning given maps."""

    def __init__(self, model: nn.Module, maps: torch.Tensor) -> None:
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


def test_agrees_with_torchcam_where_the_definitions_coincide(images):
    import torchcam.metrics as metrics  # a test dependency (requirements.txt): never skipped

    classifier = _tiny_net(2)
    x = images(3, 16, seed=5)
    generator = torch.Generator().manual_seed(0)
    maps = torch.stack([torch.randperm(256, generator=generator).float().view(16, 16) / 255 for _ in range(3)])
    classes = classifier(x).argmax(1)
    deletion, insertion = insertion_deletion_curves(classifier, x, maps.unsqueeze(1), classes, 16)
    softmax = functools.partial(torch.softmax, dim=-1)
    # torch-cam: `steps` intervals of ceil(256 / steps) pixels; one baseline for both curves
    zeros = metrics.DeletionInsertionMetric(_FixedMaps(classifier, maps), softmax, steps=16)
    zeros.update(x)
    blurred = metrics.DeletionInsertionMetric(_FixedMaps(classifier, maps), softmax, steps=16, baseline=blur)
    blurred.update(x)
    assert zeros.summary()["deletion_auc"] == pytest.approx(float(auc(deletion).mean()), abs=1e-5)
    assert blurred.summary()["insertion_auc"] == pytest.approx(float(auc(insertion).mean()), abs=1e-5)
