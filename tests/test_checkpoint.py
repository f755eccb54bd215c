"""Reference snapshots load, the project's format round-trips, wrong architectures fail in one line."""

from __future__ import annotations

import copy
import os
import random

import numpy as np
import pytest
import torch

from models import build_model
from utils.core.checkpoint import (
    CheckpointReadError,
    checkpoint_name,
    find_newest_checkpoint,
    get_rng_state,
    list_checkpoints,
    load_checkpoint,
    make_checkpoint,
    read_torch_file,
    save_checkpoint,
    set_rng_state,
)
from utils.training.optim import adjust_lr, build_optimizer


def _reference_snapshot(model, epoch=3, step=120):
    """What the reference training saves: the whole model plus its four-group optimizer
    (every parameter, backbone first, in named_parameters order), after one step of the head."""
    optimizer = torch.optim.SGD(
        [
            {"params": [], "lr": 1e-4},
            {"params": [], "lr": 2e-4},
            {"params": [p for n, p in model.named_parameters() if "weight" in n], "lr": 1e-2},
            {"params": [p for n, p in model.named_parameters() if "bias" in n], "lr": 2e-2},
        ],
        momentum=0.9,
        weight_decay=5e-4,
        nesterov=True,
    )
    for group in optimizer.param_groups:  # the reference decays the lrs in place: x 0.75 at epochs 1..3
        group["lr"] *= 0.75**epoch
    head = model.attnM.op
    (head.weight.square().sum() + head.bias.sum()).backward()
    optimizer.step()
    optimizer.zero_grad()
    return {
        "epoch": epoch,
        "arch": "resnet",
        "global_counter": step,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }


@pytest.fixture
def trained_resnet(make_model):
    """A ResNet50_L_CAM_Fm whose head and BatchNorm statistics differ from a fresh build."""
    model = copy.deepcopy(make_model("ResNet50_L_CAM_Fm", num_classes=5))
    with torch.no_grad():
        model.attnM.op.weight.normal_()
        model.bn1.running_mean.add_(1.0)
    return model


def test_reference_snapshot_loads_into_a_fresh_model(trained_resnet, make_model, tmp_path, images):
    path = tmp_path / checkpoint_name(3, 120, reference=True)
    torch.save(_reference_snapshot(trained_resnet), path)
    fresh = copy.deepcopy(make_model("ResNet50_L_CAM_Fm", num_classes=5, seed=1))
    optimizer = build_optimizer(fresh, 1e-4)
    metadata = load_checkpoint(path, fresh, optimizer)  # the reference's optimizer layout: momentum restored
    assert optimizer.state[fresh.attnM.op.weight]["momentum_buffer"].shape == (5, 2048, 1, 1)
    assert len(optimizer.state) == 2  # only the head ever stepped
    adjust_lr(optimizer, 3)  # the schedule still starts from this run's base lr
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(
        [1e-4 * 0.75**3 * f for f in (1, 2, 100, 200)]
    )
    other = build_optimizer(torch.nn.Linear(2, 2), 1e-4)
    with pytest.warns(UserWarning, match="optimizer state of another layout"):
        load_checkpoint(path, fresh, other)
    assert metadata["epoch"] == 3 and metadata["global_counter"] == 120 and metadata["path"] == str(path)
    for key, value in trained_resnet.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = images(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x).cams, trained_resnet.eval()(x).cams)


def test_dataparallel_prefix_and_bare_state_dict_load(trained_resnet, make_model, tmp_path):
    prefixed = tmp_path / "dp.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained_resnet.state_dict().items()}}, prefixed)
    bare = tmp_path / "bare.pth"
    torch.save(trained_resnet.state_dict(), bare)
    for path in (prefixed, bare):
        fresh = copy.deepcopy(make_model("ResNet50_L_CAM_Fm", num_classes=5, seed=1))
        load_checkpoint(path, fresh)
        assert torch.equal(fresh.attnM.op.weight, trained_resnet.attnM.op.weight)


