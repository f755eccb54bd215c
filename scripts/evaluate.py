"""AD/IC evaluation of a trained L-CAM checkpoint: the shared parser and main of
``Evaluation_L_CAM_VGG16.py`` and ``Evaluation_L_CAM_ResNet50.py``.

    python -m scripts.evaluate --arch ResNet50_L_CAM_Img --restore_from CKPT --percentages 0,0.5,0.85
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from models import ARCH_CHOICES, family_of
from models.generic import resolve_image_sizes
from utils.core.cli import (
    REPO_ROOT,
    HelpFormatter,
    add_box_arguments,
    add_decode_argument,
    add_device_arguments,
    add_image_size_arguments,
    add_precision_arguments,
    add_subset_arguments,
    non_negative_int,
    positive_int,
    run_cli,
)
from utils.core.errors import UserFileNotFoundError
from utils.core.files import ensure_writable
from utils.core.runtime import (
    add_compile_argument,
    add_deterministic_argument,
    configure_backends,
    resolve_device,
)
from utils.data.datalists import evaluation_samples
from utils.evaluation import (
    EvaluationResult,
    LCAMExplainer,
    build_eval_loader,
    evaluate,
    format_summary,
    load_lcam_model,
    parse_percentages,
    resolve_checkpoint,
    warn_unreadable,
    write_result,
)
from utils.evaluation.localization import (
    evaluate_localization,
    format_localization,
    load_sample_boxes,
    localization_output,
    write_localization,
)

__all__ = ["cli", "get_args_parser", "main"]


def get_args_parser(
    arch: str = "VGG16_L_CAM_Img",
    percentage: float = 0.0,
    add_help: bool = True,
) -> argparse.ArgumentParser:
    """The evaluation flags: the reference code's and the project's additions.

    Args:
        arch, percentage: the defaults of the calling script (the reference
            VGG-16 script evaluates VGG16_L_CAM_Img at 0, the ResNet-50 one
            ResNet50_L_CAM_Fm at 0.85).
    """
    parser = argparse.ArgumentParser(
        description="AD/IC of an L-CAM checkpoint (the paper's protocol, batched; same numbers as the reference's "
        "one-image loop; see the README's 'Evaluation (AD/IC)').",
        add_help=add_help,
        formatter_class=HelpFormatter,
    )
    paths = parser.add_argument_group("paths (reference flags)")
    paths.add_argument("--root_dir", default=REPO_ROOT, help="project root; the default paths below are under it")
    paths.add_argument(
        "--img_dir",
        default=None,
        help="directory the list's image paths are relative to [ROOT/dataset/ILSVRC2012_img_val]",
    )
    paths.add_argument(
        "--train_list", default=None, help="accepted for compatibility, unused [the family's training datalist]"
    )
    paths.add_argument(
        "--test_list",
        default=None,
        help="evaluation datalist ('<path> <label>' lines) or a folder of class subfolders "
        "[ROOT/datalist/ILSVRC/Evaluation_2000.txt]",
    )
    paths.add_argument(
        "--snapshot_dir", default=None, help="training run whose newest checkpoint is evaluated [ROOT/snapshots/ARCH]"
    )
    paths.add_argument(
        "--restore_from", default="", help="checkpoint file (or folder) to evaluate; wins over --snapshot_dir [none]"
    )
    paths.add_argument(
        "--resume", default="True", choices=("True", "False"), help="restore the newest checkpoint of --snapshot_dir"
    )
    paths.add_argument(
        "--output", default=None, help="JSON results (+ CSV beside it) [ROOT/runs/evaluation/ARCH_AD_IC.json]"
    )

    protocol = parser.add_argument_group("model and protocol")
    protocol.add_argument(
        "--arch", default=arch, choices=ARCH_CHOICES, metavar="ARCH", help=f"variant: {', '.join(ARCH_CHOICES)}"
    )
    protocol.add_argument(
        "--num_classes",
        type=positive_int,
        default=None,
        help="classes of the model [the checkpoint's; the reference: 1000]",
    )
    protocol.add_argument(
        "--backbone_weights",
        default=None,
        help="for head-only checkpoints: torchvision weights name, state_dict path or 'none' [the checkpoint's record]",
    )
    protocol.add_argument(
        "--percentage",
        type=float,
        default=None,
        help=f"fraction of the map's pixels dropped (0 keeps 100 %%, 0.85 keeps 15 %%) [{percentage:g}]",
    )
    protocol.add_argument(
        "--percentages", default=None, help="several percentages in one pass sharing the plain forward, e.g. 0,0.5,0.85"
    )
    add_image_size_arguments(protocol, from_model="a generic checkpoint's, as trained")
    add_subset_arguments(protocol)
    add_box_arguments(protocol)

    speed = parser.add_argument_group("speed")
    add_device_arguments(speed, 64, "images per batch (the reference: 1; same numbers)")
    add_precision_arguments(speed)
    add_compile_argument(speed)
    add_deterministic_argument(speed)
    add_decode_argument(speed)
    speed.add_argument(
        "--disp_interval", type=non_negative_int, default=40, help="show the running AD/IC every N batches (0: never)"
    )
    ignored = parser.add_argument_group("reference flags, accepted and ignored (so its command lines run)")
    ignored.add_argument("--dataset", default="imagenet", help="ignored")
    ignored.add_argument("--lr", type=float, default=0.0001, help="ignored")
    ignored.add_argument("--global_counter", type=int, default=0, help="ignored")
    ignored.add_argument("--current_epoch", type=int, default=0, help="ignored")
    parser.set_defaults(default_percentage=percentage)
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[float, ...]:
    if args.percentage is not None and args.percentages is not None:
        parser.error("give --percentage or --percentages, not both")
    try:
        if args.percentages is not None:
            percentages = parse_percentages(args.percentages)
        else:
            percentage = args.default_percentage if args.percentage is None else args.percentage
            percentages = parse_percentages([percentage])
    except ValueError as error:
        parser.error(f"--percentage(s): {error}")
    return percentages


def _fill_defaults(args: argparse.Namespace) -> None:
    root = args.root_dir
    if args.img_dir is None:
        args.img_dir = os.path.join(root, "dataset", "ILSVRC2012_img_val")
    if args.test_list is None:
        args.test_list = os.path.join(root, "datalist", "ILSVRC", "Evaluation_2000.txt")
    family_list = family_of(args.arch).train_list
    if args.train_list is None and family_list is not None:
        args.train_list = os.path.join(root, "datalist", "ILSVRC", family_list)
    if args.snapshot_dir is None:
        args.snapshot_dir = os.path.join(root, "snapshots", args.arch)
    if args.output is None:
        args.output = os.path.join(root, "runs", "evaluation", f"{args.arch}_AD_IC.json")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> EvaluationResult:
    """Evaluate the checkpoint ``args`` name; print the reference's lines, write the JSON
    and CSV; return the :class:`utils.evaluation.EvaluationResult`."""
    parser = parser or get_args_parser()
    percentages = _check_args(parser, args)
    _fill_defaults(args)
    ensure_writable(args.output, "--output")
    device = resolve_device(args.device)
    configure_backends(args.deterministic)
    checkpoint = resolve_checkpoint(args.restore_from, args.snapshot_dir, resume=args.resume == "True")
    if not os.path.exists(args.test_list):
        raise UserFileNotFoundError(f"--test_list not found: {args.test_list!r}")
    model, metadata = load_lcam_model(args.arch, checkpoint, args.num_classes, args.backbone_weights, device)
    args.input_size, args.crop_size = resolve_image_sizes(args.input_size, args.crop_size, model)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    samples = evaluation_samples(args.test_list, args.img_dir, model.num_classes, args.limit, args.skip_missing)
    boxes = (
        load_sample_boxes(args.boxes, samples, args.img_dir, args.input_size, args.crop_size) if args.boxes else None
    )
    print(
        f"Evaluating {args.arch} from {metadata['path']} (epoch {metadata.get('epoch', '?')}) on {len(samples)} images "
        f"of {args.test_list}, percentages {', '.join(f'{p:g}' for p in percentages)}, device {device}, amp {args.amp}"
    )
    loader = build_eval_loader(
        samples,
        args.input_size,
        args.crop_size,
        args.batch_size,
        args.num_workers,
        device,
        args.decode,
        model.interpolation,
    )
    explainer = LCAMExplainer(model, compile=args.compile)
    result = evaluate(
        explainer.classify,
        explainer,
        loader,
        percentages,
        device=device,
        amp=args.amp,
        channels_last=args.channels_last,
        disp_interval=args.disp_interval,
    )
    for line in format_summary(result):
        print(line)
    warn_unreadable(result.unreadable, listed_in=args.output)
    run = _run_info(args, metadata, device)
    json_path, csv_path = write_result(result, args.output, run)
    print(f"Results written to {json_path} and {csv_path}")
    if boxes is not None:
        localization = evaluate_localization(
            explainer.classify, explainer, loader, boxes, device, args.amp, pointing_tolerance=args.pointing_tolerance
        )
        for line in format_localization(localization):
            print(line)
        paths = write_localization(localization, localization_output(args.output), run)
        print(f"Localisation written to {paths[0]} and {paths[1]}")
    return result


def _run_info(args: argparse.Namespace, metadata: dict[str, Any], device: torch.device) -> dict[str, Any]:
    arguments = {key: value for key, value in vars(args).items() if not key.startswith("default_")}
    return {
        "arch": args.arch,
        "checkpoint": metadata["path"],
        "checkpoint_epoch": metadata.get("epoch"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": json.loads(json.dumps(arguments, default=str)),
    }


def cli(argv: Sequence[str] | None = None, **defaults: Any) -> EvaluationResult:
    """The evaluation command with the calling script's ``defaults`` (see
    :func:`get_args_parser`)."""
    return run_cli(main, get_args_parser(**defaults), argv)


if __name__ == "__main__":
    cli()
