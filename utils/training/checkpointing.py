"""A training run's checkpoints: the writer, resume, and the guard that keeps a new run from replacing an earlier one."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from utils.core.checkpoint import (
    SUFFIX,
    CheckpointReadError,
    _unwrap,
    checkpoint_name,
    get_rng_state,
    list_checkpoints,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from utils.core.errors import UserError, UserFileNotFoundError, UserValueError, abbreviate
from utils.core.runtime import DistributedContext
from utils.training.log import CSV_NAME, LOG_NAME, logged_epochs

__all__ = [
    "ARCHIVE_PREFIX",
    "SINGLE_PROCESS",
    "CheckpointWriter",
    "TrainState",
    "archive_previous_run",
    "check_no_previous_run",
    "gather_objects",
    "previous_run_files",
    "resume_training",
]

ARCHIVE_PREFIX = "archived-"  # + YYYYmmdd-HHMMSS: where --archive_old moves an earlier run
SINGLE_PROCESS = DistributedContext(0, 0, 1, torch.device("cpu"))


@dataclass
class TrainState:
    """Where training stands: the epoch to run (0-based), how many batches of it this
    process has done, the global step, and, when it was interrupted part-way, the epoch's
    running sums, its unreadable images and the mid-epoch checkpoint it continues from
    (deleted once a newer checkpoint is written)."""

    epoch: int = 0
    batches_done: int = 0
    global_counter: int = 0
    sums: dict[str, float] | None = None
    failed: list[tuple[int, str]] = field(default_factory=list)
    resumed_mid_epoch_from: str | None = None


def gather_objects(value: Any, dist: DistributedContext) -> list[Any]:
    """``value`` of every process, in rank order (a collective: call it on all of them)."""
    if not dist.enabled:
        return [value]
    gathered: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


class CheckpointWriter:
    """Writes a run's checkpoints into ``snapshot_dir`` (None: none), on the main process.

    Every process must call the ``save_*`` methods (they gather the RNG states, and the
    running sums of a mid-epoch checkpoint). A checkpoint holds the head's weights (see
    :func:`utils.core.checkpoint.make_checkpoint`), the optimizer, the RNG state of every
    process, the scaler when it is enabled, the run's ``args`` and where the epoch stands.
    With ``save_full``, the end of an epoch also writes the reference's full-model
    ``imagenet_epoch_{E}_glo_step_{S}.pth.tar``. A mid-epoch checkpoint is deleted once a
    newer checkpoint is written (so is one given to :meth:`supersede`).

    Args:
        snapshot_dir: the run's folder; None writes nothing (the collectives still run).
        model: the model trained (a DDP or compiled wrapper is unwrapped).
        optimizer: its optimizer.
        scaler: the gradient scaler, saved when enabled.
        dist: this process's place in the job.
        save_full: also write the reference's full snapshot at the end of each epoch.
        args: the run's arguments (plain data).
        batch_size: the loader's batch size, recorded so a mid-epoch resume can check it.
    """

    def __init__(
        self,
        snapshot_dir: str | None,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None = None,
        dist: DistributedContext = SINGLE_PROCESS,
        *,
        save_full: bool = False,
        args: dict[str, Any] | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.snapshot_dir = snapshot_dir
        self.model = _unwrap(model)
        self.optimizer = optimizer
        self.scaler = scaler
        self.dist = dist
        self.save_full = save_full
        self.args = args if args is not None else {}
        self.batch_size = batch_size
        self._superseded: list[str] = []

    def supersede(self, path: str) -> None:
        """Delete ``path`` once a newer checkpoint is written, when it lies in ``snapshot_dir``
        (the mid-epoch checkpoint a run resumed from)."""
        if self.snapshot_dir and os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.snapshot_dir):
            self._superseded.append(path)

    def save_mid_epoch(
        self, epoch: int, global_counter: int, batches_done: int, sums: dict[str, float], failed: list[tuple[int, str]]
    ) -> str:
        """Save a checkpoint part-way through ``epoch``: after ``batches_done`` batches of this
        process, with the epoch's running ``sums`` (:meth:`utils.training.EpochMeter.state`)
        and unreadable images, added up over all processes. Returns its path ("" on other
        processes or without ``snapshot_dir``)."""
        rng = gather_objects(get_rng_state(), self.dist)
        totals: dict[str, float] = {}
        for part in gather_objects(sums, self.dist):
            for key, value in part.items():
                totals[key] = totals.get(key, 0.0) + value
        all_failed = [item for part in gather_objects(list(failed), self.dist) for item in part]
        progress = self._progress(False, batches_done)
        progress.update(sums=totals, failed=[list(item) for item in all_failed])
        return self._write(epoch, global_counter, progress, rng, None)

    def save_epoch_end(self, epoch: int, global_counter: int, batches_done: int, summary: dict[str, Any]) -> str:
        """Save the checkpoint of a finished ``epoch`` with its ``summary`` (and, with
        ``save_full``, the reference's full snapshot). Returns its path ("" on other
        processes or without ``snapshot_dir``)."""
        rng = gather_objects(get_rng_state(), self.dist)
        return self._write(epoch, global_counter, self._progress(True, batches_done), rng, summary)

    def _progress(self, complete: bool, batches_done: int) -> dict[str, Any]:
        return {
            "epoch_complete": complete,
            "batches_done": batches_done,
            "batch_size": self.batch_size,
            "world_size": self.dist.world_size,
        }

    def _write(
        self, epoch: int, global_counter: int, progress: dict[str, Any], rng: list[Any], summary: dict[str, Any] | None
    ) -> str:
        if not self.dist.is_main or not self.snapshot_dir:
            return ""
        complete = progress["epoch_complete"]
        extra = {
            "optimizer": self.optimizer.state_dict(),
            "rng": rng[0],
            "args": self.args,
            "progress": progress,
            "summary": summary,
        }
        if self.dist.enabled:
            extra["rng_per_rank"] = rng
        if self.scaler is not None and self.scaler.is_enabled():
            extra["scaler"] = self.scaler.state_dict()
        path = os.path.join(self.snapshot_dir, checkpoint_name(epoch, global_counter, mid_epoch=not complete))
        save_checkpoint(make_checkpoint(self.model, epoch, global_counter, **extra), path)
        if complete and self.save_full:
            self._write_reference(epoch, global_counter)
        for old in self._superseded:
            if old != path and os.path.exists(old):
                os.remove(old)
        self._superseded = [] if complete else [path]
        return path

    def _write_reference(self, epoch: int, global_counter: int) -> None:
        """The reference's full snapshot: the whole model's state_dict and the optimizer."""
        reference = {
            "epoch": epoch,
            "arch": self.model.arch,
            "global_counter": global_counter,
            "state_dict": {key: value.detach().cpu() for key, value in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
        }
        name = checkpoint_name(epoch, global_counter, reference=True)
        save_checkpoint(reference, os.path.join(self.snapshot_dir, name))


def resume_training(
    path_or_dir: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    dist: DistributedContext = SINGLE_PROCESS,
    batch_size: int | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Restore model, optimizer, scaler and RNG state from a checkpoint file or the newest
    one of a directory (mid-epoch ones included), and say where training continues.

    A checkpoint written at the end of epoch E continues at epoch E + 1; a mid-epoch one
    continues in epoch E after the batches it had done. The authors' snapshots carry
    no RNG state or optimizer of the same layout; they continue at epoch E + 1.

    Raises:
        FileNotFoundError: no such checkpoint.
        CheckpointReadError: the file cannot be read; when it is the newest of a directory,
            the message names the older checkpoints there and ``--restore_from``.
        ValueError: a mid-epoch checkpoint resumed with another batch size or number of
            processes (its position in the epoch would not mean the same).
    """
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        newest_first = list_checkpoints(path, mid_epoch=True)
        if not newest_first:
            raise UserFileNotFoundError(f"no {SUFFIX} checkpoint in directory {path!r}")
        try:
            metadata = load_checkpoint(newest_first[0], model, optimizer)
        except CheckpointReadError as error:
            raise _newest_unreadable(error, path, newest_first[1:]) from None
    else:
        metadata = load_checkpoint(path, model, optimizer)
    progress = metadata.get("progress") or {}
    epoch = int(metadata.get("epoch", -1))
    counter = int(metadata.get("global_counter", 0))
    if scaler is not None and isinstance(metadata.get("scaler"), dict) and scaler.is_enabled():
        scaler.load_state_dict(metadata["scaler"])
    rng_states = metadata.get("rng_per_rank")
    if isinstance(rng_states, list) and len(rng_states) == dist.world_size:
        set_rng_state(rng_states[dist.rank])
    elif isinstance(metadata.get("rng"), dict):
        set_rng_state(metadata["rng"])
    if progress.get("epoch_complete", True):
        return TrainState(epoch=epoch + 1, global_counter=counter), metadata
    saved = (progress.get("batch_size"), progress.get("world_size"))
    if saved != (batch_size, dist.world_size):
        raise UserValueError(
            f"{metadata['path']}: saved mid-epoch with batch_size {saved[0]} on {saved[1]} process(es); resume it with "
            f"the same (got {batch_size} on {dist.world_size}) or from an end-of-epoch checkpoint"
        )
    failed = [(int(index), str(reason)) for index, reason in progress.get("failed", [])]
    state = TrainState(epoch, int(progress["batches_done"]), counter, progress.get("sums"), failed, metadata["path"])
    return state, metadata


