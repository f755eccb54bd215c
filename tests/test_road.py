"""utils.evaluation.road and utils.evaluation.imputation: ROAD's batched noisy linear
imputation against pytorch-grad-cam's per-image one, and both ROAD forms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from utils.evaluation.imputation import (
    imputation_noise,
    linear_imputation,
    noisy_linear_imputation,
    removal_masks,
)
from utils.evaluation.protocol import explain_predictions
from utils.evaluation.road import evaluate_road, parse_road_percentiles, road_scores, write_road_table
from utils.explainers.baselines import NormalizedClassifier, build_explainer

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # much faster on a loaded CPU
    # pytorch-grad-cam's imputer calls np.argwhere on torch tensors (deprecated in NumPy 2).
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

road_module = pytest.importorskip("pytorch_grad_cam.metrics.road")
perturbation = pytest.importorskip("pytorch_grad_cam.metrics.perturbation_confidence")
SoftmaxTarget = pytest.importorskip("pytorch_grad_cam.utils.model_targets").ClassifierOutputSoftmaxTarget


def _their_imputation(images: torch.Tensor, removed: torch.Tensor, noise: float) -> torch.Tensor:
    """pytorch-grad-cam's imputer, image by image (kept = 1 - removed, as its callers pass)."""
    imputer = road_module.NoisyLinearImputer(noise=noise)
    return torch.stack([imputer(image, (~mask).float()) for image, mask in zip(images, removed)])


def _masks(height: int, width: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    touching_borders = torch.zeros(height, width, dtype=torch.bool)
    touching_borders[:, :3] = touching_borders[:5, :] = touching_borders[-1, -6:] = True
    region = torch.zeros(height, width, dtype=torch.bool)
    region[6:17, 9:25] = True  # every pixel of a block removed
    almost_all = torch.ones(height, width, dtype=torch.bool)
    almost_all[height - 1, 0] = almost_all[3, width - 2] = False  # two pixels kept
    return {
        "random": torch.rand(height, width, generator=generator) < 0.6,
        "touching borders": touching_borders,
        "whole region": region,
        "almost everything": almost_all,
    }


@pytest.mark.parametrize("case", ["random", "touching borders", "whole region", "almost everything"])
def test_imputation_equals_pytorch_grad_cams_on_the_same_noise(images, case):
    x = images(2, 32, seed=4)[..., :31, :27]  # odd sizes, rows and columns not confused
    removed = torch.stack([_masks(31, 27)[case], torch.rand(31, 27, generator=torch.Generator().manual_seed(9)) < 0.9])
    original = x.clone()
    noise_free = linear_imputation(x, removed)
    assert (noise_free - _their_imputation(x, removed, noise=0.0)).abs().max() <= 1e-5
    assert torch.equal(noise_free[:, :, ~removed[0]][0], x[0][:, ~removed[0]])  # kept pixels untouched
    torch.manual_seed(7)
    theirs = _their_imputation(x, removed, noise=0.01)
    torch.manual_seed(7)
    ours = noisy_linear_imputation(x, removed)
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours - noise_free).abs().max() > 0.01  # the noise is there (std 0.01, ~800 draws)
    assert torch.equal(x, original)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_imputation_on_cuda_equals_the_cpus(images):
    x = images(3, 48, seed=6)
    removed = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(8)) < 0.8
    noise = imputation_noise(removed, 3, generator=torch.Generator().manual_seed(1))
    on_cuda = noisy_linear_imputation(x.cuda(), removed.cuda(), noise.cuda())
    assert on_cuda.device.type == "cuda"
    assert (on_cuda.cpu() - noisy_linear_imputation(x, removed, noise)).abs().max() <= 1e-5


def test_the_noise_is_drawn_in_pytorch_grad_cams_order():
    removed = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(2)) < 0.5
    torch.manual_seed(3)
    together = imputation_noise(removed, 3)
    generators = [torch.Generator().manual_seed(3)] * 3  # one generator shared in turn
    assert torch.equal(imputation_noise(removed, 3, generator=generators), together)
    torch.manual_seed(3)
    first = road_module.NoisyLinearImputer()(torch.zeros(3, 10, 12), (~removed[0]).float())
    assert (first - together[0]).abs().max() <= 1e-6  # the solution of a black image is black
    assert (together[0][:, ~removed[0]] == 0).all() and together[0].std() > 0.004


def test_every_pixel_removed_gives_black_plus_noise_as_pytorch_grad_cam(images):
    x = images(1, 16)
    removed = torch.ones(1, 16, 16, dtype=torch.bool)  # a singular system: the minimum-norm solution
    assert torch.equal(linear_imputation(x, removed), torch.zeros_like(x))
    assert _their_imputation(x, removed, noise=0.0).abs().max() == 0


@pytest.mark.parametrize("most_relevant_first", [True, False])
def test_removal_masks_equal_pytorch_grad_cams(most_relevant_first):
    generator = torch.Generator().manual_seed(5)
    maps = torch.rand(3, 20, 24, generator=generator)
    maps[1] = (maps[1] * 4).round() / 4  # many ties
    maps[2] = 0.5  # a constant map: everything removed
    remove = perturbation.RemoveMostRelevantFirst if most_relevant_first else perturbation.RemoveLeastRelevantFirst
    for percentile in (10, 25, 33.3, 50, 90):
        theirs = torch.stack([remove(percentile, lambda image, kept: kept)(None, m) for m in maps]) == 0
        assert torch.equal(removal_masks(maps, percentile, most_relevant_first), theirs), percentile
    share = removal_masks(maps[:1], 30, most_relevant_first).float().mean()
    assert share == pytest.approx(0.7, abs=1 / 480)


