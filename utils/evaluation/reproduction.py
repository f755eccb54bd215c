"""The paper's table in one run (README, 'Reproduce the paper'; ``scripts.reproduce_paper``).

Every released L-CAM head found under ``snapshots/<arch>/`` and Grad-CAM, Grad-CAM++, Score-CAM
and RISE on the same backbones, at 100, 50 and 15 % of each map's pixels kept, on the authors'
evaluation list; one pass over the images per backbone (:func:`utils.evaluation.evaluate_many`:
each image read once, the baselines' plain forward shared); one table in the paper's layout
(a row per method and backbone, AD and IC at each percentage) as Markdown, CSV and JSON,
rewritten after each backbone.

:func:`plan_paper_table` checks everything a run needs before any model is built or image
read: the heads (a missing one is named with where to get it), the list, the image folder,
the outputs. :func:`run_paper_table` then builds every model (so a download that fails,
fails before the long work) and evaluates.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from models import ARCHS, BackboneFamily, families, family_of
from models.backbones import WeightsDownloadError
from utils.core.checkpoint import find_newest_checkpoint
from utils.core.download import sha256_of
from utils.core.errors import UserError, UserFileNotFoundError, UserValueError, closest_names
from utils.core.files import ensure_writable, write_json
from utils.core.runtime import resolve_device, seed_everything
from utils.data.authors import AUTHORS_LISTS
from utils.data.datalists import check_images_exist, read_datalist
from utils.evaluation import comparison
from utils.evaluation.protocol import build_eval_loader, parse_percentages, warn_unreadable
from utils.evaluation.reports import ResultsTable, kept_label, write_markdown
from utils.explainers.baselines import BASELINES, NormalizedClassifier
from utils.explainers.lcam import LCAMExplainer, lcam_classifier, load_lcam_model

__all__ = [
    "AUTHORS_HEADS_URL",
    "HEAD_BACKBONE",
    "METHOD_TITLES",
    "PAPER_METHODS",
    "PAPER_PERCENTAGES",
    "RELEASED_HEADS",
    "TablePlan",
    "TableSettings",
    "find_heads",
    "paper_table",
    "plan_paper_table",
    "run_paper_table",
]

# The authors' released heads (their README: a Google Drive folder of one folder per head,
# each holding an imagenet_epoch_*_glo_step_*.pth.tar snapshot), in the paper's row order.
AUTHORS_HEADS_URL = "https://drive.google.com/drive/folders/1QiwB3iEobEPnSB9NRSsmDaUAuBMiPdz2"
RELEASED_HEADS = ("VGG16_L_CAM_Fm", "VGG16_L_CAM_Img", "VGG16_7x7_L_CAM_Img", "ResNet50_L_CAM_Fm", "ResNet50_L_CAM_Img")
PAPER_METHODS = ("gradcam", "gradcampp", "scorecam", "rise")
PAPER_PERCENTAGES = (0.0, 0.5, 0.85)
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM", "rise": "RISE"}
# --baseline_weights: explain the backbone inside the family's first head (nothing downloaded)
HEAD_BACKBONE = "head"
TABLE_NAME = "paper_table"


@dataclass(frozen=True)
class TableSettings:
    """What :func:`plan_paper_table` checks and :func:`run_paper_table` runs (the flags of
    ``scripts.reproduce_paper``).

    Attributes:
        heads: the heads to evaluate (``snapshots_dir/<arch>/``); None: the released heads
            that are found (each missing one named in a warning).
        methods: names of :data:`utils.explainers.baselines.BASELINES`.
        baseline_weights: the classifier the baselines explain: a torchvision weights name
            (``IMAGENET1K_V1``, the authors' comparison), a state_dict path, ``"none"``
            (random) or ``"head"`` (the backbone inside the family's first head).
        rise_masks: RISE's N (None: the family's, the reference's 4000 / 8000).
        rise_mask_dir: where RISE's masks are cached (None: ``output_dir/rise_masks``).
    """

    snapshots_dir: str
    img_dir: str
    test_list: str
    output_dir: str
    heads: Sequence[str] | None = None
    methods: Sequence[str] = PAPER_METHODS
    baseline_weights: str = "IMAGENET1K_V1"
    percentages: Sequence[float] | str = PAPER_PERCENTAGES
    input_size: int = 256
    crop_size: int = 224
    limit: int | None = None
    skip_missing: bool = False
    rise_masks: int | None = None
    rise_mask_dir: str | None = None
    seed: int = 0
    chunk_size: int = 128
    batch_size: int = 16
    num_workers: int = 0
    device: str = "auto"
    amp: str = "none"
    progress: bool = True

    @property
    def mask_dir(self) -> str:
        return self.rise_mask_dir or os.path.join(self.output_dir, "rise_masks")


@dataclass
class TablePlan:
    """A checked run: the images, and per backbone family the heads ``(arch, checkpoint)``."""

    settings: TableSettings
    percentages: tuple[float, ...]
    samples: list[tuple[str, int]]
    backbones: list[tuple[BackboneFamily, list[tuple[str, str]]]]
    missing_heads: list[str] = field(default_factory=list)
    list_sha256: str = ""

    @property
    def authors_list(self) -> bool:
        """Whether the list is the authors' ``Evaluation_2000.txt`` (by its SHA-256)."""
        return self.list_sha256 == AUTHORS_LISTS["Evaluation_2000.txt"]

    def baseline_source(self, family: BackboneFamily, heads: Sequence[tuple[str, str]]) -> str:
        """What the baselines of ``family`` explain, in words."""
        weights = self.settings.baseline_weights
        if weights == HEAD_BACKBONE:
            return f"backbone of {heads[0][0]}"
        return f"torchvision {family.name} ({weights})"

    def describe(self) -> list[str]:
        """What a run would do, one line per item (``--dry_run``)."""
        settings = self.settings
        which = "the authors' Evaluation_2000.txt" if self.authors_list else "not the authors' Evaluation_2000.txt"
        lines = [
            f"list: {settings.test_list} ({which}, SHA-256 {self.list_sha256}): {len(self.samples)} images "
            f"of {settings.img_dir}",
        ]
        for family, heads in self.backbones:
            names = ", ".join(f"{arch} ({checkpoint})" for arch, checkpoint in heads) or "none"
            methods = ", ".join(settings.methods) or "none"
            lines.append(
                f"{family.title}: heads {names}; baselines {methods}, explaining: {self.baseline_source(family, heads)}"
            )
        rows = sum(len(heads) + len(settings.methods) for _, heads in self.backbones)
        kept = ", ".join(kept_label(percentage) for percentage in self.percentages)
        lines.append(f"{rows} rows at {kept} kept -> {os.path.join(settings.output_dir, TABLE_NAME)}.{{md,csv,json}}")
        return lines


def find_heads(snapshots_dir: str, heads: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``(found, missing)``: the newest checkpoint of ``snapshots_dir/<arch>/`` per head found,
    and the heads with no checkpoint there."""
    found, missing = {}, []
    for arch in heads:
        folder = os.path.join(snapshots_dir, arch)
        newest = find_newest_checkpoint(folder) if os.path.isdir(folder) else None
        if newest is None:
            missing.append(arch)
        else:
            found[arch] = newest
    return found, missing


def _where_heads_go(names: Sequence[str], snapshots_dir: str) -> str:
    return (
        f"{', '.join(names)} (no .pth.tar in {os.path.join(snapshots_dir, '<name>')}: download the folder of each "
        f"from the authors' released heads, {AUTHORS_HEADS_URL}, into {snapshots_dir})"
    )


def _check_names(settings: TableSettings) -> None:
    unknown = [method for method in settings.methods if method not in BASELINES]
    if unknown:
        raise UserValueError(f"--methods: unknown method {unknown[0]!r}; {closest_names(unknown[0], BASELINES)}")
    if settings.heads is not None and not settings.heads:
        raise UserValueError("--heads is empty: name at least one head (by default, the released heads found)")
    unknown = [arch for arch in settings.heads or () if arch not in ARCHS]
    if unknown:
        raise UserValueError(f"--heads: unknown head {unknown[0]!r}; {closest_names(unknown[0], ARCHS)}")


def plan_paper_table(settings: TableSettings) -> TablePlan:
    """Check everything the run needs, before any model is built or image read.

    Raises:
        UserFileNotFoundError: one line naming everything missing, each with where to get
            it: the list, the image folder, the heads asked for (or, by default, all the
            released heads when none is found).
        UserValueError: an unknown method or head; a malformed list line.
        UserError: an output folder that cannot be written.
    """
    _check_names(settings)
    percentages = parse_percentages(settings.percentages)
    found, missing = find_heads(settings.snapshots_dir, settings.heads or RELEASED_HEADS)
    problems = []
    if not os.path.isfile(settings.test_list):
        problems.append(
            f"the list {settings.test_list} (get the authors' with: python -m scripts.make_datalist authors "
            "Evaluation_2000.txt)"
        )
    if not os.path.isdir(settings.img_dir):
        problems.append(
            f"the image folder {settings.img_dir} (the ILSVRC2012 validation images, ILSVRC2012_val_*.JPEG from "
            "image-net.org, go there: see dataset/README.md; or give --img_dir)"
        )
    if missing and (settings.heads is not None or not found):
        problems.append("the heads " + _where_heads_go(missing, settings.snapshots_dir))
    if problems:
        raise UserFileNotFoundError("missing " + "; ".join(problems))
    if missing:
        warnings.warn("not in the table (missing): " + _where_heads_go(missing, settings.snapshots_dir), stacklevel=2)
    ensure_writable(settings.output_dir, "--output_dir", is_folder=True)
    if "rise" in settings.methods:
        ensure_writable(settings.mask_dir, "--rise_mask_dir", is_folder=True)
    samples = read_datalist(settings.test_list, settings.img_dir)
    if settings.limit is not None:
        samples = samples[: settings.limit]
    samples = check_images_exist(samples, settings.test_list, skip_missing=settings.skip_missing)
    backbones = []
    for family in families():
        heads = [(arch, checkpoint) for arch, checkpoint in found.items() if family_of(arch) is family]
        if heads:
            backbones.append((family, heads))
    _check_baseline_weights(settings, [family for family, _ in backbones])
    return TablePlan(settings, percentages, samples, backbones, missing, sha256_of(settings.test_list))


def _check_baseline_weights(settings: TableSettings, backbones: Sequence[BackboneFamily]) -> None:
    """``--baseline_weights`` names weights of every backbone, or an existing file."""
    weights = settings.baseline_weights
    if not settings.methods or weights in (HEAD_BACKBONE, "none") or os.path.isfile(weights):
        return
    unknown = [family.title for family in backbones if weights not in family.weights.__members__]
    if unknown:
        raise UserFileNotFoundError(
            f"--baseline_weights {weights!r}: not a file, nor torchvision weights of {', '.join(unknown)} "
            f"(give {HEAD_BACKBONE}, none, a weights name such as IMAGENET1K_V1, or a state_dict file)"
        )


def _baseline_classifier(
    plan: TablePlan, family: BackboneFamily, heads: Sequence[tuple[str, Any]], device: torch.device
) -> NormalizedClassifier:
    """The classifier the baselines of ``family`` explain (``--baseline_weights``)."""
    weights = plan.settings.baseline_weights
    first_model = heads[0][1]
    if weights == HEAD_BACKBONE:
        return NormalizedClassifier.from_lcam(first_model)
    num_classes = int(first_model.attnM.op.weight.shape[0])
    try:
        network, _ = family.load_classifier(False if weights == "none" else weights, num_classes)
    except WeightsDownloadError:
        raise WeightsDownloadError(
            f"could not download torchvision's {family.title} weights {weights} for the baselines (no internet?): "
            f"connect once (torchvision keeps them in {torch.hub.get_dir()}), or pass --baseline_weights "
            f"{HEAD_BACKBONE} (the heads' own backbone, in their snapshots: nothing to download) or a state_dict PATH"
        ) from None
    except UserError as error:  # a state_dict file that is not this network's
        raise type(error)(f"--baseline_weights {weights}: {error}") from None
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return NormalizedClassifier.from_torchvision(network, family).to(device).eval()


def _backbone_entries(plan: TablePlan, family: BackboneFamily, heads, device: torch.device) -> list[comparison.Entry]:
    """The baselines' rows, then the heads', of one backbone (every model built)."""
    settings = plan.settings
    models = [(arch, *load_lcam_model(arch, checkpoint, device=device)) for arch, checkpoint in heads]
    head_entries = [
        comparison.Entry(arch, family.name, lcam_classifier(model), LCAMExplainer(model), metadata["path"])
        for arch, model, metadata in models
    ]
    if not settings.methods:
        return head_entries
    classifier = _baseline_classifier(plan, family, [(arch, model) for arch, model, _ in models], device)
    baselines = comparison.baseline_entries(
        classifier,
        family.name,
        plan.baseline_source(family, heads),
        settings.methods,
        settings.rise_masks or family.rise_masks,
        settings.mask_dir,
        settings.crop_size,
        seed=settings.seed,
        chunk_size=settings.chunk_size,
    )
    return baselines + head_entries


def paper_table(rows: Sequence[dict[str, Any]], percentages: Sequence[float]) -> ResultsTable:
    """The paper's layout: a row per backbone and method, AD and IC at each percentage."""
    header = ["backbone", "method"]
    for percentage in percentages:
        header += [f"AD {kept_label(percentage)} ↓", f"IC {kept_label(percentage)} ↑"]
    cells = []
    for row in rows:
        scores = []
        for entry in row["summary"]:
            scores += [f"{entry['average_drop']:.2f}", f"{entry['increase_in_confidence']:.2f}"]
        cells.append([row["backbone"], row["title"], *scores])
    return ResultsTable(header, cells)


def _notes(plan: TablePlan, rows: Sequence[dict[str, Any]], device: str) -> str:
    settings = plan.settings
    images = rows[0]["num_images"] if rows else 0
    which = "the authors' Evaluation_2000.txt" if plan.authors_list else "NOT the authors' Evaluation_2000.txt"
    sources = "; ".join(
        f"the {family.title} baselines explain: {plan.baseline_source(family, heads)}"
        for family, heads in plan.backbones
    )
    return (
        "AD: Average Drop (%, lower is better); IC: Increase in Confidence (%, higher is better); at the top N % "
        f"of each map's pixels kept. {images} images of {settings.test_list} ({which}"
        + (f", the first {settings.limit}" if settings.limit else "")
        + f") in {settings.img_dir}, on {device}; {sources}. Per-image results: results/."
    )


def _write_table(plan: TablePlan, rows: list[dict[str, Any]], device: str) -> tuple[str, str, str]:
    """``paper_table.md``, ``.csv`` and ``.json`` (the settings, the plan and every row so far)."""
    base = os.path.join(plan.settings.output_dir, TABLE_NAME)
    table = paper_table(rows, plan.percentages)
    markdown = write_markdown(
        f"{base}.md", "# AD/IC of the paper's table", table.markdown(), _notes(plan, rows, device)
    )
    document = {
        "settings": {key: getattr(plan.settings, key) for key in plan.settings.__dataclass_fields__},
        "test_list_sha256": plan.list_sha256,
        "authors_list": plan.authors_list,
        "missing_heads": plan.missing_heads,
        "rows": rows,
    }
    document["settings"]["heads"] = [arch for _, heads in plan.backbones for arch, _ in heads]
    return markdown, table.write_csv(f"{base}.csv"), write_json(f"{base}.json", document, indent=1)


def run_paper_table(plan: TablePlan) -> list[dict[str, Any]]:
    """Build every model of ``plan``, then evaluate each backbone's rows in one pass over the
    images; the table is rewritten after each backbone. Returns the rows (dicts)."""
    settings = plan.settings
    device = resolve_device(settings.device)
    seed_everything(settings.seed)
    if not plan.authors_list:
        warnings.warn(
            f"{settings.test_list} is not the authors' Evaluation_2000.txt (SHA-256 {plan.list_sha256}): the numbers "
            "are not those of the paper's images",
            stacklevel=2,
        )
    runs = [(family, _backbone_entries(plan, family, heads, device)) for family, heads in plan.backbones]
    loader = build_eval_loader(
        plan.samples, settings.input_size, settings.crop_size, settings.batch_size, settings.num_workers, device
    )
    device_name = comparison.device_description(device)
    print(
        f"The paper's table: {sum(len(entries) for _, entries in runs)} rows on {len(plan.samples)} images, {device_name}"
    )
    rows: list[dict[str, Any]] = []
    files: tuple[str, ...] = ()
    while runs:
        family, entries = runs.pop(0)  # released after its pass
        evaluated = comparison.evaluate_entries(
            entries,
            loader,
            plan.percentages,
            device,
            amp=settings.amp,
            progress=settings.progress,
            description=f"{family.title} ({len(entries)} methods)",
        )
        for entry, result, timed in evaluated:
            if not rows:
                warn_unreadable(result.unreadable)
            row = comparison.result_row(entry, result, timed, device_name)
            row.update(backbone=family.title, title=METHOD_TITLES.get(entry.name, entry.name))
            comparison.write_entry_result(result, entry, settings.output_dir, row)
            print(comparison.score_line(entry, result, timed))
            rows.append(row)
        del entries, evaluated
        files = _write_table(plan, rows, device_name)
    with open(files[0], encoding="utf-8") as handle:
        print(handle.read())
    print("wrote " + ", ".join(files))
    return rows
