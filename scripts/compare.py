"""Compare L-CAM checkpoints with Grad-CAM, Grad-CAM++, Score-CAM, RISE (and any method of
:data:`utils.baselines.BASELINES`) under one protocol: AD/IC at 100/50/15 %, explanation
throughput, a bar chart and a qualitative figure (a row per image, a column per method).

    python -m scripts.compare --lcam VGG16_L_CAM_Img=snapshots/VGG16_L_CAM_Img \\
        --methods gradcam,gradcampp,scorecam,rise --test_list datalist/ILSVRC/Evaluation_2000.txt \\
        --img_dir dataset/ILSVRC2012_img_val --output_dir runs/compare

Every method goes through :func:`utils.evaluation.evaluate`, the code path of
``Evaluation_L_CAM_*.py`` (same explained class, normalisation, ``keep_top``, masking in
[0, 1] space), so the numbers are comparable by construction. The baselines explain the
classifier of the first ``--lcam`` checkpoint of each backbone (VGG-16, ResNet-50, or the
network of a generic checkpoint, e.g. ``generic:resnet18``) at its family's target layer, or
the torchvision classifier given by ``--classifier``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from typing import Any

import torch

from models import ARCH_CHOICES, BackboneFamily, families, get_family
from models.generic import resolve_image_sizes
from utils.core.cli import (
    HelpFormatter,
    add_box_arguments,
    add_datalist_arguments,
    add_device_arguments,
    add_image_size_arguments,
    add_subset_arguments,
    positive_int,
    run_cli,
)
from utils.core.errors import closest_names
from utils.core.files import ensure_writable, write_json
from utils.core.runtime import AMP_CHOICES, resolve_device, seed_everything
from utils.data.datalists import evaluation_samples
from utils.evaluation import (
    LCAMExplainer,
    build_eval_loader,
    lcam_classifier,
    load_lcam_model,
    normalize_and_upsample,
    parse_percentages,
    warn_unreadable,
)
from utils.evaluation.comparison import (
    Entry,
    add_rise_arguments,
    command_baseline_entries,
    device_description,
    evaluate_entries,
    parse_methods,
    result_row,
    rise_mask_dir,
    score_line,
    write_entry_result,
)
from utils.evaluation.html_report import write_comparison_report
from utils.evaluation.insertion_deletion import (
    SUBSTRATES,
    evaluate_insertion_deletion,
    insertion_deletion_row,
    save_curves_figure,
)
from utils.evaluation.localization import (
    LOCALIZATION_TABLE_COLUMNS,
    evaluate_localization,
    load_sample_boxes,
    localization_cells,
    localization_chart_scores,
    localization_row,
)
from utils.evaluation.reports import (
    MethodScores,
    ResultsTable,
    kept_label,
    save_overlay_grid,
    save_scores_chart,
    write_markdown,
)
from utils.evaluation.road import evaluate_road, parse_road_percentiles, write_road_table
from utils.explainers.baselines import NormalizedClassifier

__all__ = ["get_args_parser", "main"]

DEFAULT_METHODS = "gradcam,gradcampp,scorecam,rise"


def _torchvision_families() -> tuple[BackboneFamily, ...]:
    """The families whose classifier ``--classifier`` can build (a torchvision builder)."""
    return tuple(family for family in families() if family.builder is not None)


def _key_value(text: str, flag: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key or not value:
        parser.error(f"{flag} expects KEY=VALUE, got {text!r}")
    return key, value


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="L-CAM against other explanation methods: AD/IC at 100/50/15 %, throughput, figures.",
        add_help=add_help,
        formatter_class=HelpFormatter,
    )
    what = parser.add_argument_group("what to compare")
    what.add_argument(
        "--lcam",
        action="append",
        default=[],
        metavar="ARCH=PATH",
        help=f"an L-CAM checkpoint (file or snapshot folder) of variant ARCH; repeatable. ARCH: {', '.join(ARCH_CHOICES)}",
    )
    what.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated baselines (utils.baselines.BASELINES, e.g. gradcam, gradcampp, scorecam, rise, "
        "gradcam-pkg:XGradCAM); '' for none",
    )
    what.add_argument(
        "--classifier",
        action="append",
        default=[],
        metavar="FAMILY=WEIGHTS",
        help=f"a torchvision classifier for the baselines (FAMILY: {' or '.join(f.name for f in _torchvision_families())}; "
        "WEIGHTS: a torchvision weights name such as IMAGENET1K_V1, a state_dict path, or 'none' for random weights); "
        "replaces the backbone of the --lcam checkpoints of that family for the baselines; repeatable (a generic "
        "checkpoint's baselines explain its own network)",
    )
    what.add_argument(
        "--num_classes", type=positive_int, default=None, help="classes [the checkpoints'; 1000 for --classifier]"
    )

    data = parser.add_argument_group("data and protocol")
    add_datalist_arguments(data)
    add_image_size_arguments(data, from_model="the --lcam checkpoint's when there is one, as trained")
    data.add_argument("--percentages", default="0,0.5,0.85", help="fractions of pixels dropped (0 keeps 100 %%)")
    add_subset_arguments(data)
    add_box_arguments(data)

    methods = parser.add_argument_group("method settings")
    add_rise_arguments(methods)
    methods.add_argument("--seed", type=int, default=0, help="seed of the RISE masks and of ROAD's noise")
    methods.add_argument(
        "--chunk_size",
        type=positive_int,
        default=128,
        help="masked images per forward (Score-CAM, RISE, insertion/deletion, ROAD)",
    )
    methods.add_argument(
        "--road", action="store_true", help="also ROAD (probability change and top-1 accuracy, MoRF and LeRF)"
    )
    methods.add_argument("--road_limit", type=positive_int, default=None, help="images used for ROAD [all]")
    methods.add_argument(
        "--road_percentiles", default="10,20,30,40,50,60,70,80,90", help="ROAD's removal percentiles, averaged"
    )
    methods.add_argument(
        "--insertion_deletion", action="store_true", help="also deletion and insertion AUCs (RISE paper) and curves"
    )
    methods.add_argument(
        "--id_step", type=positive_int, default=224, help="pixels deleted/inserted per step [224: 224 steps at 224 px]"
    )
    methods.add_argument("--id_substrate", default="zeros", choices=SUBSTRATES, help="what deletion puts in place")
    methods.add_argument("--id_limit", type=positive_int, default=64, help="images used for insertion/deletion")

    output = parser.add_argument_group("output and speed")
    output.add_argument("--output_dir", default="runs/compare", help="tables, figures and per-method results")
    output.add_argument("--figure_images", type=positive_int, default=4, help="rows of the qualitative figure")
    output.add_argument(
        "--html", default=None, metavar="OUT_DIR", help="also write a web page: sortable table, figures, maps"
    )
    add_device_arguments(output, 16)
    output.add_argument("--amp", default="none", choices=AMP_CHOICES, help="autocast the forward passes")
    output.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[float, ...]:
    try:
        percentages = parse_percentages(args.percentages)
    except ValueError as error:
        parser.error(f"--percentages: {error}")
    try:
        args.road_percentile_list = list(parse_road_percentiles(args.road_percentiles))
    except ValueError as error:
        parser.error(f"--road_percentiles: {error}")
    args.method_list = parse_methods(args.methods)
    args.lcam_list = [_key_value(text, "--lcam", parser) for text in args.lcam]
    for arch, _ in args.lcam_list:
        if arch not in ARCH_CHOICES:
            parser.error(f"--lcam: unknown arch {arch!r}; {closest_names(arch, ARCH_CHOICES)}")
    args.classifier_list = [_key_value(text, "--classifier", parser) for text in args.classifier]
    buildable = {family.name: family for family in _torchvision_families()}
    for name, _ in args.classifier_list:
        if name not in buildable:
            parser.error(
                f"--classifier: unknown family {name!r}; valid: {', '.join(buildable)} "
                "(the baselines of a generic --lcam checkpoint explain its own network)"
            )
    if not args.lcam_list and not args.method_list:
        parser.error("nothing to compare: give --lcam and/or --methods")
    if args.method_list and not args.lcam_list and not args.classifier_list:
        parser.error("the baselines need a classifier: give --lcam ARCH=PATH or --classifier FAMILY=WEIGHTS")
    return percentages


def _build_entries(args: argparse.Namespace, device: torch.device) -> list[Entry]:
    """The L-CAM rows, then every baseline on every classifier: the first ``--lcam``
    checkpoint's of each backbone, or a ``--classifier``'s. The image sizes not given become
    those of the one ``--lcam`` model (as its interpolation, see :func:`_loader_interpolation`)."""
    entries: list[Entry] = []
    classifiers: dict[str, tuple[NormalizedClassifier, str]] = {}
    for arch, path in args.lcam_list:
        model, metadata = load_lcam_model(arch, path, args.num_classes, device=device)
        backbone = model.backbone_label
        entries.append(Entry(arch, backbone, lcam_classifier(model), LCAMExplainer(model), metadata["path"]))
        if args.method_list and backbone not in classifiers:
            classifiers[backbone] = (NormalizedClassifier.from_lcam(model), f"backbone of {arch}")
    lcam_models = [entry.explainer.model for entry in entries]
    size_source = lcam_models[0] if len(lcam_models) == 1 else None
    args.input_size, args.crop_size = resolve_image_sizes(args.input_size, args.crop_size, size_source)
    for name, weights in args.classifier_list:
        family = get_family(name)
        pretrained = False if weights == "none" else weights
        network, weights_name = family.load_classifier(pretrained, args.num_classes or 1000)
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        classifier = NormalizedClassifier.from_torchvision(network, family).to(device).eval()
        classifiers[family.name] = (classifier, f"torchvision {family.name} ({weights_name})")
    for backbone, (classifier, source) in classifiers.items():
        entries += command_baseline_entries(args, classifier, backbone, source)
    return entries


def _loader_interpolation(entries: list[Entry]) -> str:
    """The resize filter of the loader all methods share: the L-CAM model's when the run has
    exactly one, else bilinear."""
    models = [entry.explainer.model for entry in entries if isinstance(entry.explainer, LCAMExplainer)]
    return models[0].interpolation if len(models) == 1 else "bilinear"


def _rows(results: list[dict[str, Any]], percentages: tuple[float, ...]) -> tuple[list[str], list[list[Any]]]:
    header = ["backbone", "method"]
    for percentage in percentages:
        header += [f"AD@{kept_label(percentage)}", f"IC@{kept_label(percentage)}"]
    header += ["explain img/s", "eval img/s", "images", "device"]
    road = any("road_combined" in result for result in results)
    if road:
        header += ["ROAD MoRF", "ROAD LeRF", "ROAD combined", "ROAD MoRF acc % ↓", "ROAD LeRF acc % ↑"]
    insertion_deletion = any("deletion_auc" in result for result in results)
    if insertion_deletion:
        header += ["deletion AUC ↓", "insertion AUC ↑"]
    localization = any("max_box_acc_v2" in result for result in results)
    if localization:
        header += [title for _, title in LOCALIZATION_TABLE_COLUMNS]
    rows = []
    for result in results:
        row = [result["family"], result["method"]]
        for entry in result["summary"]:
            row += [round(entry["average_drop"], 2), round(entry["increase_in_confidence"], 2)]
        row += [round(result["explain_images_per_second"], 2), round(result["images_per_second"], 2)]
        row += [result["num_images"], result["device"]]
        if road:
            row += [round(result.get(key, float("nan")), 4) for key in ("road_morf", "road_lerf", "road_combined")]
            row += [round(result.get(f"road_{key}_accuracy", float("nan")), 2) for key in ("morf", "lerf")]
        if insertion_deletion:
            row += [round(result.get(key, float("nan")), 4) for key in ("deletion_auc", "insertion_auc")]
        if localization:
            row += localization_cells(result)
        rows.append(row)
    return header, rows


TABLE_NOTE = (
    "AD: Average Drop (lower is better), IC: Increase in Confidence (higher is better), at the top "
    "N % of each map's pixels kept. explain img/s: images explained per second (the explainer alone); "
    "eval img/s: the whole protocol (plain and masked passes included). deletion/insertion AUC "
    "(--insertion_deletion): area under the explained class's probability as the most salient "
    "pixels are deleted (lower is better) or inserted on a blurred copy (higher is better). ROAD "
    "(--road): mean change of that probability when the most (MoRF, lower is better) or least "
    "(LeRF, higher is better) relevant pixels are imputed, combined = (LeRF - MoRF) / 2 (higher is "
    "better); acc %: images whose top-1 class survives (per percentile in road.csv). "
    "Localisation (--boxes), on the correctly classified images with a box: pointing game, share of the "
    "map's energy in the boxes, MaxBoxAcc at IoU 0.3/0.5/0.7 and MaxBoxAccV2 (their mean); higher is better. "
    "Pointing game ceiling: the most any map at the method's resolution, upsampled, could score "
    "(a coarse map peaks only near its cells' centres, so it cannot point into a small box between them)."
)


def write_tables(results: list[dict[str, Any]], percentages: tuple[float, ...], output_dir: str) -> tuple[str, str]:
    """``comparison.md`` (a markdown table) and ``comparison.csv``; returns their paths."""
    table = ResultsTable(*_rows(results, percentages))
    markdown = write_markdown(os.path.join(output_dir, "comparison.md"), table.markdown(), TABLE_NOTE)
    return markdown, table.write_csv(os.path.join(output_dir, "comparison.csv"))


def save_bar_chart(results: list[dict[str, Any]], percentages: tuple[float, ...], path: str) -> str:
    """AD and IC per method (bars) and percentage (groups), one panel each."""
    scores = [
        replace(
            MethodScores.from_summary(f"{result['method']} ({result['family']})", result["summary"]),
            localisation=localization_chart_scores(result),
        )
        for result in results
    ]
    return save_scores_chart(scores, percentages, path)


def qualitative_maps(
    entries: list[Entry], loader, device: torch.device, num_images: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[str], list[list[str]]]:
    """The first ``num_images`` readable images and, per method, the map of the class each
    classifier predicts, as the evaluator scores it (min-max, upsampled); the methods'
    titles and the classes shown."""
    images = []
    for batch in loader:
        if batch.images is not None:
            images.append(batch.images)
        if sum(len(chunk) for chunk in images) >= num_images:
            break
    images = torch.cat(images)[:num_images].to(device)
    maps: list[torch.Tensor] = []
    classes_shown: list[list[str]] = []
    for entry in entries:
        with torch.inference_mode():
            classes = entry.classifier(images).argmax(dim=1)
        explained = entry.explainer.explain(images, classes.clone())
        with torch.inference_mode():
            maps.append(normalize_and_upsample(explained.detach(), images.shape[-2:]).cpu())
        classes_shown.append([f"class {int(k)}" for k in classes])
    titles = [f"{entry.name}\n({entry.family})" for entry in entries]
    return images.cpu(), maps, titles, classes_shown


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> list[dict[str, Any]]:
    """Run every comparison row; write the tables, the figures and per-method results under
    ``--output_dir`` (the tables and ``comparison.json`` again after each method, so an
    interrupted run keeps the rows it finished); return the rows as dicts."""
    parser = parser or get_args_parser()
    percentages = _check_args(parser, args)
    ensure_writable(args.output_dir, "--output_dir", is_folder=True)
    if args.html:
        ensure_writable(args.html, "--html", is_folder=True)
    if "rise" in args.method_list:
        ensure_writable(rise_mask_dir(args), "--rise_mask_dir", is_folder=True)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    samples = evaluation_samples(args.test_list, args.img_dir, args.num_classes, args.limit, args.skip_missing)
    entries = _build_entries(args, device)
    boxes = (
        load_sample_boxes(args.boxes, samples, args.img_dir, args.input_size, args.crop_size) if args.boxes else None
    )
    loader = build_eval_loader(
        samples,
        args.input_size,
        args.crop_size,
        args.batch_size,
        args.num_workers,
        device,
        interpolation=_loader_interpolation(entries),
    )
    device_name = device_description(device)
    print(f"Comparing {len(entries)} methods on {len(samples)} images of {args.test_list} on {device_name}")
    results = []
    rows = evaluate_entries(
        entries, loader, percentages, device, together=False, amp=args.amp, progress=not args.no_progress
    )
    for entry, result, timed in rows:
        if not results:  # every method reads the same images
            warn_unreadable(result.unreadable)
        row = result_row(entry, result, timed, device_name)
        if args.road:
            row.update(
                evaluate_road(
                    entry.classifier,
                    entry.explainer,
                    loader,
                    device,
                    percentiles=args.road_percentile_list,
                    limit=args.road_limit,
                    seed=args.seed,
                    chunk_size=args.chunk_size,
                    amp=args.amp,
                    progress=not args.no_progress,
                )
            )
        if args.insertion_deletion:
            row.update(
                insertion_deletion_row(
                    evaluate_insertion_deletion(
                        entry.classifier,
                        entry.explainer,
                        loader,
                        device,
                        step=args.id_step,
                        substrate=args.id_substrate,
                        chunk_size=args.chunk_size,
                        limit=args.id_limit,
                        amp=args.amp,
                        progress=not args.no_progress,
                    )
                )
            )
        if boxes is not None:
            localization = evaluate_localization(
                entry.classifier,
                entry.explainer,
                loader,
                boxes,
                device,
                args.amp,
                progress=not args.no_progress,
                pointing_tolerance=args.pointing_tolerance,
            )
            row.update(localization_row(localization))
        write_entry_result(result, entry, args.output_dir, row)
        print(score_line(entry, result, timed))
        results.append(row)
        markdown, table = _write_summary(results, percentages, args)
    charts = [("AD and IC", save_bar_chart(results, percentages, os.path.join(args.output_dir, "ad_ic.png")))]
    if args.insertion_deletion:
        curves = [{"label": f"{row['method']} ({row['family']})", **row} for row in results]
        path = save_curves_figure(curves, os.path.join(args.output_dir, "insertion_deletion.png"))
        charts.append(("deletion and insertion curves", path))
    chart = ", ".join(path for _, path in charts)
    if args.road:
        chart += ", " + write_road_table(results, os.path.join(args.output_dir, "road.csv"))
    images, maps, titles, classes_shown = qualitative_maps(entries, loader, device, args.figure_images)
    figure = os.path.join(args.output_dir, "qualitative.png")
    save_overlay_grid(images, maps, titles, figure, map_titles=classes_shown)
    if args.html:
        page = write_comparison_report(
            args.html, *_rows(results, percentages), figures=charts, images=images, maps=maps,
            method_titles=titles, map_titles=classes_shown, note=TABLE_NOTE,
        )  # fmt: skip
        figure += f", {page}"
    with open(markdown, encoding="utf-8") as handle:
        print(handle.read())
    print(f"wrote {markdown}, {table}, {chart}, {figure}")
    return results


def _write_summary(
    results: list[dict[str, Any]], percentages: tuple[float, ...], args: argparse.Namespace
) -> tuple[str, str]:
    """The tables and ``comparison.json`` (the flags and every row so far)."""
    markdown, table = write_tables(results, percentages, args.output_dir)
    run = {
        key: value for key, value in vars(args).items() if isinstance(value, (str, int, float, bool, list, type(None)))
    }
    write_json(os.path.join(args.output_dir, "comparison.json"), {"run": run, "results": results}, indent=1)
    return markdown, table


if __name__ == "__main__":
    run_cli(main, get_args_parser())
