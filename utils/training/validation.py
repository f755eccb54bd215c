"""Whether training learns: the head scored on held-out images before training and after each
epoch, the best checkpoint kept, a plateau of the masked-image accuracy and maps worse than
the start flagged, the curves drawn to a PNG."""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from utils.core.checkpoint import _unwrap, make_checkpoint, save_checkpoint
from utils.core.errors import UserValueError
from utils.evaluation.protocol import evaluate
from utils.explainers.lcam import LCAMExplainer, lcam_classifier

__all__ = [
    "BEST_BY",
    "BEST_NAME",
    "CURVES_NAME",
    "SMALL_DATA_DOC",
    "BestTracker",
    "HeldOutCheck",
    "criterion_value",
    "keep_best",
    "keep_start",
    "kept_epoch",
    "report_validation",
    "save_training_curves",
]

BEST_NAME = "lcam_best.pth.tar"
CURVES_NAME = "train_curves.png"
SMALL_DATA_DOC = "docs/small-data.md"
# criterion -> ({summary key: weight}, True when higher is better); the value is the weighted sum
BEST_BY = {
    "masked_accuracy": ({"val_masked_accuracy": 1.0}, True),
    "ad": ({"val_ad": 1.0}, False),
    "ic": ({"val_ic": 1.0}, True),
    "ad_ic": ({"val_ad": 1.0, "val_ic": -1.0}, False),  # AD - IC at 100 %: both of the paper's scores
    "loss": ({"val_loss": 1.0}, False),
}


def criterion_value(best_by: str, summary: dict[str, Any]) -> float | None:
    """The value of criterion ``best_by`` (a key of :data:`BEST_BY`) for a summary of held-out
    scores; None when one of its scores is missing or not finite."""
    weights, _ = BEST_BY[best_by]
    values = [summary.get(key) for key in weights]
    if any(not isinstance(value, (int, float)) or not math.isfinite(value) for value in values):
        return None
    return sum(weight * value for weight, value in zip(weights.values(), values))


class HeldOutCheck:
    """Score an L-CAM model on held-out images (call it with the model after an epoch).

    Returns ``val_masked_accuracy`` (percent of images whose masked pass, masked by the
    sigmoid of the map of their label as in training, still predicts that label),
    ``val_loss``/``val_ce``/``val_area``/``val_smoothness`` (the training objective, averaged
    per image) and ``val_ad``/``val_ic``, Average Drop and Increase in Confidence with 100 %
    of the map kept (:func:`utils.evaluation.evaluate` with an
    :class:`utils.explainers.LCAMExplainer`). The model's train/eval modes are restored.

    Args:
        loader: yields :class:`utils.data.Batch` or ``(images, labels)``, images in [0, 1].
        device: where the computation runs.
        amp: autocast of the evaluation (see :func:`utils.evaluation.evaluate`).
    """

    def __init__(self, loader: Iterable, device: torch.device | str, amp: str = "none") -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.amp = amp

    def __call__(self, model: nn.Module) -> dict[str, float]:
        raw = _unwrap(model)
        modes = {module: module.training for module in raw.modules()}
        raw.eval()
        try:
            scores = self._objective(raw)
            result = evaluate(
                lcam_classifier(raw), LCAMExplainer(raw), self.loader, (0.0,), self.device, self.amp, progress=False
            )
        finally:
            for module, mode in modes.items():
                module.train(mode)
        entry = result.summary[0]
        scores["val_ad"] = float(entry["average_drop"])
        scores["val_ic"] = float(entry["increase_in_confidence"])
        return scores

    def _objective(self, model: nn.Module) -> dict[str, float]:
        sums: dict[str, float] = {}
        hits = count = 0
        with torch.no_grad():
            for batch in self.loader:
                images, labels = (batch.images, batch.labels) if hasattr(batch, "images") else batch[:2]
                if images is None or len(labels) == 0:
                    continue
                images, labels = images.to(self.device), torch.as_tensor(labels).to(self.device)
                out = model(images, labels)
                terms = model.loss(out, labels)
                terms = {"loss": terms, "ce": terms} if torch.is_tensor(terms) else terms._asdict()
                terms["loss"] = terms.pop("total", terms.get("loss"))
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value) * len(labels)
                hits += int((out.logits.argmax(dim=1) == labels).sum())
                count += len(labels)
        if count == 0:
            raise UserValueError("the held-out loader gave no readable image")
        scores = {f"val_{name}": value / count for name, value in sums.items()}
        scores["val_masked_accuracy"] = 100.0 * hits / count
        return scores


