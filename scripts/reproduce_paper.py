"""The paper's table in one command (README, 'Reproduce the paper'): every released L-CAM head
found under ``snapshots/<arch>/``, and Grad-CAM, Grad-CAM++, Score-CAM and RISE on the same
backbones, AD/IC at 100/50/15 % kept on the authors' evaluation list, one pass over the
images per backbone; the table as Markdown, CSV and JSON (:mod:`utils.evaluation.reproduction`).

    python -m scripts.reproduce_paper                    # everything found, on the default paths
    python -m scripts.reproduce_paper --dry_run          # check the setup and say what would run
    python -m scripts.reproduce_paper --limit 100 --methods gradcam,gradcampp --amp bf16
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from models import family_of
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
from utils.core.errors import UserValueError
from utils.core.runtime import AMP_CHOICES
from utils.evaluation.reproduction import (
    HEAD_BACKBONE,
    PAPER_METHODS,
    RELEASED_HEADS,
    TableSettings,
    plan_paper_table,
    run_paper_table,
)

__all__ = ["get_args_parser", "main", "settings_from"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="The paper's AD/IC table: the released L-CAM heads and Grad-CAM, Grad-CAM++, Score-CAM, RISE "
        "on their backbones, at 100/50/15 % kept, on the authors' evaluation list.",
        add_help=add_help,
        formatter_class=HelpFormatter,
    )
    what = parser.add_argument_group("what to evaluate")
    what.add_argument(
        "--heads",
        default=None,
        help=f"comma-separated heads, each evaluated from the newest checkpoint of SNAPSHOTS_DIR/<head>/ (a "
        f"missing one is an error) [the released heads found there: {', '.join(RELEASED_HEADS)}; "
        "each missing one is named in a warning]",
    )
    what.add_argument(
        "--methods", default=",".join(PAPER_METHODS), help="comma-separated baselines on each backbone; '' for none"
    )
    what.add_argument(
        "--baseline_weights",
        default="IMAGENET1K_V1",
        help="the classifier the baselines explain: a torchvision weights name (the authors' comparison: "
        f"IMAGENET1K_V1, downloaded by torchvision once), a state_dict path, '{HEAD_BACKBONE}' (the network inside "
        "the first head of each backbone: nothing downloaded) or 'none' (random weights, for tests)",
    )

    paths = parser.add_argument_group("paths")
    paths.add_argument("--root_dir", default=REPO_ROOT, help="project root; the default paths below are under it")
    paths.add_argument("--snapshots_dir", default=None, help="one folder per head [ROOT/snapshots]")
    paths.add_argument("--img_dir", default=None, help="the validation images [ROOT/dataset/ILSVRC2012_img_val]")
    paths.add_argument(
        "--test_list", default=None, help="evaluation datalist [ROOT/datalist/ILSVRC/Evaluation_2000.txt]"
    )
    paths.add_argument("--output_dir", default=None, help="the table and per-method results [ROOT/runs/reproduce]")

    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--percentages", default="0,0.5,0.85", help="fractions of pixels dropped (0 keeps 100 %%)")
    add_image_size_arguments(protocol)
    add_subset_arguments(protocol)
    protocol.add_argument(
        "--rise_masks",
        type=positive_int,
        default=None,
        help="RISE masks N [the reference's: "
        + ", ".join(f"{family.rise_masks} {family.title}" for family in dict.fromkeys(map(family_of, RELEASED_HEADS)))
        + "]",
    )
    protocol.add_argument(
        "--rise_mask_dir", default=None, help="where RISE masks are cached and reused [OUTPUT_DIR/rise_masks]"
    )
    protocol.add_argument("--seed", type=non_negative_int, default=0, help="seed of the RISE masks")
    protocol.add_argument(
        "--chunk_size", type=positive_int, default=128, help="masked images per forward (Score-CAM, RISE)"
    )

    run = parser.add_argument_group("run")
    add_device_arguments(run, 16)
    run.add_argument("--amp", default="none", choices=AMP_CHOICES, help="autocast the forward passes")
    run.add_argument(
        "--dry_run",
        action="store_true",
        help="check the heads, the list, the images and the outputs, say what would run, and stop",
    )
    run.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def settings_from(args: argparse.Namespace) -> TableSettings:
    """The run's settings from the parsed flags (the default paths under ``--root_dir``)."""
    root = args.root_dir
    return TableSettings(
        snapshots_dir=args.snapshots_dir or os.path.join(root, "snapshots"),
        img_dir=args.img_dir or os.path.join(root, "dataset", "ILSVRC2012_img_val"),
        test_list=args.test_list or os.path.join(root, "datalist", "ILSVRC", "Evaluation_2000.txt"),
        output_dir=args.output_dir or os.path.join(root, "runs", "reproduce"),
        heads=_names(args.heads),
        methods=_names(args.methods),
        baseline_weights=args.baseline_weights,
        percentages=args.percentages,
        input_size=args.input_size,
        crop_size=args.crop_size,
        limit=args.limit,
        skip_missing=args.skip_missing,
        rise_masks=args.rise_masks,
        rise_mask_dir=args.rise_mask_dir,
        seed=args.seed,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        amp=args.amp,
        progress=not args.no_progress,
    )


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Check the setup (everything missing named before any work), then evaluate and write
    the table; returns its rows (none with ``--dry_run``)."""
    if args.crop_size > args.input_size:
        raise UserValueError(f"--crop_size {args.crop_size} is larger than --input_size {args.input_size}")
    plan = plan_paper_table(settings_from(args))
    if args.dry_run:
        print("\n".join(plan.describe()))
        return []
    return run_paper_table(plan)


if __name__ == "__main__":
    run_cli(main, get_args_parser(), interrupted_hint="; the backbones finished are in the table")
