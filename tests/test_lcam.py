"""The L-CAM loss against an independent computation of its definition (docs/reference-behaviour.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.lcam import area_loss, lcam_loss, select_loss_maps, smoothness_loss


def _smoothness_by_loops(masks: torch.Tensor) -> float:
    """The smoothness term written pixel by pixel (power 2, border penalty 0.3)."""
    batch, maps, height, width = masks.shape
    m = masks.double().tolist()
    total = 0.0
    for b in range(batch):
        for k in range(maps):
            for i in range(height):
                for j in range(width):
                    if i + 1 < height:
                        total += (m[b][k][i + 1][j] - m[b][k][i][j]) ** 2
                    if j + 1 < width:
                        total += (m[b][k][i][j + 1] - m[b][k][i][j]) ** 2
            border = sum(m[b][k][height - 1][j] ** 2 + m[b][k][0][j] ** 2 for j in range(width))
            border += sum(m[b][k][i][width - 1] ** 2 + m[b][k][i][0] ** 2 for i in range(height))
            total += 0.3 * border
    return total / (2 * batch)


def _reference_loss(logits, cams, labels, own: bool):
    """1.5 CE + 2 area + 0.01 smoothness, maps chosen as the reference (a[:, labels]) or own."""
    a = torch.sigmoid(cams.double())
    if own:
        masks = torch.stack([a[i, label] for i, label in enumerate(labels.tolist())]).unsqueeze(1)
    else:
        masks = torch.stack([torch.stack([a[i, label] for label in labels.tolist()]) for i in range(len(a))])
    ce = 1.5 * F.cross_entropy(logits.double(), labels).item()
    area = 2 * ((masks + 0.0005) ** 0.3).mean().item()
    smoothness = 0.01 * _smoothness_by_loops(masks)
    return ce + area + smoothness, ce, area, smoothness, masks.shape


@pytest.mark.parametrize("own", [False, True])
def test_lcam_loss_equals_spec_formulas(own):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, generator=generator)
    cams = torch.randn(3, 7, 4, 5, generator=generator) * 3
    labels = torch.tensor([2, 6, 2])
    result = lcam_loss(logits, cams, labels, "lcam", "own" if own else "batch")
    total, ce, area, smoothness, shape = _reference_loss(logits, cams, labels, own)
    assert shape == ((3, 1, 4, 5) if own else (3, 3, 4, 5))
    for got, want in zip(result, (total, ce, area, smoothness)):
        assert math.isclose(got.item(), want, rel_tol=1e-5), (got, want)


def test_reference_selection_grows_the_smoothness_term_with_the_batch():
    cams = torch.zeros(4, 5, 3, 3)
    cams[:, :, 1, 1] = 4.0
    labels = torch.tensor([0, 1, 2, 3])
    batch = lcam_loss(torch.zeros(4, 5), cams, labels, "lcam", "batch").smoothness
    own = lcam_loss(torch.zeros(4, 5), cams, labels, "lcam", "own").smoothness
    assert batch.item() == pytest.approx(4 * own.item(), rel=1e-6)


def test_constant_map_has_zero_variation_and_known_area():
    masks = torch.full((2, 1, 4, 4), 0.5)
    assert area_loss(masks).item() == pytest.approx((0.5 + 0.0005) ** 0.3)
    interior = torch.zeros(1, 1, 5, 5)
    interior[0, 0, 1:4, 1:4] = 1.0  # a constant block off the border: 12 unit steps, no border term
    assert smoothness_loss(interior).item() == pytest.approx(12 / 2)
    assert smoothness_loss(torch.full((1, 1, 3, 3), 1.0)).item() == pytest.approx(0.3 * 12 / 2)


def test_ce_variants_return_cross_entropy_alone():
    logits, labels = torch.randn(2, 4), torch.tensor([1, 3])
    result = lcam_loss(logits, torch.randn(2, 4, 2, 2), labels, "ce")
    expected = F.cross_entropy(logits, labels)
    torch.testing.assert_close(result.total, expected)
    torch.testing.assert_close(result.ce, expected)
    assert result.area.item() == 0 and result.smoothness.item() == 0


@pytest.mark.parametrize("selection", ["batch", "own"])
def test_half_precision_cams_give_the_float32_loss_of_their_values(selection):
    # Under autocast the AM outputs bf16 CAMs; the loss converts only the selected maps, and
    # must equal the float32 loss of the same values, gradient included.
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, generator=generator)
    cams = (torch.randn(4, 9, 5, 5, generator=generator) * 3).bfloat16()
    labels = torch.tensor([8, 0, 8, 3])
    half = cams.clone().requires_grad_()
    full = cams.float().requires_grad_()
    got = lcam_loss(logits, half, labels, "lcam", selection)
    want = lcam_loss(logits, full, labels, "lcam", selection)
    assert select_loss_maps(half, labels, selection).dtype == torch.float32
    for got_term, want_term in zip(got, want):
        assert torch.equal(got_term, want_term)
    got.total.backward()
    want.total.backward()
    assert half.grad.dtype == torch.bfloat16
    assert torch.equal(half.grad, want_grad := full.grad.bfloat16()) and want_grad.abs().sum() > 0


def test_select_loss_maps_shapes_and_errors():
    cams = torch.randn(3, 6, 2, 2)
    labels = torch.tensor([5, 0, 5])
    torch.testing.assert_close(select_loss_maps(cams, labels, "batch"), torch.sigmoid(cams[:, [5, 0, 5]]))
    torch.testing.assert_close(select_loss_maps(cams, labels, "own")[1, 0], torch.sigmoid(cams[1, 0]))
    with pytest.raises(ValueError, match="'mask_loss_maps' must be one of"):
        select_loss_maps(cams, labels, "mine")
    with pytest.raises(ValueError, match="'loss' must be one of"):
        lcam_loss(torch.randn(3, 6), cams, labels, "l2")


def test_model_loss_uses_its_variant_settings(make_model, images):
    model = make_model("ResNet50_L_CAM_Img", num_classes=5)
    x, labels = images(3, 32), torch.tensor([0, 4, 0])
    with torch.no_grad():
        out = model(x, labels)
    reference = model.loss(out, labels)
    torch.testing.assert_close(reference.total, lcam_loss(out.logits, out.cams, labels, "lcam", "batch").total)
    model.mask_loss_maps = "own"
    try:
        own = model.loss(out, labels)
    finally:
        model.mask_loss_maps = "batch"
    torch.testing.assert_close(own.total, lcam_loss(out.logits, out.cams, labels, "lcam", "own").total)
    assert not torch.allclose(own.total, reference.total)
