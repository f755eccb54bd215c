"""Every torchvision classifier (or the names given) through L-CAM on any classifier: the layer
found, its token layout, the CAM's size for an image, or the one-line reason it is refused.

    python -m bench.check_classifiers                            # all of torchvision.models, 224 px
    python -m bench.check_classifiers --names vit_b_16,swin_t,timm:deit_small_patch16_224

Random weights (nothing is downloaded). Slow on a CPU: the large networks take a minute each
to build; the rows are printed as they come and written to ``--output``.
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from models.generic import GenericLCAM, torchvision_classifiers
from utils.core.cli import positive_int, run_cli
from utils.core.errors import UserError
from utils.core.files import write_json


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), add_help=add_help)
    parser.add_argument("--names", default=None, help="comma-separated backbones [every torchvision classifier]")
    parser.add_argument("--size", type=positive_int, default=224, help="image side in pixels")
    parser.add_argument("--output", default="runs/check_classifiers.json", help="the rows as JSON")
    return parser


def check(name: str, size: int) -> dict:
    """One backbone: its layer, layout and CAM size on a ``size`` px image, or its refusal."""
    start = time.perf_counter()
    try:
        model = GenericLCAM.build(backbone=name, pretrained=False, num_classes=10, input_size=size).eval()
        with torch.no_grad():
            cams = model(torch.rand(1, 3, size, size)).cams
    except UserError as error:
        return {"name": name, "refused": str(error), "seconds": round(time.perf_counter() - start, 1)}
    return {
        "name": name,
        "layer": model.layer,
        "layout": model.token_layout.kind,
        "cam_size": list(cams.shape[-2:]),
        "maps_reach_output": model.grid_reaches_output,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(args: argparse.Namespace) -> list[dict]:
    names = args.names.split(",") if args.names else torchvision_classifiers()
    rows = []
    for name in tqdm(names, desc="classifiers"):
        row = check(name.strip(), args.size)
        rows.append(row)
        outcome = (
            row.get("refused") or f"{row['layer']} ({row['layout']}) -> {row['cam_size'][0]} x {row['cam_size'][1]}"
        )
        tqdm.write(f"{name:24s} {outcome}")
        write_json(args.output, {"size": args.size, "rows": rows})
    refused = sum("refused" in row for row in rows)
    print(f"{len(rows) - refused} of {len(rows)} wrap with a grid of the image; {refused} refused")
    return rows


if __name__ == "__main__":
    run_cli(main, get_args_parser())
