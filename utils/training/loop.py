"""The training loop of an L-CAM head: one epoch, the epoch loop with checkpoints and
exact resume, the train_record.csv / JSON logs, and the guard that keeps a new run from
writing over an earlier one.

It works on any :class:`models.lcam.LCAM` model (the nine reference variants and others):
the model, its optimizer and the loader are arguments. One optimizer step per batch:
``zero_grad``; forward and ``model.loss(out, labels)`` inside the autocast context; a
gradient scaler for fp16 on CUDA. Loss terms and accuracies are summed on the device and
read back only every ``disp_interval`` steps, at checkpoints and at the end of an epoch.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

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
from utils.core.files import atomic_open, write_json
from utils.core.runtime import DistributedContext, autocast
from utils.data.datalists import Batch, describe_unreadable
from utils.training.optim import adjust_lr, trainable_lrs

__all__ = [
    "ARCHIVE_PREFIX",
    "CSV_NAME",
    "LOG_NAME",
    "EpochMeter",
    "NonFiniteLossError",
    "TrainOptions",
    "TrainState",
    "archive_previous_run",
    "check_no_previous_run",
    "fit",
    "previous_run_files",
    "resume_training",
    "train_one_epoch",
]

CSV_NAME = "train_record.csv"
LOG_NAME = "train_log.json"
ARCHIVE_PREFIX = "archived-"  # + YYYYmmdd-HHMMSS: where --archive_old moves an earlier run
SINGLE_PROCESS = DistributedContext(0, 0, 1, torch.device("cpu"))
# The reference's train_record.csv columns (L-CAM loss, and the CE-only "A" variants).
_CSV_COLUMNS = {
    "lcam": ("epoch", "loss", "losses_meanMask", "losses_variationMask", "losses_ce", "pred@1", "pred@5"),
    "ce": ("epoch", "loss", "pred@1", "pred@5"),
}
_CSV_SOURCE = {"loss": "loss", "losses_meanMask": "area", "losses_variationMask": "smoothness", "losses_ce": "ce"}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before saving anything from that step on."""


@dataclass
class TrainOptions:
    """How :func:`fit` trains, reports and saves.

    Attributes:
        device: where the model and batches live.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (see :func:`utils.core.runtime.autocast`).
        channels_last: move each batch to channels_last memory format.
        disp_interval: steps between progress-bar updates (and host syncs).
        snapshot_dir: where checkpoints, the CSV and the JSON log go (None: nothing saved).
        save_every: also save a mid-epoch checkpoint every this many global steps (0: off).
        save_full: also write the reference's full-model ``imagenet_epoch_{E}_glo_step_{S}.pth.tar``.
        stop_after_step: end the run right after this global step, as an interruption would
            (no extra checkpoint); 0: off. A testing aid for resume.
        args: the run's arguments (plain data), stored in checkpoints and the JSON log.
        progress: show a tqdm bar on the main process.
    """

    device: torch.device
    amp: str = "none"
    channels_last: bool = False
    disp_interval: int = 40
    snapshot_dir: str | None = None
    save_every: int = 0
    save_full: bool = False
    stop_after_step: int = 0
    args: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


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