def _newest_unreadable(error: CheckpointReadError, directory: str, older: list[str]) -> CheckpointReadError:
    """The error of an unreadable newest checkpoint, saying how to go on from an older one."""
    if older:
        names = abbreviate([os.path.basename(name) for name in older], shown=3)
        way_on = (
            f"continue from an older one with --restore_from {older[0]} (older checkpoints there: {names}), "
            f"and move the damaged file out of {directory} so that --resume True no longer picks it"
        )
    else:
        way_on = (
            f"there is no older checkpoint in {directory}: move the damaged file away and start again with "
            "--resume False --archive_old, or start a fresh run with --snapshot_dir NEW"
        )
    return CheckpointReadError(
        error.path, f"{error.reason}; it is the newest checkpoint of --snapshot_dir, so --resume True stops: {way_on}"
    )


def previous_run_files(snapshot_dir: str | os.PathLike) -> list[str]:
    """Names of the files an earlier run left in ``snapshot_dir``: its checkpoints (any
    ``.pth.tar``), ``train_record.csv`` and ``train_log.json``."""
    snapshot_dir = os.fspath(snapshot_dir)
    if not os.path.isdir(snapshot_dir):
        return []
    return sorted(
        name
        for name in os.listdir(snapshot_dir)
        if (name.endswith(SUFFIX) or name in (CSV_NAME, LOG_NAME)) and os.path.isfile(os.path.join(snapshot_dir, name))
    )


