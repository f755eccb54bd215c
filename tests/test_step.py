"""utils.training.step: one optimiser step is zero_grad, forward and loss, backward and step,
as written out by hand; loss terms of an L-CAM loss and of a plain tensor."""

from __future__ import annotations

import copy

import torch

from models.lcam import LCAMLoss
from tests.toy_models import tiny_lcam
from utils.training.optim import build_optimizer
from utils.training.step import OptimizerStep, loss_terms


def test_a_step_equals_the_hand_written_one_and_keeps_the_forward():
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1])
    model = tiny_lcam().train()
    expected = copy.deepcopy(model)
    optimizer = build_optimizer(expected, 1e-4)
    for _ in range(2):  # the second step also checks that the gradients were zeroed
        optimizer.zero_grad(set_to_none=True)
        expected.loss(expected(images, labels), labels).total.backward()
        optimizer.step()

    step = OptimizerStep(model, build_optimizer(model, 1e-4))
    for _ in range(2):
        out, terms = step(images, labels)
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert list(terms) == ["loss", "ce", "area", "smoothness"] and out.logits.shape == (4, 6)
    assert terms["loss"].grad_fn is not None  # nothing read back to the host


def test_loss_terms_put_the_total_first():
    assert loss_terms(torch.tensor(2.0)) == {"loss": torch.tensor(2.0)}
    total, ce, area, smoothness = (torch.tensor(value) for value in (6.0, 1.0, 2.0, 3.0))
    terms = loss_terms(LCAMLoss(total, ce, area, smoothness))
    assert list(terms.items()) == [("loss", total), ("ce", ce), ("area", area), ("smoothness", smoothness)]
