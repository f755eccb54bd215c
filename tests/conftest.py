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


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (small CPU ops are much faster under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_command(capsys):
    """``run_command(main, parser, argv)``: a command run as from a shell, through
    :func:`utils.core.cli.run_cli` (one-line errors, exit statuses); returns
    ``(exit status, stdout, stderr)``."""
    from utils.core.cli import run_cli

    def run(main, parser, argv) -> tuple[int, str, str]:
        try:
            run_cli(main, parser, [str(arg) for arg in argv])
            status = 0
        except SystemExit as exit_:
            status = exit_.code
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def jpeg_tree(tmp_path):
    """``jpeg_tree(classes=3, per_class=4, size=(48, 56), root_name="train")``: a folder of
    class subfolders ``n0000000{c}`` of seeded random JPEGs ``n0000000{c}_{i}.JPEG``, and a datalist of it
    (``<wnid>/<file> <class>`` lines, with the reference's trailing space). Returns
    ``(root, datalist path, [(absolute path, label)])``."""
    import numpy as np
    from PIL import Image

    def make(classes: int = 3, per_class: int = 4, size=(48, 56), root_name: str = "train"):
        rng = np.random.default_rng(0)
        root = tmp_path / root_name
        lines, samples = [], []
        for label in range(classes):
            (root / f"n{label:08d}").mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                relative = f"n{label:08d}/n{label:08d}_{index}.JPEG"
                pixels = (rng.random((size[0], size[1], 3)) * 255).astype("uint8")
                Image.fromarray(pixels).save(root / relative)
                lines.append(f"{relative} {label} \n")
                samples.append((str(root / relative), label))
        datalist = tmp_path / f"{root_name}.txt"
        datalist.write_text("".join(lines))
        return root, datalist, samples

    return make


@pytest.fixture
def tiny_classifier():
    """``tiny_classifier(seed=0)``: a seeded 5-class CNN wrapped as
    :class:`utils.baselines.NormalizedClassifier` (eval mode; target layer = its second ReLU,
    16 channels, 8 x 8 at 32 px), small enough for Score-CAM, RISE and ROAD loops."""
    from torch import nn

    from utils.explainers.baselines import NormalizedClassifier

    def make(seed: int = 0) -> NormalizedClassifier:
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 5),
        )
        return NormalizedClassifier(net.eval(), net[4])

    return make
