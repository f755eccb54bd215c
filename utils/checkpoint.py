"""Checkpoints: the reference's full-model snapshots and the project's head checkpoints,
atomic saving, and RNG state as plain data.

Reference snapshot (``imagenet_epoch_{E}_glo_step_{S}.pth.tar``)::

    {"epoch", "arch", "global_counter", "state_dict": <whole model>, "optimizer"}

Project checkpoint (``lcam_epoch_{E}_glo_step_{S}.pth.tar``), loadable with
``torch.load(weights_only=True)``::

    {"format": "lcam", "version": 1, "contents": "head" | "full", "arch", "num_classes",
     "backbone_weights", "settings", "epoch", "global_counter",
     "state_dict": <AM parameters and all buffers, or the whole model>,
     "optimizer"?, "rng"?, "args"?, ...}
"""

from __future__ import annotations

import os
import random
import re
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.errors import state_dict_mismatch
from utils.files import atomic_open

__all__ = [
    "FORMAT",
    "checkpoint_name",
    "find_newest_checkpoint",
    "get_rng_state",
    "load_checkpoint",
    "make_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "lcam"
VERSION = 1
SUFFIX = ".pth.tar"
_STEP_PATTERN = re.compile(r"_epoch_(\d+)_glo_step_(\d+)\.pth\.tar$")


def checkpoint_name(epoch: int, global_counter: int, reference: bool = False) -> str:
    """``lcam_epoch_{E}_glo_step_{S}.pth.tar``, or the reference's ``imagenet_...`` name."""
    prefix = "imagenet" if reference else FORMAT
    return f"{prefix}_epoch_{epoch}_glo_step_{global_counter}{SUFFIX}"


def find_newest_checkpoint(directory: str | os.PathLike) -> str | None:
    """The newest ``.pth.tar`` in ``directory``, or None when it holds none.

    Newest = highest global step in the name (``..._glo_step_{S}.pth.tar``), then the
    project's file before a reference one of the same step, then modification time.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory not found: {directory!r}")
    candidates = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not name.endswith(SUFFIX) or not os.path.isfile(path):
            continue
        match = _STEP_PATTERN.search(name)
        step = int(match.group(2)) if match else -1
        candidates.append(((step, name.startswith(FORMAT + "_"), os.path.getmtime(path), name), path))
    return max(candidates)[1] if candidates else None


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> str:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file, then a rename), so an
    interrupted write never leaves a truncated checkpoint. Returns the path."""
    with atomic_open(path, "wb") as handle:
        torch.save(checkpoint, handle)
    return os.fspath(path)


def make_checkpoint(
    model: nn.Module, epoch: int, global_counter: int, full: bool = False, **extra: Any
) -> dict[str, Any]:
    """The project's checkpoint of an :class:`models.lcam.LCAM` model: its trainable
    state (``full=False``) or whole state_dict, its identity, and ``extra`` plain data
    (``optimizer``, ``rng``, ``args``, ...)."""
    model = _unwrap(model)
    state_dict = model.state_dict() if full else model.trainable_state_dict()
    return {
        "format": FORMAT,
        "version": VERSION,
        "contents": "full" if full else "head",
        "arch": model.arch,
        "num_classes": model.num_classes,
        "backbone_weights": getattr(model, "backbone_weights", "unknown"),
        "settings": model.build_settings(),
        "epoch": int(epoch),
        "global_counter": int(global_counter),
        "state_dict": {key: value.detach().cpu() for key, value in state_dict.items()},
        **extra,
    }


def load_checkpoint(
    path_or_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer`` when given and the file has one of the same
    shape) from a checkpoint file, or from the newest ``.pth.tar`` of a directory.

    Accepts the authors' snapshots (a whole-model ``state_dict``, with or without a
    DataParallel ``module.`` prefix), a bare state_dict, and the project's own files.

    Returns:
        The checkpoint's metadata: every entry but ``state_dict`` and ``optimizer``, plus
        ``"path"`` (the file read).

    Raises:
        FileNotFoundError: no such file, or a directory without checkpoints.
        ValueError: the checkpoint is of another architecture (the message names the
            missing and unexpected keys or the mismatching shapes), or not a checkpoint.
    """
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        newest = find_newest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"no {SUFFIX} checkpoint in directory {path!r}")
        path = newest
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable checkpoint ({error.__class__.__name__}: {error})") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a checkpoint (a {type(checkpoint).__name__}, expected a dict)")
    target = _unwrap(model)
    if checkpoint.get("format") == FORMAT:
        expected_arch = getattr(target, "arch", None)
        if checkpoint.get("arch") != expected_arch:
            raise ValueError(
                f"{path}: checkpoint of arch {checkpoint.get('arch')!r}, but the model is {expected_arch!r}"
            )
        if checkpoint.get("backbone_weights") not in (None, "unknown", getattr(target, "backbone_weights", None)):
            warnings.warn(
                f"{path}: trained on backbone weights {checkpoint['backbone_weights']!r}, "
                f"the model has {getattr(target, 'backbone_weights', 'unknown')!r}",
                stacklevel=2,
            )
        state_dict = checkpoint["state_dict"]
        partial = checkpoint.get("contents") == "head"
    else:
        state_dict = checkpoint.get("state_dict", checkpoint)
        partial = False
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(value) for value in state_dict.values()):
        raise ValueError(f"{path}: no state_dict of tensors found (keys: {sorted(checkpoint)[:8]})")
    state_dict = _strip_prefix(state_dict, "module.")
    _check_fits(path, target, state_dict, partial)
    target.load_state_dict(state_dict, strict=not partial)
    if optimizer is not None and isinstance(checkpoint.get("optimizer"), dict):
        _load_optimizer(path, optimizer, checkpoint["optimizer"])
    metadata = {key: value for key, value in checkpoint.items() if key not in ("state_dict", "optimizer")}
    metadata["path"] = path
    metadata["has_optimizer"] = isinstance(checkpoint.get("optimizer"), dict)
    return metadata


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def _check_fits(path: str, model: nn.Module, state_dict: dict[str, torch.Tensor], partial: bool) -> None:
    required = model.trainable_state_dict() if partial and hasattr(model, "trainable_state_dict") else None
    problem = state_dict_mismatch(model.state_dict(), state_dict, required)
    if problem:
        raise ValueError(f"{path}: checkpoint does not fit {getattr(model, 'arch', type(model).__name__)}: {problem}")


def _load_optimizer(path: str, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    groups = state.get("param_groups", [])
    ours = [len(group["params"]) for group in optimizer.param_groups]
    theirs = [len(group["params"]) for group in groups]
    if ours != theirs:
        warnings.warn(
            f"{path}: optimizer state of another layout ({theirs} vs {ours} parameters per group) not restored",
            stacklevel=3,
        )
        return
    initial_lrs = [group.get("initial_lr") for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, initial_lr in zip(optimizer.param_groups, initial_lrs):
        # The authors' optimizer states hold the decayed lr but no initial one: keep ours,
        # so utils.optim.adjust_lr goes on from the right base.
        if "initial_lr" not in group and initial_lr is not None:
            group["initial_lr"] = initial_lr


def get_rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch and CUDA RNG states as plain data (tensors, ints, lists)."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(_plain, numpy_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value):
    return value.item() if hasattr(value, "item") else value
