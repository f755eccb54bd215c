"""The hot paths on a GPU never wait for it: training steps, AD/IC evaluation batches and
device decoding run under ``torch.cuda.set_sync_debug_mode("error")``, which raises at any
host synchronisation PyTorch makes. Skipped without CUDA; ``bench/gpu_suite.sh`` runs them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from models import build_model
from utils.data.device_decode import DeviceDecoder, EncodedImageList, collate_encoded
from utils.evaluation import LCAMExplainer, evaluate
from utils.training.loop import TrainOptions, train_one_epoch
from utils.training.optim import build_optimizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")

SETTINGS = [("none", False), ("bf16", True)]


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Raise at any host synchronisation PyTorch makes inside the block."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class Strictly:
    """``batches`` as a loader whose iteration forbids syncs from the first batch until the
    last one has been consumed: what a loop does with each batch is checked, its
    end-of-pass work (a summary, a final check) is not."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        with no_host_sync():
            yield from self.batches


def _batches(
    count: int, channels_last: bool, size: int = 64, batch: int = 4
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    result = []
    for _ in range(count):
        images = torch.rand(batch, 3, size, size, generator=generator).to(CUDA, memory_format=memory_format)
        result.append((images, torch.randint(0, 10, (batch,), generator=generator).to(CUDA)))
    return result


@pytest.mark.parametrize("amp, channels_last", SETTINGS)
@pytest.mark.parametrize("arch", ["VGG16_L_CAM_Fm", "ResNet50_L_CAM_Img"])
def test_training_steps_never_wait_for_the_device(arch, amp, channels_last):
    model = build_model(arch, pretrained=False, num_classes=10).to(CUDA).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, 1e-4, fused=True)
    options = TrainOptions(device=CUDA, amp=amp, channels_last=channels_last, progress=False)
    batches = _batches(3, channels_last)
    train_one_epoch(model, batches[:1], optimizer, options, epoch=0)  # cuDNN autotuning, allocator
    result = train_one_epoch(model, Strictly(batches), optimizer, options, epoch=0)
    assert (result.global_counter, result.failed, result.stopped) == (3, [], False)
    assert result.meter.summary()["images"] == 12


@pytest.mark.parametrize("amp, channels_last", SETTINGS)
def test_evaluation_batches_never_wait_for_the_device(amp, channels_last):
    model = build_model("ResNet50_L_CAM_Img", pretrained=False, num_classes=10).to(CUDA).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    explainer = LCAMExplainer(model)
    batches = _batches(3, channels_last)
    arguments = ((0.0, 0.5, 0.85), CUDA, amp, channels_last)
    evaluate(explainer.classify, explainer, batches[:1], *arguments, progress=False)  # warm-up
    result = evaluate(explainer.classify, explainer, Strictly(batches), *arguments, progress=False)
    assert result.num_images == 12 and result.o.shape == (3, 12)


def test_device_decoding_never_waits_for_the_device(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for index, (height, width) in enumerate([(60, 80), (60, 80), (90, 61)]):
        path = tmp_path / f"{index}.jpg"
        ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.2, 1, height)[:, None, None]
        pixels = (ramp * np.array([1.0, 0.6, 0.3]) + rng.normal(0, 4, (height, width, 3))).clip(0, 255)
        Image.fromarray(pixels.astype("uint8")).save(path, quality=95)
        samples.append((str(path), index))
    dataset = EncodedImageList(samples)
    batch = collate_encoded([dataset[(index, 7 + index)] for index in range(len(dataset))])
    decoder = DeviceDecoder(48, 32, train=True)
    decoder(batch, CUDA)  # warm-up: nvJPEG handles
    with no_host_sync():
        decoded = decoder(batch, CUDA)
    assert decoded.failed == []  # a sync inside decoding would show here as each image's reason
    assert decoded.images.shape == (3, 3, 32, 32) and decoded.images.device.type == CUDA.type
    cpu = decoder(batch, torch.device("cpu"))
    # the same crops and flips; nvJPEG's and libjpeg's IDCT and chroma upsampling differ slightly
    assert (decoded.images.cpu() - cpu.images).abs().mean() < 2 / 255
