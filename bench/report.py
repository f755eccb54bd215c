"""Markdown tables from the JSON files of ``bench.bench_lcam`` and ``bench.bench_data``.

    python -m bench.report runs/bench/*.json --output runs/bench/report.md

One table per ``bench_lcam`` file (its device and settings as the heading; a column pair
per family: images/s, ratio to the backbone's forward, peak memory, and the project's target
when the measure has one), one line per ``bench_data`` file.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from models.families import get_family
from utils.core.errors import UserError
from utils.core.files import atomic_open


def family_title(name: str) -> str:
    """The registered family's title (``"VGG-16"``); a ``generic:NETWORK`` row keeps its name."""
    try:
        return get_family(name).title
    except UserError:
        return name


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("reports", nargs="+", help="JSON files written by bench.bench_lcam / bench.bench_data --output")
    parser.add_argument("--output", default="", help="also write the markdown to this file")
    return parser


def settings_label(args: dict) -> str:
    """``bf16, channels_last, compile default, backbone reference, batch 128 (training 64), 224 px``."""
    parts = [args.get("amp", "none") if args.get("amp", "none") != "none" else "fp32"]
    if args.get("channels_last"):
        parts.append("channels_last")
    if args.get("compile"):
        parts.append(f"compile {args['compile'] if isinstance(args['compile'], str) else 'default'}")
    parts.append(f"backbone {args.get('backbone_mode', 'reference')}")
    parts.append(f"batch {args.get('batch_size')} (training {args.get('train_batch_size')})")
    parts.append(f"{args.get('size')} px")
    return ", ".join(parts)


def _cell(row: dict | None) -> list[str]:
    if row is None:
        return ["", "", ""]
    if row.get("error"):
        return ["failed", row["error"].replace("|", "/"), ""]
    ratio = f"{row['ratio_to_backbone']:.3f}"
    target = row.get("target_ratio")
    if target:
        ratio += f" ({'met' if row['ratio_to_backbone'] >= target else 'missed'} >= {target:.2f})"
    peak = row.get("peak_mib")
    memory = f"{peak:.0f}" if peak is not None else "n/a"
    ratio_to_reference = row.get("peak_ratio_to_reference_settings")
    if ratio_to_reference is not None:
        memory += f" ({ratio_to_reference:.2f} x ref. settings)"
    return [f"{row['images_per_s']:.1f}", ratio, memory]


def lcam_table(report: dict) -> str:
    """The markdown of one ``bench_lcam`` report: heading line, then a table whose rows
    are the measures and whose columns are img/s, ratio and peak MiB per family."""
    families = list(dict.fromkeys(row["family"] for row in report["rows"]))
    measures = list(dict.fromkeys((row["key"], row["measure"]) for row in report["rows"]))
    by_position = {(row["family"], row["key"]): row for row in report["rows"]}
    header = ["measure"]
    for family in families:
        name = family_title(family)
        header += [f"{name} img/s", f"{name} ratio", f"{name} peak MiB"]
    lines = [
        f"**{report['device']}**, torch {report.get('torch', '?')}: {settings_label(report['args'])}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for key, measure in measures:
        cells = [measure]
        for family in families:
            cells += _cell(by_position.get((family, key)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_line(report: dict) -> str:
    """One ``bench_data`` report as a sentence."""
    args = report["args"]
    training = report["training_step"]
    return (
        f"**{report['device']}**, data path (batch {args['batch_size']}): PIL in {args['num_workers']} workers "
        f"{report['pil_workers']:.0f} img/s ({report['pil_workers'] / training:.2f} x the {args['arch']} training "
        f"step's {training:.0f} img/s at {args['amp']}), device decode {report['device_decode']:.0f} img/s "
        f"({report['device_decode'] / training:.2f} x)."
    )


def render(reports: Sequence[dict]) -> str:
    """All reports, in the order given, as one markdown document."""
    sections = [lcam_table(report) if "rows" in report else data_line(report) for report in reports]
    return "\n\n".join(sections) + "\n"


def main(args: argparse.Namespace) -> str:
    reports = []
    for path in args.reports:
        try:
            with open(path, encoding="utf-8") as handle:
                report = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"{path}: not a readable bench JSON file ({error})") from error
        if "rows" not in report and "training_step" not in report:
            raise SystemExit(f"{path}: neither a bench_lcam nor a bench_data report (no 'rows' or 'training_step' key)")
        reports.append(report)
    markdown = render(reports)
    print(markdown, end="")
    if args.output:
        with atomic_open(args.output) as handle:
            handle.write(markdown)
    return markdown


if __name__ == "__main__":
    main(get_args_parser().parse_args())
