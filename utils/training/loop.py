"""The training loop of an L-CAM head: one epoch (:func:`train_one_epoch`) and the epochs with checkpoints and exact resume (:func:`fit`)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from utils.core.checkpoint import _unwrap
from utils.core.errors import UserError, UserValueError
from utils.core.runtime import DistributedContext
from utils.data.datalists import Batch, describe_unreadable
from utils.training.checkpointing import SINGLE_PROCESS, CheckpointWriter, TrainState, gather_objects
from utils.training.diagnostics import TermGradientProbe
from utils.training.log import RunLog, report_epoch
from utils.training.optim import adjust_lr, trainable_lrs
from utils.training.recipe import regularizer_weight
from utils.training.step import OptimizerStep
from utils.training.validation import (
    CURVES_NAME,
    BestTracker,
    keep_best,
    keep_start,
    report_validation,
    save_training_curves,
)

__all__ = ["EpochMeter", "EpochProgress", "NonFiniteLossError", "TrainOptions", "fit", "train_one_epoch"]


class NonFiniteLossError(UserError, FloatingPointError):
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
        warmup_steps: the area and smoothness terms rise linearly over the first this many
            global steps (:func:`utils.training.recipe.regularizer_weight`); 0: full weight.
        step_schedule: called as ``step_schedule(optimizer, global_step)`` before every step
            (e.g. :class:`utils.training.recipe.StepSchedule`); None: none.
        validate: called with the model after each epoch on the main process, returns
            ``val_*`` scores added to the epoch's summary (e.g.
            :class:`utils.training.validation.HeldOutCheck`); None: no held-out check.
        best_by: the criterion of the best checkpoint (a key of
            :data:`utils.training.validation.BEST_BY`), used with ``validate``.
        start_is_candidate: with ``validate``, the head before its first step competes for the
            best checkpoint too (for a head initialised from the classifier, whose start is
            its CAM): when no epoch beats it, ``lcam_best.pth.tar`` is that head.
        plateau_epochs: epochs without a better held-out masked-image accuracy before one
            warning line (0: never).
        term_gradients: records the loss terms' gradient norms at the head and the masks'
            saturation every N steps, written after each epoch to ``term_gradients.json``
            and ``.png`` in ``snapshot_dir`` (:class:`utils.training.diagnostics.TermGradientProbe`);
            None: off (no cost).
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
    warmup_steps: int = 0
    step_schedule: Callable[[torch.optim.Optimizer, int], None] | None = None
    validate: Callable[[nn.Module], dict[str, float]] | None = None
    best_by: str = "masked_accuracy"
    start_is_candidate: bool = False
    plateau_epochs: int = 3
    term_gradients: TermGradientProbe | None = None


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


@dataclass
class EpochProgress:
    """How far an epoch has got: what :func:`train_one_epoch` starts from and returns.

    Attributes:
        meter: the epoch's loss terms and accuracies so far.
        global_counter: optimiser steps of the whole run so far.
        batches_done: batches of this epoch done by this process (a resumed run counts the
            earlier ones).
        failed: ``(dataset index, reason)`` of the unreadable images skipped.
        stopped: ``on_step`` ended the pass early (the run is being stopped).
    """

    meter: EpochMeter
    global_counter: int = 0
    batches_done: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    stopped: bool = False


def _split_batch(batch: Any) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[int, str]]]:
    if isinstance(batch, Batch):
        return batch.images, batch.labels, batch.failed
    return batch[0], batch[1], []


class _EpochBar:
    """The progress bar of one epoch: every display, the loss terms averaged over the steps
    since the previous one, the lr, images/s and the whole run's ETA (the bar's own is the
    epoch's)."""

    def __init__(
        self,
        options: TrainOptions,
        dist: DistributedContext,
        epoch: int,
        total_epochs: int | None,
        start: EpochProgress,
        batches: int,
    ) -> None:
        self.total_batches = start.batches_done + batches
        self.later_epochs = max((total_epochs or 0) - epoch - 1, 0)
        self.bar = tqdm(
            total=self.total_batches,
            initial=start.batches_done,
            desc=f"epoch {epoch + 1}" + (f"/{total_epochs}" if total_epochs else ""),
            unit="batch",
            disable=not (options.progress and dist.is_main),
            dynamic_ncols=True,
        )
        self.shown_sums: dict[str, float] = {}
        self._new_window()

    def _new_window(self) -> None:
        self.images, self.steps, self.since = 0, 0, time.perf_counter()

    def advance(self) -> None:
        """One batch taken from the loader."""
        self.bar.update(1)

    def count(self, images: int) -> None:
        """One optimiser step on ``images`` images."""
        self.images += images
        self.steps += 1

    def show(self, progress: EpochProgress, optimizer: torch.optim.Optimizer) -> None:
        """Display the window that ends here (reads the meter: a host sync) and start a new one."""
        if not self.bar.disable:
            current = progress.meter.state()
            count = current.get("count", 0.0) - self.shown_sums.get("count", 0.0)
            postfix = {}
            for name in progress.meter.names or []:
                if count > 0:
                    postfix[name] = f"{(current[name] - self.shown_sums.get(name, 0.0)) / count:.4f}"
            seconds = max(time.perf_counter() - self.since, 1e-9)
            remaining = self.total_batches - progress.batches_done + self.later_epochs * self.total_batches
            postfix["lr"] = f"{trainable_lrs(optimizer)[0]:.3g}"
            postfix["img/s"] = f"{self.images / seconds:.1f}"
            postfix["run_eta"] = str(datetime.timedelta(seconds=int(remaining * seconds / max(self.steps, 1))))
            self.bar.set_postfix(postfix, refresh=False)
            self.shown_sums = current
        self._new_window()

    def close(self) -> None:
        self.bar.close()


