"""The training recipes (utils/training/recipe.py), the head's start from the classifier
(models/generic.py) and the held-out check of training (utils/training/validation.py)."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
from torch import nn

import train_L_CAM
from models.generic import GenericLCAM, classifier_head, init_head_from_classifier
from tests.test_generic import small_sequential_cnn
from utils.training import (
    RECIPES,
    BestTracker,
    OptimizerStep,
    StepSchedule,
    build_optimizer,
    build_recipe_optimizer,
    regularizer_weight,
)
from utils.training.validation import BEST_NAME, CURVES_NAME

TINY = ["--backbone_weights", "none", "--num_classes", "5", "--input_size", "40", "--crop_size", "32"]
TINY += ["--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--no_progress"]


def _generic(num_classes: int = 4) -> GenericLCAM:
    torch.manual_seed(0)
    return GenericLCAM(small_sequential_cnn(num_classes), input_size=32, mask_loss_maps="own")


def test_head_from_classifier_gives_the_classifiers_cam():
    model = _generic()
    layer = init_head_from_classifier(model)
    fc = model.network[-1]
    assert layer is fc
    assert torch.equal(model.attnM.op.weight.flatten(1), fc.weight) and torch.equal(model.attnM.op.bias, fc.bias)
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        feature_maps = model.feature_maps(model.normalize(images))
        cams = model(images).cams
        expected = torch.einsum("kc,nchw->nkhw", fc.weight, feature_maps) + fc.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(cams, expected)
        # the spatial mean of the CAM is the classifier's logit
        torch.testing.assert_close(cams.mean(dim=(2, 3)), model(images).logits, rtol=1e-4, atol=1e-5)


def test_head_init_scale_and_errors():
    model = _generic()
    init_head_from_classifier(model, scale=0.1)
    torch.testing.assert_close(model.attnM.op.weight.flatten(1), 0.1 * model.network[-1].weight)
    with pytest.raises(ValueError, match="'scale' must be positive, got 0"):
        init_head_from_classifier(model, scale=0)

    class TwoLayerHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU())
            self.hidden = nn.Linear(6, 6)
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(torch.relu(self.hidden(self.features(x).mean(dim=(2, 3)))))

    other = GenericLCAM(TwoLayerHead(), input_size=16)
    assert classifier_head(other) is None
    with pytest.raises(ValueError, match="does not end with global average pooling and one linear layer"):
        init_head_from_classifier(other)


def test_warmup_weights_per_step():
    assert [regularizer_weight(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert regularizer_weight(0, 0) == 1.0


def test_warmup_scales_only_area_and_smoothness_in_the_step():
    model = _generic()
    images, labels = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    _, terms = OptimizerStep(model, optimizer)(images, labels, regularizer_weight=0.25)
    expected = terms["ce"] + 0.25 * (terms["area"] + terms["smoothness"])
    torch.testing.assert_close(terms["loss"], expected)
    _, full = OptimizerStep(model, optimizer)(images, labels)
    torch.testing.assert_close(full["loss"], full["ce"] + full["area"] + full["smoothness"])


def test_cosine_schedule_by_steps():
    model = _generic()
    optimizer = build_recipe_optimizer(model, "adamw", 1e-3)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.0
    schedule = StepSchedule(10)
    lrs = []
    for step in (0, 5, 10, 12):
        schedule(optimizer, step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(5e-4) and lrs[2] == lrs[3] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="'total_steps' must be >= 1"):
        StepSchedule(0)


def test_reference_optimizer_is_the_authors():
    model = _generic()
    ours = build_recipe_optimizer(model, "sgd-reference", 1e-4)
    reference = build_optimizer(model, 1e-4)
    assert ours.state_dict() == reference.state_dict()
    with pytest.raises(ValueError, match="weight decay 5e-4"):
        build_recipe_optimizer(model, "sgd-reference", 1e-4, weight_decay=0.01)
    with pytest.raises(ValueError, match="'optimizer' must be one of sgd-reference, adamw"):
        build_recipe_optimizer(model, "adam", 1e-4)


def _resolved(*argv):
    return train_L_CAM.resolve_defaults(train_L_CAM.get_args_parser().parse_args(["--train_list", "x", *argv]))


def test_recipe_defaults_per_arch_and_overrides():
    reference = _resolved("--arch", "VGG16_L_CAM_Img")
    assert reference.recipe == "reference"
    assert (reference.optimizer, reference.lr, reference.lr_schedule, reference.warmup_steps) == (
        "sgd-reference",
        1e-4,
        "epoch-decay",
        0,
    )
    assert (reference.head_init, reference.mask_loss_maps, reference.backbone_mode) == ("random", "batch", "reference")
    assert reference.best_by == "masked_accuracy"  # the held-out check keeps its criterion of before
    generic = _resolved("--arch", "generic")
    assert generic.recipe == "small-data"
    for name, value in RECIPES["small-data"].as_dict().items():
        assert getattr(generic, name) == value, name
    assert (generic.head_init, generic.mask_loss_maps, generic.backbone_mode) == ("classifier", "own", "frozen")
    assert generic.best_by == "ad" and _resolved("--arch", "generic", "--best_by", "ic").best_by == "ic"
    overridden = _resolved("--arch", "generic", "--lr", "0.01", "--head_init", "random", "--warmup_steps", "0")
    assert (overridden.lr, overridden.head_init, overridden.warmup_steps, overridden.optimizer) == (
        0.01,
        "random",
        0,
        "adamw",
    )
    small_vgg = _resolved("--arch", "VGG16_L_CAM_Img", "--recipe", "small-data", "--mask_loss_maps", "batch")
    assert (small_vgg.optimizer, small_vgg.mask_loss_maps) == ("adamw", "batch")
    with pytest.raises(ValueError, match="'--weight_decay' 0.01 needs '--optimizer adamw'"):
        _resolved("--arch", "VGG16_L_CAM_Img", "--weight_decay", "0.01")
    with pytest.raises(SystemExit):  # the parser refuses it: "expected an integer >= 0, got '-1'"
        _resolved("--arch", "generic", "--warmup_steps", "-1")


def test_best_tracker_and_plateau():
    tracker = BestTracker("ad", plateau_epochs=2)
    assert tracker.update({"val_ad": 5.0, "val_masked_accuracy": 80.0})
    assert not tracker.update({"val_ad": 6.0, "val_masked_accuracy": 80.0})
    assert tracker.plateau_message() is None
    assert tracker.update({"val_ad": 4.0, "val_masked_accuracy": 79.0})
    message = tracker.plateau_message()
    assert "not improved for 2 epochs" in message and "docs/small-data.md" in message
    assert tracker.plateau_message() is None  # one line only
    resumed = BestTracker("ic", 2, [{"val_ic": 3.0, "val_masked_accuracy": 50.0}])
    assert not resumed.update({"val_ic": 2.0}) and resumed.update({"val_ic": 3.5})
    with pytest.raises(ValueError, match="'best_by' must be one of masked_accuracy, ad, ic, ad_ic, loss"):
        BestTracker("top1")


def test_best_tracker_warns_once_when_training_is_worse_than_the_start():
    tracker = BestTracker("masked_accuracy")
    assert tracker.worse_than_start_message({"epoch": 0, "val_ad": 50.0, "val_ic": 0.0}) is None  # no start
    tracker.set_start({"val_ad": 10.0, "val_ic": 20.0})
    assert tracker.worse_than_start_message({"epoch": 0, "val_ad": 12.0, "val_ic": 21.0}) is None  # IC better
    assert tracker.worse_than_start_message({"epoch": 1, "val_ad": 9.0, "val_ic": 19.0}) is None  # AD better
    message = tracker.worse_than_start_message({"epoch": 2, "val_ad": 19.0, "val_ic": 17.0})
    assert message.startswith("warning: after epoch 3 the held-out AD / IC at 100 % (19.0 / 17.0)")
    assert "(10.0 / 20.0)" in message and "--best_by ad" in message and "docs/small-data.md" in message
    assert tracker.worse_than_start_message({"epoch": 3, "val_ad": 30.0, "val_ic": 5.0}) is None  # one line only
    candidate = BestTracker("ad")
    candidate.set_start({"val_ad": 10.0, "val_ic": 20.0}, candidate=True)
    message = candidate.worse_than_start_message({"epoch": 0, "val_ad": 19.0, "val_ic": 17.0})
    assert f"{BEST_NAME} stays the start unless an epoch beats it" in message and "--best_by" not in message


def test_generic_run_with_val_list_reports_keeps_best_and_plots(jpeg_tree, tmp_path, capsys, one_thread):
    root, datalist, _ = jpeg_tree()
    snapshot = tmp_path / "snap"
    argv = ["--arch", "generic", "--backbone", "tests.test_generic:small_sequential_cnn", "--train_list", str(datalist)]
    argv += ["--img_dir", str(root), "--val_list", str(datalist), "--snapshot_dir", str(snapshot), *TINY]
    argv += ["--epoch", "2", "--plateau_epochs", "1", "--best_by", "ic", "--log_term_gradients", "2"]
    summaries = train_L_CAM.main(train_L_CAM.get_args_parser().parse_args(argv))
    assert len(summaries) == 2
    with open(snapshot / "term_gradients.json", encoding="utf-8") as handle:  # steps 0, 2, 4 of 6
        assert [record["step"] for record in json.load(handle)["records"]] == [0, 2, 4]
    for summary in summaries:
        for key in ("val_masked_accuracy", "val_ad", "val_ic", "val_loss", "val_ce", "val_area", "val_smoothness"):
            assert math.isfinite(summary[key]), key
    assert (snapshot / BEST_NAME).is_file() and (snapshot / CURVES_NAME).stat().st_size > 0
    with open(snapshot / "train_record.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and float(rows[1]["val_ic"]) == pytest.approx(summaries[1]["val_ic"], abs=1e-4)
    from utils.core.checkpoint import find_newest_checkpoint

    assert os.path.basename(find_newest_checkpoint(str(snapshot))).startswith("lcam_epoch_1_")
    captured = capsys.readouterr()
    assert "held-out: masked_accuracy" in captured.out and "held-out before training: masked_accuracy" in captured.out
    assert "without --val_list" not in captured.err
    with open(snapshot / "train_log.json", encoding="utf-8") as handle:
        log = json.load(handle)
    start = log["held_out_start"]
    assert all(math.isfinite(start[key]) for key in ("val_masked_accuracy", "val_ad", "val_ic", "val_loss"))
    # the head started from the classifier, so its start competed for the best by IC (first of equals wins)
    candidates = [(start["val_ic"], -1)] + [(entry["val_ic"], entry["epoch"]) for entry in log["epochs"]]
    expected = max(candidates, key=lambda candidate: (candidate[0], -candidates.index(candidate)))[1]
    assert torch.load(snapshot / BEST_NAME, weights_only=True)["epoch"] == expected
    # the custom CNN ends with pooling and one linear layer: the recipe started from it
    checkpoint = torch.load(next(snapshot.glob("lcam_epoch_0_*.pth.tar")), weights_only=True)
    assert checkpoint["args"]["head_init"] == "classifier" and checkpoint["args"]["optimizer"] == "adamw"


def test_lr_schedules_by_name():
    from utils.training.optim import adjust_lr
    from utils.training.recipe import lr_schedules

    assert lr_schedules("epoch-decay", 10) == (None, adjust_lr)
    step_schedule, epoch_schedule = lr_schedules("cosine-steps", 10)
    assert isinstance(step_schedule, StepSchedule) and step_schedule.total_steps == 10
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    epoch_schedule(optimizer, 3)  # nothing per epoch: the lr is set per step
    assert optimizer.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="'lr_schedule' must be one of epoch-decay, cosine-steps"):
        lr_schedules("linear", 10)


def test_best_tracker_takes_the_start_as_a_candidate_only_when_asked():
    tracker = BestTracker("ad")
    assert not tracker.set_start({"val_ad": 10.0, "val_ic": 20.0})  # not a candidate: the epochs only
    assert tracker.update({"val_ad": 12.0}) and tracker.start_kept_message() is None
    tracker = BestTracker("ad")
    assert tracker.set_start({"val_ad": 10.0, "val_ic": 20.0}, candidate=True)
    assert not tracker.update({"val_ad": 12.0}) and not tracker.update({"val_ad": 10.0})  # equal is not better
    message = tracker.start_kept_message()
    assert message.startswith("note: no epoch beat the head before training on the held-out ad (10.000)")
    assert BEST_NAME in message
    assert tracker.update({"val_ad": 9.5}) and tracker.start_kept_message() is None
    # resumed: the epochs already trained come first, the start from the log after them
    resumed = BestTracker("ic", 3, [{"val_ic": 18.0}])
    assert not resumed.set_start({"val_ic": 17.0}, candidate=True) and resumed.best == 18.0
    assert BestTracker("ic", 3, [{"val_ic": 18.0}]).set_start({"val_ic": 19.0}, candidate=True)
    assert not BestTracker("ad").set_start({"val_ic": 19.0}, candidate=True)  # no AD in the start: no candidate


def test_ad_ic_criterion_weighs_both_scores():
    from utils.training.validation import criterion_value

    assert criterion_value("ad_ic", {"val_ad": 12.0, "val_ic": 20.0}) == -8.0
    assert criterion_value("ad_ic", {"val_ad": 12.0}) is None
    assert criterion_value("ad_ic", {"val_ad": 12.0, "val_ic": math.nan}) is None
    tracker = BestTracker("ad_ic")
    assert tracker.set_start({"val_ad": 15.0, "val_ic": 23.0}, candidate=True)  # -8
    assert tracker.update({"val_ad": 15.8, "val_ic": 31.0})  # AD a little worse, IC far better: -15.2
    by_ad = BestTracker("ad")
    by_ad.set_start({"val_ad": 15.0, "val_ic": 23.0}, candidate=True)
    assert not by_ad.update({"val_ad": 15.8, "val_ic": 31.0})  # by AD alone the start stays


def test_kept_epoch_is_the_checkpoint_fit_keeps():
    from utils.training.validation import kept_epoch

    start = {"val_ad": 10.0, "val_ic": 20.0}
    epochs = [{"epoch": 0, "val_ad": 11.0, "val_ic": 25.0}, {"epoch": 1, "val_ad": 9.0, "val_ic": 19.0}]
    assert kept_epoch("ad", start, epochs, start_competes=True) == 1
    assert kept_epoch("ad", start, epochs[:1], start_competes=True) == -1
    assert kept_epoch("ad", start, epochs[:1], start_competes=False) == 0
    assert kept_epoch("ad_ic", start, epochs, start_competes=True) == 0  # 11 - 25 beats 9 - 19 and 10 - 20
    assert kept_epoch("ad", None, [], start_competes=True) is None
