"""Shared fixtures: seeded tiny images and cached randomly initialised variants."""

from __future__ import annotations

import functools

import pytest
import torch

from models import build_model


@functools.lru_cache(maxsize=4)
def _cached_model(arch: str, num_classes: int, backbone_mode: str, seed: int):
    torch.manual_seed(seed)
    return build_model(arch, pretrained=False, num_classes=num_classes, backbone_mode=backbone_mode)


@pytest.fixture
def make_model():
    """``make_model(arch, num_classes=1000, backbone_mode="reference", seed=0)``: a seeded
    random-weight variant in eval mode, rebuilt from a small cache (do not mutate its
    weights; copy it with ``copy.deepcopy`` to train it)."""

    def make(arch: str, num_classes: int = 1000, backbone_mode: str = "reference", seed: int = 0):
        model = _cached_model(arch, num_classes, backbone_mode, seed)
        return model.eval()

    return make


@pytest.fixture
def images():
    """``images(n, size=32, seed=0)``: a seeded N x 3 x size x size batch in [0, 1]."""

    def make(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(n, 3, size, size, generator=generator)

    return make
