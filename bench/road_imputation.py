"""ROAD's noisy linear imputation: the batched solve (``utils.evaluation.imputation``)
against pytorch-grad-cam's per-image scipy solve, time per image and largest difference on
the same noise, in one run.

    python -m bench.road_imputation --device cpu --images 8
    python -m bench.road_imputation --device cuda --images 64 --reference_images 8

The removal masks are ROAD's (MoRF) at percentiles 10, 20, ..., 90 in turn, of smooth
CAM-like maps (7 x 7 noise upsampled bilinearly to ``--size``); the images are uniform
noise. pytorch-grad-cam's imputer runs on the CPU whatever ``--device`` is.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from utils.core.cli import positive_int
from utils.core.files import write_json
from utils.core.runtime import resolve_device
from utils.evaluation.imputation import imputation_noise, noisy_linear_imputation, removal_masks


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), add_help=add_help)
    parser.add_argument("--images", type=positive_int, default=8, help="images imputed")
    parser.add_argument(
        "--reference_images", type=positive_int, default=None, help="of those, imputed by pytorch-grad-cam [all]"
    )
    parser.add_argument("--size", type=positive_int, default=224, help="image side in pixels")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="images per batched solve of ours")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--output", default="", help="also write the figures to this JSON file")
    return parser


def _inputs(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, size, size, generator=generator)
    maps = F.interpolate(torch.rand(count, 1, 7, 7, generator=generator), size=(size, size), mode="bilinear")[:, 0]
    percentiles = [10 * (1 + index % 9) for index in range(count)]
    removed = torch.stack(
        [removal_masks(image_map[None], percentile)[0] for image_map, percentile in zip(maps, percentiles)]
    )
    return images, removed


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(args: argparse.Namespace) -> dict:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    device = resolve_device(args.device)
    reference_count = min(args.reference_images or args.images, args.images)
    images, removed = _inputs(args.images, args.size)
    noise = imputation_noise(removed, generator=torch.Generator().manual_seed(1))
    images, removed, noise = images.to(device), removed.to(device), noise.to(device)
    if device.type == "cuda":  # the first call pays for CUDA's start-up
        noisy_linear_imputation(images[:1], removed[:1], noise[:1])
    _synchronize(device)
    start = time.perf_counter()
    ours = torch.cat(
        [
            noisy_linear_imputation(images[start:stop], removed[start:stop], noise[start:stop])
            for start, stop in ((start, start + args.batch_size) for start in range(0, args.images, args.batch_size))
        ]
    )
    _synchronize(device)
    ours_seconds = (time.perf_counter() - start) / args.images

    imputer = NoisyLinearImputer()
    generator_state = torch.get_rng_state()
    torch.manual_seed(1)  # the same noise: the reference draws it image by image, as ours did
    theirs = []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # np.argwhere on torch tensors
        for image, image_removed in zip(images[:reference_count].cpu(), removed[:reference_count].cpu()):
            theirs.append(imputer(image, (~image_removed).float()))
    theirs_seconds = (time.perf_counter() - start) / reference_count
    torch.set_rng_state(generator_state)
    difference = float((ours[:reference_count].cpu() - torch.stack(theirs)).abs().max())

    figures = {
        "device": str(device),
        "size": args.size,
        "images": args.images,
        "batch_size": args.batch_size,
        "reference_images": reference_count,
        "torch_threads": torch.get_num_threads(),
        "ours_seconds_per_image": ours_seconds,
        "pytorch_grad_cam_seconds_per_image": theirs_seconds,
        "speedup": theirs_seconds / ours_seconds,
        "max_abs_difference": difference,
    }
    print(
        f"{args.size} px, {args.images} images on {device} (batches of {args.batch_size}, "
        f"{torch.get_num_threads()} threads): "
        f"ours {ours_seconds:.4f} s/image, pytorch-grad-cam {theirs_seconds:.4f} s/image "
        f"({reference_count} images, CPU): ratio {figures['speedup']:.2f}x; largest difference {difference:.2e}"
    )
    if args.output:
        write_json(args.output, figures, indent=1)
    return figures


if __name__ == "__main__":
    main(get_args_parser().parse_args())