class EpochMeter:
    """Sample-weighted sums of the loss terms and top-1/top-5 hits, kept on the device, and
    the first step whose loss was not finite. Nothing here synchronises with the host
    until :meth:`summary` or :meth:`first_nonfinite_step` is called."""

    def __init__(self, device: torch.device, base_step: int = 0) -> None:
        self.device = device
        self.base_step = base_step
        self.names: list[str] | None = None
        self._sums: torch.Tensor | None = None
        self._steps = torch.zeros((), dtype=torch.long, device=device)
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._restored: dict[str, float] = {}

    def update(self, terms: dict[str, torch.Tensor], logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``terms`` (name -> scalar tensor, the first one being the total
        loss), the logits it was computed from and its labels."""
        count = labels.numel()
        with torch.no_grad():
            maxk = min(5, logits.size(1))
            hits = logits.detach().topk(maxk, dim=1).indices.eq(labels.view(-1, 1))
            values = [term.detach().float() * count for term in terms.values()]
            values += [hits[:, :1].any(dim=1).sum().float(), hits.any(dim=1).sum().float()]
            batch = torch.stack([torch.ones((), device=values[0].device) * count, *values])
            if self._sums is None:
                self.names = list(terms)
                self._sums = torch.zeros_like(batch)
            self._sums += batch
            self._steps += 1
            total = next(iter(terms.values())).detach()
            bad = ~torch.isfinite(total)
            self._first_bad = torch.where(bad & (self._first_bad < 0), self._steps, self._first_bad)

    def restore(self, sums: dict[str, float] | None) -> None:
        """Start from sums saved in a mid-epoch checkpoint (see :meth:`state`)."""
        self._restored = dict(sums or {})

    def images_this_run(self) -> int:
        """Images counted by :meth:`update` (not the restored ones of an earlier run)."""
        return 0 if self._sums is None else int(self._sums[0])

    def state(self) -> dict[str, float]:
        """The raw sums as plain numbers (for a mid-epoch checkpoint)."""
        state = dict(self._restored)
        if self._sums is not None:
            keys = ["count", *self.names, "top1_hits", "top5_hits"]
            for key, value in zip(keys, self._sums.tolist()):
                state[key] = state.get(key, 0.0) + value
        return state

    def first_nonfinite_step(self, dist: DistributedContext = SINGLE_PROCESS) -> int:
        """The global step (``base_step`` + the 1-based update) of the first non-finite
        loss of any process, or 0 when every loss so far was finite."""
        first = self._first_bad.clone()
        if dist.enabled:
            first = torch.where(first < 0, torch.full_like(first, 2**62), first)
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
            first = torch.where(first == 2**62, torch.full_like(first, -1), first)
        first = int(first)
        return self.base_step + first if first > 0 else 0

    def all_reduce(self, dist: DistributedContext) -> None:
        """Sum the live counts of every process (a collective: call it on all of them).
        Restored sums are already totals and are kept by the main process only."""
        if dist.enabled:
            if self._sums is None:
                raise RuntimeError(f"rank {dist.rank} trained on no batch this epoch")
            torch.distributed.all_reduce(self._sums)

    def summary(self) -> dict[str, float]:
        """Averages per image: every loss term, ``pred@1`` and ``pred@5`` in percent, and ``images``."""
        state = self.state()
        count = state.get("count", 0.0)
        if count == 0:
            return {"images": 0}
        result = {name: state[name] / count for name in (self.names or [k for k in state if k not in _META_KEYS])}
        result["pred@1"] = 100.0 * state["top1_hits"] / count
        result["pred@5"] = 100.0 * state["top5_hits"] / count
        result["images"] = int(count)
        return result


_META_KEYS = ("count", "top1_hits", "top5_hits")


def _loss_terms(loss: Any) -> dict[str, torch.Tensor]:
    """Name -> tensor of a loss result: an :class:`models.lcam.LCAMLoss` (``total`` is
    reported as ``loss``) or a plain scalar tensor."""
    if torch.is_tensor(loss):
        return {"loss": loss}
    terms = loss._asdict()
    terms["loss"] = terms.pop("total")
    return {"loss": terms.pop("loss"), **terms}


def _split_batch(batch: Any) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[int, str]]]:
    if isinstance(batch, Batch):
        return batch.images, batch.labels, batch.failed
    return batch[0], batch[1], []


def train_one_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    options: TrainOptions,
    epoch: int,
    *,
    global_counter: int = 0,
    meter: EpochMeter | None = None,
    scaler: torch.amp.GradScaler | None = None,
    forward_model: nn.Module | None = None,
    dist: DistributedContext = SINGLE_PROCESS,
    batches_done: int = 0,
    total_epochs: int | None = None,
    on_step: Callable[[int, int, EpochMeter], bool] | None = None,
    failed: list[tuple[int, str]] | None = None,
) -> tuple[int, int, EpochMeter, list[tuple[int, str]], bool]:
    """Train ``model`` for one pass over ``loader`` (what it yields after a resume).

    Args:
        model: the L-CAM model (its ``loss`` is used; it is not switched to train mode here).
        loader: yields :class:`utils.data.Batch` or ``(images, labels)``.
        forward_model: what runs the forward pass (a DDP or compiled wrapper of ``model``).
        batches_done: batches of this epoch already done (a resumed run), for the display.
        on_step: called after every step with ``(global_counter, batches_done, meter)``;
            returning True ends the epoch early (the run is being stopped).
        failed: the list the unreadable images are appended to (default: a new one).

    Returns:
        ``(global_counter, batches_done, meter, failed, stopped)``: ``failed`` lists the
        ``(dataset index, reason)`` of the unreadable images that were skipped.

    Raises:
        NonFiniteLossError: a loss was NaN or infinite (checked at each display).
    """
    forward_model = forward_model if forward_model is not None else model
    loss_fn = _unwrap(model).loss
    meter = meter if meter is not None else EpochMeter(options.device, global_counter)
    failed = failed if failed is not None else []
    device = options.device
    steps_in_loader = len(loader)
    total_batches = batches_done + steps_in_loader
    bar = tqdm(
        total=total_batches,
        initial=batches_done,
        desc=f"epoch {epoch + 1}" + (f"/{total_epochs}" if total_epochs else ""),
        unit="batch",
        disable=not (options.progress and dist.is_main),
        dynamic_ncols=True,
    )
    window_images, window_steps, window_start, window_sums = 0, 0, time.perf_counter(), None
    stopped = False
    try:
        for batch in loader:
            images, labels, batch_failed = _split_batch(batch)
            failed.extend(batch_failed)
            batches_done += 1
            bar.update(1)
            if images is None or images.size(0) == 0:
                if dist.enabled:
                    raise RuntimeError(
                        f"rank {dist.rank}: every image of batch {batches_done} of epoch {epoch} was unreadable"
                    )
                continue
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if options.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, options.amp):
                out = forward_model(images, labels)
                loss = loss_fn(out, labels)
            terms = _loss_terms(loss)
            total = terms["loss"]
            if scaler is not None and scaler.is_enabled():
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                total.backward()
                optimizer.step()
            global_counter += 1
            meter.update(terms, out.logits if hasattr(out, "logits") else out, labels)
            window_images += labels.numel()
            window_steps += 1
            if options.disp_interval and global_counter % options.disp_interval == 0:
                _check_finite(meter, dist, epoch)
                if dist.is_main and bar.disable is False:
                    remaining = total_batches - batches_done + max((total_epochs or 0) - epoch - 1, 0) * total_batches
                    window = (window_images, window_steps, window_start)
                    window_sums = _show_progress(bar, meter, window_sums, optimizer, window, remaining)
                window_images, window_steps, window_start = 0, 0, time.perf_counter()
            if on_step is not None and on_step(global_counter, batches_done, meter):
                stopped = True
                break
    finally:
        bar.close()
    _check_finite(meter, dist, epoch)
    return global_counter, batches_done, meter, failed, stopped


def _check_finite(meter: EpochMeter, dist: DistributedContext, epoch: int) -> None:
    step = meter.first_nonfinite_step(dist)
    if step:
        raise NonFiniteLossError(
            f"non-finite loss at global step {step} (epoch {epoch}); stopped without saving it: "
            "the last good checkpoint stays the newest. Try a lower --lr or --amp none/bf16"
        )


def _show_progress(
    bar: tqdm,
    meter: EpochMeter,
    previous: dict[str, float] | None,
    optimizer: torch.optim.Optimizer,
    window: tuple[int, int, float],
    remaining_steps: int,
) -> dict[str, float]:
    """Update the bar with the loss terms averaged over the last display window, the lr,
    images/s and the whole run's ETA (the bar's own is the epoch's); returns the current
    raw sums (the next window's start)."""
    current = meter.state()
    previous = previous or {}
    count = current.get("count", 0.0) - previous.get("count", 0.0)
    postfix = {}
    for name in meter.names or []:
        if count > 0:
            postfix[name] = f"{(current[name] - previous.get(name, 0.0)) / count:.4f}"
    images, steps, since = window
    seconds = max(time.perf_counter() - since, 1e-9)
    postfix["lr"] = f"{trainable_lrs(optimizer)[0]:.3g}"
    postfix["img/s"] = f"{images / seconds:.1f}"
    postfix["run_eta"] = str(datetime.timedelta(seconds=int(remaining_steps * seconds / max(steps, 1))))
    bar.set_postfix(postfix, refresh=False)
    return current


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
        raise ValueError(
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


def _logged_epochs(snapshot_dir: str) -> bool:
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
    if not fresh_start and (checkpoints or not _logged_epochs(snapshot_dir)):
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


def _set_epoch(loader: Any, epoch: int, start_samples: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if start_samples and not hasattr(sampler, "start"):
        raise ValueError("resuming mid-epoch needs a loader with a utils.data.ResumableSampler")
    if hasattr(sampler, "start"):
        sampler.set_epoch(epoch, start_samples)
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _samples_of(dataset: Any) -> Sequence[tuple[str, int]] | None:
    while dataset is not None and not hasattr(dataset, "samples"):
        dataset = getattr(dataset, "dataset", None)
    return getattr(dataset, "samples", None)


def _gather(value: Any, dist: DistributedContext) -> list[Any]:
    if not dist.enabled:
        return [value]
    gathered: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def fit(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    options: TrainOptions,
    state: TrainState | None = None,
    scaler: torch.amp.GradScaler | None = None,
    forward_model: nn.Module | None = None,
    dist: DistributedContext = SINGLE_PROCESS,
    lr_schedule: Callable[[torch.optim.Optimizer, int], None] = adjust_lr,
) -> list[dict[str, Any]]:
    """Train from ``state`` (default: the start) up to ``epochs`` epochs.

    Before each epoch: ``lr_schedule(optimizer, epoch)``, the sampler's epoch, and
    ``model.train()`` (the model's ``backbone_mode`` decides what that means). After each
    epoch the main process writes a checkpoint (see :class:`TrainOptions`), a row of
    ``train_record.csv`` and the JSON log, and lists the images that could not be read.

    Returns:
        The summaries of the epochs this call completed.

    Raises:
        NonFiniteLossError: see :func:`train_one_epoch`; nothing is saved from that step on.
    """
    state = state if state is not None else TrainState()
    raw = _unwrap(model)
    logger = _RunLog(options, raw, dist) if options.snapshot_dir else None
    batch_size = getattr(loader, "batch_size", None)
    samples = _samples_of(getattr(loader, "dataset", None))
    summaries = []
    superseded: list[str] = []  # mid-epoch checkpoints to delete once a newer one is written
    if state.resumed_mid_epoch_from and options.snapshot_dir:
        if os.path.dirname(os.path.abspath(state.resumed_mid_epoch_from)) == os.path.abspath(options.snapshot_dir):
            superseded.append(state.resumed_mid_epoch_from)

    def save(epoch: int, counter: int, complete: bool, meter: EpochMeter, done: int, failed, summary=None) -> str:
        """Write a checkpoint (main process); every process must call it (it gathers)."""
        rng = _gather(get_rng_state(), dist)
        if not complete:  # the epoch's running totals over all processes
            sums: dict[str, float] = {}
            for part in _gather(meter.state(), dist):
                for key, value in part.items():
                    sums[key] = sums.get(key, 0.0) + value
            failed = [item for part in _gather(list(failed), dist) for item in part]
        if not dist.is_main or not options.snapshot_dir:
            return ""
        progress = {
            "epoch_complete": complete,
            "batches_done": done,
            "batch_size": batch_size,
            "world_size": dist.world_size,
        }
        if not complete:
            progress.update(sums=sums, failed=[list(item) for item in failed])
        extra = {
            "optimizer": optimizer.state_dict(),
            "rng": rng[0],
            "args": options.args,
            "progress": progress,
            "summary": summary,
        }
        if dist.enabled:
            extra["rng_per_rank"] = rng
        if scaler is not None and scaler.is_enabled():
            extra["scaler"] = scaler.state_dict()
        path = os.path.join(options.snapshot_dir, checkpoint_name(epoch, counter, mid_epoch=not complete))
        save_checkpoint(make_checkpoint(raw, epoch, counter, **extra), path)
        if complete and options.save_full:
            reference = {
                "epoch": epoch,
                "arch": raw.arch,
                "global_counter": counter,
                "state_dict": {key: value.detach().cpu() for key, value in raw.state_dict().items()},
                "optimizer": optimizer.state_dict(),
            }
            save_checkpoint(
                reference, os.path.join(options.snapshot_dir, checkpoint_name(epoch, counter, reference=True))
            )
        for old in superseded:
            if old != path and os.path.exists(old):
                os.remove(old)
        superseded.clear()
        if not complete:
            superseded.append(path)
        return path

    while state.epoch < epochs:
        epoch = state.epoch
        lr_schedule(optimizer, epoch)
        _set_epoch(loader, epoch, state.batches_done * (batch_size or 0))
        model.train()
        meter = EpochMeter(options.device, state.global_counter)
        failed: list[tuple[int, str]] = []
        if dist.is_main:  # restored sums and failures are totals of all processes
            meter.restore(state.sums)
            failed.extend(state.failed)
        pass_end = state.batches_done + len(loader)
        started = time.perf_counter()

        def on_step(counter: int, done: int, epoch_meter: EpochMeter, epoch=epoch, failed=failed, end=pass_end) -> bool:
            if options.save_every and counter % options.save_every == 0 and done < end:
                _check_finite(epoch_meter, dist, epoch)
                save(epoch, counter, False, epoch_meter, done, failed)
            return bool(options.stop_after_step) and counter >= options.stop_after_step

        counter, done, meter, failed, stopped = train_one_epoch(
            model,
            loader,
            optimizer,
            options,
            epoch,
            global_counter=state.global_counter,
            meter=meter,
            scaler=scaler,
            forward_model=forward_model,
            dist=dist,
            batches_done=state.batches_done,
            total_epochs=epochs,
            on_step=on_step,
            failed=failed,
        )
        if stopped and done < pass_end:
            if dist.is_main:
                print(f"stopped after global step {counter} (--stop_after_step)", flush=True)
            return summaries
        seconds = time.perf_counter() - started
        meter.all_reduce(dist)
        all_failed = [item for part in _gather(failed, dist) for item in part]
        summary = {
            "epoch": epoch,
            "global_counter": counter,
            **meter.summary(),
            "lr": trainable_lrs(optimizer),
            "seconds": round(seconds, 3),
        }
        # speed of this run only: a run resumed mid-epoch also counts the images done before it
        summary["images_per_s"] = round(meter.images_this_run() / max(seconds, 1e-9), 2)
        summary["unreadable"] = describe_unreadable(samples, all_failed) if samples is not None else all_failed
        summary["checkpoint"] = save(epoch, counter, True, meter, done, all_failed, summary)
        if dist.is_main:
            _report_epoch(summary, epochs)
            if logger is not None:
                logger.add_epoch(summary)
        summaries.append(summary)
        state = TrainState(epoch=epoch + 1, global_counter=counter)
        if stopped:
            if dist.is_main:
                print(f"stopped after global step {counter} (--stop_after_step)", flush=True)
            return summaries
    return summaries


def _report_epoch(summary: dict[str, Any], epochs: int) -> None:
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


class _RunLog:
    """``train_record.csv`` (the reference's columns, one row per epoch) and ``train_log.json``
    (every run's arguments, every epoch's figures), written by the main process only."""

    def __init__(self, options: TrainOptions, model: nn.Module, dist: DistributedContext) -> None:
        self.enabled = dist.is_main
        self.csv_path = os.path.join(options.snapshot_dir, CSV_NAME)
        self.json_path = os.path.join(options.snapshot_dir, LOG_NAME)
        self.columns = _CSV_COLUMNS["ce" if getattr(model, "loss_name", "lcam") == "ce" else "lcam"]
        if not self.enabled:
            return
        os.makedirs(options.snapshot_dir, exist_ok=True)
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
            "args": options.args,
            "world_size": dist.world_size,
            "device": str(options.device),
            "torch": torch.__version__,
            "arch": getattr(model, "arch", type(model).__name__),
            "backbone_weights": getattr(model, "backbone_weights", "unknown"),
        }
        self.log["runs"].append(run)
        self._write_json()

    def add_epoch(self, summary: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.log["epochs"] = [entry for entry in self.log["epochs"] if entry["epoch"] < summary["epoch"]] + [summary]
        self._write_json()
        self._write_csv()

    def _write_json(self) -> None:
        write_json(self.json_path, self.log, indent=2)

    def _write_csv(self) -> None:
        """Rewrite the CSV from the JSON log's epochs, so a resumed run never leaves a
        missing or duplicated row."""
        with atomic_open(self.csv_path, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            for entry in self.log["epochs"]:
                writer.writerow([_csv_value(column, entry) for column in self.columns])


def _csv_value(column: str, entry: dict[str, Any]) -> str:
    if column == "epoch":
        return str(entry["epoch"])
    value = entry.get(_CSV_SOURCE.get(column, column), math.nan)
    return f"{value:.3f}" if column.startswith("pred@") else f"{value:.4f}"