class BestTracker:
    """The best epoch by one criterion of :data:`BEST_BY`, and the masked-accuracy plateau.

    Args:
        best_by: a key of :data:`BEST_BY`.
        plateau_epochs: epochs without a better masked-image accuracy before the warning
            (0: never warn).
        earlier: the summaries of epochs already trained (a resumed run), oldest first.
    """

    def __init__(self, best_by: str, plateau_epochs: int = 3, earlier: Sequence[dict[str, Any]] = ()) -> None:
        if best_by not in BEST_BY:
            raise UserValueError(f"'best_by' must be one of {', '.join(BEST_BY)}, got {best_by!r}")
        if plateau_epochs < 0:
            raise UserValueError(f"'plateau_epochs' must be >= 0, got {plateau_epochs!r}")
        self.best_by, self.higher_is_better = best_by, BEST_BY[best_by][1]
        self.plateau_epochs = plateau_epochs
        self.best: float | None = None
        self.best_accuracy: float | None = None
        self.since_better = 0
        self.warned = False
        self.start: dict[str, Any] | None = None  # the held-out scores before the first step
        self.best_is_start = False
        self.start_is_candidate = False
        self.warned_worse = False
        for summary in earlier:
            self.update(summary)
        self.warned = self.since_better >= plateau_epochs > 0

    def update(self, summary: dict[str, Any]) -> bool:
        """Take an epoch's summary; True when it is the best so far by the criterion."""
        accuracy = summary.get("val_masked_accuracy")
        if accuracy is not None:
            if self.best_accuracy is None or accuracy > self.best_accuracy:
                self.best_accuracy, self.since_better = accuracy, 0
            else:
                self.since_better += 1
        value = criterion_value(self.best_by, summary)
        if value is None:
            return False
        better = self._better(value)
        if better:
            self.best, self.best_is_start = value, False
        return better

    def _better(self, value: float) -> bool:
        return self.best is None or (value > self.best if self.higher_is_better else value < self.best)

    def set_start(self, scores: dict[str, Any], candidate: bool = False) -> bool:
        """Take the held-out scores of the head before training (its initialisation). With
        ``candidate`` the start competes for the best checkpoint like an epoch (a head
        initialised from the classifier is already an explanation: its CAM). Returns True when
        it is the best so far (it is then kept as the best only if no epoch seen is better)."""
        self.start, self.start_is_candidate = dict(scores), candidate
        value = criterion_value(self.best_by, scores)
        if not candidate or value is None or not self._better(value):
            return False
        self.best, self.best_is_start = value, True
        return True

    def start_kept_message(self) -> str | None:
        """One line when no epoch beat the start, which is then ``lcam_best.pth.tar``; else None."""
        if not self.best_is_start:
            return None
        return (
            f"note: no epoch beat the head before training on the held-out {self.best_by} ({self.best:.3f}); "
            f"{BEST_NAME} is that head (its initialisation). See {SMALL_DATA_DOC}"
        )

    def worse_than_start_message(self, summary: dict[str, Any]) -> str | None:
        """One line, the first time an epoch's held-out AD at 100 % is higher and its IC lower
        than the head's before training (both worse than the start, e.g. the classifier's
        CAM); None otherwise."""
        if self.warned_worse or self.start is None:
            return None
        keys = ("val_ad", "val_ic")
        if any(not isinstance(source.get(key), (int, float)) for source in (summary, self.start) for key in keys):
            return None
        if not (summary["val_ad"] > self.start["val_ad"] and summary["val_ic"] < self.start["val_ic"]):
            return None
        self.warned_worse = True
        keeps = (
            f"{BEST_NAME} stays the start unless an epoch beats it"
            if self.start_is_candidate
            else "--best_by ad keeps the epoch with the lowest AD"
        )
        return (
            f"warning: after epoch {summary.get('epoch', 0) + 1} the held-out AD / IC at 100 % "
            f"({summary['val_ad']:.1f} / {summary['val_ic']:.1f}) are both worse than the head's before training "
            f"({self.start['val_ad']:.1f} / {self.start['val_ic']:.1f}): training moves the maps away from a better "
            f"start; fewer steps or a lower --lr keep more of it, {keeps}; see {SMALL_DATA_DOC}"
        )

    def plateau_message(self) -> str | None:
        """One line, the first time the masked-image accuracy has not improved for
        ``plateau_epochs`` epochs; None otherwise."""
        if self.warned or not self.plateau_epochs or self.since_better < self.plateau_epochs:
            return None
        self.warned = True
        return (
            f"warning: the held-out masked-image accuracy has not improved for {self.since_better} epochs "
            f"(best {self.best_accuracy:.1f} %): the head may not be learning; see {SMALL_DATA_DOC}"
        )


