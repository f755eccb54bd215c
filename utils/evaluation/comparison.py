"""Evaluating several explanation methods under one protocol: the rows of a comparison
(``scripts.compare``, ``scripts.reproduce_paper``), the baselines built for one classifier,
the time each explainer takes, and one pass over the images for all the rows of a backbone
(:func:`utils.evaluation.evaluate_many`)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch

from models.families import families
from utils.core.cli import positive_int
from utils.core.errors import UserValueError, closest_names
from utils.evaluation.protocol import EvaluationResult, evaluate, evaluate_many, write_result
from utils.evaluation.reports import kept_label
from utils.explainers.baselines import BASELINES, NormalizedClassifier, build_explainer

__all__ = [
    "Entry",
    "TimedExplainer",
    "add_rise_arguments",
    "baseline_entries",
    "command_baseline_entries",
    "device_description",
    "evaluate_entries",
    "parse_methods",
    "result_row",
    "rise_mask_dir",
    "rise_mask_file",
    "score_line",
    "write_entry_result",
]


class Entry(NamedTuple):
    """One row of a comparison: a method explaining a classifier; ``family`` names the
    classifier (``vgg16``, ``resnet50``, ``generic:resnet18``: see ``LCAM.backbone_label``)."""

    name: str
    family: str
    classifier: Callable[[torch.Tensor], torch.Tensor]
    explainer: Any
    source: str


class TimedExplainer:
    """Wraps an explainer and measures the time spent explaining (waiting for the device),
    forwarding ``predict_and_explain`` when the wrapped one has it."""

    def __init__(self, explainer: Any, device: torch.device) -> None:
        self.explainer = explainer
        self.device = device
        self.seconds = 0.0
        self.images = 0
        if hasattr(explainer, "predict_and_explain"):
            self.predict_and_explain = self._timed(explainer.predict_and_explain)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, function: Callable) -> Callable:
        def timed(images: torch.Tensor, *args):
            self._synchronize()
            start = time.perf_counter()
            result = function(images, *args)
            self._synchronize()
            self.seconds += time.perf_counter() - start
            self.images += len(images)
            return result

        return timed

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self._timed(self.explainer.explain)(images, classes)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def parse_methods(text: str) -> list[str]:
    """``--methods``: comma-separated names of :data:`utils.explainers.baselines.BASELINES`
    (``''``: none).

    Raises:
        ValueError: an unknown name (with the closest ones and the valid ones).
    """
    methods = [method.strip() for method in text.split(",") if method.strip()]
    for method in methods:
        if method not in BASELINES:
            raise UserValueError(
                f"--methods: unknown method {method!r}; {closest_names(method, BASELINES)} "
                f"(valid: {', '.join(BASELINES)})"
            )
    return methods


def add_rise_arguments(group: argparse._ActionsContainer) -> None:
    """``--rise_masks`` (default: the classifier's family's) and ``--rise_mask_dir``
    (default: :func:`rise_mask_dir`)."""
    group.add_argument(
        "--rise_masks",
        type=positive_int,
        default=None,
        help="RISE masks N [the family's: " + ", ".join(f"{f.rise_masks} {f.title}" for f in families()) + "]",
    )
    group.add_argument(
        "--rise_mask_dir", default=None, help="where RISE masks are cached and reused [OUTPUT_DIR/rise_masks]"
    )


def rise_mask_dir(args: argparse.Namespace) -> str:
    """Where RISE's masks are cached: ``--rise_mask_dir``, or ``OUTPUT_DIR/rise_masks``."""
    return args.rise_mask_dir or os.path.join(args.output_dir, "rise_masks")


def rise_mask_file(num_masks: int, seed: int, crop_size: int) -> str:
    """The file name RISE's masks are cached under (reused by later runs with the same settings)."""
    return f"rise_N{num_masks}_s7_p0.5_seed{seed}_{crop_size}px.pt"