def _setup(images, tiny_classifier, count=4):
    classifier = tiny_classifier()
    explainer = build_explainer("gradcam", classifier)
    return classifier, explainer, images(count, 32, seed=3)


def test_scores_equal_pytorch_grad_cams_path(images, tiny_classifier):
    classifier, explainer, x = _setup(images, tiny_classifier, 3)
    percentiles = (20, 50, 80)
    ours = road_scores(classifier, explainer, x, percentiles, seed=11)
    _, _, predicted, maps = explain_predictions(classifier, explainer, x, x.device)
    morf_average = road_module.ROADMostRelevantFirstAverage(list(percentiles))
    lerf_average = road_module.ROADLeastRelevantFirstAverage(list(percentiles))
    for index in range(len(x)):  # image i's noise: a generator seeded seed + i
        arguments = (x[index : index + 1], maps[index : index + 1, 0].numpy(), [SoftmaxTarget(int(predicted[index]))])
        torch.manual_seed(11 + index)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            morf = float(morf_average(*arguments, classifier)[0])
            lerf = float(lerf_average(*arguments, classifier)[0])
        assert float(ours["morf"][index]) == pytest.approx(morf, abs=1e-5)
        assert float(ours["lerf"][index]) == pytest.approx(lerf, abs=1e-5)
        assert float(ours["combined"][index]) == pytest.approx((lerf - morf) / 2, abs=1e-5)
    assert ours["morf_change"].shape == (3, 3) and torch.allclose(ours["morf_change"].mean(1), ours["morf"])


def _contrast_classifier() -> NormalizedClassifier:
    """A 5-class CNN that looks at local contrast per quadrant: its top-1 class changes when
    ROAD smooths the salient pixels away (the random tiny classifier's seldom does)."""
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5, bias=False),
    )
    with torch.no_grad():
        net[0].weight -= net[0].weight.mean((1, 2, 3), keepdim=True)  # zero-mean kernels: contrast
        net[4].weight *= 20
    return NormalizedClassifier(net.eval(), net[1])


def test_accuracy_form_equals_a_per_image_loop(images):
    classifier = _contrast_classifier()
    explainer = build_explainer("gradcam", classifier)
    x = images(4, 32, seed=1)
    percentiles = (30, 60, 90)
    summary = evaluate_road(classifier, explainer, [(x,)], percentiles=percentiles, seed=2, progress=False)
    imputer = road_module.NoisyLinearImputer()
    hits = {"morf": np.zeros(len(percentiles)), "lerf": np.zeros(len(percentiles))}
    for index, image in enumerate(x):
        with torch.no_grad():
            predicted = int(classifier(image[None]).argmax())
        saliency = explainer.explain(image[None], torch.tensor([predicted])).detach()
        saliency = torch.nn.functional.interpolate(saliency, size=(32, 32), mode="bilinear", align_corners=False)
        saliency = ((saliency - saliency.min()) / (saliency.max() - saliency.min()))[0, 0]
        torch.manual_seed(2 + index)
        for order, relevance in (("morf", saliency), ("lerf", 1 - saliency)):
            for column, percentile in enumerate(percentiles):
                kept = (relevance < np.percentile(relevance.numpy(), percentile)).float()
                with torch.no_grad():
                    hits[order][column] += int(classifier(imputer(image, kept)[None]).argmax()) == predicted
    for order in ("morf", "lerf"):
        expected = 100 * hits[order] / len(x)
        assert summary[f"road_{order}_accuracy_by_percentile"] == pytest.approx(expected.tolist(), abs=1e-9)
        assert summary[f"road_{order}_accuracy"] == pytest.approx(expected.mean(), abs=1e-9)
    assert summary["road_morf_accuracy_by_percentile"] == [25.0, 50.0, 75.0]  # not all kept
    assert summary["road_percentiles"] == [30.0, 60.0, 90.0] and summary["road_count"] == 4


def test_scores_do_not_depend_on_batch_or_chunk_size(images, tmp_path):
    classifier = _contrast_classifier()
    explainer = build_explainer("gradcam", classifier)
    x = images(4, 32, seed=1)
    one_by_one = evaluate_road(
        classifier, explainer, [(image[None],) for image in x], percentiles=(25, 75), chunk_size=1, progress=False
    )
    together = evaluate_road(classifier, explainer, [(x,)], percentiles=(25, 75), chunk_size=64, progress=False)
    assert one_by_one.keys() == together.keys()
    for key, value in together.items():
        assert one_by_one[key] == pytest.approx(value, abs=1e-6), key
    limited = evaluate_road(classifier, explainer, [(x[:3],), (x[3:],)], percentiles=(25, 75), limit=2, progress=False)
    assert limited["road_count"] == 2
    path = write_road_table([{"family": "tiny", "method": "gradcam", **together}], tmp_path / "road.csv")
    lines = open(path).read().splitlines()
    assert lines[0] == "backbone,method,percentile,MoRF change,LeRF change,MoRF accuracy %,LeRF accuracy %"
    assert len(lines) == 3 and lines[2].startswith("tiny,gradcam,75.0,")


@pytest.mark.parametrize(
    ("percentiles", "message"),
    [("0,50", r"\(0, 100\)"), ("50,100", r"\(0, 100\)"), ("ten", "comma-separated"), ("", "no ROAD"), ("5,5", "dupl")],
)
def test_bad_percentiles_are_rejected(percentiles, message, images, tiny_classifier):
    with pytest.raises(ValueError, match=message):
        parse_road_percentiles(percentiles)
    classifier, explainer, x = _setup(images, tiny_classifier, 1)
    with pytest.raises(ValueError, match="percentile"):
        road_scores(classifier, explainer, x, percentiles=(0,))
    with pytest.raises(ValueError, match="percentile"):
        removal_masks(torch.rand(1, 8, 8), 100)
