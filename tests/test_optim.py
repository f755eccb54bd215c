"""The reference optimiser groups, its learning-rate schedule, and one step against the
reference's four-group construction."""

from __future__ import annotations

import copy

import pytest
import torch

from utils.training.optim import adjust_lr, build_optimizer, lr_at_epoch


def test_groups_learning_rates_and_hyperparameters(make_model):
    model = make_model("ResNet50_L_CAM_Fm", num_classes=4)
    optimizer = build_optimizer(model, lr=1e-4)
    unused_weights, unused_biases, weights, biases = optimizer.param_groups  # the reference's four groups
    assert unused_weights["params"] == [] and unused_biases["params"] == []
    assert unused_weights["lr"] == pytest.approx(1e-4) and unused_biases["lr"] == pytest.approx(2e-4)
    named = dict(model.named_parameters())
    assert weights["params"] == [p for n, p in named.items() if n.endswith("weight")]
    assert biases["params"] == [p for n, p in named.items() if n.endswith("bias")]
    assert weights["params"][-1] is model.attnM.op.weight and biases["params"][-1] is model.attnM.op.bias
    assert weights["lr"] == pytest.approx(0.01) and biases["lr"] == pytest.approx(0.02)
    for group in optimizer.param_groups:
        assert group["momentum"] == 0.9 and group["nesterov"] and group["weight_decay"] == 5e-4


def test_schedule_over_epochs_0_to_3_and_after_22(make_model):
    optimizer = build_optimizer(make_model("ResNet50_L_CAM_Fm", num_classes=4), lr=1e-4)
    expected = {0: 0.01, 1: 0.0075, 2: 0.005625, 3: 0.00421875}
    for epoch, lr in expected.items():
        adjust_lr(optimizer, epoch)
        assert optimizer.param_groups[2]["lr"] == pytest.approx(lr)
        assert optimizer.param_groups[3]["lr"] == pytest.approx(2 * lr)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr / 100)
    adjust_lr(optimizer, 3)  # calling twice (or after a resume) does not decay twice
    assert optimizer.param_groups[2]["lr"] == pytest.approx(0.00421875)
    assert lr_at_epoch(1.0, 22) == lr_at_epoch(1.0, 25) == pytest.approx(0.75**22)


def _reference_optimizer(model, lr):
    """``get_finetune_optimizer`` of the reference: four groups over every parameter, the
    always-true condition sending all of them to the x100 / x200 groups."""
    last_weights = [p for n, p in model.named_parameters() if "weight" in n]
    last_biases = [p for n, p in model.named_parameters() if "bias" in n]
    return torch.optim.SGD(
        [
            {"params": [], "lr": lr},
            {"params": [], "lr": lr * 2},
            {"params": last_weights, "lr": lr * 100},
            {"params": last_biases, "lr": lr * 200},
        ],
        momentum=0.9,
        weight_decay=0.0005,
        nesterov=True,
    )


def test_steps_equal_the_reference_optimizer(make_model, images):
    ours = copy.deepcopy(make_model("ResNet50_L_CAM_Img", num_classes=5)).eval()
    theirs = copy.deepcopy(ours)
    optimizer, reference = build_optimizer(ours, 1e-4), _reference_optimizer(theirs, 1e-4)
    x, labels = images(2, 32), torch.tensor([1, 4])
    for epoch in range(2):
        adjust_lr(optimizer, epoch)
        if epoch in range(1, 23):  # reduce_lr: x 0.75 before epochs 1..22
            for group in reference.param_groups:
                group["lr"] *= 0.75
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            model.loss(model(x, labels), labels).total.backward()
            opt.step()
    torch.testing.assert_close(ours.attnM.op.weight, theirs.attnM.op.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.attnM.op.bias, theirs.attnM.op.bias, rtol=0, atol=0)
    assert not torch.equal(ours.attnM.op.weight, make_model("ResNet50_L_CAM_Img", num_classes=5).attnM.op.weight)
    torch.testing.assert_close(ours.fc.weight, theirs.fc.weight)


def test_bad_learning_rate_and_no_trainable_parameter():
    with pytest.raises(ValueError, match="'lr' must be positive"):
        build_optimizer(torch.nn.Linear(2, 2), 0.0)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer(frozen, 1e-4)


def test_fused_optimizer_takes_the_same_steps():
    torch.manual_seed(0)
    plain, fused = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    fused.load_state_dict(plain.state_dict())
    optimizers = (build_optimizer(plain, 1e-4), build_optimizer(fused, 1e-4, fused=True))
    inputs = torch.randn(4, 6)
    for _ in range(3):
        for model, optimizer in zip((plain, fused), optimizers):
            optimizer.zero_grad()
            model(inputs).square().sum().backward()
            optimizer.step()
    torch.testing.assert_close(fused.weight, plain.weight)
    torch.testing.assert_close(fused.bias, plain.bias)
    assert optimizers[1].defaults["fused"] is True
