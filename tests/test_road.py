"""utils.evaluation.road: ROAD through pytorch-grad-cam for any explainer."""

from __future__ import annotations

import math

import pytest
import torch

from utils.evaluation.road import evaluate_road, road_scores
from utils.explainers.baselines import build_explainer

pytestmark = pytest.mark.usefixtures("one_thread")  # much faster on a loaded CPU


def test_road_scores_are_finite_probability_changes(images, tiny_classifier):
    classifier = tiny_classifier()
    explainer = build_explainer("gradcampp", classifier)
    x = images(2, 32, seed=3)
    scores = road_scores(classifier, explainer, x, percentiles=(20, 80))
    assert set(scores) == {"morf", "lerf", "combined"}
    for values in scores.values():
        assert values.shape == (2,) and torch.isfinite(values).all()
        assert (values.abs() <= 1).all()  # differences of probabilities
    assert torch.allclose(scores["combined"], (scores["lerf"] - scores["morf"]) / 2)
    again = road_scores(classifier, explainer, x, percentiles=(20, 80))  # seeded imputation noise
    assert torch.equal(again["morf"], scores["morf"])


def test_evaluate_road_over_a_loader_honours_the_limit(images, tiny_classifier):
    classifier = tiny_classifier()
    loader = [(images(2, 32, seed=seed), torch.zeros(2, dtype=torch.long)) for seed in range(3)]
    summary = evaluate_road(classifier, build_explainer("gradcam", classifier), loader, limit=3, percentiles=(50,))
    assert summary["road_count"] == 3
    assert all(math.isfinite(summary[key]) for key in ("road_morf", "road_lerf", "road_combined"))
    with pytest.raises(ValueError, match="percentiles"):
        road_scores(classifier, build_explainer("gradcam", classifier), images(1, 32), percentiles=(0,))
