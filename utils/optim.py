"""Kept for earlier import paths: the reference optimiser and learning-rate schedule now live in :mod:`utils.training.optim`."""

from utils.training.optim import *  # noqa: F403
from utils.training.optim import __all__  # noqa: F401