def train_one_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    options: TrainOptions,
    epoch: int,
    *,
    forward_model: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    dist: DistributedContext = SINGLE_PROCESS,
    start: EpochProgress | None = None,
    total_epochs: int | None = None,
    on_step: Callable[[EpochProgress], bool] | None = None,
) -> EpochProgress:
    """Train ``model`` for one pass over ``loader`` (what it yields after a resume), one
    :class:`utils.training.step.OptimizerStep` per batch.

    Args:
        model: the L-CAM model (its ``loss`` is used; it is not switched to train mode here).
        loader: yields :class:`utils.data.Batch` or ``(images, labels)``.
        forward_model: what runs the forward pass (a DDP or compiled wrapper of ``model``).
        scaler: the gradient scaler (fp16 on CUDA).
        start: where the epoch stands (a resumed run; its meter goes on counting); default:
            its beginning, at global step 0.
        total_epochs: the run's epochs, for the display.
        on_step: called after every step with the epoch's progress; returning True ends
            the epoch early (the run is being stopped).

    Returns:
        The epoch's :class:`EpochProgress` after this pass.

    Raises:
        NonFiniteLossError: a loss was NaN or infinite (checked at each display).
    """
    step = OptimizerStep(model, optimizer, options.amp, scaler, forward_model)
    if start is None:
        start = EpochProgress(EpochMeter(options.device))
    progress = dataclasses.replace(start, failed=list(start.failed), stopped=False)
    bar = _EpochBar(options, dist, epoch, total_epochs, progress, len(loader))
    try:
        for batch in loader:
            images, labels, batch_failed = _split_batch(batch)
            progress.failed.extend(batch_failed)
            progress.batches_done += 1
            bar.advance()
            if images is None or images.size(0) == 0:
                if dist.enabled:
                    raise RuntimeError(
                        f"rank {dist.rank}: every image of batch {progress.batches_done} of epoch {epoch} was unreadable"
                    )
                continue
            images = images.to(options.device, non_blocking=True)
            labels = labels.to(options.device, non_blocking=True)
            if options.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if options.step_schedule is not None:
                options.step_schedule(optimizer, progress.global_counter)
            weight = regularizer_weight(progress.global_counter, options.warmup_steps)
            probe = _term_probe(model, options, labels, progress.global_counter, epoch, weight)
            out, terms = step(images, labels, weight, probe)
            progress.global_counter += 1
            progress.meter.update(terms, out.logits if hasattr(out, "logits") else out, labels)
            bar.count(labels.numel())
            if options.disp_interval and progress.global_counter % options.disp_interval == 0:
                _check_finite(progress.meter, dist, epoch)
                bar.show(progress, optimizer)
            if on_step is not None and on_step(progress):
                progress.stopped = True
                break
    finally:
        bar.close()
    _check_finite(progress.meter, dist, epoch)
    return progress


