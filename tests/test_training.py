"""utils.training and the training data pipeline of utils.data: one epoch, the meter,
non-finite losses, unreadable images, resumable sampling and seeded augmentation."""

from __future__ import annotations

import copy
import csv
import os

import pytest
import torch

from models import build_model
from tests.toy_models import tiny_lcam
from utils.core.runtime import compile_function
from utils.data.datalists import (
    ImageList,
    ResumableSampler,
    SeededAugmentation,
    build_loader,
    train_transform,
)
from utils.training.checkpointing import TrainState, resume_training
from utils.training.log import CSV_NAME
from utils.training.loop import EpochMeter, NonFiniteLossError, TrainOptions, fit, train_one_epoch
from utils.training.optim import build_optimizer

CPU = torch.device("cpu")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("ResNet50_L_CAM_Fm", pretrained=False, num_classes=5)


def _loader(samples, batch_size=4, seed=0, num_workers=0):
    dataset = SeededAugmentation(ImageList(samples, train_transform(40, 32)))
    sampler = ResumableSampler(dataset, seed=seed)
    return build_loader(dataset, batch_size, CPU, sampler, num_workers=num_workers, seed=seed)


def test_meter_sums_weighted_terms_and_hits():
    meter = EpochMeter(CPU, base_step=10)
    logits = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5]])
    meter.update({"loss": torch.tensor(2.0), "ce": torch.tensor(1.0)}, logits, torch.tensor([0, 0]))
    meter.update({"loss": torch.tensor(4.0), "ce": torch.tensor(3.0)}, logits[:1], torch.tensor([1]))
    summary = meter.summary()
    assert summary["loss"] == pytest.approx((2 * 2 + 4) / 3)
    assert summary["ce"] == pytest.approx((1 * 2 + 3) / 3)
    # image 0 label 0: top-1 hit; image 1 label 0: its lowest logit, no hit; image 0 label 1: top-5 only
    assert summary["pred@1"] == pytest.approx(100 / 3)
    assert summary["pred@5"] == pytest.approx(200 / 3)
    assert summary["images"] == 3
    assert meter.first_nonfinite_step() == 0
    meter.update({"loss": torch.tensor(float("nan")), "ce": torch.tensor(1.0)}, logits, torch.tensor([0, 1]))
    meter.update({"loss": torch.tensor(float("inf")), "ce": torch.tensor(1.0)}, logits, torch.tensor([0, 1]))
    assert meter.first_nonfinite_step() == 13


def test_meter_restores_mid_epoch_sums():
    first = EpochMeter(CPU)
    first.update({"loss": torch.tensor(1.0)}, torch.eye(2), torch.tensor([0, 1]))
    second = EpochMeter(CPU)
    second.restore(first.state())
    second.update({"loss": torch.tensor(4.0)}, torch.eye(2), torch.tensor([1, 1]))
    assert second.summary() == pytest.approx({"loss": 2.5, "pred@1": 75.0, "pred@5": 100.0, "images": 4})


