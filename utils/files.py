"""Kept for earlier import paths: atomic result files now live in :mod:`utils.core.files`."""

from utils.core.files import *  # noqa: F403
from utils.core.files import __all__  # noqa: F401