def _term_probe(model: nn.Module, options: TrainOptions, labels, global_step: int, epoch: int, weight: float):
    """The probe of this step for :class:`OptimizerStep`, or None (off, or not a recorded step)."""
    recorder = options.term_gradients
    if recorder is None or not recorder.wants(global_step):
        return None
    return lambda out, terms: recorder.record(model, out, terms, labels, global_step, epoch, weight)


def _check_finite(meter: EpochMeter, dist: DistributedContext, epoch: int) -> None:
    step = meter.first_nonfinite_step(dist)
    if step:
        raise NonFiniteLossError(
            f"non-finite loss at global step {step} (epoch {epoch}); stopped without saving it: "
            "the last good checkpoint stays the newest. Try a lower --lr or --amp none/bf16"
        )


def _set_epoch(loader: Any, epoch: int, start_samples: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if start_samples and not hasattr(sampler, "start"):
        raise UserValueError("resuming mid-epoch needs a loader with a utils.data.ResumableSampler")
    if hasattr(sampler, "start"):
        sampler.set_epoch(epoch, start_samples)
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _samples_of(dataset: Any) -> Sequence[tuple[str, int]] | None:
    while dataset is not None and not hasattr(dataset, "samples"):
        dataset = getattr(dataset, "dataset", None)
    return getattr(dataset, "samples", None)


def _epoch_start(state: TrainState, device: torch.device, dist: DistributedContext) -> EpochProgress:
    """Where ``state``'s epoch starts; the restored sums and failures are totals of all
    processes, so the main process alone carries them."""
    meter = EpochMeter(device, state.global_counter)
    failed: list[tuple[int, str]] = []
    if dist.is_main:
        meter.restore(state.sums)
        failed.extend(state.failed)
    return EpochProgress(meter, state.global_counter, state.batches_done, failed)


def _epoch_summary(
    epoch: int,
    progress: EpochProgress,
    optimizer: torch.optim.Optimizer,
    seconds: float,
    samples: Sequence[tuple[str, int]] | None,
    dist: DistributedContext,
) -> dict[str, Any]:
    """The figures of a finished epoch over all processes (a collective): its loss terms and
    accuracies, lr, time, this run's speed and the unreadable images."""
    progress.meter.all_reduce(dist)
    failed = [item for part in gather_objects(progress.failed, dist) for item in part]
    summary = {
        "epoch": epoch,
        "global_counter": progress.global_counter,
        **progress.meter.summary(),
        "lr": trainable_lrs(optimizer),
        "seconds": round(seconds, 3),
    }
    # speed of this run only: a run resumed mid-epoch also counts the images done before it
    summary["images_per_s"] = round(progress.meter.images_this_run() / max(seconds, 1e-9), 2)
    summary["unreadable"] = describe_unreadable(samples, failed) if samples is not None else failed
    return summary


def _report_held_out(summary: dict[str, Any], tracker: BestTracker, snapshot_dir: str | None) -> None:
    """Print the held-out scores, keep the best checkpoint, warn once about a plateau."""
    is_best = tracker.update(summary)
    if is_best and snapshot_dir and summary.get("checkpoint"):
        keep_best(summary["checkpoint"], snapshot_dir)
    report_validation(summary, is_best)
    for message in (tracker.plateau_message(), tracker.worse_than_start_message(summary)):
        if message:
            print(message, file=sys.stderr, flush=True)


def _check_start(
    model: nn.Module, options: TrainOptions, tracker: BestTracker, log: RunLog | None, state: TrainState
) -> None:
    """Score the head on the held-out images before its first step (kept in the log as
    ``held_out_start``; a resumed run takes it from there, or goes without), for the warning
    of :meth:`BestTracker.worse_than_start_message`; with ``options.start_is_candidate`` also
    as the first candidate of the best checkpoint."""
    if log is not None and log.enabled and "held_out_start" in log.log:
        tracker.set_start(log.log["held_out_start"], options.start_is_candidate)
        return
    if state.epoch or state.global_counter:  # resumed from a run that did not record its start
        return
    start = options.validate(model)
    is_best = tracker.set_start(start, options.start_is_candidate)
    report_validation(start, is_best, "held-out before training")
    if is_best and options.snapshot_dir:
        keep_start(_unwrap(model), options.snapshot_dir, start, options.args)
    if log is not None:
        log.set_start(start)


def _stopped(global_counter: int, dist: DistributedContext) -> None:
    if dist.is_main:
        print(f"stopped after global step {global_counter} (--stop_after_step)", flush=True)


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
    epoch the main process writes a checkpoint (:class:`utils.training.CheckpointWriter`,
    see :class:`TrainOptions`), a row of ``train_record.csv`` and the JSON log, and lists
    the images that could not be read. With ``options.validate``, the held-out scores join
    the summary, the best epoch by ``options.best_by`` is copied to ``lcam_best.pth.tar``,
    ``train_curves.png`` is redrawn and a plateau of the masked-image accuracy is warned
    about once (see :mod:`utils.training.validation`).

    Returns:
        The summaries of the epochs this call completed.

    Raises:
        NonFiniteLossError: see :func:`train_one_epoch`; nothing is saved from that step on.
    """
    state = state if state is not None else TrainState()
    raw = _unwrap(model)
    log = RunLog(options.snapshot_dir, raw, options.args, options.device, dist) if options.snapshot_dir else None
    batch_size = getattr(loader, "batch_size", None)
    samples = _samples_of(getattr(loader, "dataset", None))
    writer = CheckpointWriter(
        options.snapshot_dir,
        raw,
        optimizer,
        scaler,
        dist,
        save_full=options.save_full,
        args=options.args,
        batch_size=batch_size,
    )
    if state.resumed_mid_epoch_from:
        writer.supersede(state.resumed_mid_epoch_from)
    earlier = [entry for entry in log.log["epochs"] if entry["epoch"] < state.epoch] if log and log.enabled else []
    tracker = BestTracker(options.best_by, options.plateau_epochs, earlier) if options.validate else None
    if tracker is not None and dist.is_main and state.epoch < epochs:
        _check_start(model, options, tracker, log, state)
    summaries = []
    while state.epoch < epochs:
        epoch = state.epoch
        lr_schedule(optimizer, epoch)
        _set_epoch(loader, epoch, state.batches_done * (batch_size or 0))
        model.train()
        pass_end = state.batches_done + len(loader)
        started = time.perf_counter()

        def on_step(progress: EpochProgress, epoch: int = epoch, pass_end: int = pass_end) -> bool:
            counter, done = progress.global_counter, progress.batches_done
            if options.save_every and counter % options.save_every == 0 and done < pass_end:
                _check_finite(progress.meter, dist, epoch)
                writer.save_mid_epoch(epoch, counter, done, progress.meter.state(), progress.failed)
            return bool(options.stop_after_step) and counter >= options.stop_after_step

        progress = train_one_epoch(
            model,
            loader,
            optimizer,
            options,
            epoch,
            forward_model=forward_model,
            scaler=scaler,
            dist=dist,
            start=_epoch_start(state, options.device, dist),
            total_epochs=epochs,
            on_step=on_step,
        )
        if progress.stopped and progress.batches_done < pass_end:
            _stopped(progress.global_counter, dist)
            return summaries
        summary = _epoch_summary(epoch, progress, optimizer, time.perf_counter() - started, samples, dist)
        if options.validate is not None and dist.is_main:
            summary.update(options.validate(model))
        summary["checkpoint"] = writer.save_epoch_end(epoch, progress.global_counter, progress.batches_done, summary)
        if dist.is_main:
            report_epoch(summary, epochs)
            if tracker is not None:
                _report_held_out(summary, tracker, options.snapshot_dir)
            if options.term_gradients is not None and options.snapshot_dir:
                options.term_gradients.write(options.snapshot_dir)
            if log is not None:
                log.add_epoch(summary)
                if tracker is not None:
                    save_training_curves(log.log["epochs"], os.path.join(options.snapshot_dir, CURVES_NAME))
        summaries.append(summary)
        state = TrainState(epoch=epoch + 1, global_counter=progress.global_counter)
        if progress.stopped:
            _stopped(progress.global_counter, dist)
            return summaries
    message = tracker.start_kept_message() if tracker is not None and dist.is_main and summaries else None
    if message:
        print(message, flush=True)
    return summaries
