"""Explanation methods behind one protocol, ``explain(images, classes) -> maps``: L-CAM
(:mod:`utils.explainers.lcam`), Grad-CAM, Grad-CAM++, Score-CAM, RISE and pytorch-grad-cam's
methods (:mod:`utils.explainers.baselines`, registry :func:`build_explainer`)."""

from utils.explainers.baselines import BASELINES, NormalizedClassifier, build_explainer
from utils.explainers.lcam import LCAMExplainer, lcam_classifier, load_lcam_model, resolve_checkpoint
from utils.explainers.protocol import Classifier, Explainer

__all__ = [
    "BASELINES",
    "Classifier",
    "Explainer",
    "LCAMExplainer",
    "NormalizedClassifier",
    "build_explainer",
    "lcam_classifier",
    "load_lcam_model",
    "resolve_checkpoint",
]
