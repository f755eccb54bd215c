"""L-CAM-Img trained by the README's command for one's own CNN against Grad-CAM on the same
classifier, on generated datasets with boxes, for several networks and seeds.

    python -m bench.small_data --output_dir runs/small_data           # both networks, seeds 0 and 1 (CPU: hours)
    python -m bench.small_data --datasets shapes --networks demo-cnn --seeds 0
    python -m bench.small_data --quick --output_dir /tmp/sd            # a smoke test; its numbers mean nothing

For each dataset (``digits``: utils/data/digits.py, ``shapes``: utils/data/shapes.py), network
(``demo-cnn``: demo.DigitsCNN; ``resnet18``: torchvision's, random init; ``resnet18-small``: the
same without the stem's max-pool, :func:`resnet18_small_images`) and seed: (1) train the
classifier on the training images (AdamW, cosine lr; ``utils.training.study``), save its
state_dict and its predictions of the training images as a datalist; (2) for each
``--head_inits`` value, run ``train_L_CAM.py --arch generic --backbone ... --backbone_weights
classifier.pth`` (the ``small-data`` recipe, the README's command, with ``--val_list`` on the
validation images) in a child process and measure its CPU time; (3) score on the test images,
with the explained class the prediction: Grad-CAM, the L-CAM head at its initialisation (0
training steps: the classifier's CAM), and each trained head (``lcam_best.pth.tar``): AD/IC
at 100/50/15 % kept, energy in the box and pointing game (correctly classified images),
strict and with the usual tolerance, and the strict game's ceiling at the network's map size.

Writes ``results.json`` / ``results.csv`` (one row per dataset, network, seed and method) and
``results.md`` (mean and standard deviation over the seeds, and whether L-CAM-Img with the
recipe reaches a pointing game >= 90 % and AD/IC at 100 % within Grad-CAM's noise) under
``--output_dir``, after every step; a classifier or head already trained in ``--output_dir`` is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torchvision
from torch import nn

from models.generic import GenericLCAM, init_head_from_classifier, load_network
from utils.core.checkpoint import checkpoint_name
from utils.core.cli import REPO_ROOT, command_line, non_negative_int, positive_int, run_cli
from utils.core.errors import UserValueError
from utils.core.files import atomic_open, ensure_writable, write_json
from utils.core.runtime import resolve_device, seed_everything
from utils.data.digits import DigitsSplit, load_split, make_digits_dataset
from utils.data.shapes import make_shapes_dataset
from utils.evaluation import LCAMExplainer, load_lcam_model
from utils.evaluation.reports import ResultsTable
from utils.explainers.baselines import NormalizedClassifier, build_explainer
from utils.training.log import LOG_NAME
from utils.training.recipe import RECIPES
from utils.training.study import SCORE_COLUMNS, predict, score_explainer, train_classifier, write_predicted_datalist
from utils.training.validation import kept_epoch

DATASETS: dict[str, Callable[..., Any]] = {"digits": make_digits_dataset, "shapes": make_shapes_dataset}


class Network(NamedTuple):
    """A network of the study: its ``--backbone`` spec, the layer Grad-CAM reads and the
    epochs of its classifier and of its heads by default."""

    spec: str
    layer: str
    classifier_epochs: int
    head_epochs: int


# the heads' epochs: 630 steps for the demo's CNN; 189 for the ResNets, within 10 min of CPU
NETWORKS = {
    "demo-cnn": Network("demo:DigitsCNN", "features", 12, 10),
    "resnet18": Network("resnet18", "layer4", 8, 3),
    "resnet18-small": Network("bench.small_data:resnet18_small_images", "layer4", 8, 3),
}
HEAD_INITS = ("classifier", "random")
CPU_FILE = "cpu_seconds.json"  # beside a finished head: its CPU time and command
METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "lcam_init": "L-CAM-Img head at its initialisation (the classifier's CAM, 0 steps)",
    "lcam_classifier": "L-CAM-Img, `--recipe small-data` (its default `--head_init classifier`)",
    "lcam_random": "L-CAM-Img, `--recipe small-data --head_init random`",
}
# the study's scores, and the pointing game with its usual tolerance (15 px at 224 px)
TABLE_COLUMNS = (*SCORE_COLUMNS, "pointing_game_tolerant")
RESULT_FIELDS = (
    "dataset",
    "network",
    "seed",
    "method",
    *TABLE_COLUMNS,
    "pointing_tolerance",
    "pointing_game_ceiling",
    "classifier_accuracy",
    "head_cpu_seconds",
    "head_steps",
    "images",
    "localised_images",
)
QUICK = {
    "num_train": 64,
    "num_val": 16,
    "num_test": 16,
    "classifier_epochs": 1,
    "head_epochs": 1,
    "seeds": "0",
}


def resnet18_small_images(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-18 (random init) adapted to small images as is usual: the stem's
    max-pool removed, so the last stage is at 1/16 of the input (4 x 4 at 64 px, not 2 x 2)."""
    network = torchvision.models.resnet18(num_classes=num_classes)
    network.maxpool = nn.Identity()
    return network


