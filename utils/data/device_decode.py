"""JPEG decoding, resizing and cropping on the device (the GPU data path).

The DataLoader workers only read file bytes (:class:`EncodedImageList`); the batch is
decoded by ``torchvision.io.decode_jpeg`` on the device (nvJPEG on CUDA) and resized and
cropped there by :class:`DeviceDecoder`. This frees the CPU, which decodes and resizes
about 350 ImageNet JPEGs/s per core with PIL.

Not bit-identical to the PIL path: tensor resizing (bilinear or bicubic, antialiased)
differs from PIL's by about one grey level on average, so the reference numbers are
reproduced with the default PIL path; use this one for speed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as TF

from models.families import interpolation_mode
from utils.core.errors import UserValueError
from utils.data.datalists import Batch, Sample

__all__ = ["DecodingLoader", "DeviceDecoder", "EncodedBatch", "EncodedImageList", "collate_encoded"]

# The resize filters of the device path (antialiased, as PIL's).
DEVICE_INTERPOLATIONS = ("bilinear", "bicubic")


class EncodedImageList(Dataset):
    """The raw bytes (1-D uint8 tensor) of each image of a sample list; a file that cannot
    be read yields ``None`` and the reason, as :class:`utils.data.ImageList` does.

    Items are indexed by position, or by the ``(index, augmentation seed)`` keys of
    :class:`utils.data.ResumableSampler` (the seed is passed on to :class:`DeviceDecoder`).
    """

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            with open(path, "rb") as handle:
                data = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
        except OSError as error:
            return None, label, index, f"{error.__class__.__name__}: {error}", seed
        return data, label, index, None, seed


class EncodedBatch(NamedTuple):
    """Collated :class:`EncodedImageList` items: the readable files' bytes, concatenated
    into one buffer (``data``, split by ``sizes``), labels, dataset indices, augmentation
    seeds (or None), and ``(index, reason)`` of the unreadable ones.

    One buffer per batch means one shared-memory handle per batch between a DataLoader
    worker and the main process, not one per image."""

    data: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    failed: list[tuple[int, str]]
    seeds: list[int] | None

    @property
    def encoded(self) -> list[torch.Tensor]:
        """Each readable file's bytes (1-D uint8 views of ``data``)."""
        return list(self.data.split(self.sizes.tolist())) if len(self.sizes) else []


def collate_encoded(items) -> EncodedBatch:
    """``collate_fn`` for :class:`EncodedImageList`."""
    good = [item for item in items if item[0] is not None]
    failed = [(item[2], item[3]) for item in items if item[0] is None]
    data = torch.cat([item[0] for item in good]) if good else torch.empty(0, dtype=torch.uint8)
    sizes = torch.tensor([item[0].numel() for item in good], dtype=torch.long)
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    seeds = [item[4] for item in good] if good and good[0][4] is not None else None
    return EncodedBatch(data, sizes, labels, indices, failed, seeds)


