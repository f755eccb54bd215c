"""Where and how computation runs: device choice, mixed-precision context, backend
settings, torch.compile, seeding, and torchrun's distributed environment."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import NamedTuple

import numpy as np
import torch

from utils.core.errors import UserValueError

__all__ = [
    "AMP_CHOICES",
    "COMPILE_MODES",
    "DistributedContext",
    "add_compile_argument",
    "add_deterministic_argument",
    "autocast",
    "compile_function",
    "configure_backends",
    "grad_scaler",
    "init_distributed",
    "resolve_device",
    "seed_everything",
]

AMP_CHOICES = ("none", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` = CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Raises:
        ValueError: a CUDA device asked for on a machine without one, or an unknown name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserValueError(f"'--device' {name!r} is not a device name (e.g. auto, cpu, cuda, cuda:1)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserValueError(f"'--device' {name!r} asked for, but CUDA is not available here; use --device cpu")
    return device


def autocast(device: torch.device, amp: str = "none") -> AbstractContextManager:
    """The mixed-precision context for ``amp`` in ``AMP_CHOICES`` (``"none"``: no-op).

    Forward passes and losses run inside it; fp16 on CUDA also needs :func:`grad_scaler`.
    """
    if amp not in AMP_CHOICES:
        raise UserValueError(f"'amp' must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


def configure_backends(deterministic: bool = False) -> None:
    """Let cuDNN pick the fastest convolution algorithms for the (fixed) input shapes, or,
    with ``deterministic``, only deterministic ones (bit-identical reruns on one GPU, slower).
    Acts on the process-wide ``torch.backends.cudnn`` flags; a no-op for CPU computation."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def compile_function(function: Callable, mode: str | bool | None) -> Callable:
    """``torch.compile(function, mode=mode)``, or ``function`` itself when ``mode`` is
    None/False. ``True`` means ``"default"``; ``"reduce-overhead"`` adds CUDA graphs."""
    if mode is None or mode is False:
        return function
    mode = "default" if mode is True else mode
    if mode not in COMPILE_MODES:
        raise UserValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    return torch.compile(function, mode=mode)


def add_compile_argument(group: argparse._ActionsContainer) -> None:
    """The ``--compile [MODE]`` flag the scripts share (absent: eager; bare: ``default``)."""
    group.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=COMPILE_MODES,
        metavar="MODE",
        help="torch.compile the model (slow start, faster steps); MODE: default, reduce-overhead (adds CUDA "
        "graphs), max-autotune, max-autotune-no-cudagraphs [default when given bare]",
    )


def add_deterministic_argument(group: argparse._ActionsContainer) -> None:
    """The ``--deterministic`` flag the scripts share (see :func:`configure_backends`)."""
    group.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic cuDNN algorithms (bit-identical reruns on one GPU, slower); default: cuDNN autotuning",
    )


def grad_scaler(device: torch.device, amp: str = "none") -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 on CUDA (where it is needed)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16" and device.type == "cuda"))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class DistributedContext(NamedTuple):
    """This process's place in a torchrun job (``world_size`` 1 without torchrun)."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> DistributedContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
    with NCCL on CUDA and gloo on CPU; a single process when those variables are absent."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistributedContext(0, 0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, local_rank, world_size, device)