def _per_network(field: str) -> str:
    """The help's "per network: demo-cnn 12, ..." for a field of :class:`Network`."""
    return "per network: " + ", ".join(f"{name} {getattr(network, field)}" for name, network in NETWORKS.items())


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.small_data",
        description=__doc__,
        add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output_dir", default="runs/small_data", help="results, classifiers and heads")
    parser.add_argument("--datasets", default="digits,shapes", help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument(
        "--networks", default="demo-cnn,resnet18-small", help=f"comma-separated, of {', '.join(NETWORKS)}"
    )
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (classifier and head; data: seed 0)")
    parser.add_argument(
        "--head_inits", default="classifier,random", help=f"comma-separated --head_init values, of {HEAD_INITS}"
    )
    parser.add_argument("--canvas_size", type=positive_int, default=64, help="image side in pixels")
    parser.add_argument("--num_train", type=positive_int, default=2000, help="training images")
    parser.add_argument("--num_val", type=positive_int, default=200, help="validation images (the --val_list)")
    parser.add_argument("--num_test", type=positive_int, default=300, help="test images scored")
    parser.add_argument(
        "--classifier_epochs",
        type=positive_int,
        default=None,
        help=f"classifier training epochs [{_per_network('classifier_epochs')}]",
    )
    parser.add_argument(
        "--head_epochs",
        type=non_negative_int,
        default=None,
        help=f"train_L_CAM.py --epoch [{_per_network('head_epochs')}]",
    )
    parser.add_argument("--head_batch_size", type=positive_int, default=32, help="train_L_CAM.py --batch_size")
    parser.add_argument(
        "--head_flags", default="", help="further train_L_CAM.py flags for every head, e.g. '--lr 3e-3'"
    )
    parser.add_argument(
        "--score_epochs",
        action="store_true",
        help="also score the classifier-started head's start and every epoch's checkpoint on the test images, and "
        "which of them each held-out rule keeps (epochs.json, epochs.md)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (the measured setting), cuda, auto, ...")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny data, 1 epoch, one seed")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def _names(text: str, valid: Sequence[str], flag: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        raise UserValueError(f"{flag}: unknown {unknown or 'empty list'}; valid: {', '.join(valid)}")
    return names


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError as error:
        raise UserValueError(f"--seeds must be comma-separated integers, got {text!r}") from error
    if not seeds or min(seeds) < 0:
        raise UserValueError(f"--seeds must be non-negative integers, got {text!r}")
    return seeds


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _head_command(args, network: str, classifier_path: str, data_root: str, run_dir: str, init: str, seed: int):
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "train_L_CAM.py"),
        "--arch", "generic",
        "--backbone", NETWORKS[network].spec,
        "--backbone_weights", classifier_path,
        "--num_classes", str(args.num_classes),
        "--input_size", str(args.canvas_size),
        "--crop_size", str(args.canvas_size),
        "--train_list", os.path.join(run_dir, "model_truth_train.txt"),
        "--img_dir", data_root,
        "--val_list", os.path.join(data_root, "val.txt"),
        "--epoch", str(head_epochs(args, network)),
        "--batch_size", str(args.head_batch_size),
        "--device", args.device,
        "--num_workers", "0",
        "--resume", "False",
        "--seed", str(seed),
        "--snapshot_dir", os.path.join(run_dir, f"lcam_{init}"),
        "--no_progress",
    ]  # fmt: skip
    if init != "classifier":
        command += ["--head_init", init]
    return command + args.head_flags.split()


