"""utils.training.checkpointing: what the checkpoint writer saves and deletes, resume from its
files, and the guard and archive of an earlier run's files."""

from __future__ import annotations

import os

import pytest
import torch

from tests.toy_models import tiny_lcam
from utils.core.checkpoint import read_torch_file
from utils.core.errors import UserError
from utils.training.checkpointing import (
    ARCHIVE_PREFIX,
    CheckpointWriter,
    archive_previous_run,
    check_no_previous_run,
    resume_training,
)
from utils.training.log import CSV_NAME
from utils.training.optim import build_optimizer


def _one_step(model, optimizer) -> None:
    images, labels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2])
    optimizer.zero_grad()
    model.loss(model(images, labels), labels).total.backward()
    optimizer.step()


def test_mid_epoch_checkpoint_holds_the_totals_and_resumes_where_it_stopped(tmp_path):
    model = tiny_lcam().train()
    optimizer = build_optimizer(model, 1e-4)
    _one_step(model, optimizer)
    writer = CheckpointWriter(str(tmp_path), model, optimizer, args={"lr": 1e-4}, batch_size=2)
    sums = {"count": 2.0, "loss": 3.0, "top1_hits": 1.0, "top5_hits": 2.0}
    path = writer.save_mid_epoch(1, 7, 3, sums, [(4, "OSError: truncated")])
    assert os.path.basename(path) == "lcam_epoch_1_glo_step_7_mid.pth.tar"
    saved = read_torch_file(path)
    assert saved["progress"] == {
        "epoch_complete": False,
        "batches_done": 3,
        "batch_size": 2,
        "world_size": 1,
        "sums": sums,
        "failed": [[4, "OSError: truncated"]],
    }
    assert saved["args"] == {"lr": 1e-4} and saved["summary"] is None and "scaler" not in saved

    restored = tiny_lcam(seed=5)
    state, metadata = resume_training(str(tmp_path), restored, build_optimizer(restored, 1e-4), batch_size=2)
    assert (state.epoch, state.batches_done, state.global_counter) == (1, 3, 7)
    assert state.sums == sums and state.failed == [(4, "OSError: truncated")] and state.resumed_mid_epoch_from == path
    assert torch.equal(restored.attnM.op.weight, model.attnM.op.weight) and metadata["path"] == path


def test_a_newer_checkpoint_replaces_the_mid_epoch_ones(tmp_path):
    model = tiny_lcam()
    optimizer = build_optimizer(model, 1e-4)
    resumed_from = tmp_path / "lcam_epoch_0_glo_step_1_mid.pth.tar"
    resumed_from.write_bytes(b"from an earlier run")
    elsewhere = tmp_path / "other" / "lcam_epoch_0_glo_step_1_mid.pth.tar"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"another folder: never deleted")
    writer = CheckpointWriter(str(tmp_path), model, optimizer, batch_size=2)
    writer.supersede(str(resumed_from))
    writer.supersede(str(elsewhere))
    first = writer.save_mid_epoch(0, 2, 2, {}, [])
    assert not resumed_from.exists() and elsewhere.exists()
    second = writer.save_mid_epoch(0, 3, 3, {}, [])
    assert not os.path.exists(first) and os.path.exists(second)
    end = writer.save_epoch_end(0, 4, 4, {"loss": 1.0})
    assert sorted(os.listdir(tmp_path)) == ["lcam_epoch_0_glo_step_4.pth.tar", "other"]
    saved = read_torch_file(end)
    assert saved["progress"]["epoch_complete"] is True and saved["summary"] == {"loss": 1.0}
    state, _ = resume_training(end, model, optimizer)
    assert (state.epoch, state.batches_done, state.global_counter) == (1, 0, 4)


def test_save_full_also_writes_the_reference_snapshot(tmp_path):
    model = tiny_lcam()
    writer = CheckpointWriter(str(tmp_path), model, build_optimizer(model, 1e-4), save_full=True)
    writer.save_mid_epoch(2, 10, 1, {}, [])  # no reference snapshot part-way through an epoch
    writer.save_epoch_end(2, 12, 2, {})
    assert sorted(os.listdir(tmp_path)) == ["imagenet_epoch_2_glo_step_12.pth.tar", "lcam_epoch_2_glo_step_12.pth.tar"]
    reference = read_torch_file(tmp_path / "imagenet_epoch_2_glo_step_12.pth.tar")
    assert (reference["epoch"], reference["arch"], reference["global_counter"]) == (2, "TinyLCAM", 12)
    assert reference["state_dict"].keys() == model.state_dict().keys()  # the whole model, not the head only


def test_without_a_folder_nothing_is_written(tmp_path):
    model = tiny_lcam()
    writer = CheckpointWriter(None, model, build_optimizer(model, 1e-4))
    assert writer.save_mid_epoch(0, 1, 1, {}, []) == "" and writer.save_epoch_end(0, 2, 2, {}) == ""


def test_an_earlier_run_is_refused_then_archived(tmp_path):
    (tmp_path / "lcam_epoch_0_glo_step_3.pth.tar").write_bytes(b"x")
    (tmp_path / CSV_NAME).write_text("epoch\n0\n")
    with pytest.raises(UserError, match=r"already holds a run \(1 checkpoint\(s\), train_record.csv\).*--archive_old"):
        check_no_previous_run(tmp_path, fresh_start=True)
    check_no_previous_run(tmp_path, fresh_start=False)  # resuming it is fine
    archive = archive_previous_run(tmp_path)
    assert os.path.basename(archive).startswith(ARCHIVE_PREFIX)
    assert sorted(os.listdir(archive)) == ["lcam_epoch_0_glo_step_3.pth.tar", CSV_NAME]
    check_no_previous_run(tmp_path, fresh_start=True)  # nothing left in the way
    assert archive_previous_run(tmp_path) is None