class DeviceDecoder:
    """Decode a list of encoded images on ``device`` and apply the reference transform:
    resize the smaller edge to ``input_size`` (``interpolation``: bilinear or bicubic), then a
    centre crop (``train=False``) or a random crop and horizontal flip (``train=True``; the flip
    drawn but not applied with ``hflip=False``) of ``crop_size``, as float in [0, 1].

    Random choices come from a CPU generator, seeded per image when the batch has seeds
    (so they depend neither on the device nor on the batch composition).
    """

    def __init__(
        self,
        input_size: int = 256,
        crop_size: int = 224,
        train: bool = False,
        interpolation: str = "bilinear",
        hflip: bool = True,
    ) -> None:
        if crop_size > input_size:
            raise UserValueError(f"'crop_size' ({crop_size}) must not exceed 'input_size' ({input_size})")
        if interpolation not in DEVICE_INTERPOLATIONS:
            raise UserValueError(
                f"the device decode path resizes with {' or '.join(DEVICE_INTERPOLATIONS)}, not {interpolation!r}; "
                "use --decode pil"
            )
        self.input_size, self.crop_size, self.train, self.hflip = input_size, crop_size, train, hflip
        self.interpolation = interpolation_mode(interpolation)

    def __call__(self, batch: EncodedBatch, device: torch.device) -> Batch:
        """A :class:`utils.data.Batch` on ``device``; images that fail to decode join ``failed``.

        Images of the same size are resized together (one call per size, bit-identical to
        resizing each alone), crops are views, and the conversion to float is one call for
        the batch: few kernel launches per batch, not several per image, and no host
        synchronisation (random choices are drawn on the CPU)."""
        decoded, reasons = self._decode(batch.encoded, device)
        failed = list(batch.failed)
        kept = [position for position, image in enumerate(decoded) if image is not None]
        failed.extend((int(batch.indices[p]), reasons[p]) for p, image in enumerate(decoded) if image is None)
        resized = self._resize_by_size({position: decoded[position] for position in kept})
        crops = []
        for position in kept:
            seed = batch.seeds[position] if batch.seeds is not None else None
            generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
            crop, flip = self._crop(resized[position], generator)
            # flipped one by one: a device tensor of flags would cost a blocking host copy
            crops.append(crop.flip(-1) if flip and self.hflip else crop)
        keep = torch.tensor(kept, dtype=torch.long)
        images = torch.stack(crops).float().div_(255.0) if crops else None
        return Batch(images, batch.labels[keep].to(device, non_blocking=True), batch.indices[keep], failed)

    def _resize_by_size(self, images: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Resize the smaller edge of every image to ``input_size`` (antialiased bilinear),
        one call per distinct image size."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for position, image in images.items():
            by_size.setdefault(tuple(image.shape), []).append(position)
        resized = {}
        for positions in by_size.values():
            group = TF.resize(
                torch.stack([images[p] for p in positions]), [self.input_size], self.interpolation, antialias=True
            )
            resized.update(zip(positions, group))
        return resized

    def _crop(self, image: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, bool]:
        """The crop (a view) of a resized image, and whether to flip it: random crop and
        flip (``train``; drawn in this order from ``generator``) or the centre crop."""
        height, width = image.shape[-2:]
        if self.train:
            top = int(torch.randint(0, height - self.crop_size + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - self.crop_size + 1, (1,), generator=generator))
            flip = float(torch.rand(1, generator=generator)) < 0.5
        else:
            top = int(round((height - self.crop_size) / 2.0))
            left = int(round((width - self.crop_size) / 2.0))
            flip = False
        return image[..., top : top + self.crop_size, left : left + self.crop_size], flip

    @staticmethod
    def _decode(encoded: list[torch.Tensor], device: torch.device):
        """Decode all at once (nvJPEG batches on CUDA); on an error, one by one to find the
        bad files. Non-JPEG files are decoded on the CPU."""
        jpeg = [data.numel() > 2 and data[0] == 0xFF and data[1] == 0xD8 for data in encoded]
        decoded: list[torch.Tensor | None] = [None] * len(encoded)
        reasons = [""] * len(encoded)
        jpeg_positions = [position for position, is_jpeg in enumerate(jpeg) if is_jpeg]
        try:
            with _torchvision_io():
                batch = (
                    torchvision.io.decode_jpeg(
                        [encoded[p] for p in jpeg_positions], mode=ImageReadMode.RGB, device=device
                    )
                    if jpeg_positions
                    else []
                )
            for position, image in zip(jpeg_positions, batch):
                decoded[position] = image
        except RuntimeError:
            for position in jpeg_positions:
                decoded[position], reasons[position] = _decode_one(encoded[position], device, jpeg=True)
        for position, is_jpeg in enumerate(jpeg):
            if not is_jpeg:
                decoded[position], reasons[position] = _decode_one(encoded[position], device, jpeg=False)
        return decoded, reasons


@contextlib.contextmanager
def _torchvision_io():
    """torchvision 0.29 deprecates ``torchvision.io``'s decoders in favour of TorchCodec; they
    still work and are the nvJPEG path that ships with torchvision, so its warning is muted
    here (only around these calls)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning
        )
        yield


def _decode_one(data: torch.Tensor, device: torch.device, jpeg: bool) -> tuple[torch.Tensor | None, str]:
    try:
        with _torchvision_io():
            if jpeg:
                return torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, device=device), ""
            return torchvision.io.decode_image(data, mode=ImageReadMode.RGB).to(device, non_blocking=True), ""
    except RuntimeError as error:
        return None, f"RuntimeError: {str(error).splitlines()[0]}"


class DecodingLoader:
    """A DataLoader of :class:`EncodedImageList` whose batches come out decoded on
    ``device`` as :class:`utils.data.Batch` (``sampler``, ``dataset`` and ``len`` are the
    wrapped loader's, so training and evaluation loops take it as they take a loader)."""

    def __init__(self, loader, decoder: DeviceDecoder, device: torch.device) -> None:
        self.loader, self.decoder, self.device = loader, decoder, device

    @property
    def sampler(self):
        return self.loader.sampler

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield self.decoder(batch, self.device)
