"""utils.training.study: the scores of one explainer on held-out images with boxes."""

from __future__ import annotations

import pytest
import torch

from utils.evaluation.road import evaluate_road
from utils.explainers.baselines import build_explainer
from utils.training.study import SCORE_COLUMNS, predict, score_explainer


def _held_out(images, classifier, count: int = 6):
    """Images, their predicted classes as labels (so every image is localised) and boxes."""
    x = images(count, 32, seed=4)
    boxes = torch.tensor([[4, 4, 20, 24]] * count)
    return x, predict(classifier, x, "cpu"), boxes


def test_road_columns_are_those_of_evaluate_road_on_the_first_images(images, tiny_classifier):
    classifier = tiny_classifier(1)
    explainer = build_explainer("gradcam", classifier)
    x, labels, boxes = _held_out(images, classifier)
    row, maps = score_explainer(
        classifier, explainer, x, labels, boxes, "cpu", batch_size=4, progress=False, road_images=5, road_seed=3
    )
    expected = evaluate_road(classifier, explainer, [(x[:5],)], seed=3, progress=False)
    assert row["road_images"] == 5 and row["images"] == row["localised_images"] == 6 and maps.shape == (6, 1, 32, 32)
    assert row["road_morf_accuracy"] == pytest.approx(expected["road_morf_accuracy"], abs=1e-9)
    assert row["road_lerf_accuracy"] == pytest.approx(expected["road_lerf_accuracy"], abs=1e-9)
    assert row["road_combined"] == pytest.approx(100 * expected["road_combined"], abs=1e-9)
    other_seed, _ = score_explainer(
        classifier, explainer, x, labels, boxes, "cpu", batch_size=4, progress=False, road_images=5, road_seed=4
    )
    assert other_seed["road_combined"] != row["road_combined"]  # the seed reaches the imputation noise
    for column in SCORE_COLUMNS:
        assert other_seed[column] == row[column]


def test_no_road_columns_without_road_images(images, tiny_classifier):
    classifier = tiny_classifier()
    x, labels, boxes = _held_out(images, classifier, 3)
    row, _ = score_explainer(
        classifier, build_explainer("gradcam", classifier), x, labels, boxes, "cpu", progress=False
    )
    assert not any(key.startswith("road") for key in row) and set(SCORE_COLUMNS) <= row.keys()


class _PeakAt:
    """An explainer whose map (at the image's size) is one bright pixel at (row, column)."""

    def __init__(self, row: int, column: int) -> None:
        self.row, self.column = row, column

    def explain(self, images, classes):
        maps = torch.zeros(images.size(0), 1, *images.shape[-2:])
        maps[:, :, self.row, self.column] = 1.0
        return maps


@pytest.mark.parametrize(("column", "strict", "tolerant"), [(10, 100.0, 100.0), (21, 0.0, 100.0), (23, 0.0, 0.0)])
def test_pointing_game_with_the_usual_tolerance(images, tiny_classifier, column, strict, tolerant):
    from utils.evaluation.localization import usual_pointing_tolerance

    assert [usual_pointing_tolerance(size) for size in (224, 64, 32)] == [15, 4, 2]
    classifier = tiny_classifier()
    x, labels, boxes = _held_out(images, classifier, 3)  # box columns 4..19 at 32 px: tolerance 2 reaches 21
    row, _ = score_explainer(classifier, _PeakAt(10, column), x, labels, boxes, "cpu", progress=False)
    assert row["pointing_tolerance"] == 2
    assert (row["pointing_game"], row["pointing_game_tolerant"]) == (strict, tolerant)


class _Coarse:
    """An explainer of random 4 x 4 maps."""

    def explain(self, images, classes):
        return torch.rand(images.size(0), 1, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("explainer", "box", "ceiling"),
    [
        (_Coarse(), [4, 4, 20, 24], 100.0),
        (_Coarse(), [13, 13, 19, 19], 0.0),
        (_PeakAt(15, 15), [13, 13, 19, 19], 100.0),
    ],
)
def test_pointing_game_ceiling_at_the_explainers_resolution(images, tiny_classifier, explainer, box, ceiling):
    """At 32 px a 4 x 4 map peaks only in columns and rows 0, 11, 12, 19, 20, 28: a box of
    rows and columns 13..18 is out of its reach, not of a map at the image's size."""
    classifier = tiny_classifier()
    x, labels, _ = _held_out(images, classifier, 3)
    row, _ = score_explainer(classifier, explainer, x, labels, torch.tensor([box] * 3), "cpu", progress=False)
    assert row["pointing_game_ceiling"] == ceiling
    assert row["pointing_game"] <= ceiling


class _Counting:
    """Counts the images an explainer is asked to explain."""

    def __init__(self, explainer) -> None:
        self.explainer, self.images = explainer, 0

    def explain(self, images, classes):
        self.images += len(images)
        return self.explainer.explain(images, classes)


def test_road_reuses_the_maps_of_the_ad_ic_pass(images, tiny_classifier):
    classifier = tiny_classifier(1)
    counting = _Counting(build_explainer("gradcam", classifier))
    x, labels, boxes = _held_out(images, classifier)
    row, _ = score_explainer(
        classifier, counting, x, labels, boxes, "cpu", batch_size=4, progress=False, road_images=5, road_seed=3
    )
    assert counting.images == len(x)  # each image explained once, not again for ROAD
    expected = evaluate_road(classifier, build_explainer("gradcam", classifier), [(x[:5],)], seed=3, progress=False)
    assert row["road_combined"] == pytest.approx(100 * expected["road_combined"], abs=1e-9)


def test_replayed_maps_are_explained_afresh_when_the_classes_differ():
    from utils.training.study import _RecordingExplainer, _ReplayingExplainer

    class Constant:
        def __init__(self, value):
            self.value = value

        def explain(self, images, classes):
            return torch.full((len(images), 1, 2, 2), self.value)

    recorder = _RecordingExplainer(Constant(1.0))
    recorder.explain(torch.zeros(3, 3, 8, 8), torch.tensor([0, 1, 2]))
    recorder.explainer = Constant(2.0)  # what a fresh explanation would give
    replay = _ReplayingExplainer(recorder)
    assert replay.explain(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])).unique().tolist() == [1.0]
    assert replay.explain(torch.zeros(1, 3, 8, 8), torch.tensor([0])).unique().tolist() == [2.0]  # class 2 recorded
