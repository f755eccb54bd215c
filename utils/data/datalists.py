"""Datalists, image folders, the reference transforms, a dataset that reports unreadable
images instead of crashing or hiding them, and the training DataLoader (resumable,
distributed, reproducible augmentation).

A datalist line is ``<relative image path> <integer label>`` (a trailing space occurs);
the path is joined to the image directory and gets ``.jpg`` when it has no extension.
Images enter the model as RGB tensors in [0, 1]; the model normalises them itself.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NamedTuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import transforms

from models.families import interpolation_mode
from utils.core.errors import UserFileNotFoundError, UserValueError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Batch",
    "ImageList",
    "ResumableSampler",
    "SeededAugmentation",
    "build_loader",
    "check_images_exist",
    "collate_skip_unreadable",
    "describe_unreadable",
    "eval_transform",
    "evaluation_samples",
    "folder_samples",
    "read_datalist",
    "sample_seed",
    "samples_from",
    "train_transform",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

Sample = tuple[str, int]


def read_datalist(
    list_path: str | os.PathLike, img_dir: str | os.PathLike = "", num_classes: int | None = None
) -> list[Sample]:
    """Parse a datalist into ``(absolute image path, label)`` pairs.

    Raises:
        FileNotFoundError: the list does not exist.
        ValueError: ``file:line`` of the first malformed line or label outside
            ``[0, num_classes)``, with the line itself; or a list without any entry.
    """
    list_path = os.fspath(list_path)
    if not os.path.isfile(list_path):
        raise UserFileNotFoundError(f"datalist not found: {list_path!r}")
    samples = []
    with open(list_path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            fields = text.rsplit(maxsplit=1)
            if len(fields) != 2 or not _is_int(fields[1]):
                raise UserValueError(
                    f"{list_path}:{line_number}: malformed line {text!r}: expected '<image path> <integer label>'"
                )
            relative_path, label = fields[0], int(fields[1])
            if label < 0 or (num_classes is not None and label >= num_classes):
                bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
                raise UserValueError(f"{list_path}:{line_number}: label {label} outside {bound} in line {text!r}")
            if not os.path.splitext(relative_path)[1]:
                relative_path += ".jpg"
            samples.append((os.path.join(os.fspath(img_dir), relative_path), label))
    if not samples:
        raise UserValueError(f"{list_path}: the datalist has no entry")
    return samples


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def folder_samples(root: str | os.PathLike) -> tuple[list[Sample], list[str]]:
    """``(image path, label)`` pairs of a folder of class subfolders, labels by sorted
    subfolder name; also returns the class names."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise UserFileNotFoundError(f"image folder not found: {root!r}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise UserValueError(f"{root}: no class subfolders")
    samples = []
    for label, name in enumerate(classes):
        for directory, _, files in sorted(os.walk(os.path.join(root, name))):
            samples.extend(
                (os.path.join(directory, file), label)
                for file in sorted(files)
                if file.lower().endswith(IMAGE_EXTENSIONS)
            )
    if not samples:
        raise UserValueError(f"{root}: no image in its class subfolders")
    return samples, classes


def samples_from(
    source: str | os.PathLike, img_dir: str | os.PathLike = "", num_classes: int | None = None
) -> list[Sample]:
    """Samples of a datalist file, or of a folder of class subfolders."""
    if os.path.isdir(source):
        samples, classes = folder_samples(source)
        if num_classes is not None and len(classes) > num_classes:
            raise UserValueError(f"{source}: {len(classes)} class folders but num_classes={num_classes}")
        return samples
    return read_datalist(source, img_dir, num_classes)


def check_images_exist(
    samples: Sequence[Sample], source: str | os.PathLike = "the datalist", skip_missing: bool = False
) -> list[Sample]:
    """The samples whose image file exists, checked before any work starts.

    Listed images that are missing stop the run, with one line naming ``source``'s
    ``file:line`` of the first missing images and how many are missing; with
    ``skip_missing`` they are left out with one warning instead (the ``--skip_missing``
    flag of the commands).

    Returns:
        The samples, without the missing ones (all of them when none is missing).

    Raises:
        FileNotFoundError: images are missing and ``skip_missing`` is False, or none of
            them exists.
    """
    source = os.fspath(source)
    missing = [position for position, (path, _) in enumerate(samples) if not os.path.isfile(path)]
    if not missing:
        return list(samples)
    line_numbers = _datalist_line_numbers(source, len(samples))

    def place(position: int) -> str:
        return f"{source}:{line_numbers[position]}" if line_numbers else source

    first_path = samples[missing[0]][0]
    counted = f"{len(missing)} of {len(samples)} listed images are missing"
    if skip_missing and len(missing) < len(samples):
        warnings.warn(f"{counted}, left out (--skip_missing); first: {place(missing[0])}: {first_path!r}", stacklevel=2)
        left_out = set(missing)
        return [sample for position, sample in enumerate(samples) if position not in left_out]
    others = ""
    if len(missing) > 1 and line_numbers:
        numbers = [str(line_numbers[position]) for position in missing[1:]]
        more = f" and {len(numbers) - 3} more" if len(numbers) > 3 else ""
        others = f" (also line{'s' if len(numbers) > 1 else ''} {', '.join(numbers[:3])}{more})"
    way_on = (
        "check --img_dir"
        if len(missing) == len(samples)
        else "check --img_dir, or pass --skip_missing to go on without them"
    )
    raise UserFileNotFoundError(f"{place(missing[0])}: image not found: {first_path!r}; {counted}{others}; {way_on}")