def kept_epoch(
    best_by: str, start: dict[str, Any] | None, epochs: Sequence[dict[str, Any]], start_competes: bool
) -> int | None:
    """The epoch whose checkpoint :func:`utils.training.fit` keeps as ``lcam_best.pth.tar`` for
    these held-out scores: -1 for the start (``start_competes``), an epoch's ``epoch``, or
    None when no score decides."""
    tracker = BestTracker(best_by, plateau_epochs=0)
    kept = -1 if start is not None and tracker.set_start(start, start_competes) else None
    for summary in epochs:
        if tracker.update(summary):
            kept = summary["epoch"]
    return kept


def keep_best(checkpoint: str, snapshot_dir: str) -> str:
    """Copy ``checkpoint`` to ``snapshot_dir/lcam_best.pth.tar`` (atomically); returns its path."""
    target = os.path.join(snapshot_dir, BEST_NAME)
    temporary = target + ".tmp"
    shutil.copyfile(checkpoint, temporary)
    os.replace(temporary, target)
    return target


def keep_start(model: nn.Module, snapshot_dir: str, scores: dict[str, Any], args: dict[str, Any]) -> str:
    """Save the head before its first step as ``snapshot_dir/lcam_best.pth.tar`` (epoch -1,
    global step 0, its held-out ``scores`` as the summary); returns its path."""
    summary = {"epoch": -1, "global_counter": 0, **scores}
    target = os.path.join(snapshot_dir, BEST_NAME)
    return save_checkpoint(make_checkpoint(model, -1, 0, args=args, summary=summary), target)


def report_validation(summary: dict[str, Any], is_best: bool, label: str = "held-out") -> None:
    """Print an epoch's held-out scores in one line, after ``label``."""
    names = ("val_masked_accuracy", "val_ad", "val_ic", "val_loss", "val_ce", "val_area", "val_smoothness")
    parts = [f"{name[4:]} {summary[name]:.3f}" for name in names if name in summary]
    print(f"  {label}: {'  '.join(parts)}" + ("  (best so far)" if is_best else ""), file=sys.stdout, flush=True)


def save_training_curves(epochs: Sequence[dict[str, Any]], path: str | os.PathLike) -> str:
    """Draw the loss terms (training and held-out), the masked-image accuracy and AD/IC per
    epoch, one panel each, to a PNG. Returns the path."""
    numbers = [entry["epoch"] + 1 for entry in epochs]
    panels = [
        ("loss terms", ("loss", "ce", "area", "smoothness", "val_loss", "val_ce", "val_area", "val_smoothness")),
        ("masked-image accuracy (%)", ("pred@1", "val_masked_accuracy")),
        ("AD / IC at 100 % (%)", ("val_ad", "val_ic")),
    ]
    figure = Figure(figsize=(15.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            values = [entry.get(key, math.nan) for entry in epochs]
            if any(isinstance(value, (int, float)) and math.isfinite(value) for value in values):
                label = key.replace("pred@1", "train masked acc").replace("val_", "held-out ")
                axis.plot(numbers, values, marker="o", linestyle="--" if key.startswith("val_") else "-", label=label)
        axis.set_xlabel("epoch")
        axis.set_title(title, fontsize=10)
        if axis.lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    path = os.fspath(path)
    figure.savefig(path)
    return path
