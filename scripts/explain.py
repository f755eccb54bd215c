"""Explain images with a trained L-CAM model: the top-k predicted classes (or chosen
classes) of each image, each class's CAM overlaid on the image as a heatmap (PNG, the size
of the shown crop), and optionally a grid of many classes, all from one forward pass.

    python -m scripts.explain --arch VGG16_L_CAM_Img --restore_from CKPT --input photos/ --topk 3 --grid 16
    python -m scripts.explain ... --html runs/explain_page   # and a page to browse every class's map
"""

from __future__ import annotations

import argparse
import os

from models import ARCH_CHOICES
from models.generic import resolve_image_sizes
from utils.core.cli import (
    REPO_ROOT,
    HelpFormatter,
    add_device_arguments,
    add_image_size_arguments,
    add_subset_arguments,
    non_negative_int,
    positive_int,
    run_cli,
)
from utils.core.files import ensure_writable
from utils.core.runtime import AMP_CHOICES, resolve_device
from utils.data.datalists import check_images_exist
from utils.evaluation import load_lcam_model, resolve_checkpoint, warn_unreadable
from utils.evaluation.explanations import (
    ExplainOptions,
    ExplanationRun,
    class_names_for,
    collect_inputs,
    describe_class,
    explain_images,
)

__all__ = ["get_args_parser", "main"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Explain images with a trained L-CAM model: heatmap overlays of the top-k classes' CAMs.",
        add_help=add_help,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--input", required=True, help="an image, a folder of images (recursive) or a datalist")
    parser.add_argument("--img_dir", default="", help="folder the datalist's image paths are relative to")
    parser.add_argument(
        "--arch", default="VGG16_L_CAM_Img", choices=ARCH_CHOICES, metavar="ARCH", help=", ".join(ARCH_CHOICES)
    )
    parser.add_argument("--restore_from", default="", help="checkpoint file (or folder) [the newest in --snapshot_dir]")
    parser.add_argument("--snapshot_dir", default=None, help="training run folder [ROOT/snapshots/ARCH]")
    parser.add_argument("--root_dir", default=REPO_ROOT, help="project root for the default paths")
    parser.add_argument(
        "--num_classes", type=positive_int, default=None, help="classes of the model [the checkpoint's]"
    )
    parser.add_argument(
        "--backbone_weights", default=None, help="for head-only checkpoints: weights name, path or 'none' [recorded]"
    )
    parser.add_argument("--topk", type=positive_int, default=3, help="explain the k most probable classes")
    parser.add_argument("--classes", default=None, help="explain these class indices instead, e.g. 1,2 [the top-k]")
    parser.add_argument(
        "--grid", type=non_negative_int, default=0, help="also save a grid of the N most probable classes (0: no)"
    )
    parser.add_argument("--class_names", default=None, help="file with one class name per line [ImageNet's for 1000]")
    parser.add_argument("--output_dir", default=None, help="where the PNGs go [ROOT/runs/explain]")
    parser.add_argument(
        "--html", default=None, metavar="OUT_DIR", help="also write a browsable page of every class's map there"
    )
    add_image_size_arguments(
        parser, crop="CenterCrop (the overlays' size)", from_model="a generic checkpoint's, as trained"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    parser.add_argument("--colormap", default="jet", help="matplotlib colormap")
    add_subset_arguments(parser)
    add_device_arguments(parser, 16, "images per forward pass", num_workers=0)
    parser.add_argument("--amp", default="none", choices=AMP_CHOICES, help="autocast the forward pass")
    return parser


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> ExplanationRun:
    """Restore the model, explain ``--input``, print each image's classes, write the PNGs."""
    parser = parser or get_args_parser()
    classes = None
    if args.classes:
        try:
            classes = [int(field) for field in args.classes.split(",") if field.strip()]
        except ValueError:
            parser.error(f"--classes must be comma-separated class indices, got {args.classes!r}")
    snapshot_dir = args.snapshot_dir or os.path.join(args.root_dir, "snapshots", args.arch)
    output_dir = args.output_dir or os.path.join(args.root_dir, "runs", "explain")
    ensure_writable(output_dir, "--output_dir", is_folder=True)
    if args.html:
        ensure_writable(args.html, "--html", is_folder=True)
    device = resolve_device(args.device)
    samples = collect_inputs(args.input, args.img_dir)[: args.limit]
    samples = check_images_exist(samples, args.input, skip_missing=args.skip_missing)
    checkpoint = resolve_checkpoint(args.restore_from, snapshot_dir)
    model, metadata = load_lcam_model(args.arch, checkpoint, args.num_classes, args.backbone_weights, device)
    args.input_size, args.crop_size = resolve_image_sizes(args.input_size, args.crop_size, model)
    names = class_names_for(model.num_classes, args.class_names)
    print(f"Explaining {len(samples)} image(s) with {args.arch} from {metadata['path']} on {device}")
    options = ExplainOptions(
        topk=args.topk,
        classes=classes,
        class_names=names,
        output_dir=output_dir,
        grid=args.grid,
        device=device,
        amp=args.amp,
        input_size=args.input_size,
        crop_size=args.crop_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        alpha=args.alpha,
        colormap=args.colormap,
        keep_maps=False,
        html_dir=args.html,
    )
    run = explain_images(model, samples, options)
    for item in run.explanations:
        ranked = "; ".join(
            f"{describe_class(index, name)} {probability:.3f}"
            for index, name, probability in zip(item.classes, item.names, item.probabilities)
        )
        print(f"{item.path}: {ranked}")
    warn_unreadable(run.unreadable, listed_in=os.path.join(output_dir, "explanations.json"))
    print(f"Overlays written to {output_dir}")
    if run.page:
        print(f"Report page: {run.page}")
    return run


if __name__ == "__main__":
    run_cli(main, get_args_parser())
