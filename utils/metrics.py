"""Kept for earlier import paths: AD/IC metrics now live in :mod:`utils.evaluation.metrics`."""

from utils.evaluation.metrics import *  # noqa: F403
from utils.evaluation.metrics import __all__  # noqa: F401
