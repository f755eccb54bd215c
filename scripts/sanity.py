"""Sanity checks of explanations (Adebayo et al., NeurIPS 2018): do L-CAM's and the baselines'
maps change when the classifier's layers are re-initialised one after the other from the
output down (cascading, or each alone), or when another class is explained?

    python -m scripts.sanity --lcam VGG16_L_CAM_Img=snapshots/VGG16_L_CAM_Img --methods gradcam,gradcampp \\
        --test_list datalist/ILSVRC/Evaluation_2000.txt --img_dir dataset/ILSVRC2012_img_val --limit 32

Writes sanity.json, sanity.csv, sanity.md (Spearman rank correlation, its absolute-value
form and SSIM between the original and the randomised maps, per step and method),
sanity_maps.png (a row of maps per step, a column per method) and sanity_curves.png under
``--output_dir``. The checks and their metrics: :mod:`utils.evaluation.sanity`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from models import ARCH_CHOICES, LCAM, families, get_family
from models.generic import resolve_image_sizes
from utils.core.cli import (
    HelpFormatter,
    add_datalist_arguments,
    add_device_arguments,
    add_image_size_arguments,
    add_precision_arguments,
    add_subset_arguments,
    positive_int,
    run_cli,
)
from utils.core.errors import closest_names
from utils.core.files import ensure_writable
from utils.core.runtime import resolve_device, seed_everything
from utils.data.datalists import evaluation_samples
from utils.evaluation import LCAMExplainer, build_eval_loader, lcam_classifier, load_lcam_model, warn_unreadable
from utils.evaluation.comparison import (
    Entry,
    add_rise_arguments,
    command_baseline_entries,
    parse_methods,
    rise_mask_dir,
)
from utils.evaluation.sanity import (
    MODES,
    run_sanity_checks,
    save_sanity_curves,
    save_sanity_maps,
    write_sanity_tables,
)
from utils.explainers.baselines import NormalizedClassifier

__all__ = ["get_args_parser", "main"]

DEFAULT_METHODS = "gradcam,gradcampp"
DEFAULT_IMAGES = 32


def _torchvision_family_names() -> list[str]:
    return [family.name for family in families() if family.builder is not None]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Sanity checks of explanations: model-parameter randomisation (cascading or independent, "
        "layer by layer from the output) and label randomisation; Spearman rank correlation and SSIM with the "
        "original maps, tables and figures.",
        add_help=add_help,
        formatter_class=HelpFormatter,
    )
    what = parser.add_argument_group("what to check")
    what.add_argument(
        "--lcam",
        default=None,
        metavar="ARCH=PATH",
        help=f"an L-CAM checkpoint (file or snapshot folder) of variant ARCH; the baselines then explain its "
        f"classifier. ARCH: {', '.join(ARCH_CHOICES)}",
    )
    what.add_argument(
        "--classifier",
        default=None,
        metavar="FAMILY=WEIGHTS",
        help=f"instead of --lcam: a torchvision classifier for the baselines alone (FAMILY: "
        f"{' or '.join(_torchvision_family_names())}; WEIGHTS: a torchvision weights name such as IMAGENET1K_V1, "
        "a state_dict path, or 'none')",
    )
    what.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated baselines (e.g. gradcam, gradcampp, scorecam, rise, gradcam-pkg:XGradCAM); '' for none",
    )
    what.add_argument(
        "--num_classes", type=positive_int, default=None, help="classes [the checkpoint's; 1000 for --classifier]"
    )

    data = parser.add_argument_group("data")
    add_datalist_arguments(data)
    add_image_size_arguments(data, from_model="the --lcam checkpoint's, as trained")
    add_subset_arguments(data)
    parser.set_defaults(limit=DEFAULT_IMAGES)

    checks = parser.add_argument_group("checks")
    checks.add_argument(
        "--mode",
        default="cascading",
        choices=MODES,
        help="cascading: the layers re-initialised cumulatively from the output down; independent: one at a time",
    )
    checks.add_argument("--no_label_test", action="store_true", help="skip the label randomisation test")
    checks.add_argument("--seed", type=int, default=0, help="seeds the re-initialisations, the random classes, RISE")
    add_rise_arguments(checks)
    checks.add_argument(
        "--chunk_size", type=positive_int, default=128, help="masked images per forward (Score-CAM, RISE)"
    )

    output = parser.add_argument_group("output and speed")
    output.add_argument("--output_dir", default="runs/sanity", help="tables and figures")
    output.add_argument(
        "--figure_images",
        type=positive_int,
        default=1,
        help="images shown in sanity_maps.png (a block of columns each)",
    )
    add_device_arguments(output, 16)
    add_precision_arguments(output, amp_help="autocast the explainers")
    output.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def _split_pair(text: str | None, flag: str, parser: argparse.ArgumentParser) -> tuple[str, str] | None:
    if text is None:
        return None
    key, separator, value = text.partition("=")
    if not separator or not key or not value:
        parser.error(f"{flag} expects {'ARCH=PATH' if flag == '--lcam' else 'FAMILY=WEIGHTS'}, got {text!r}")
    return key, value


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.method_list = parse_methods(args.methods)
    args.lcam_pair = _split_pair(args.lcam, "--lcam", parser)
    args.classifier_pair = _split_pair(args.classifier, "--classifier", parser)
    if args.lcam_pair and args.classifier_pair:
        parser.error("give --lcam or --classifier, not both (one network is randomised per run)")
    if not args.lcam_pair and not args.classifier_pair:
        parser.error("nothing to check: give --lcam ARCH=PATH, or --classifier FAMILY=WEIGHTS with --methods")
    if args.lcam_pair and args.lcam_pair[0] not in ARCH_CHOICES:
        parser.error(f"--lcam: unknown arch {args.lcam_pair[0]!r}; {closest_names(args.lcam_pair[0], ARCH_CHOICES)}")
    if args.classifier_pair:
        if args.classifier_pair[0] not in _torchvision_family_names():
            parser.error(
                f"--classifier: unknown family {args.classifier_pair[0]!r}; valid: "
                f"{', '.join(_torchvision_family_names())}"
            )
        if not args.method_list:
            parser.error("--classifier needs --methods: the baselines are what is checked on it")


def _subject(
    args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, Callable[[nn.Module], Sequence[Entry]]]:
    """The network to randomise and how to build its explainers (on it and on its copy)."""
    if args.lcam_pair:
        arch, path = args.lcam_pair
        model, metadata = load_lcam_model(arch, path, args.num_classes, device=device)
        family = model.backbone_label

        def build_lcam(network: nn.Module) -> list[Entry]:
            entries = [Entry(arch, family, lcam_classifier(network), LCAMExplainer(network), metadata["path"])]
            if args.method_list:
                classifier = NormalizedClassifier.from_lcam(network).to(device)
                entries += command_baseline_entries(args, classifier, family, f"backbone of {arch}")
            return entries

        return model, build_lcam
    name, weights = args.classifier_pair
    family = get_family(name)
    network, weights_name = family.load_classifier(False if weights == "none" else weights, args.num_classes or 1000)
    network.requires_grad_(False)
    network.to(device).eval()
    source = f"torchvision {family.name} ({weights_name})"

    def build_baselines(network: nn.Module) -> list[Entry]:
        classifier = NormalizedClassifier.from_torchvision(network, family).to(device)
        return command_baseline_entries(args, classifier, family.name, source)

    return network, build_baselines


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """Run the checks; write the tables and figures under ``--output_dir``; return the
    tables' rows and the written paths."""
    parser = parser or get_args_parser()
    _check_args(parser, args)
    ensure_writable(args.output_dir, "--output_dir", is_folder=True)
    if "rise" in args.method_list:
        ensure_writable(rise_mask_dir(args), "--rise_mask_dir", is_folder=True)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    samples = evaluation_samples(args.test_list, args.img_dir, args.num_classes, args.limit, args.skip_missing)
    network, build_entries = _subject(args, device)
    args.input_size, args.crop_size = resolve_image_sizes(args.input_size, args.crop_size, network)
    interpolation = network.interpolation if isinstance(network, LCAM) else "bilinear"
    loader = build_eval_loader(
        samples, args.input_size, args.crop_size, args.batch_size, args.num_workers, device, interpolation=interpolation
    )
    print(f"Sanity checks ({args.mode} randomisation) on {len(samples)} images of {args.test_list} on {device}")
    result = run_sanity_checks(
        network,
        build_entries,
        loader,
        device,
        mode=args.mode,
        label_test=not args.no_label_test,
        seed=args.seed,
        amp=args.amp,
        channels_last=args.channels_last,
        figure_images=args.figure_images,
        progress=not args.no_progress,
    )
    warn_unreadable(
        [{"index": index, "path": samples[index][0], "reason": reason} for index, reason in result.unreadable]
    )
    run = {
        key: value
        for key, value in vars(args).items()
        if isinstance(value, (str, int, float, bool, list, tuple, type(None)))
    }
    written = write_sanity_tables(result, args.output_dir, run)
    written += (
        save_sanity_maps(result, os.path.join(args.output_dir, "sanity_maps.png")),
        save_sanity_curves(result, os.path.join(args.output_dir, "sanity_curves.png")),
    )
    with open(written[2], encoding="utf-8") as handle:
        print(handle.read())
    print("wrote " + ", ".join(written))
    return {"rows": result.rows, "files": list(written)}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