def head_epochs(args, network: str) -> int:
    """``--head_epochs``, else the network's default."""
    return NETWORKS[network].head_epochs if args.head_epochs is None else args.head_epochs


def train_head(args, network: str, classifier_path: str, data_root: str, run_dir: str, init: str, seed: int):
    """Run ``train_L_CAM.py`` in a child process; returns its checkpoint and CPU seconds. A
    head that finished in an earlier run (its ``cpu_seconds.json`` written) is reused."""
    snapshot_dir = os.path.join(run_dir, f"lcam_{init}")
    checkpoint, timing = os.path.join(snapshot_dir, "lcam_best.pth.tar"), os.path.join(snapshot_dir, CPU_FILE)
    if os.path.isfile(checkpoint) and os.path.isfile(timing):
        with open(timing, encoding="utf-8") as handle:
            return checkpoint, json.load(handle)["cpu_seconds"]
    command = _head_command(args, network, classifier_path, data_root, run_dir, init, seed)
    print("$", " ".join(command[1:]), flush=True)
    before = _children_cpu_seconds()
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    seconds = _children_cpu_seconds() - before
    write_json(timing, {"cpu_seconds": seconds, "command": command[1:]})
    return checkpoint, seconds


def _classifier(args, network: str, train: DigitsSplit, run_dir: str, seed: int, device) -> NormalizedClassifier:
    """The trained classifier of this run: loaded from ``classifier.pth``, else trained and saved."""
    spec, layer, default_epochs, _ = NETWORKS[network]
    seed_everything(seed)
    module, _ = load_network(spec, pretrained=False, num_classes=args.num_classes)
    path = os.path.join(run_dir, "classifier.pth")
    if os.path.isfile(path):
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return NormalizedClassifier(module, module.get_submodule(layer)).to(device).eval()
    classifier = train_classifier(
        module,
        module.get_submodule(layer),
        train.images,
        train.labels,
        device,
        epochs=args.classifier_epochs or default_epochs,
        seed=seed,
        progress=not args.no_progress,
    )
    with atomic_open(path, "wb") as handle:
        torch.save(module.state_dict(), handle)
    return classifier


def _initial_head(args, classifier: NormalizedClassifier, device) -> GenericLCAM:
    """The recipe's head before training: the classifier's last layer x the recipe's scale."""
    model = GenericLCAM.build(
        backbone=classifier.classifier, num_classes=args.num_classes, input_size=args.canvas_size
    ).to(device)
    init_head_from_classifier(model, RECIPES["small-data"].head_init_scale)
    return model.eval()


def _summary(rows: list[dict[str, Any]]) -> str:
    """The markdown table: per dataset and network, each method's mean ± std over the seeds,
    then the verdict of the recipe against Grad-CAM."""
    lines = []
    groups = sorted({(row["dataset"], row["network"]) for row in rows})
    for dataset, network in groups:
        group = [row for row in rows if (row["dataset"], row["network"]) == (dataset, network)]
        seeds = sorted({row["seed"] for row in group})
        accuracy = [row["classifier_accuracy"] for row in group if row["method"] == "gradcam"]
        lines += [
            f"### {dataset}, {network} (seeds {', '.join(map(str, seeds))}; test accuracy {_mean_std(accuracy)} %)",
            "",
            "| method | " + " | ".join(TABLE_COLUMNS) + " | head CPU s |",
            "|---|" + "---|" * (len(TABLE_COLUMNS) + 1),
        ]
        by_method = {}
        for method, name in METHOD_NAMES.items():
            members = [row for row in group if row["method"] == method]
            if not members:
                continue
            by_method[method] = members
            cpu = [row["head_cpu_seconds"] for row in members if row.get("head_cpu_seconds") not in (None, "")]
            cells = [_mean_std([row[column] for row in members]) for column in TABLE_COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_std(cpu, 0) if cpu else '-'} |")
        lines += ["", *_verdict(by_method), ""]
    return "\n".join(lines)


