"""Where and how computation runs: device choice, mixed-precision context, seeding,
channels_last, and torchrun's distributed environment."""

from __future__ import annotations

import contextlib
import os
import random
from contextlib import AbstractContextManager
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "AMP_CHOICES",
    "DistributedContext",
    "autocast",
    "grad_scaler",
    "init_distributed",
    "resolve_device",
    "seed_everything",
]

AMP_CHOICES = ("none", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
        raise ValueError(f"'--device' {name!r} is not a device name (e.g. auto, cpu, cuda, cuda:1)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"'--device' {name!r} asked for, but CUDA is not available here; use --device cpu")
    return device


def autocast(device: torch.device, amp: str = "none") -> AbstractContextManager:
    """The mixed-precision context for ``amp`` in ``AMP_CHOICES`` (``"none"``: no-op).

    Forward passes and losses run inside it; fp16 on CUDA also needs :func:`grad_scaler`.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"'amp' must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


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
