"""Evaluation of explanations: the AD/IC protocol (:mod:`utils.evaluation.protocol`), its
metrics, ROAD, localisation, and the figures and tables the commands write.

``utils.evaluation`` itself offers the protocol's API, plus the L-CAM explainer and model
loading it is used with (from :mod:`utils.explainers.lcam`)."""

from utils.evaluation.protocol import *  # noqa: F403
from utils.evaluation.protocol import __all__ as _protocol_names
from utils.explainers.lcam import LCAMExplainer, lcam_classifier, load_lcam_model, resolve_checkpoint
from utils.explainers.protocol import Classifier, Explainer

__all__ = [
    *_protocol_names,
    "Classifier",
    "Explainer",
    "LCAMExplainer",
    "lcam_classifier",
    "load_lcam_model",
    "resolve_checkpoint",
]
