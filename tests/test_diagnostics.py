"""The opt-in training diagnostic (utils/training/diagnostics.py): per-term gradient norms at the
head equal autograd of each term alone; mask statistics by hand; a probed step is the same step."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.lcam import lcam_loss
from tests.toy_models import TinyLCAM
from utils.core.errors import UserValueError
from utils.training.diagnostics import (
    TermGradientProbe,
    head_parameters,
    own_mask_statistics,
    term_gradient_norms,
)
from utils.training.loop import TrainOptions, fit
from utils.training.step import OptimizerStep, loss_terms


def _model(seed: int = 0, mask_loss_maps: str = "own") -> TinyLCAM:
    torch.manual_seed(seed)
    model = TinyLCAM(num_classes=4)
    model.mask_loss_maps = mask_loss_maps
    return model


def _batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(6, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 3, 1, 2])


@pytest.mark.parametrize("mask_loss_maps", ["own", "batch"])
@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_norms_equal_autograd_of_each_term_computed_alone(mask_loss_maps, weight):
    images, labels = _batch()
    model = _model(mask_loss_maps=mask_loss_maps)
    out = model(images, labels)
    norms = term_gradient_norms(loss_terms(model.loss(out, labels)), head_parameters(model), weight)
    for name in ("ce", "area", "smoothness"):
        model.zero_grad(set_to_none=True)
        fresh = model(images, labels)  # a new graph for each term: nothing shared with the probe
        term = getattr(lcam_loss(fresh.logits, fresh.cams, labels, "lcam", mask_loss_maps), name)
        (term * (1.0 if name == "ce" else weight)).backward()
        expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.attnM.parameters()))
        assert expected > 0
        assert norms[f"grad_{name}"] == pytest.approx(expected, rel=1e-5)


def test_mask_statistics_by_hand():
    cams = torch.full((3, 2, 2, 2), 10.0)  # sigmoid ~1: saturated, not collapsed
    cams[1, 1] = -10.0  # image 1's own map (label 1): sigmoid ~0, collapsed
    cams[2, 0] = 0.0  # image 2's own map (label 0): 0.5 everywhere
    stats = own_mask_statistics(cams, torch.tensor([0, 1, 0]), num_classes=3)
    assert stats["saturated"] == pytest.approx(2 / 3)
    assert stats["collapsed"] == pytest.approx(1 / 3)
    assert stats["mask_mean"] == pytest.approx(
        (torch.sigmoid(torch.tensor(10.0)) + torch.sigmoid(torch.tensor(-10.0)) + 0.5) / 3
    )
    assert stats["collapsed_by_class"] == [0, 1, 0]
    assert stats["images_by_class"] == [2, 1, 0]


def test_a_probed_step_is_the_same_step():
    images, labels = _batch()
    results = []
    for probe in (None, TermGradientProbe(1)):
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        step = OptimizerStep(model, optimizer)
        record = None if probe is None else (lambda out, terms, p=probe, m=model: p.record(m, out, terms, labels, 0, 0))
        _, terms = step(images, labels, probe=record)
        results.append((model.attnM.op.weight.detach().clone(), float(terms["loss"].detach())))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


def test_fit_records_every_n_steps_and_writes_json(tmp_path):
    images, labels = _batch()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=2)
    model = _model()
    probe = TermGradientProbe(2)
    options = TrainOptions(device=torch.device("cpu"), snapshot_dir=str(tmp_path), progress=False, term_gradients=probe)
    fit(model, loader, torch.optim.SGD(model.parameters(), lr=0.01), 1, options)
    written = json.loads((tmp_path / "term_gradients.json").read_text())
    assert written["every"] == 2
    assert [record["step"] for record in written["records"]] == [0, 2]
    assert set(written["records"][0]) >= {"grad_ce", "grad_area", "grad_smoothness", "saturated", "collapsed"}
    assert (tmp_path / "term_gradients.png").stat().st_size > 0


def test_bad_interval_and_headless_model_are_clear_errors():
    with pytest.raises(UserValueError, match="'every' must be a positive integer"):
        TermGradientProbe(0)
    with pytest.raises(UserValueError, match="no trainable attention mechanism"):
        head_parameters(torch.nn.Linear(2, 2))