def test_project_head_checkpoint_round_trip_with_optimizer_and_rng(trained_resnet, make_model, tmp_path):
    optimizer = build_optimizer(trained_resnet, 1e-4)
    trained_resnet.train()
    labels = torch.tensor([0, 1])
    trained_resnet.loss(trained_resnet(torch.rand(2, 3, 32, 32), labels), labels).total.backward()
    optimizer.step()
    rng = get_rng_state()
    checkpoint = make_checkpoint(trained_resnet, 2, 50, optimizer=optimizer.state_dict(), rng=rng, args={"lr": 1e-4})
    frozen = {name for name, p in trained_resnet.named_parameters() if not p.requires_grad}
    assert set(checkpoint["state_dict"]) == set(trained_resnet.state_dict()) - frozen
    assert {"attnM.op.weight", "attnM.op.bias", "bn1.running_mean"} <= set(checkpoint["state_dict"])
    path = save_checkpoint(checkpoint, tmp_path / checkpoint_name(2, 50))
    assert os.listdir(tmp_path) == [checkpoint_name(2, 50)]  # no temporary file left behind

    fresh = copy.deepcopy(make_model("ResNet50_L_CAM_Fm", num_classes=5))
    fresh_optimizer = build_optimizer(fresh, 1e-4)
    metadata = load_checkpoint(tmp_path, fresh, fresh_optimizer)
    assert metadata["path"] == path and metadata["arch"] == "ResNet50_L_CAM_Fm" and metadata["args"] == {"lr": 1e-4}
    assert metadata["epoch"] == 2 and metadata["global_counter"] == 50
    for key, value in trained_resnet.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    torch.testing.assert_close(
        fresh_optimizer.state[fresh.attnM.op.weight]["momentum_buffer"],
        optimizer.state[trained_resnet.attnM.op.weight]["momentum_buffer"],
    )

    draws = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(metadata["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == draws


def test_full_project_checkpoint_and_torch_load_weights_only(trained_resnet, make_model, tmp_path):
    path = save_checkpoint(make_checkpoint(trained_resnet, 0, 1, full=True), tmp_path / "full.pth.tar")
    raw = torch.load(path, weights_only=True)
    assert raw["contents"] == "full" and len(raw["state_dict"]) == len(trained_resnet.state_dict())
    fresh = copy.deepcopy(make_model("ResNet50_L_CAM_Fm", num_classes=5, seed=1))
    load_checkpoint(path, fresh)
    assert torch.equal(fresh.layer1[0].conv1.weight, trained_resnet.layer1[0].conv1.weight)


def test_checkpoint_of_another_architecture_fails_in_one_line(trained_resnet, make_model, tmp_path):
    path = tmp_path / "resnet.pth.tar"
    torch.save(_reference_snapshot(trained_resnet), path)
    vgg = make_model("VGG16_L_CAM_Img", num_classes=5)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, vgg)
    message = str(error.value)
    assert "\n" not in message
    assert "does not fit VGG16_L_CAM_Img" in message
    assert "missing keys ['classifier.0.bias'" in message and "unexpected keys ['bn1.bias'" in message

    other_classes = copy.deepcopy(make_model("ResNet50_L_CAM_Fm", num_classes=7))
    with pytest.raises(ValueError, match=r"shape mismatch .*'attnM.op.bias \(5,\) vs \(7,\)'"):
        load_checkpoint(path, other_classes)

    head = tmp_path / "head.pth.tar"
    save_checkpoint(make_checkpoint(trained_resnet, 0, 1), head)
    img = copy.deepcopy(make_model("ResNet50_L_CAM_Img", num_classes=5))
    with pytest.raises(
        ValueError, match="checkpoint of arch 'ResNet50_L_CAM_Fm', but the model is 'ResNet50_L_CAM_Img'"
    ):
        load_checkpoint(head, img)


def test_missing_and_unreadable_checkpoints(tmp_path, make_model):
    model = make_model("ResNet50_L_CAM_Fm", num_classes=5)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pth.tar", model)
    with pytest.raises(FileNotFoundError, match="no .pth.tar checkpoint in directory"):
        load_checkpoint(tmp_path, model)
    (tmp_path / "broken.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth.tar: a text file, not a checkpoint"):
        load_checkpoint(tmp_path / "broken.pth.tar", model)


def test_newest_checkpoint_by_step_then_project_format(tmp_path):
    for name in (checkpoint_name(1, 20, reference=True), checkpoint_name(1, 20), checkpoint_name(0, 10), "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert find_newest_checkpoint(tmp_path) == str(tmp_path / checkpoint_name(1, 20))
    (tmp_path / checkpoint_name(2, 30, reference=True)).write_bytes(b"x")
    assert find_newest_checkpoint(tmp_path) == str(tmp_path / checkpoint_name(2, 30, reference=True))


def test_mid_epoch_checkpoints_count_for_resuming_only(tmp_path):
    for name in (checkpoint_name(0, 3), checkpoint_name(1, 4, mid_epoch=True), checkpoint_name(1, 5, mid_epoch=True)):
        (tmp_path / name).write_bytes(b"x")
    assert checkpoint_name(1, 4, mid_epoch=True) == "lcam_epoch_1_glo_step_4_mid.pth.tar"
    assert find_newest_checkpoint(tmp_path) == str(tmp_path / "lcam_epoch_0_glo_step_3.pth.tar")
    assert find_newest_checkpoint(tmp_path, mid_epoch=True) == str(tmp_path / "lcam_epoch_1_glo_step_5_mid.pth.tar")
    assert [os.path.basename(path) for path in list_checkpoints(tmp_path)] == [
        "lcam_epoch_1_glo_step_5_mid.pth.tar",
        "lcam_epoch_1_glo_step_4_mid.pth.tar",
        "lcam_epoch_0_glo_step_3.pth.tar",
    ]
    os.remove(tmp_path / "lcam_epoch_0_glo_step_3.pth.tar")  # nothing else: the newest mid-epoch one
    assert find_newest_checkpoint(tmp_path) == str(tmp_path / "lcam_epoch_1_glo_step_5_mid.pth.tar")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_file_is_told_from_a_foreign_one_at_every_length(legacy, tmp_path):
    """Cut a checkpoint at every length: always "truncated", never "foreign" (which a file
    cut inside a pickled name could look like)."""
    whole = tmp_path / "whole.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(4)}, "epoch": 1}, whole, _use_new_zipfile_serialization=not legacy)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pth.tar"
    for length in range(4, len(data), 3):
        cut.write_bytes(data[:length])
        with pytest.raises(CheckpointReadError) as error:
            read_torch_file(cut)
        assert error.value.reason.startswith("truncated checkpoint"), (length, error.value.reason)
    assert read_torch_file(whole, mmap=True)["epoch"] == 1


def test_pretrained_path_and_errors(tmp_path):
    import torchvision

    state = torchvision.models.resnet50(weights=None, num_classes=3).state_dict()
    torch.save(state, tmp_path / "r50.pth")
    model = build_model("ResNet50_L_CAM_Img", pretrained=str(tmp_path / "r50.pth"), num_classes=3)
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert model.backbone_weights == str(tmp_path / "r50.pth")
    with pytest.raises(FileNotFoundError, match="backbone weights file not found: '.*missing.pth'"):
        build_model("ResNet50_L_CAM_Img", pretrained=str(tmp_path / "missing.pth"), num_classes=3)
    with pytest.raises(ValueError, match="is not a torchvision resnet50 state_dict: shape mismatch"):
        build_model("ResNet50_L_CAM_Img", pretrained=str(tmp_path / "r50.pth"), num_classes=4)
    with pytest.raises(ValueError, match="ImageNet weights with 1000 classes, but num_classes=3"):
        build_model("ResNet50_L_CAM_Img", pretrained=True, num_classes=3)


def test_download_failure_is_one_line(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(
        RuntimeError,
        match="could not download the ResNet50_Weights.IMAGENET1K_V1 backbone weights .*--backbone_weights PATH",
    ):
        build_model("ResNet50_L_CAM_Fm", pretrained=True)
