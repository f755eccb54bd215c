"""Kept for earlier import paths: checkpoint files now live in :mod:`utils.core.checkpoint`."""

from utils.core.checkpoint import *  # noqa: F403
from utils.core.checkpoint import __all__  # noqa: F401
