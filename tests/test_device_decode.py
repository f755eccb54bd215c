"""The device decode path matches the PIL path and reports bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from utils.data.datalists import ImageList, eval_transform
from utils.data.device_decode import DeviceDecoder, EncodedImageList, collate_encoded


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for index, (height, width) in enumerate([(60, 80), (48, 48), (90, 61)]):
        ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.2, 1, height)[:, None, None]
        pixels = (ramp * np.array([1.0, 0.6, 0.3]) + rng.normal(0, 8, (height, width, 3))).clip(0, 255)
        path = tmp_path / f"{index}.jpg"
        Image.fromarray(pixels.astype("uint8")).save(path, quality=95)
        samples.append((str(path), index))
    Image.fromarray(pixels.astype("uint8")).save(tmp_path / "plain.png")
    samples.append((str(tmp_path / "plain.png"), 3))
    return samples


def test_device_decode_matches_pil_within_one_grey_level(image_files):
    dataset = EncodedImageList(image_files)
    batch = DeviceDecoder(48, 40)(collate_encoded([dataset[i] for i in range(len(dataset))]), torch.device("cpu"))
    reference = ImageList(image_files, eval_transform(48, 40))
    assert batch.images.shape == (4, 3, 40, 40) and batch.failed == []
    assert batch.labels.tolist() == [0, 1, 2, 3]
    for position in range(4):
        difference = (batch.images[position] - reference[position][0]).abs()
        assert difference.max().item() <= 1.01 / 255
        assert difference.mean().item() < 0.25 / 255


def test_bad_and_missing_files_are_reported_and_dropped(image_files, tmp_path):
    (tmp_path / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    samples = [*image_files[:2], (str(tmp_path / "truncated.jpg"), 7), (str(tmp_path / "missing.jpg"), 8)]
    dataset = EncodedImageList(samples)
    batch = DeviceDecoder(48, 40)(collate_encoded([dataset[i] for i in range(len(dataset))]), torch.device("cpu"))
    assert batch.images.shape[0] == 2 and batch.indices.tolist() == [0, 1] and batch.labels.tolist() == [0, 1]
    reasons = dict(batch.failed)
    assert sorted(reasons) == [2, 3]
    assert reasons[2].startswith("RuntimeError")  # not a decodable JPEG
    assert reasons[3].startswith("FileNotFoundError") and "missing.jpg" in reasons[3]


def test_worker_processes_deliver_each_batch_as_one_buffer(image_files):
    # The bytes cross from the worker in one shared buffer per batch (a tensor per file
    # once made the workers' queue fail and the loader wait forever: hence the timeout).
    dataset = EncodedImageList(image_files)
    loader = DataLoader(
        dataset, batch_size=3, num_workers=1, collate_fn=collate_encoded, timeout=60, persistent_workers=True
    )
    for _ in range(2):  # the persistent worker serves a second epoch too
        batches = list(loader)
        assert [len(batch.sizes) for batch in batches] == [3, 1]
        first = batches[0]
        assert first.data.numel() == int(first.sizes.sum())
        with open(image_files[1][0], "rb") as handle:
            assert bytes(first.encoded[1].numpy()) == handle.read()
        decoded = DeviceDecoder(48, 40)(first, torch.device("cpu"))
        assert decoded.images.shape == (3, 3, 40, 40) and decoded.labels.tolist() == [0, 1, 2]


def test_train_mode_is_seeded_per_image(image_files):
    dataset = EncodedImageList(image_files[:3])
    decoder = DeviceDecoder(48, 32, train=True)

    def decode(seeds):
        return decoder(
            collate_encoded([dataset[(i, seed)] for i, seed in enumerate(seeds)]), torch.device("cpu")
        ).images

    first, again, other = decode([1, 2, 3]), decode([1, 2, 3]), decode([4, 5, 6])
    assert first.shape == (3, 3, 32, 32)
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("train", [False, True])
def test_a_batch_decodes_as_its_images_one_by_one(image_files, train):
    # two images share a size (resized in one call), one has its own; flips come out per image
    dataset = EncodedImageList(image_files)
    decoder = DeviceDecoder(48, 32, train=train)
    keys = [(index, 10 + index) for index in range(len(dataset))] if train else list(range(len(dataset)))
    together = decoder(collate_encoded([dataset[key] for key in keys]), torch.device("cpu")).images
    alone = torch.cat([decoder(collate_encoded([dataset[key]]), torch.device("cpu")).images for key in keys])
    assert together.shape == (4, 3, 32, 32) and together.dtype == torch.float32
    assert torch.equal(together, alone)


def test_crop_larger_than_resize_is_rejected():
    with pytest.raises(ValueError, match="'crop_size' \\(64\\) must not exceed 'input_size' \\(48\\)"):
        DeviceDecoder(48, 64)


def test_decoding_loader_wraps_a_resumable_loader(image_files):
    from utils.data.datalists import ResumableSampler, build_loader
    from utils.data.device_decode import DecodingLoader

    dataset = EncodedImageList(image_files)
    sampler = ResumableSampler(dataset, shuffle=True, seed=3)
    loader = build_loader(dataset, 2, torch.device("cpu"), sampler, num_workers=0, collate_fn=collate_encoded)
    decoding = DecodingLoader(loader, DeviceDecoder(48, 32, train=True), torch.device("cpu"))
    assert decoding.sampler is sampler and decoding.dataset is dataset and len(decoding) == 2

    def epoch_images():
        sampler.set_epoch(1)
        batches = list(decoding)
        return torch.cat([batch.images for batch in batches]), torch.cat([batch.indices for batch in batches])

    (first, order), (again, same_order) = epoch_images(), epoch_images()
    assert first.shape == (4, 3, 32, 32) and sorted(order.tolist()) == [0, 1, 2, 3]
    assert torch.equal(first, again) and torch.equal(order, same_order)


def test_without_hflip_the_same_crops_are_never_mirrored(image_files):
    dataset = EncodedImageList(image_files[:3])

    def decode(seed: int, hflip: bool) -> torch.Tensor:
        encoded = collate_encoded([dataset[(i, seed * 3 + i)] for i in range(3)])
        return DeviceDecoder(48, 32, train=True, hflip=hflip)(encoded, torch.device("cpu")).images

    mirrored = 0
    for seed in range(6):
        flipped, plain = decode(seed, True), decode(seed, False)
        for position in range(3):  # the same crop: equal, or the mirror image where the flip was drawn
            same = torch.equal(flipped[position], plain[position])
            assert same or torch.equal(flipped[position].flip(-1), plain[position])
            mirrored += not same
    assert mirrored > 0  # the flip was drawn (and applied with hflip=True) for some images