def test_sampler_order_depends_on_seed_and_epoch_and_resumes():
    data = list(range(10))
    sampler = ResumableSampler(data, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    assert sorted(index for index, _ in epoch0) == data
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    sampler.set_epoch(0, start=4)
    assert list(sampler) == epoch0[4:] and len(sampler) == 6
    halves = [ResumableSampler(data, num_replicas=2, rank=rank, seed=3) for rank in (0, 1)]
    for half in halves:
        half.set_epoch(0)
    assert sorted(index for half in halves for index, _ in half) == data
    with pytest.raises(ValueError, match="'start' must be in"):
        sampler.set_epoch(0, start=11)


def test_seeded_augmentation_ignores_the_global_rng(jpeg_tree):
    _, _, samples = jpeg_tree(classes=1, per_class=1)
    dataset = SeededAugmentation(ImageList(samples, train_transform(40, 32)))
    torch.manual_seed(1)
    first = dataset[(0, 123)][0]
    state = torch.get_rng_state()
    torch.manual_seed(2)
    second = dataset[(0, 123)][0]
    assert torch.equal(first, second)
    assert not torch.equal(first, dataset[(0, 124)][0])  # another seed, another crop or flip
    torch.manual_seed(1)
    dataset[(0, 5)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG was not advanced


def test_loader_pins_memory_only_on_cuda():
    data = list(range(4))
    assert build_loader(data, 2, CPU, num_workers=0).pin_memory is False
    loader = build_loader(data, 2, torch.device("cuda"), num_workers=1)
    assert loader.pin_memory and loader.persistent_workers and loader.prefetch_factor == 4


def test_one_step_equals_the_reference_optimizer(model, one_thread):
    """One step of train_one_epoch = the reference SGD (weights 100 x lr, biases 200 x lr,
    momentum 0.9, Nesterov, weight decay 5e-4) on the same batch, written out by hand."""
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1])
    expected = copy.deepcopy(model).train()
    reference = torch.optim.SGD(
        [
            {"params": [expected.attnM.op.weight], "lr": 1e-4 * 100},
            {"params": [expected.attnM.op.bias], "lr": 1e-4 * 200},
        ],
        lr=1e-4,
        momentum=0.9,
        weight_decay=5e-4,
        nesterov=True,
    )
    reference.zero_grad()
    expected.loss(expected(images, labels), labels).total.backward()
    reference.step()

    initial = model.attnM.op.weight.detach().clone()
    model.train()
    optimizer = build_optimizer(model, 1e-4)
    result = train_one_epoch(model, [(images, labels)], optimizer, TrainOptions(device=CPU, progress=False), epoch=0)
    assert (result.global_counter, result.batches_done, result.failed, result.stopped) == (1, 1, [], False)
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not torch.equal(model.attnM.op.weight, initial)


def test_compiled_forward_trains_like_eager(one_thread):
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1])
    eager, compiled = tiny_lcam(num_classes=3).train(), tiny_lcam(num_classes=3).train()
    options = TrainOptions(device=CPU, progress=False)
    batches = [(images, labels), (images.flip(-1), labels)]
    train_one_epoch(eager, batches, build_optimizer(eager, 1e-4), options, epoch=0)
    forward = compile_function(compiled, "default")
    train_one_epoch(compiled, batches, build_optimizer(compiled, 1e-4), options, epoch=0, forward_model=forward)
    assert not torch.equal(compiled.attnM.op.weight, tiny_lcam(num_classes=3).attnM.op.weight)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(model, jpeg_tree, tmp_path, one_thread):
    _, _, samples = jpeg_tree()
    loader = _loader(samples)
    options = TrainOptions(device=CPU, snapshot_dir=str(tmp_path / "snap"), disp_interval=100, progress=False)
    optimizer = build_optimizer(model, 1e-4)
    fit(model, loader, optimizer, 1, options)  # epoch 0: 3 good steps, one checkpoint
    calls = {"n": 0}
    real_loss = model.loss

    def loss_that_breaks(out, labels):
        calls["n"] += 1
        loss = real_loss(out, labels)
        return loss._replace(total=loss.total * float("nan")) if calls["n"] == 2 else loss

    model.loss = loss_that_breaks
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at global step 5 \(epoch 1\)"):
        fit(model, loader, optimizer, 2, options, TrainState(epoch=1, global_counter=3))
    assert sorted(os.listdir(tmp_path / "snap")) == sorted(
        ["lcam_epoch_0_glo_step_3.pth.tar", CSV_NAME, "train_log.json"]
    )


def test_unreadable_image_is_skipped_counted_and_listed(model, jpeg_tree, tmp_path, capsys, one_thread):
    _, _, samples = jpeg_tree(classes=2, per_class=2)
    with open(samples[1][0], "wb") as handle:
        handle.write(b"not a jpeg")
    options = TrainOptions(device=CPU, snapshot_dir=str(tmp_path / "snap"), progress=False)
    (summary,) = fit(model, _loader(samples), build_optimizer(model, 1e-4), 1, options)
    assert summary["images"] == 3
    assert [entry["path"] for entry in summary["unreadable"]] == [samples[1][0]]
    assert "UnidentifiedImageError" in summary["unreadable"][0]["reason"]
    assert "1 unreadable image(s) skipped" in capsys.readouterr().err


