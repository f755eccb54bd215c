"""The record of a training run: ``train_record.csv``, ``train_log.json`` and the line printed after each epoch."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import sys
from typing import Any

import torch
from torch import nn

from utils.core.errors import UserValueError
from utils.core.files import atomic_open, write_json
from utils.core.runtime import DistributedContext

__all__ = ["CSV_NAME", "LOG_NAME", "RunLog", "logged_epochs", "report_epoch"]

CSV_NAME = "train_record.csv"
LOG_NAME = "train_log.json"
# The reference's train_record.csv columns (L-CAM loss, and the CE-only "A" variants).
_CSV_COLUMNS = {
    "lcam": ("epoch", "loss", "losses_meanMask", "losses_variationMask", "losses_ce", "pred@1", "pred@5"),
    "ce": ("epoch", "loss", "pred@1", "pred@5"),
}
_CSV_SOURCE = {"loss": "loss", "losses_meanMask": "area", "losses_variationMask": "smoothness", "losses_ce": "ce"}


class RunLog:
    """``train_record.csv`` (the reference's columns, one row per epoch) and ``train_log.json``
    (every run's arguments, every epoch's figures) in ``snapshot_dir``, written by the main
    process only. Creating it records the run's start (``args``: its arguments, plain data)."""

    def __init__(
        self,
        snapshot_dir: str,
        model: nn.Module,
        args: dict[str, Any],
        device: torch.device,
        dist: DistributedContext,
    ) -> None:
        self.enabled = dist.is_main
        self.csv_path = os.path.join(snapshot_dir, CSV_NAME)
        self.json_path = os.path.join(snapshot_dir, LOG_NAME)
        self.columns = _CSV_COLUMNS["ce" if getattr(model, "loss_name", "lcam") == "ce" else "lcam"]
        if not self.enabled:
            return
        os.makedirs(snapshot_dir, exist_ok=True)
        self.log = {"runs": [], "epochs": []}
        if os.path.isfile(self.json_path):
            try:
                with open(self.json_path, encoding="utf-8") as handle:
                    self.log = json.load(handle)
            except ValueError as error:
                raise UserValueError(
                    f"{self.json_path}: not a readable training log ({error}); move it away to go on, "
                    "or start a fresh run with --snapshot_dir NEW"
                ) from None
        run = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "args": args,
            "world_size": dist.world_size,
            "device": str(device),
            "torch": torch.__version__,
            "arch": getattr(model, "arch", type(model).__name__),
            "backbone_weights": getattr(model, "backbone_weights", "unknown"),
        }
        self.log["runs"].append(run)
        self._write_json()

    def add_epoch(self, summary: dict[str, Any]) -> None:
        """Record an epoch's summary (replacing that epoch and any later one of an earlier run)."""
        if not self.enabled:
            return
        self.log["epochs"] = [entry for entry in self.log["epochs"] if entry["epoch"] < summary["epoch"]] + [summary]
        self._write_json()
        self._write_csv()

    def set_start(self, scores: dict[str, Any]) -> None:
        """Record the held-out scores of the head before training (``held_out_start``)."""
        if not self.enabled:
            return
        self.log["held_out_start"] = scores
        self._write_json()

    def _write_json(self) -> None:
        write_json(self.json_path, self.log, indent=2)

    def _write_csv(self) -> None:
        """Rewrite the CSV from the JSON log's epochs, so a resumed run never leaves a
        missing or duplicated row."""
        with atomic_open(self.csv_path, newline="") as handle:
            writer = csv.writer(handle)
            # the held-out scores of a run with a validation list, after the reference's columns
            held_out = sorted({key for entry in self.log["epochs"] for key in entry if key.startswith("val_")})
            columns = (*self.columns, *held_out)
            writer.writerow(columns)
            for entry in self.log["epochs"]:
                writer.writerow([_csv_value(column, entry) for column in columns])


def _csv_value(column: str, entry: dict[str, Any]) -> str:
    if column == "epoch":
        return str(entry["epoch"])
    value = entry.get(_CSV_SOURCE.get(column, column), math.nan)
    return f"{value:.3f}" if column.startswith("pred@") else f"{value:.4f}"


def logged_epochs(snapshot_dir: str) -> bool:
    """Whether the run log of ``snapshot_dir`` records a finished epoch (or cannot be read)."""
    if os.path.isfile(os.path.join(snapshot_dir, CSV_NAME)):
        return True
    path = os.path.join(snapshot_dir, LOG_NAME)
    if not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            return bool(json.load(handle).get("epochs"))
    except (OSError, ValueError, AttributeError):
        return True


def report_epoch(summary: dict[str, Any], epochs: int) -> None:
    """Print an epoch's loss terms, accuracies, speed and checkpoint, and list its unreadable
    images on stderr (the first 20; all are in the JSON log)."""
    terms = "  ".join(f"{key} {summary[key]:.4f}" for key in ("loss", "ce", "area", "smoothness") if key in summary)
    print(
        f"epoch {summary['epoch'] + 1}/{epochs} (global step {summary['global_counter']}): {terms}  "
        f"pred@1 {summary.get('pred@1', 0):.3f}  pred@5 {summary.get('pred@5', 0):.3f}  "
        f"{summary.get('images_per_s', 0):.1f} img/s  {datetime.timedelta(seconds=int(summary['seconds']))}",
        flush=True,
    )
    unreadable = summary["unreadable"]
    if unreadable:
        print(f"epoch {summary['epoch'] + 1}: {len(unreadable)} unreadable image(s) skipped:", file=sys.stderr)
        for entry in unreadable[:20]:
            print(f"  {entry['path']}: {entry['reason']}", file=sys.stderr)
        if len(unreadable) > 20:
            print(f"  ... and {len(unreadable) - 20} more (all listed in {LOG_NAME})", file=sys.stderr)
    if summary.get("checkpoint"):
        print(f"saved {summary['checkpoint']}", flush=True)
