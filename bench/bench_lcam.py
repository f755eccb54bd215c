"""Throughput and peak memory of L-CAM explanation, AD/IC evaluation, training steps and
the baselines, each as a ratio to the backbone's own forward measured in the same run.

    python -m bench.bench_lcam --device cuda --amp bf16 --channels_last --batch_size 128
    python -m bench.bench_lcam --device cpu --batch_size 8 --size 224 --iters 3   # a CPU look

Random weights (no download), synthetic images already on the device: this measures the
model and protocol, not the data path (see ``bench/bench_data.py``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import time
from collections.abc import Callable

import torch
import torchvision

from models import build_model
from utils.baselines import NormalizedClassifier, build_explainer
from utils.evaluation import LCAMExplainer, evaluate, lcam_classifier
from utils.optim import build_optimizer
from utils.runtime import autocast, resolve_device

FAMILIES = {
    "vgg16": ("VGG16_L_CAM_Fm", "VGG16_L_CAM_Img", torchvision.models.vgg16),
    "resnet50": ("ResNet50_L_CAM_Fm", "ResNet50_L_CAM_Img", torchvision.models.resnet50),
}
PERCENTAGES = (0.0, 0.5, 0.85)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("--families", default="vgg16,resnet50", help="comma-separated: vgg16, resnet50")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch_size", type=int, default=128, help="batch for forward, explanation, evaluation")
    parser.add_argument("--train_batch_size", type=int, default=64, help="batch for the training steps")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast dtype")
    parser.add_argument("--channels_last", action="store_true", help="channels_last models and inputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (CUDA)")
    parser.add_argument("--backbone_mode", default="reference", choices=("reference", "frozen"))
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--baselines", default="gradcam,gradcampp", help="comma-separated baseline names ('' for none)")
    parser.add_argument("--baseline_iters", type=int, default=2, help="timed iterations of each baseline")
    parser.add_argument("--rise_masks", type=int, default=512, help="RISE masks when 'rise' is benchmarked")
    parser.add_argument("--output", default="", help="also write the figures to this JSON file")
    return parser


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(step: Callable[[], object], device: torch.device, images: int, warmup: int, iters: int) -> dict:
    """images/s and peak device memory (CUDA) of ``step``, which processes ``images`` images."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"images_per_s": images * iters / seconds, "peak_mib": peak}


def _prepare(model: torch.nn.Module, args, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _maybe_compile(function, args):
    return torch.compile(function) if args.compile else function


def _bench_backbone(torchvision_builder, images: torch.Tensor, args, device: torch.device) -> dict:
    """The reference point: the torchvision classifier's own forward on normalised images."""
    backbone = _maybe_compile(_prepare(torchvision_builder(weights=None).eval(), args, device), args)
    normalized = images.sub(0.45).div(0.225)

    def forward_step():
        with torch.inference_mode(), autocast(device, args.amp):
            return backbone(normalized)

    return _measure(forward_step, device, len(images), args.warmup, args.iters)


def bench_training_step(arch: str, images: torch.Tensor, args, device: torch.device) -> dict:
    """One optimizer step of ``arch``: forward with labels, loss, backward, SGD step."""
    model = _prepare(build_model(arch, pretrained=False, backbone_mode=args.backbone_mode), args, device).train()
    optimizer = build_optimizer(model, 1e-4, fused=device.type == "cuda")
    labels = torch.randint(0, 1000, (images.size(0),), device=device)
    forward = _maybe_compile(model, args)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.amp):
            loss = model.loss(forward(images, labels), labels).total
        loss.backward()
        optimizer.step()

    return _measure(train_step, device, len(images), args.warmup, args.iters)


def bench_family(family: str, args, device: torch.device) -> list[dict]:
    fm_arch, img_arch, torchvision_builder = FAMILIES[family]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    images = torch.rand(args.batch_size, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    rows = []

    def record(name: str, figures: dict) -> None:
        figures.update(family=family, measure=name)
        rows.append(figures)
        reference = rows[0]["images_per_s"]
        ratio = figures["images_per_s"] / reference
        peak = f"{figures['peak_mib']:.0f} MiB" if figures["peak_mib"] is not None else "n/a"
        figures["ratio_to_backbone"] = ratio
        print(f"{family:9s} {name:34s} {figures['images_per_s']:10.1f} img/s  ratio {ratio:5.2f}  peak {peak}")

    record("backbone forward", _bench_backbone(torchvision_builder, images, args, device))
    model = _prepare(build_model(img_arch, pretrained=False, backbone_mode=args.backbone_mode).eval(), args, device)
    explain_forward = _maybe_compile(model, args)

    def explain_step():
        with torch.inference_mode(), autocast(device, args.amp):
            return explain_forward(images).cams

    record("L-CAM explanation (all classes)", _measure(explain_step, device, args.batch_size, args.warmup, args.iters))

    explainer, classifier = LCAMExplainer(model), lcam_classifier(model)
    batches = [(images, torch.zeros(args.batch_size, dtype=torch.long))]

    def evaluation_step():
        return evaluate(
            classifier, explainer, batches, PERCENTAGES, device, args.amp, args.channels_last, progress=False
        )

    record(
        "AD/IC evaluation at 3 percentages",
        _measure(evaluation_step, device, args.batch_size, max(1, args.warmup // 2), max(1, args.iters // 2)),
    )

    for arch in (fm_arch, img_arch):
        name = f"training step {arch.split('_L_CAM_')[1]} (batch {min(args.train_batch_size, args.batch_size)})"
        record(name, bench_training_step(arch, images[: args.train_batch_size], args, device))

    if args.baselines:
        wrapped = NormalizedClassifier.from_lcam(copy.deepcopy(model).eval())
        classes = torch.zeros(args.batch_size, dtype=torch.long, device=device)
        for name in args.baselines.split(","):
            baseline = build_explainer(name, wrapped, rise_masks=args.rise_masks)

            def baseline_step(baseline=baseline):
                with autocast(device, args.amp):
                    return baseline.explain(images, classes)

            record(f"baseline {name}", _measure(baseline_step, device, args.batch_size, 1, args.baseline_iters))
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(args: argparse.Namespace) -> list[dict]:
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; amp {args.amp}; "
        f"channels_last {args.channels_last}; compile {args.compile}; batch {args.batch_size}; {args.size} px"
    )
    rows = []
    for family in args.families.split(","):
        if family not in FAMILIES:
            raise SystemExit(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
        rows.extend(bench_family(family, args, device))
    if device.type == "cpu":
        print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({"device": device_name(device), "args": vars(args), "rows": rows}, handle, indent=2)
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