def test_ce_variant_writes_the_reference_ce_columns(jpeg_tree, tmp_path, one_thread):
    torch.manual_seed(0)
    model = build_model("ResNet50_L_CAM_ImgA", pretrained=False, num_classes=5)
    _, _, samples = jpeg_tree(classes=2, per_class=2)
    options = TrainOptions(device=CPU, snapshot_dir=str(tmp_path), progress=False)
    (summary,) = fit(model, _loader(samples), build_optimizer(model, 1e-4), 1, options)
    with open(tmp_path / CSV_NAME, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["epoch", "loss", "pred@1", "pred@5"]
    assert rows[1] == ["0", f"{summary['loss']:.4f}", f"{summary['pred@1']:.3f}", f"{summary['pred@5']:.3f}"]
    assert summary["area"] == summary["smoothness"] == 0


def test_mid_epoch_checkpoint_needs_the_same_batch_size(model, jpeg_tree, tmp_path, one_thread):
    _, _, samples = jpeg_tree()
    snap = str(tmp_path / "snap")
    options = TrainOptions(device=CPU, snapshot_dir=snap, save_every=1, stop_after_step=1, progress=False)
    fit(model, _loader(samples), build_optimizer(model, 1e-4), 1, options)
    assert os.listdir(snap).count("lcam_epoch_0_glo_step_1_mid.pth.tar") == 1
    with pytest.raises(ValueError, match="saved mid-epoch with batch_size 4 on 1 process"):
        resume_training(snap, model, build_optimizer(model, 1e-4), batch_size=2)
    state, _ = resume_training(snap, model, build_optimizer(model, 1e-4), batch_size=4)
    assert (state.epoch, state.batches_done, state.global_counter) == (0, 1, 1)


@pytest.mark.parametrize("hflip", [True, False])
def test_train_transform_flips_only_with_hflip(hflip):
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    ramp = (torch.arange(32)[None, :, None].expand(32, 32, 3) * 8).to(torch.uint8).numpy()
    image = Image.fromarray(ramp)  # left-right asymmetric; crop = whole image, so only the flip varies
    torch.manual_seed(0)
    outputs = [train_transform(32, 32, hflip=hflip)(image) for _ in range(16)]
    mirrored = sum(torch.equal(output, to_tensor(image).flip(-1)) for output in outputs)
    assert mirrored + sum(torch.equal(output, to_tensor(image)) for output in outputs) == 16
    assert (mirrored > 0) == hflip


def _one_batch():
    """A loader of one batch: four 32 px images, labels 0, 1, 2, 0."""
    return [(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0]))]


def _scripted_held_out(scores):
    """A held-out check that returns ``scores`` in turn (the start first), recording each call."""
    calls = []

    def validate(model):
        calls.append(model.training)
        return {"val_masked_accuracy": 90.0, **scores[len(calls) - 1]}

    return validate, calls


