"""The end-to-end L-CAM demo on bundled data: handwritten digits on cluttered canvases, a
small CNN, L-CAM heads and the baselines, AD/IC and localisation, a results table, figures
and checkpoints. Nothing is downloaded.

    python demo.py                      # the full demo: about 8 minutes on one CPU thread
    python demo.py --quick              # a smoke test of every step (about half a minute); its numbers mean nothing
    python demo.py --output_dir runs/my_demo --device cuda
    python demo.py --backbone vit --output_dir runs/demo_vit   # the same on a small ViT (docs/demo-vit.md)

Measured: 8 min 5 s (492 s of CPU) single-threaded on a 2-core AMD EPYC. On a
machine that other jobs share, OMP_WAIT_POLICY=PASSIVE python demo.py is much faster (the
same results; torch's waiting threads sleep instead of spinning). Other CPUs, thread counts
and seeds give other numbers: docs/demo-results.md shows the spread.

Steps: (1) write the digits dataset (utils/data/digits.py); (2) train a small CNN (DigitsCNN)
on it; (3) wrap it as L-CAM on any CNN (models/generic.py, split automatically after its
last convolutional stage) and write its predicted labels of the training images; (4) train
the L-CAM-Img and L-CAM-Fm heads on those labels, with the reference map selection and with
own-label maps; (5) evaluate L-CAM and the baselines (Grad-CAM, Grad-CAM++, Score-CAM,
RISE) on held-out images: Average Drop and Increase in Confidence at 100, 50 and 15 % of
the map kept, deletion and insertion AUCs of the same maps, and localisation against the
digits' boxes (energy in the box, pointing game, MaxBoxAccV2); (6) draw the figures.

Every output goes under --output_dir (checked before any work starts), each as soon as its
step finishes: classifier.pth and the accuracy in results.json after step 2, the heads'
checkpoints under heads/ after each epoch, results.md, results.csv and results.json after
each evaluated method, overlays.png, metrics.png and report/index.html (a web page of every
digit's map by an L-CAM head, to open in a browser) at the end. An interrupted run keeps
what was finished.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.generic import GenericLCAM, init_head_from_classifier
from utils.core.checkpoint import save_checkpoint
from utils.core.cli import command_line, non_negative_int, positive_float, positive_int, run_cli
from utils.core.errors import UserError
from utils.core.files import ensure_writable, write_json
from utils.core.runtime import resolve_device, seed_everything
from utils.data.digits import CLASS_NAMES, DatasetSettingsError, DigitsSplit, load_split, make_digits_dataset
from utils.evaluation import LCAMExplainer
from utils.evaluation.explanations import ExplainOptions, explain_images
from utils.evaluation.reports import MethodScores, ResultsTable, save_overlay_grid, save_scores_chart, write_markdown
from utils.explainers.baselines import NormalizedClassifier, build_explainer
from utils.training.loop import TrainOptions, fit
from utils.training.recipe import RECIPES, build_recipe_optimizer, lr_schedules
from utils.training.study import (
    KEPT_FRACTIONS,
    predict,
    score_explainer,
    tensor_loader,
    write_predicted_datalist,
)
from utils.training.study import train_classifier as train_classifier_on

PERCENTAGES = KEPT_FRACTIONS  # fractions of pixels dropped: 100 %, 50 %, 15 % kept
LCAM_METHODS = {
    # key: (table name, GenericLCAM settings)
    "lcam_img_own": ("L-CAM-Img (own-label maps)", {"apply_cam_to": "image", "mask_loss_maps": "own"}),
    "lcam_img_ref": ("L-CAM-Img (reference maps)", {"apply_cam_to": "image", "mask_loss_maps": "batch"}),
    "lcam_fm_own": ("L-CAM-Fm (own-label maps)", {"apply_cam_to": "feature_maps", "mask_loss_maps": "own"}),
    "lcam_fm_ref": ("L-CAM-Fm (reference maps)", {"apply_cam_to": "feature_maps", "mask_loss_maps": "batch"}),
}
BASELINE_METHODS = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM", "rise": "RISE"}
ALL_METHODS = (*LCAM_METHODS, *BASELINE_METHODS)
RECOMMENDED = "lcam_img_own"
REPORT_IMAGES = 24  # held-out images in report/index.html
QUICK = {
    "num_train": 300,
    "num_val": 60,
    "num_test": 60,
    "classifier_epochs": 2,
    "head_epochs": 1,
    "head_train_images": 192,
    "eval_images": 48,
    "rise_masks": 64,
    "rise_images": 8,
    "road_images": 4,
}
# --backbone vit: a ViT needs more canvases and a gentler lr than the CNN to reach 95 %; Score-CAM
# (one forward per token channel) and the reference-map heads are left out to keep it short.
VIT = {
    "num_train": 10000,
    "classifier_epochs": 8,
    "classifier_lr": 1e-3,
    "methods": "lcam_img_own,lcam_fm_own,gradcam,gradcampp,rise",
}
QUICK_NOTE = (
    "--quick trains too little to be accurate: it is a smoke test of every step, and its accuracy "
    "and table mean nothing (run without --quick for real numbers)"
)


class DigitsCNN(nn.Module):
    """A small VGG-like CNN for the digit canvases: four stages of 3x3 conv-BN-ReLU (1, 2, 2,
    2 convolutions; widths w, 2w, 4w, 8w; max-pooling between stages, so the last stage is
    at 1/8 of the input), global average pooling and one linear layer.

    Its last stage is the module ``features.3``; :class:`GenericLCAM` finds the split
    (``features``, the top-level module holding the last convolution) by itself.
    """

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width, 8 * width)
        stages, in_channels = [], 3
        for index, (out_channels, convolutions) in enumerate(zip(widths, (1, 2, 2, 2))):
            layers: list[nn.Module] = []
            for _ in range(convolutions):
                layers += [
                    nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ]
                in_channels = out_channels
            if index < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def digits_vit(num_classes: int = 10, image_size: int = 64, width: int = 96) -> nn.Module:
    """A small ViT for the digit canvases (torchvision's VisionTransformer): 8 px patches made
    by a convolutional stem (three stride-2 3x3 convolutions, which lets a ViT learn from a few
    thousand images), 4 blocks of width ``width`` with 4 heads, a class token read by one
    linear layer. :class:`GenericLCAM` reads its patch tokens as an 8 x 8 grid (64 px
    canvases) after the block before the last (after the last, only the class token reaches
    the logits)."""
    from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

    stem = [ConvStemConfig(out_channels=width // 4 * scale, kernel_size=3, stride=2) for scale in (1, 2, 4)]
    return VisionTransformer(
        image_size=image_size,
        patch_size=8,
        num_layers=4,
        num_heads=4,
        hidden_dim=width,
        mlp_dim=2 * width,
        num_classes=num_classes,
        conv_stem_configs=stem,
    )


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demo.py",
        description=__doc__,
        add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output_dir", default="runs/demo", help="results, figures and checkpoints (default runs/demo)"
    )
    parser.add_argument(
        "--data_dir", default=None, help="where the digits dataset is written (default OUTPUT_DIR/data)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test of every step (tiny data, 1-2 epochs; for CI): too little training to be accurate",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seeds the data, the weights and the batches")
    data = parser.add_argument_group("data")
    data.add_argument("--canvas_size", type=int, default=64, help="canvas side in pixels (64-96)")
    data.add_argument("--num_train", type=positive_int, default=4000, help="training canvases")
    data.add_argument("--num_val", type=positive_int, default=500, help="validation canvases (classifier accuracy)")
    data.add_argument("--num_test", type=positive_int, default=500, help="held-out canvases")
    training = parser.add_argument_group("training")
    training.add_argument(
        "--backbone",
        choices=("cnn", "vit"),
        default="cnn",
        help="the classifier: DigitsCNN, or a small ViT (digits_vit; L-CAM reads its patch tokens; "
        "10000 canvases, 8 epochs at lr 1e-3 and no Score-CAM unless those flags are given)",
    )
    training.add_argument("--width", type=positive_int, default=8, help="DigitsCNN width w (stages w, 2w, 4w, 8w)")
    training.add_argument("--vit_width", type=positive_int, default=96, help="digits_vit token width")
    training.add_argument("--batch_size", type=positive_int, default=64, help="classifier batch size")
    training.add_argument("--classifier_epochs", type=positive_int, default=5)
    training.add_argument(
        "--classifier_lr", type=positive_float, default=3e-3, help="AdamW lr, cosine decay over the epochs"
    )
    training.add_argument("--head_epochs", type=non_negative_int, default=4, help="epochs of each L-CAM head")
    training.add_argument(
        "--head_recipe",
        choices=tuple(RECIPES),
        default="small-data",
        help="the heads' training recipe (docs/small-data.md): 'small-data' (AdamW, cosine lr by steps, warm-up of "
        "area and smoothness) or 'reference' (the authors' SGD, lr x 0.75 per epoch)",
    )
    training.add_argument(
        "--head_lr", type=positive_float, default=None, help="the heads' lr [the recipe's: 1e-3, or 1e-4 (reference)]"
    )
    training.add_argument(
        "--head_init",
        choices=("random", "classifier"),
        default="classifier",
        help="the AM's initial weights: random (as the reference), or the classifier's last linear layer "
        "(the CAM of Zhou et al.: a warm start, possible because DigitsCNN ends in pooling + one linear layer)",
    )
    training.add_argument(
        "--head_init_scale",
        type=positive_float,
        default=None,
        help="factor on the weights copied by --head_init classifier [the recipe's: 0.1, or 1 (reference)]",
    )
    training.add_argument("--head_batch_size", type=positive_int, default=32, help="L-CAM head batch size")
    training.add_argument("--head_train_images", type=positive_int, default=2000, help="training images of the heads")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--methods", default=",".join(ALL_METHODS), help=f"comma-separated, of {', '.join(ALL_METHODS)}"
    )
    evaluation.add_argument(
        "--eval_images", type=positive_int, default=500, help="held-out images evaluated (at most num_test)"
    )
    evaluation.add_argument("--rise_masks", type=positive_int, default=500, help="RISE masks per image")
    evaluation.add_argument(
        "--rise_images", type=positive_int, default=100, help="images RISE is evaluated on (the slowest)"
    )
    evaluation.add_argument(
        "--id_step", type=positive_int, default=256, help="pixels deleted/inserted per step (insertion/deletion)"
    )
    evaluation.add_argument(
        "--road_images",
        type=non_negative_int,
        default=50,
        help="held-out images ROAD is evaluated on (18 imputations each; 0: no ROAD columns)",
    )
    evaluation.add_argument("--overlay_images", type=positive_int, default=6, help="rows of overlays.png")
    return parser


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """Apply the defaults of ``--quick`` and ``--backbone vit`` (flags given win); validate; return the methods."""
    defaults = get_args_parser(add_help=False).parse_args([])
    for active, settings in ((args.quick, QUICK), (args.backbone == "vit", VIT)):
        for key, value in settings.items() if active else ():
            if getattr(args, key) == getattr(defaults, key):  # flags set to non-default values win
                setattr(args, key, value)
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in ALL_METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown or 'empty list'}; valid: {', '.join(ALL_METHODS)}")
    if not 32 <= args.canvas_size <= 256:
        parser.error(f"--canvas_size must be in [32, 256], got {args.canvas_size}")
    args.eval_images = min(args.eval_images, args.num_test)
    args.rise_images = min(args.rise_images, args.eval_images)
    args.head_train_images = min(args.head_train_images, args.num_train)
    return methods


def train_classifier(args, train: DigitsSplit, device: torch.device) -> NormalizedClassifier:
    """Train :class:`DigitsCNN` (or :func:`digits_vit`) with AdamW and a cosine schedule through the project's loop."""
    torch.manual_seed(args.seed)
    if args.backbone == "vit":
        network = digits_vit(len(CLASS_NAMES), args.canvas_size, args.vit_width)
        layer = network.encoder
    else:
        network = DigitsCNN(num_classes=len(CLASS_NAMES), width=args.width)
        layer = network.features
    return train_classifier_on(
        network,
        layer,
        train.images,
        train.labels,
        device,
        epochs=args.classifier_epochs,
        lr=args.classifier_lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def train_head(args, key: str, network: nn.Module, images, labels, device: torch.device) -> GenericLCAM:
    """Train one L-CAM head on the frozen classifier; checkpoints in OUTPUT_DIR/heads/KEY."""
    torch.manual_seed(args.seed)
    _, settings = LCAM_METHODS[key]
    model = GenericLCAM.build(
        backbone=network, num_classes=len(CLASS_NAMES), input_size=args.canvas_size, backbone_mode="frozen", **settings
    ).to(device)
    recipe = RECIPES[args.head_recipe]
    # CAM: class k's map is fc.weight[k] . FM(x, y) + fc.bias[k] (a ViT's head reads its class token: random)
    if args.head_init == "classifier" and args.backbone == "cnn":
        init_head_from_classifier(
            model, recipe.head_init_scale if args.head_init_scale is None else args.head_init_scale
        )
    loader = tensor_loader(images, labels, args.head_batch_size, shuffle=True, seed=args.seed)
    step_schedule, lr_schedule = lr_schedules(recipe.lr_schedule, max(1, args.head_epochs * len(loader)))
    options = TrainOptions(
        device=device,
        disp_interval=10,
        snapshot_dir=os.path.join(args.output_dir, "heads", key),
        args={**vars(args), "method": key},
        progress=True,
        warmup_steps=recipe.warmup_steps,
        step_schedule=step_schedule,
    )
    decay = None if recipe.optimizer == "sgd-reference" else recipe.weight_decay
    optimizer = build_recipe_optimizer(model, recipe.optimizer, args.head_lr or recipe.lr, decay)
    fit(model, loader, optimizer, args.head_epochs, options, lr_schedule=lr_schedule)
    return model.eval()


def _explainer(key: str, heads: dict[str, GenericLCAM], classifier: NormalizedClassifier, args) -> Any:
    if key in LCAM_METHODS:
        return LCAMExplainer(heads[key])
    return build_explainer(
        key,
        classifier,
        rise_masks=args.rise_masks,
        rise_seed=args.seed,
        rise_mask_path=os.path.join(args.output_dir, "rise_masks.pt"),
        chunk_size=250,
    )


def evaluate_method(
    key, explainer, classifier, test: DigitsSplit, count: int, args, device
) -> tuple[dict, torch.Tensor]:
    """AD/IC at every percentage and localisation on the first ``count`` held-out images;
    returns the table row and the maps (count x 1 x H x W, in [0, 1])."""
    scores, maps = score_explainer(
        classifier,
        explainer,
        test.images[:count],
        test.labels[:count],
        test.boxes[:count],
        device,
        description=key,
        id_step=args.id_step,
        road_images=min(args.road_images, count),
        road_seed=args.seed,
    )
    row: dict[str, Any] = {"method": key, "name": LCAM_METHODS.get(key, (BASELINE_METHODS.get(key),))[0]}
    return {**row, **scores}, maps


COLUMNS = (
    "AD100",
    "IC100",
    "AD50",
    "IC50",
    "AD15",
    "IC15",
    "energy_in_box",
    "pointing_game",
    "max_box_acc_v2",
    "deletion_auc",
    "insertion_auc",
    "road_morf_accuracy",
    "road_lerf_accuracy",
)
TABLE_TITLES = (
    "AD 100% ↓",
    "IC 100% ↑",
    "AD 50% ↓",
    "IC 50% ↑",
    "AD 15% ↓",
    "IC 15% ↑",
    "energy in box % ↑",
    "pointing game % ↑",
    "MaxBoxAccV2 % ↑",
    "deletion AUC % ↓",
    "insertion AUC % ↑",
    "ROAD MoRF acc % ↓",
    "ROAD LeRF acc % ↑",
)
KEPT = ("100", "50", "15")  # percent of each map kept at PERCENTAGES
LOCALISATION = ("energy_in_box", "pointing_game", "max_box_acc_v2")
RESULT_FIELDS = ("method", "name", *COLUMNS, "road_combined", "images", "road_images", "localised_images", "seconds")


def write_results(rows: list[dict], info: dict[str, Any], output_dir: str) -> str:
    """results.csv, results.json and results.md (the rows so far, which may be none);
    returns the markdown table."""
    complete = [{field: "" for field in RESULT_FIELDS} | row for row in rows]  # no ROAD fields with --road_images 0
    ResultsTable.from_records(complete, RESULT_FIELDS).write_csv(os.path.join(output_dir, "results.csv"))
    write_json(os.path.join(output_dir, "results.json"), {"info": info, "results": rows})
    header = ["method", *TABLE_TITLES, "images"]
    cells = [
        [row["name"], *(f"{row[column]:.1f}" if column in row else "-" for column in COLUMNS), row["images"]]
        for row in rows
    ]
    table = ResultsTable(header, cells).markdown()
    about = "\n".join(f"- {key}: {value}" for key, value in info.items() if key != "note")
    write_markdown(os.path.join(output_dir, "results.md"), "# L-CAM demo results", info.get("note", ""), table, about)
    return table


def save_metrics_figure(rows: list[dict], path: str) -> str:
    """Bar charts: AD and IC at 100/50/15 % kept, and the two localisation scores."""
    scores = [
        MethodScores(
            row["name"],
            [row[f"AD{kept}"] for kept in KEPT],
            [row[f"IC{kept}"] for kept in KEPT],
            {name: row[name] for name in LOCALISATION},
        )
        for row in rows
    ]
    return save_scores_chart(scores, PERCENTAGES, path)


def _short_name(key: str) -> str:
    """``lcam_img_own`` -> ``L-CAM-Img own``; baselines by their name."""
    if key in LCAM_METHODS:
        _, variant, maps = key.split("_")
        return f"L-CAM-{variant.capitalize()} {maps}"
    return BASELINE_METHODS[key]


def save_overlays(test: DigitsSplit, keys: list[str], maps: dict[str, torch.Tensor], rows: int, path: str) -> str:
    """A grid: one held-out image per row, the image with its box, then each method's map."""
    count = min(rows, len(test.labels))
    return save_overlay_grid(
        test.images[:count],
        [maps[key][:count] for key in keys],
        [_short_name(key) for key in keys],
        path,
        boxes=test.boxes[:count],
        cell_inches=1.6,
    )


def write_report_page(heads: dict[str, GenericLCAM], test: DigitsSplit, args, device: torch.device) -> str | None:
    """``report/index.html``: every digit's map of held-out images by the recommended L-CAM
    head (else the first trained), to browse; None without an L-CAM head."""
    key = RECOMMENDED if RECOMMENDED in heads else next(iter(heads), None)
    if key is None:
        return None
    options = ExplainOptions(
        class_names=CLASS_NAMES,
        html_dir=os.path.join(args.output_dir, "report"),
        input_size=args.canvas_size,
        crop_size=args.canvas_size,
        device=device,
        keep_maps=False,
        progress=False,
    )
    return explain_images(heads[key], test.paths[:REPORT_IMAGES], options).page


class _RunRecord:
    """The run's settings, status and seconds per step; written with the results so far
    after each step (:func:`write_results`), so an interrupted run keeps what was done."""

    def __init__(self, info: dict[str, Any], output_dir: str) -> None:
        self.output_dir = output_dir
        self.start = self._lap = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.info = {**info, "status": "started", "seconds": 0.0, "seconds_per_step": self.timings}

    def tick(self, step: str) -> None:
        """Record the seconds since the previous step ended."""
        now = time.perf_counter()
        self.timings[step] = round(now - self._lap, 1)
        self._lap = now

    def write(self, rows: list[dict], status: str) -> str:
        self.info.update(status=status, seconds=round(time.perf_counter() - self.start, 1))
        return write_results(rows, self.info, self.output_dir)


def _cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the record of the run."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> list[dict]:
    parser = parser or get_args_parser()
    command = command_line("python demo.py", args, get_args_parser(add_help=False))
    methods = _check_args(args, parser)
    device = resolve_device(args.device)
    ensure_writable(args.output_dir, "--output_dir", is_folder=True)
    data_dir = args.data_dir or os.path.join(args.output_dir, "data")
    ensure_writable(data_dir, "--data_dir", is_folder=True)
    record = _RunRecord(
        {
            "command": command,
            **({"note": QUICK_NOTE} if args.quick else {}),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "args": vars(args),
        },
        args.output_dir,
    )
    seed_everything(args.seed)

    print(f"[1/6] digits dataset in {data_dir}")
    try:
        dataset = make_digits_dataset(
            data_dir, args.seed, args.canvas_size, args.num_train, args.num_val, args.num_test
        )
    except DatasetSettingsError as error:
        raise UserError(f"{error}; choose another folder with --data_dir (or delete that dataset)") from None
    train, val = load_split(dataset, "train"), load_split(dataset, "val")
    test = load_split(dataset, "test", limit=args.eval_images)
    record.tick("data")

    name = f"DigitsCNN (width {args.width})" if args.backbone == "cnn" else f"digits_vit (width {args.vit_width})"
    print(f"[2/6] {name} on {len(train.labels)} canvases, {args.classifier_epochs} epochs, {device}")
    classifier = train_classifier(args, train, device)
    network = classifier.classifier
    accuracy = {
        split: float((predict(classifier, data.images, device) == data.labels).double().mean() * 100)
        for split, data in (("val", val), ("test", test))
    }
    print(f"      accuracy: val {accuracy['val']:.1f} %, held-out test {accuracy['test']:.1f} %")
    if args.quick:
        print(f"      note: {QUICK_NOTE}")
    elif accuracy["test"] < 95:
        print(
            "      warning: below 95 % held-out accuracy; the explanations mean less (train longer: --classifier_epochs)"
        )
    save_checkpoint(
        {"state_dict": network.state_dict(), "args": vars(args), "accuracy": accuracy},
        os.path.join(args.output_dir, "classifier.pth"),
    )
    record.info.update(
        classifier_accuracy_val=round(accuracy["val"], 2), classifier_accuracy_test=round(accuracy["test"], 2)
    )
    record.tick("classifier")
    record.write([], "classifier trained (classifier.pth); no method evaluated yet")

    print("[3/6] model-truth labels of the training images")
    model_truth = predict(classifier, train.images, device)
    write_predicted_datalist(
        os.path.join(args.output_dir, "model_truth_train.txt"), train.paths, model_truth, dataset.root
    )
    head_images, head_labels = train.images[: args.head_train_images], model_truth[: args.head_train_images]

    heads = {}
    lcam_keys = [key for key in methods if key in LCAM_METHODS]
    for number, key in enumerate(lcam_keys, start=1):
        print(
            f"[4/6] L-CAM head {number}/{len(lcam_keys)}: {LCAM_METHODS[key][0]}, {args.head_epochs} epochs on {len(head_labels)} images"
        )
        heads[key] = train_head(args, key, network, head_images, head_labels, device)
        record.tick(f"train {key}")

    # The baselines explain the layer L-CAM reads: a ViT's patch tokens through the model's reshape.
    explained = classifier
    if args.backbone == "vit":
        wrapped = GenericLCAM(network, input_size=args.canvas_size, backbone_mode="frozen").to(device).eval()
        explained = NormalizedClassifier.from_lcam(wrapped)
    rows, maps = [], {}
    for number, key in enumerate(methods, start=1):
        count = args.rise_images if key == "rise" else args.eval_images
        print(f"[5/6] evaluating {key} on {count} held-out images")
        explainer = _explainer(key, heads, explained, args)
        row, maps[key] = evaluate_method(key, explainer, classifier, test, count, args, device)
        rows.append(row)
        record.tick(f"evaluate {key}")
        record.write(rows, f"{number} of {len(methods)} methods evaluated")

    print("[6/6] figures and the report page")
    save_metrics_figure(rows, os.path.join(args.output_dir, "metrics.png"))
    save_overlays(test, methods, maps, args.overlay_images, os.path.join(args.output_dir, "overlays.png"))
    page = write_report_page(heads, test, args, device)
    record.tick("figures")
    table = record.write(rows, "complete")
    print(table)
    if args.quick:
        print(f"note: {QUICK_NOTE}")
    print("seconds per step: " + ", ".join(f"{step} {seconds}" for step, seconds in record.timings.items()))
    print(
        f"held-out accuracy {accuracy['test']:.1f} %; total {record.info['seconds']:.0f} s; outputs in {args.output_dir}"
    )
    if page:
        print(f"open {page} in a browser to see every digit's map")
    return rows


def cli(argv: Sequence[str] | None = None) -> list[dict]:
    """The demo command: user errors end in one line (exit status 2), Ctrl-C keeps what was done."""
    parser = get_args_parser()
    return run_cli(
        lambda args: main(args, parser),
        parser,
        argv,
        interrupted_hint="; the finished steps are saved in --output_dir (results.json says which)",
    )


if __name__ == "__main__":
    cli()
