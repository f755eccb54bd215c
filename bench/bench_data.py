"""Does the data path keep up? JPEG decode + resize + crop with PIL in DataLoader workers,
and on the device (``utils.data.device_decode``), against a training step, in one run.

    python -m bench.bench_data --device cuda --num_workers 16 --images 512
    python -m bench.bench_data --device cpu --num_workers 2 --images 64 --arch ResNet50_L_CAM_Fm

Writes ``--images`` synthetic ImageNet-sized JPEGs (500 x 375) to a temporary folder first.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from bench import bench_lcam
from utils.core.cli import add_device_arguments, add_precision_arguments, positive_int
from utils.core.files import write_json
from utils.core.runtime import resolve_device
from utils.data.datalists import ImageList, build_loader, eval_transform
from utils.data.device_decode import DeviceDecoder, EncodedImageList, collate_encoded


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), add_help=add_help)
    parser.add_argument("--images", type=positive_int, default=256, help="synthetic JPEGs to decode")
    add_device_arguments(parser, 64)
    parser.add_argument("--arch", default="ResNet50_L_CAM_Fm", help="variant whose training step is the yardstick")
    add_precision_arguments(parser, amp_help="autocast the training step")
    parser.add_argument("--output", default="", help="also write the figures to this JSON file")
    return parser


def _write_jpegs(folder: str, count: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(0)
    samples = []
    base = (rng.random((375 // 15, 500 // 20, 3)) * 255).astype("uint8")
    for index in range(count):
        picture = Image.fromarray(np.roll(base, index, axis=1)).resize((500, 375), Image.BILINEAR)
        path = os.path.join(folder, f"{index:05d}.JPEG")
        picture.save(path, quality=90)
        samples.append((path, index % 1000))
    return samples


def _images_per_second(loader, consume, device) -> float:
    """Images/s of the second pass over ``loader`` (the first starts the persistent workers
    and the decoder, which a long run pays once)."""
    for _ in loader:
        pass
    count, start = 0, time.perf_counter()
    for batch in loader:
        count += consume(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    print(f"device: {bench_lcam.device_name(device)}; {args.num_workers} workers; batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as folder:
        samples = _write_jpegs(folder, args.images)
        pil_loader = build_loader(
            ImageList(samples, eval_transform()), args.batch_size, device, num_workers=args.num_workers
        )
        pil = _images_per_second(pil_loader, lambda batch: len(batch.images.to(device, non_blocking=True)), device)
        decoder = DeviceDecoder(256, 224)
        encoded_loader = build_loader(
            EncodedImageList(samples), args.batch_size, device, num_workers=args.num_workers, collate_fn=collate_encoded
        )
        on_device = _images_per_second(encoded_loader, lambda batch: len(decoder(batch, device).images), device)

    flags = ["--amp", args.amp] + (["--channels_last"] if args.channels_last else [])
    step_args = bench_lcam.get_args_parser().parse_args(flags)
    images = torch.rand(args.batch_size, 3, 224, 224, device=device)
    make_step = functools.partial(bench_lcam.training_step, args.arch, images, step_args, device)
    row = bench_lcam.Bench("data", step_args, device).measure("train", "training step", make_step, len(images), 2, 5)
    training = row["images_per_s"]
    figures = {
        "device": bench_lcam.device_name(device),
        "args": vars(args),
        "pil_workers": pil,
        "device_decode": on_device,
        "training_step": training,
    }
    print(
        f"PIL decode+resize+crop ({args.num_workers} workers): {pil:9.1f} img/s  ratio to training {pil / training:5.2f}"
    )
    print(f"device decode+resize+crop:          {on_device:9.1f} img/s  ratio to training {on_device / training:5.2f}")
    print(f"training step {args.arch} ({args.amp}):  {training:9.1f} img/s")
    if args.output:
        write_json(args.output, figures)
    return figures


if __name__ == "__main__":
    main(get_args_parser().parse_args())