def test_held_out_start_is_scored_logged_and_warned_against(tmp_path, capsys):
    import json

    model = tiny_lcam(num_classes=3).train()
    batch = _one_batch()
    # start AD/IC 5 / 20; epoch 1 only AD worse, epoch 2 both worse, epoch 3 both worse again
    scores = [{"val_ad": 5.0, "val_ic": 20.0}, {"val_ad": 6.0, "val_ic": 21.0}, {"val_ad": 9.0, "val_ic": 15.0}]
    validate, calls = _scripted_held_out([*scores, {"val_ad": 11.0, "val_ic": 9.0}])
    options = TrainOptions(device=CPU, snapshot_dir=str(tmp_path), progress=False, validate=validate)
    fit(model, batch, build_optimizer(model, 1e-4), 3, options)
    captured = capsys.readouterr()
    assert len(calls) == 4 and "held-out before training: masked_accuracy 90.000  ad 5.000  ic 20.000" in captured.out
    warning = "warning: after epoch 2 the held-out AD / IC at 100 % (9.0 / 15.0) are both worse than the head's"
    assert warning in captured.err and captured.err.count("worse than the head's before training") == 1
    with open(tmp_path / "train_log.json", encoding="utf-8") as handle:
        assert json.load(handle)["held_out_start"] == {"val_masked_accuracy": 90.0, "val_ad": 5.0, "val_ic": 20.0}

    # resumed: the start comes from the log (not scored again), and the warning still fires
    validate, calls = _scripted_held_out([{"val_ad": 12.0, "val_ic": 8.0}])
    options = TrainOptions(device=CPU, snapshot_dir=str(tmp_path), progress=False, validate=validate)
    fit(model, batch, build_optimizer(model, 1e-4), 4, options, TrainState(epoch=3, global_counter=3))
    assert len(calls) == 1 and "both worse than the head's before training (5.0 / 20.0)" in capsys.readouterr().err


def _head_weights(model):
    return {key: value.clone() for key, value in model.trainable_state_dict().items()}


def test_start_kept_as_best_until_an_epoch_beats_it(tmp_path, capsys):
    from utils.training.validation import BEST_NAME

    model = tiny_lcam(num_classes=3).train()
    initial = _head_weights(model)
    batch = _one_batch()
    best = tmp_path / BEST_NAME
    # AD: start 5, then 6 and 7: no epoch beats the start, which stays lcam_best.pth.tar
    validate, _ = _scripted_held_out([{"val_ad": 5.0, "val_ic": 20.0}, {"val_ad": 6.0}, {"val_ad": 7.0}])
    options = TrainOptions(
        device=CPU, snapshot_dir=str(tmp_path), progress=False, validate=validate, best_by="ad", start_is_candidate=True
    )
    fit(model, batch, build_optimizer(model, 1e-2), 2, options)
    kept = torch.load(best, weights_only=True)
    assert (kept["epoch"], kept["global_counter"], kept["summary"]["val_ad"]) == (-1, 0, 5.0)
    assert all(torch.equal(kept["state_dict"][key], value) for key, value in initial.items())
    assert not all(torch.equal(model.trainable_state_dict()[key], value) for key, value in initial.items())
    captured = capsys.readouterr()
    assert "held-out before training: masked_accuracy 90.000  ad 5.000  ic 20.000  (best so far)" in captured.out
    assert "note: no epoch beat the head before training on the held-out ad (5.000)" in captured.out

    # resumed for a third epoch that beats the start: it replaces the start as the best
    validate, calls = _scripted_held_out([{"val_ad": 4.0}])
    options = TrainOptions(
        device=CPU, snapshot_dir=str(tmp_path), progress=False, validate=validate, best_by="ad", start_is_candidate=True
    )
    fit(model, batch, build_optimizer(model, 1e-2), 3, options, TrainState(epoch=2, global_counter=2))
    kept = torch.load(best, weights_only=True)
    assert len(calls) == 1 and (kept["epoch"], kept["summary"]["val_ad"]) == (2, 4.0)
    assert "note: no epoch beat" not in capsys.readouterr().out


def test_start_is_not_a_candidate_by_default(tmp_path):
    from utils.training.validation import BEST_NAME

    model = tiny_lcam(num_classes=3).train()
    batch = _one_batch()
    validate, _ = _scripted_held_out([{"val_ad": 5.0, "val_ic": 20.0}, {"val_ad": 6.0}])
    options = TrainOptions(device=CPU, snapshot_dir=str(tmp_path), progress=False, validate=validate, best_by="ad")
    fit(model, batch, build_optimizer(model, 1e-2), 1, options)
    assert torch.load(tmp_path / BEST_NAME, weights_only=True)["epoch"] == 0
