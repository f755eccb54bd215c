"""Kept for earlier import paths: the baseline explainers now live in :mod:`utils.explainers.baselines`."""

from utils.explainers.baselines import *  # noqa: F403
from utils.explainers.baselines import __all__  # noqa: F401
