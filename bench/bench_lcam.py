"""Throughput and peak memory of L-CAM explanation, AD/IC evaluation, training steps and
the baselines, each as a ratio to the backbone's own forward measured in the same run.

    python -m bench.bench_lcam --device cuda --amp bf16 --channels_last --batch_size 128
    python -m bench.bench_lcam --device cuda --amp bf16 --channels_last --compile reduce-overhead
    python -m bench.bench_lcam --device cpu --batch_size 8 --size 224 --iters 3   # a CPU look
    python -m bench.bench_lcam --families generic:resnet18,generic:mobilenet_v3_large   # L-CAM on other CNNs
    python -m bench.bench_lcam --families generic:vit_b_16,generic:swin_t,generic:timm:deit_small_patch16_224

Random weights (no download), synthetic images already on the device: this measures the
model and protocol, not the data path (see ``bench/bench_data.py``). Each training step is
also measured in the reference's settings (fp32, contiguous, unfused SGD, eager) unless
those are the settings asked for, so the peak memory of the fast settings has its
yardstick in the same run. ``--profile DIR`` writes where the time goes, per measure; ``python -m bench.report``
turns the ``--output`` JSON files into markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from models import BackboneFamily, archs_of, build_model, get_family, variant_builder
from models.generic import DEFAULT_BACKBONE
from utils.core.cli import add_precision_arguments, non_negative_int, positive_int
from utils.core.errors import UserError, UserValueError
from utils.core.files import atomic_open, write_json
from utils.core.runtime import add_compile_argument, autocast, compile_function, configure_backends, resolve_device
from utils.evaluation import LCAMExplainer, evaluate
from utils.explainers.baselines import NormalizedClassifier, build_explainer
from utils.training import OptimizerStep, build_optimizer

# the training steps measured: L-CAM-Fm and L-CAM-Img (L-CAM loss), by where the CAM is applied
CAM_METHODS = {"feature_maps": "Fm", "image": "Img"}
PERCENTAGES = (0.0, 0.5, 0.85)
# The project's targets (bf16 on an H100/H200, batch >= 64; docs/performance.md): the least ratio to the backbone's
# forward, per measure and family.
TARGETS = {
    "explanation": {"vgg16": 0.95, "resnet50": 0.95},
    "evaluation": {"vgg16": 0.24, "resnet50": 0.24},
    "train_fm": {"vgg16": 0.85, "resnet50": 0.75},
    "train_img": {"vgg16": 0.33, "resnet50": 0.25},
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), add_help=add_help)
    parser.add_argument(
        "--families",
        default="vgg16,resnet50",
        help="comma-separated: vgg16, resnet50, generic:NETWORK (L-CAM on a torchvision classifier name, "
        f"timm:NAME or 'package.module:callable'; generic alone: {DEFAULT_BACKBONE})",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--batch_size", type=positive_int, default=128, help="batch for forward, explanation, evaluation"
    )
    parser.add_argument("--train_batch_size", type=positive_int, default=64, help="batch for the training steps")
    parser.add_argument("--size", type=positive_int, default=224, help="input side in pixels")
    add_precision_arguments(parser, amp_help="autocast dtype")
    add_compile_argument(parser)
    parser.add_argument("--backbone_mode", default="reference", choices=("reference", "frozen"))
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed iterations first")
    parser.add_argument("--iters", type=positive_int, default=10, help="timed iterations")
    parser.add_argument("--baselines", default="gradcam,gradcampp", help="comma-separated baseline names ('' for none)")
    parser.add_argument("--baseline_iters", type=int, default=2, help="timed iterations of each baseline")
    parser.add_argument("--rise_masks", type=int, default=512, help="RISE masks when 'rise' is benchmarked")
    parser.add_argument(
        "--no_reference_settings",
        action="store_true",
        help="skip the training steps in the reference's settings (fp32, contiguous, unfused SGD, eager)",
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="DIR",
        help="write a torch.profiler table per measure to DIR (top operators: where the time goes)",
    )
    parser.add_argument("--profile_iters", type=int, default=3, help="profiled iterations per measure")
    parser.add_argument("--profile_trace", action="store_true", help="with --profile: also write Chrome traces")
    parser.add_argument("--output", default="", help="also write the figures to this JSON file")
    return parser


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """Times steps on one device and keeps the rows of one family, each with its ratio to
    the family's first row (the backbone's forward)."""

    def __init__(self, family: str, args: argparse.Namespace, device: torch.device) -> None:
        self.family, self.args, self.device = family, args, device
        self.rows: list[dict] = []

    def measure(
        self, key: str, name: str, make_step: Callable[[], Callable[[], object]], images: int, warmup: int, iters: int
    ) -> dict:
        """Build a step with ``make_step()``, run it (it processes ``images`` images)
        ``warmup`` times untimed, then ``iters`` times timed; record images/s and the peak
        device memory (CUDA) the step needed beyond what was allocated before it was built
        (so its model, optimizer state and activations count, other measures' do not).

        A measure that fails (out of memory, a compile error, ...) is recorded with its error
        and the run goes on: one run on a lent GPU still yields every other figure."""
        try:
            return self._measure(key, name, make_step, images, warmup, iters)
        except Exception as error:  # reported in the row and on screen, never hidden
            text = str(error).strip()
            message = type(error).__name__ + (f": {text.splitlines()[0]}" if text else "")
            print(f"{self.family:9s} {name:46s} FAILED: {message}")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            row = {"family": self.family, "key": key, "measure": name, "images_per_s": None, "peak_mib": None}
            row.update(ratio_to_backbone=None, target_ratio=TARGETS.get(key, {}).get(self.family), error=message)
            self.rows.append(row)
            return row

    def _measure(
        self, key: str, name: str, make_step: Callable[[], Callable[[], object]], images: int, warmup: int, iters: int
    ) -> dict:
        allocated_before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        step = make_step()
        for _ in range(warmup):
            step()
        _synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        _synchronize(self.device)
        seconds = time.perf_counter() - start
        peak = None
        if self.device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(self.device) - allocated_before) / 2**20
        if self.args.profile:
            self._profile(key, step)
        return self._record(key, name, images * iters / seconds, peak)

    def _record(self, key: str, name: str, images_per_s: float, peak_mib: float | None) -> dict:
        reference = self.rows[0]["images_per_s"] if self.rows else images_per_s
        ratio = images_per_s / reference if reference else None
        target = TARGETS.get(key, {}).get(self.family)
        row = {
            "family": self.family,
            "key": key,
            "measure": name,
            "images_per_s": images_per_s,
            "peak_mib": peak_mib,
            "ratio_to_backbone": ratio,
            "target_ratio": target,
        }
        self.rows.append(row)
        peak = f"{peak_mib:8.0f} MiB" if peak_mib is not None else "     n/a"
        verdict = f"  target >= {target:.2f}: {'met' if ratio >= target else 'MISSED'}" if target and ratio else ""
        shown = f"{ratio:6.3f}" if ratio is not None else "   n/a"
        print(f"{self.family:9s} {name:46s} {images_per_s:10.1f} img/s  ratio {shown}  peak {peak}{verdict}")
        return row

    def _profile(self, key: str, step: Callable[[], object]) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(self.args.profile_iters):
                step()
            _synchronize(self.device)
        sort_by = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        stem = os.path.join(self.args.profile, f"{self.family}_{key}")
        os.makedirs(self.args.profile, exist_ok=True)
        with atomic_open(stem + ".txt") as handle:
            handle.write(profiler.key_averages().table(sort_by=sort_by, row_limit=40))
        if self.args.profile_trace:
            profiler.export_chrome_trace(stem + ".trace.json")


def _prepare(model: torch.nn.Module, channels_last: bool, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


class BenchedFamily(NamedTuple):
    """A family as the bench measures it.

    Attributes:
        label: its name in the rows (``vgg16``, ``generic:resnet18``).
        family: its record.
        network_settings: what builds its network (generic: ``backbone``, ``input_size``).
        variants: ``apply_cam_to`` -> the arch and settings of its L-CAM-Fm and L-CAM-Img models.
    """

    label: str
    family: BackboneFamily
    network_settings: dict[str, Any]
    variants: dict[str, tuple[str, dict[str, Any]]]


def benched_family(spec: str, size: int) -> BenchedFamily:
    """``vgg16``, ``resnet50`` or ``generic:NETWORK`` (``generic`` alone: the default network)
    as the bench measures it, at ``size`` pixels.

    Raises:
        UserValueError: an unknown family, or ``:NETWORK`` after a family that fixes its network.
    """
    name, _, network = spec.partition(":")
    family = get_family(name)
    if family.builder is None:  # the network is a setting of each model
        backbone = network or DEFAULT_BACKBONE
        label, network_settings = f"{family.name}:{backbone}", {"backbone": backbone, "input_size": size}
    elif network:
        raise UserValueError(f"{spec!r}: only a family without a fixed network (generic) takes ':NETWORK'")
    else:
        label, network_settings = family.name, {}
    variants = {target: _lcam_variant(family, target, network_settings) for target in CAM_METHODS}
    return BenchedFamily(label, family, network_settings, variants)


def _lcam_variant(
    family: BackboneFamily, apply_cam_to: str, network_settings: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The arch and settings of ``family``'s L-CAM model (L-CAM loss) that applies its CAM to
    ``apply_cam_to``: the variant declared so (``VGG16_L_CAM_Fm``), else the family's arch
    with those settings (generic)."""
    wanted = {"apply_cam_to": apply_cam_to, "loss": "lcam"}
    for arch in archs_of(family):
        if variant_builder(arch).settings == wanted:
            return arch, dict(network_settings)
    return archs_of(family)[0], {**network_settings, **wanted}


def _backbone_step(benched: BenchedFamily, images: torch.Tensor, args, device: torch.device) -> Callable[[], object]:
    """The reference point: the family's classifier's own forward on normalised images."""
    network, _ = benched.family.load_classifier(pretrained=False, **benched.network_settings)
    backbone = _prepare(network.eval(), args.channels_last, device)
    forward = compile_function(backbone, args.compile)
    normalized = images.sub(0.45).div(0.225)

    def forward_step():
        with torch.inference_mode(), autocast(device, args.amp):
            return forward(normalized)

    return forward_step


def training_step(
    arch: str, images: torch.Tensor, args, device: torch.device, fast: bool = True, **settings
) -> Callable:
    """One optimizer step of ``arch`` (:class:`utils.training.OptimizerStep`, the training
    loop's: forward with labels and loss under autocast, backward, SGD step); in the settings
    of ``args`` (``fast``) or in the reference's (fp32, contiguous, unfused, eager)."""
    channels_last, amp, mode = (args.channels_last, args.amp, args.compile) if fast else (False, "none", None)
    model = build_model(arch, pretrained=False, backbone_mode=args.backbone_mode, **settings)
    model = _prepare(model, channels_last, device).train()
    optimizer = build_optimizer(model, 1e-4, fused=fast and device.type == "cuda")
    labels = torch.randint(0, 1000, (images.size(0),), device=device)
    images = images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    step = OptimizerStep(model, optimizer, amp, forward_model=compile_function(model, mode))
    return functools.partial(step, images, labels)


def _baseline_step(name: str, wrapped, images: torch.Tensor, classes: torch.Tensor, args, device) -> Callable:
    """The explanation of ``images`` for ``classes`` by the baseline ``name``."""
    baseline = build_explainer(name, wrapped, rise_masks=args.rise_masks)

    def baseline_step():
        with autocast(device, args.amp):
            return baseline.explain(images, classes)

    return baseline_step


def _uses_reference_settings(args: argparse.Namespace) -> bool:
    return args.amp == "none" and not args.channels_last and not args.compile


def bench_family(benched: BenchedFamily, args, device: torch.device) -> list[dict]:
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    images = torch.rand(args.batch_size, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    bench = Bench(benched.label, args, device)
    sizes = (len(images), args.warmup, args.iters)

    bench.measure("backbone", "backbone forward", lambda: _backbone_step(benched, images, args, device), *sizes)
    img_arch, img_settings = benched.variants["image"]
    model = build_model(img_arch, pretrained=False, backbone_mode=args.backbone_mode, **img_settings).eval()
    model = _prepare(model, args.channels_last, device)
    explainer = LCAMExplainer(model, compile=args.compile)

    def all_cams_step():
        with autocast(device, args.amp):
            return explainer.explain_all_classes(images).cams

    def explain_step():
        with autocast(device, args.amp):
            return explainer.predict_and_explain(images)

    def evaluation_step():
        batches = [(images, torch.zeros(len(images), dtype=torch.long))]
        return evaluate(
            explainer.classify, explainer, batches, PERCENTAGES, device, args.amp, args.channels_last, progress=False
        )

    bench.measure("explanation", "L-CAM explanation (all classes)", lambda: all_cams_step, *sizes)
    bench.measure("predict_and_explain", "L-CAM prediction + its map", lambda: explain_step, *sizes)
    halved = (len(images), max(1, args.warmup // 2), max(1, args.iters // 2))
    bench.measure("evaluation", "AD/IC evaluation at 3 percentages", lambda: evaluation_step, *halved)

    train_images = images[: args.train_batch_size]
    batch = len(train_images)
    settings = [True] if args.no_reference_settings or _uses_reference_settings(args) else [True, False]
    for apply_cam_to, method in CAM_METHODS.items():
        arch, variant_settings = benched.variants[apply_cam_to]
        for fast in settings:
            key = f"train_{method.lower()}" + ("" if fast else "_reference_settings")
            name = f"training step {method} (batch {batch})" + ("" if fast else ", reference settings")
            make_step = functools.partial(training_step, arch, train_images, args, device, fast, **variant_settings)
            bench.measure(key, name, make_step, batch, args.warmup, args.iters)

    if args.baselines:
        wrapped = NormalizedClassifier.from_lcam(copy.deepcopy(model).eval())
        classes = torch.zeros(len(images), dtype=torch.long, device=device)
        for name in args.baselines.split(","):
            make_step = functools.partial(_baseline_step, name, wrapped, images, classes, args, device)
            bench.measure(f"baseline_{name}", f"baseline {name}", make_step, len(images), 1, args.baseline_iters)
    _print_memory_ratios(bench.rows)
    return bench.rows


def _print_memory_ratios(rows: list[dict]) -> None:
    """Peak memory of each training step over the same step in the reference's settings."""
    by_key = {row["key"]: row for row in rows}
    for key, row in by_key.items():
        reference = by_key.get(f"{key}_reference_settings")
        if reference and row["peak_mib"] and reference["peak_mib"]:
            row["peak_ratio_to_reference_settings"] = row["peak_mib"] / reference["peak_mib"]
            print(
                f"{row['family']:9s} {row['measure']}: peak memory {row['peak_mib']:.0f} MiB = "
                f"{row['peak_ratio_to_reference_settings']:.2f} x the reference settings' {reference['peak_mib']:.0f} MiB"
            )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(args: argparse.Namespace) -> dict:
    """Run the families of ``args``; print every row; return (and write to ``--output``)
    ``{"device", "torch", "args", "rows"}``."""
    device = resolve_device(args.device)
    configure_backends()
    try:
        benched = [benched_family(spec, args.size) for spec in args.families.split(",")]
    except UserError as error:
        raise SystemExit(f"--families: {error}") from None
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; amp {args.amp}; "
        f"channels_last {args.channels_last}; compile {args.compile or 'off'}; backbone_mode {args.backbone_mode}; "
        f"batch {args.batch_size} (training {args.train_batch_size}); {args.size} px"
    )
    rows = []
    for family in benched:
        rows.extend(bench_family(family, args, device))
    if device.type == "cpu":
        print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    report = {"device": device_name(device), "torch": torch.__version__, "args": vars(args), "rows": rows}
    if args.output:
        write_json(args.output, report)
    return report


if __name__ == "__main__":
    failed = [row for row in main(get_args_parser().parse_args())["rows"] if row.get("error")]
    if failed:
        raise SystemExit(f"{len(failed)} measure(s) failed: " + "; ".join(row["measure"] for row in failed))
