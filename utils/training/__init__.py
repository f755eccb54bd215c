"""Training the attention head: the loop, the optimiser step and schedule, the recipes, checkpoint writing and resume, the held-out check, the training log."""

from utils.training.checkpointing import *  # noqa: F403
from utils.training.checkpointing import __all__ as _checkpointing_names
from utils.training.log import *  # noqa: F403
from utils.training.log import __all__ as _log_names
from utils.training.loop import *  # noqa: F403
from utils.training.loop import __all__ as _loop_names
from utils.training.optim import *  # noqa: F403
from utils.training.optim import __all__ as _optim_names
from utils.training.recipe import *  # noqa: F403
from utils.training.recipe import __all__ as _recipe_names
from utils.training.step import *  # noqa: F403
from utils.training.step import __all__ as _step_names
from utils.training.validation import *  # noqa: F403
from utils.training.validation import __all__ as _validation_names

__all__ = [
    *_loop_names,
    *_step_names,
    *_checkpointing_names,
    *_log_names,
    *_optim_names,
    *_recipe_names,
    *_validation_names,
]