def evaluation_samples(
    source: str | os.PathLike,
    img_dir: str | os.PathLike = "",
    num_classes: int | None = None,
    limit: int | None = None,
    skip_missing: bool = False,
) -> list[Sample]:
    """The first ``limit`` (all when None) samples of a datalist or class folder
    (:func:`samples_from`), their image files checked (:func:`check_images_exist`): the
    images an evaluation command runs on."""
    return check_images_exist(samples_from(source, img_dir, num_classes)[:limit], source, skip_missing=skip_missing)


def _datalist_line_numbers(source: str, entries: int) -> list[int] | None:
    """The line number of each entry of a datalist (its non-blank lines, as
    :func:`read_datalist` reads them); None for a folder or a list of another length."""
    if not os.path.isfile(source):
        return None
    with open(source, encoding="utf-8") as handle:
        numbers = [number for number, line in enumerate(handle, start=1) if line.strip()]
    return numbers if len(numbers) == entries else None


def train_transform(
    input_size: int = 256, crop_size: int = 224, interpolation: str = "bilinear", hflip: bool = True
) -> Callable:
    """Resize(smaller edge) -> RandomCrop -> RandomHorizontalFlip (``hflip``) -> ToTensor (no normalisation)."""
    flip = [transforms.RandomHorizontalFlip()] if hflip else []
    return transforms.Compose(
        [
            transforms.Resize(input_size, interpolation_mode(interpolation)),
            transforms.RandomCrop(crop_size),
            *flip,
            transforms.ToTensor(),
        ]
    )


def eval_transform(input_size: int = 256, crop_size: int = 224, interpolation: str = "bilinear") -> Callable:
    """Resize(smaller edge) -> CenterCrop -> ToTensor (no normalisation)."""
    return transforms.Compose(
        [
            transforms.Resize(input_size, interpolation_mode(interpolation)),
            transforms.CenterCrop(crop_size),
            transforms.ToTensor(),
        ]
    )


class ImageList(Dataset):
    """Images and labels of a sample list; an unreadable image yields ``None`` (with the
    reason) so the batch can drop it and the caller can report it."""

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform if transform is not None else transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                tensor = self.transform(image.convert("RGB"))
        except Exception as error:  # corrupt, truncated, missing or unsupported: all reported
            return None, label, index, f"{error.__class__.__name__}: {error}"
        return tensor, label, index, None


class Batch(NamedTuple):
    """A collated batch: readable images (N x 3 x H x W or None), their labels and dataset
    indices, and ``(index, reason)`` of the images that could not be read."""

    images: torch.Tensor | None
    labels: torch.Tensor
    indices: torch.Tensor
    failed: list[tuple[int, str]]


def collate_skip_unreadable(items) -> Batch:
    """``collate_fn`` for :class:`ImageList`: stacks the readable images, lists the rest."""
    good = [item for item in items if item[0] is not None]
    failed = [(index, reason) for image, _, index, reason in items if image is None]
    images = torch.stack([item[0] for item in good]) if good else None
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return Batch(images, labels, indices, failed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (a fixed mix, the same on
    every platform and Python version)."""
    return (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**63


class ResumableSampler(DistributedSampler):
    """A :class:`~torch.utils.data.DistributedSampler` (also for a single process) whose
    order depends only on ``(seed, epoch)``, that can start part-way through an epoch,
    and that yields ``(index, augmentation seed)`` keys for :class:`SeededAugmentation`.

    Call :meth:`set_epoch` before each epoch; ``start`` skips the first ``start`` samples
    of this process's share (a run resumed from a mid-epoch checkpoint).
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_samples:
            raise UserValueError(f"'start' must be in [0, {self.num_samples}], got {start!r}")
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start :]
        return iter([(index, sample_seed(self.seed, self.epoch, index)) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededAugmentation(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` runs its random transforms with the
    CPU generator seeded by ``seed`` (the caller's RNG state is left untouched).

    Each image's crop and flip then depend only on (seed, epoch, index): not on the
    number of DataLoader workers, nor on where a resumed run started.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stays untouched
            return self.dataset[index]


def build_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    sampler: Sampler | None = None,
    num_workers: int = 4,
    shuffle: bool = False,
    collate_fn: Callable | None = collate_skip_unreadable,
    prefetch_factor: int = 4,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader tuned for throughput: pinned memory on CUDA only, persistent workers
    and prefetching when ``num_workers > 0``, and its own seeded generator so that
    creating an iterator never draws from the global RNG."""
    if batch_size < 1:
        raise UserValueError(f"'batch_size' must be >= 1, got {batch_size!r}")
    if num_workers < 0:
        raise UserValueError(f"'num_workers' must be >= 0, got {num_workers!r}")
    workers = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        **workers,
    )


def describe_unreadable(samples: Sequence[Sample], failed: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
    """``[{"path", "label", "reason"}]`` of the ``(index, reason)`` pairs a
    :class:`Batch` reported, sorted by path (one entry per image)."""
    unique = dict(failed)
    return sorted(
        ({"path": samples[index][0], "label": samples[index][1], "reason": reason} for index, reason in unique.items()),
        key=lambda entry: entry["path"],
    )