def check_no_previous_run(snapshot_dir: str | os.PathLike, fresh_start: bool, archive_old: bool = False) -> None:
    """Refuse, before any work, to start a run whose files would replace an earlier run's.

    A fresh start (``--resume False``) needs a ``snapshot_dir`` without an earlier run's
    files, or ``archive_old`` (the caller then moves them away with
    :func:`archive_previous_run`). A run that resumes but finds no checkpoint needs a folder
    whose log records no finished epoch.

    Raises:
        UserError: one line naming ``--snapshot_dir NEW`` and ``--archive_old``.
    """
    snapshot_dir = os.fspath(snapshot_dir)
    files = previous_run_files(snapshot_dir)
    if not files or (fresh_start and archive_old):
        return
    checkpoints = [name for name in files if name.endswith(SUFFIX)]
    if not fresh_start and (checkpoints or not logged_epochs(snapshot_dir)):
        return
    held = [f"{len(checkpoints)} checkpoint(s)"] if checkpoints else []
    held += [name for name in files if not name.endswith(SUFFIX)]
    archive = os.path.join(snapshot_dir, f"{ARCHIVE_PREFIX}YYYYmmdd-HHMMSS")
    if fresh_start:
        problem = ", and --resume False would write a new run over it"
        options = (
            f"add --archive_old to move the old run's files into {archive}/ first, or continue it with --resume True"
        )
    else:
        problem = " but no checkpoint to resume from, and starting again would replace its records"
        options = f"use --resume False --archive_old to move the old files into {archive}/ first"
    raise UserError(
        f"--snapshot_dir {snapshot_dir} already holds a run ({', '.join(held)}){problem}; nothing was changed: "
        f"start the new run elsewhere with --snapshot_dir NEW, or {options}"
    )


def archive_previous_run(snapshot_dir: str | os.PathLike) -> str | None:
    """Move the files of an earlier run (see :func:`previous_run_files`) into a new
    ``archived-YYYYmmdd-HHMMSS`` subfolder of ``snapshot_dir``; returns it (None when there
    was nothing to move). Files are renamed, never copied or overwritten."""
    snapshot_dir = os.fspath(snapshot_dir)
    files = previous_run_files(snapshot_dir)
    if not files:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    archive, attempt = os.path.join(snapshot_dir, ARCHIVE_PREFIX + stamp), 1
    while os.path.exists(archive):  # two archives within a second
        attempt += 1
        archive = os.path.join(snapshot_dir, f"{ARCHIVE_PREFIX}{stamp}-{attempt}")
    os.mkdir(archive)
    for name in files:
        os.rename(os.path.join(snapshot_dir, name), os.path.join(archive, name))
    return archive
