"""Training the attention head: the loop, the optimiser and its schedule, checkpoint writing
and resume, the training log."""

from utils.training.loop import *  # noqa: F403
from utils.training.loop import __all__  # noqa: F401