def _mean_std(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _verdict(by_method: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Plain sentences on the seeds that have both: pointing >= 90 %, AD/IC at 100 % within 2
    std of Grad-CAM over the seeds, and who wins at 15 % kept."""
    if "gradcam" not in by_method or "lcam_classifier" not in by_method:
        return []
    lcam = by_method["lcam_classifier"]
    gradcam = [row for row in by_method["gradcam"] if row["seed"] in {row["seed"] for row in lcam}]  # same seeds

    def mean(rows, column):
        return statistics.fmean(row[column] for row in rows)

    def noise(rows, column):
        return 2 * statistics.stdev(row[column] for row in rows) if len(rows) > 1 else 0.0

    pointing = mean(lcam, "pointing_game")
    sentences = [
        f"- L-CAM-Img (recipe) pointing game {pointing:.1f} %: {'>=' if pointing >= 90 else '<'} 90 % "
        f"(Grad-CAM {mean(gradcam, 'pointing_game'):.1f} %; no map at this network's resolution, upsampled, can "
        f"score more than {mean(lcam, 'pointing_game_ceiling'):.1f} %); with the usual tolerance of "
        f"{lcam[0]['pointing_tolerance']} px (15 at 224 px) {mean(lcam, 'pointing_game_tolerant'):.1f} % "
        f"(Grad-CAM {mean(gradcam, 'pointing_game_tolerant'):.1f} %)."
    ]
    for column in ("AD100", "IC100"):
        difference, allowed = mean(lcam, column) - mean(gradcam, column), noise(gradcam, column)
        better = difference < 0 if column.startswith("AD") else difference > 0
        verdict = "within the noise" if abs(difference) <= allowed else f"{'better' if better else 'worse'} beyond it"
        paired = ", ".join(f"{value:+.1f}" for value in _paired_differences(lcam, gradcam, column))
        sentences.append(
            f"- {column}: L-CAM-Img {mean(lcam, column):.1f} vs Grad-CAM {mean(gradcam, column):.1f} "
            f"(difference {difference:+.1f}; Grad-CAM's noise, 2 std over seeds, {allowed:.1f}): "
            f"{verdict}; per seed (same classifier) {paired}."
        )
    ad_better = mean(lcam, "AD15") < mean(gradcam, "AD15")
    ic_better = mean(lcam, "IC15") > mean(gradcam, "IC15")
    sentences.append(
        f"- At 15 % kept L-CAM-Img is {'better' if ad_better else 'worse'} on AD ({mean(lcam, 'AD15'):.1f} vs "
        f"{mean(gradcam, 'AD15'):.1f}) and {'better' if ic_better else 'worse'} on IC "
        f"({mean(lcam, 'IC15'):.1f} vs {mean(gradcam, 'IC15'):.1f})."
    )
    return sentences


def _paired_differences(rows: list[dict[str, Any]], baseline: list[dict[str, Any]], column: str) -> list[float]:
    """``rows[seed][column] - baseline[seed][column]`` for the seeds both have (same classifier)."""
    by_seed = {row["seed"]: row[column] for row in baseline}
    return [row[column] - by_seed[row["seed"]] for row in rows if row["seed"] in by_seed]


def write_results(rows: list[dict[str, Any]], output_dir: str, info: dict[str, Any]) -> str:
    """results.csv, results.json and results.md; returns the markdown."""
    ResultsTable.from_records(
        [{field: row.get(field, "") for field in RESULT_FIELDS} for row in rows], RESULT_FIELDS
    ).write_csv(os.path.join(output_dir, "results.csv"))
    write_json(os.path.join(output_dir, "results.json"), {**info, "rows": rows})
    markdown = f"Command: `{info['command']}`\n\n" + _summary(rows) + "\n"
    with atomic_open(os.path.join(output_dir, "results.md")) as handle:
        handle.write(markdown)
    return markdown


def _score(args, key, explainer, classifier, test, device) -> dict[str, Any]:
    row, _ = score_explainer(
        classifier,
        explainer,
        test.images,
        test.labels,
        test.boxes,
        device,
        description=key,
        progress=not args.no_progress,
    )
    return row


def score_epochs(args, snapshot_dir: str, start_row: dict[str, Any], classifier, test, device) -> list[dict[str, Any]]:
    """The head's start (``start_row``: the initialisation row) and each epoch's checkpoint,
    scored on the test images, with their held-out scores from ``train_log.json``; written to
    ``epoch_scores.json`` beside them."""
    with open(os.path.join(snapshot_dir, LOG_NAME), encoding="utf-8") as handle:
        log = json.load(handle)
    entries = [{"epoch": -1, "held_out": log.get("held_out_start"), "test": start_row}]
    for summary in log["epochs"]:
        path = os.path.join(snapshot_dir, checkpoint_name(summary["epoch"], summary["global_counter"]))
        model, _ = load_lcam_model("generic", path, device=device)
        row = _score(args, f"lcam epoch {summary['epoch']}", LCAMExplainer(model), classifier, test, device)
        held_out = {key: value for key, value in summary.items() if key.startswith("val_")}
        entries.append({"epoch": summary["epoch"], "held_out": held_out, "test": row})
    write_json(os.path.join(snapshot_dir, "epoch_scores.json"), entries)
    return entries


def write_epoch_results(epoch_runs: list[dict[str, Any]], output_dir: str) -> str:
    """``epochs.json`` (every run's per-epoch scores) and ``epochs.md``: per dataset and
    network, the head each rule keeps (by the held-out scores) and its mean test scores."""
    write_json(os.path.join(output_dir, "epochs.json"), {"runs": epoch_runs})
    lines = []
    for dataset, network in sorted({(run["dataset"], run["network"]) for run in epoch_runs}):
        runs = [run for run in epoch_runs if (run["dataset"], run["network"]) == (dataset, network)]
        seeds = ", ".join(str(run["seed"]) for run in runs)
        lines += [
            f"### {dataset}, {network} (seeds {seeds}; -1 = the start)",
            "",
            "| head kept | epoch per seed | " + " | ".join(TABLE_COLUMNS) + " |",
            "|---|---|" + "---|" * len(TABLE_COLUMNS),
        ]
        for name, pick in EPOCH_RULES.items():
            kept = [pick(run["epochs"]) for run in runs]
            chosen = [next(e for e in run["epochs"] if e["epoch"] == epoch) for run, epoch in zip(runs, kept)]
            cells = [_mean_std([entry["test"][column] for entry in chosen]) for column in TABLE_COLUMNS]
            lines.append(f"| {name} | {', '.join(map(str, kept))} | " + " | ".join(cells) + " |")
        lines.append("")
    markdown = "\n".join(lines)
    with atomic_open(os.path.join(output_dir, "epochs.md")) as handle:
        handle.write(markdown)
    return markdown


def _rule(best_by: str, start_competes: bool) -> Callable[[list[dict[str, Any]]], int]:
    """The epoch :func:`utils.training.fit` keeps by ``best_by`` (-1: the start)."""

    def pick(entries: list[dict[str, Any]]) -> int:
        epochs = [{"epoch": entry["epoch"], **entry["held_out"]} for entry in entries[1:]]
        kept = kept_epoch(best_by, entries[0]["held_out"], epochs, start_competes)
        return entries[-1]["epoch"] if kept is None else kept

    return pick


# the heads a held-out rule keeps: the start, the last epoch, or the best by a criterion
EPOCH_RULES: dict[str, Callable[[list[dict[str, Any]]], int]] = {
    "the start (0 steps)": lambda entries: -1,
    "the last epoch": lambda entries: entries[-1]["epoch"],
    "masked_accuracy, epochs only": _rule("masked_accuracy", False),
    "ad, epochs only": _rule("ad", False),
    "ad, the start competing (the recipe)": _rule("ad", True),
    "ad_ic, the start competing": _rule("ad_ic", True),
}


def run_one(args, dataset_name: str, dataset, network: str, seed: int, device, record) -> list[dict[str, Any]]:
    """Every method of one dataset, network and seed (see the module docstring); returns the
    per-epoch scores of the classifier-started head with ``--score_epochs`` (else [])."""
    run_dir = os.path.join(args.output_dir, dataset_name, network, f"seed{seed}")
    os.makedirs(run_dir, exist_ok=True)
    train = load_split(dataset, "train")
    test = load_split(dataset, "test")
    classifier = _classifier(args, network, train, run_dir, seed, device)
    accuracy = float((predict(classifier, test.images, device) == test.labels).double().mean() * 100)
    write_predicted_datalist(
        os.path.join(run_dir, "model_truth_train.txt"), train.paths, predict(classifier, train.images, device),
        dataset.root,
    )  # fmt: skip
    base = {"dataset": dataset_name, "network": network, "seed": seed, "classifier_accuracy": accuracy}
    record(
        {
            **base,
            "method": "gradcam",
            **_score(args, "gradcam", build_explainer("gradcam", classifier), classifier, test, device),
        }
    )
    initial = _initial_head(args, classifier, device)
    start_row = _score(args, "lcam_init", LCAMExplainer(initial), classifier, test, device)
    record({**base, "method": "lcam_init", **start_row})
    epoch_runs = []
    for init in args.head_inits:
        checkpoint, cpu_seconds = train_head(
            args, network, os.path.join(run_dir, "classifier.pth"), dataset.root, run_dir, init, seed
        )
        model, _ = load_lcam_model("generic", checkpoint, device=device)
        row = _score(args, f"lcam_{init}", LCAMExplainer(model), classifier, test, device)
        steps = head_epochs(args, network) * -(-args.num_train // args.head_batch_size)
        record({**base, "method": f"lcam_{init}", **row, "head_cpu_seconds": cpu_seconds, "head_steps": steps})
        if args.score_epochs and init == "classifier":
            entries = score_epochs(args, os.path.dirname(checkpoint), start_row, classifier, test, device)
            epoch_runs.append({**base, "epochs": entries})
    return epoch_runs


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    parser = get_args_parser(add_help=False)
    command = command_line("python -m bench.small_data", args, parser)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    datasets = _names(args.datasets, tuple(DATASETS), "--datasets")
    networks = _names(args.networks, tuple(NETWORKS), "--networks")
    args.head_inits = _names(args.head_inits, HEAD_INITS, "--head_inits")
    seeds = _seeds(args.seeds)
    ensure_writable(args.output_dir, "--output_dir", is_folder=True)
    device = resolve_device(args.device)
    info = {"command": command, "args": vars(args).copy()}
    info["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rows: list[dict[str, Any]] = []
    epoch_runs: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(
            f"{row['dataset']} {row['network']} seed {row['seed']} {row['method']}: "
            + ", ".join(f"{column} {row[column]:.1f}" for column in TABLE_COLUMNS),
            flush=True,
        )
        write_results(rows, args.output_dir, info)

    for dataset_name in datasets:
        dataset = DATASETS[dataset_name](
            os.path.join(args.output_dir, "data", dataset_name),
            canvas_size=args.canvas_size,
            num_train=args.num_train,
            num_val=args.num_val,
            num_test=args.num_test,
            progress=not args.no_progress,
        )
        args.num_classes = dataset.num_classes
        for network in networks:
            for seed in seeds:
                epoch_runs += run_one(args, dataset_name, dataset, network, seed, device, record)
                if epoch_runs:
                    write_epoch_results(epoch_runs, args.output_dir)
    print(write_results(rows, args.output_dir, info))
    return rows


def cli(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    cli()