def baseline_entries(
    classifier: NormalizedClassifier,
    family: str,
    source: str,
    methods: Sequence[str],
    rise_masks: int,
    rise_mask_dir: str,
    crop_size: int,
    seed: int = 0,
    chunk_size: int = 128,
) -> list[Entry]:
    """A row per method of ``methods`` (names of :data:`utils.explainers.baselines.BASELINES`)
    explaining ``classifier``, all sharing it (so :func:`evaluate_entries` runs its plain
    forward once per batch). RISE draws ``rise_masks`` masks (the reference: 4000 for VGG-16,
    8000 for ResNet-50), cached under ``rise_mask_dir``."""
    mask_path = os.path.join(rise_mask_dir, rise_mask_file(rise_masks, seed, crop_size))
    return [
        Entry(
            method,
            family,
            classifier,
            build_explainer(
                method,
                classifier,
                rise_masks=rise_masks,
                rise_mask_path=mask_path,
                rise_seed=seed,
                chunk_size=chunk_size,
                batch_size=chunk_size,
            ),
            source,
        )
        for method in methods
    ]


def command_baseline_entries(
    args: argparse.Namespace, classifier: NormalizedClassifier, family: str, source: str
) -> list[Entry]:
    """:func:`baseline_entries` with a command's flags: ``--methods`` (parsed into
    ``args.method_list``), ``--rise_masks`` (default: the classifier's family's),
    ``--rise_mask_dir``, ``--crop_size``, ``--seed``, ``--chunk_size``."""
    return baseline_entries(
        classifier,
        family,
        source,
        args.method_list,
        args.rise_masks or classifier.family.rise_masks,
        rise_mask_dir(args),
        args.crop_size,
        seed=args.seed,
        chunk_size=args.chunk_size,
    )


def device_description(device: torch.device) -> str:
    """The GPU's name, or ``cpu (N cores)``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def evaluate_entries(
    entries: Sequence[Entry],
    loader: Iterable,
    percentages: Sequence[float],
    device: torch.device,
    together: bool = True,
    **options: Any,
) -> Iterable[tuple[Entry, EvaluationResult, TimedExplainer]]:
    """Evaluate every entry on ``loader`` with the AD/IC protocol; yields
    ``(entry, result, timed explainer)`` per entry, in order.

    ``together``: one pass over the images for all the entries (:func:`evaluate_many`: the
    images read once, the plain forward of a shared classifier run once); all results come
    at the end. Otherwise a pass per entry, each result as soon as it is ready. ``options``
    go to the evaluator (``amp``, ``progress``, ``description``, ...)."""
    timed = [TimedExplainer(entry.explainer, device) for entry in entries]
    if together:
        methods = [(entry.classifier, explainer) for entry, explainer in zip(entries, timed)]
        yield from zip(entries, evaluate_many(methods, loader, percentages, device=device, **options), timed)
        return
    options.pop("description", None)  # each pass is named after its entry
    for entry, explainer in zip(entries, timed):
        description = f"{entry.name} ({entry.family})"
        result = evaluate(
            entry.classifier, explainer, loader, percentages, device=device, description=description, **options
        )
        yield entry, result, explainer


def result_row(entry: Entry, result: EvaluationResult, timed: TimedExplainer, device: str) -> dict[str, Any]:
    """A row of a comparison's JSON: the method, its classifier and source, the summary per
    percentage, the image counts and speeds."""
    return {
        "method": entry.name,
        "family": entry.family,
        "source": entry.source,
        "summary": result.summary,
        "num_images": result.num_images,
        "num_unreadable": result.num_unreadable,
        "explain_images_per_second": timed.images_per_second,
        "images_per_second": result.images_per_second,
        "device": device,
    }


def write_entry_result(result: EvaluationResult, entry: Entry, output_dir: str, row: dict[str, Any]) -> str:
    """The per-image results of one row: ``output_dir/results/<family>_<method>.json`` (and
    ``.csv``, :func:`utils.evaluation.write_result`); returns the JSON's path."""
    safe_name = f"{entry.family}_{entry.name}".replace(":", "_")  # generic:pkg.module:Net, gradcam-pkg:X
    return write_result(result, os.path.join(output_dir, "results", f"{safe_name}.json"), run=row)


def score_line(entry: Entry, result: EvaluationResult, timed: TimedExplainer) -> str:
    """``gradcam (vgg16): AD 12.34 IC 5.60 @ top 100%, ...; 3.21 explained img/s``."""
    scores = ", ".join(
        f"AD {item['average_drop']:.2f} IC {item['increase_in_confidence']:.2f} @ top {kept_label(item['percentage'])}"
        for item in result.summary
    )
    return f"{entry.name} ({entry.family}): {scores}; {timed.images_per_second:.2f} explained img/s"
