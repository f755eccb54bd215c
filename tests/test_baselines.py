"""Baseline explainers: shapes and ranges, the reference formulas, pytorch-grad-cam parity,
RISE masks and their cache, the registry."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from utils.evaluation.metrics import minmax_normalize
from utils.explainers.baselines import (
    BASELINES,
    PACKAGE_METHODS,
    RISE,
    NormalizedClassifier,
    build_explainer,
    capture_activations,
    generate_rise_masks,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # much faster on a loaded CPU

SIZE = 32
FEATURE_SIZE = 8  # the tiny model's target layer at 32 px


@pytest.fixture
def classifier(tiny_classifier):
    return tiny_classifier()


@pytest.fixture
def batch(classifier, images):
    x = images(3, SIZE, seed=1)
    with torch.no_grad():
        classes = classifier(x).argmax(1)
    return x, classes


def _grad_cam_formula(classifier, x, classes):
    """Grad-CAM's reference formula: ReLU(sum_c mean_space(g_c) A_c), min-max."""
    x = x.clone().requires_grad_(True)
    with capture_activations(classifier.target_layer) as outputs:
        logits = classifier(x)
    activations = outputs[-1]
    (gradients,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), activations)
    cam = F.relu((gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(1, keepdim=True))
    flat = cam.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    return ((cam - low[:, None, None, None]) / (high - low)[:, None, None, None]).detach()


def test_leaf_activations_give_the_same_gradients_without_recording_the_layers_below(classifier, batch):
    x, classes = batch
    with capture_activations(classifier.target_layer) as outputs:
        logits = classifier(x.clone().requires_grad_(True))
    (expected,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), outputs[-1])
    with capture_activations(classifier.target_layer, as_leaf=True) as outputs:
        logits = classifier(x)
    leaf = outputs[-1]
    assert leaf.is_leaf and leaf.requires_grad and leaf.grad_fn is None  # nothing recorded below it
    (gradients,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), leaf)
    torch.testing.assert_close(gradients, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_method_gives_maps_in_unit_range(name, classifier, batch):
    x, classes = batch
    before = x.clone()
    maps = build_explainer(name, classifier, rise_masks=40, chunk_size=7, batch_size=16).explain(x, classes)
    full_resolution = name in ("scorecam", "rise")
    expected = SIZE if full_resolution else FEATURE_SIZE
    assert maps.shape == (3, 1, expected, expected)
    assert maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(maps.flatten(1).max(1).values, torch.ones(3), atol=1e-6)
    assert torch.equal(x, before)  # inputs are not modified


def test_gradcam_is_pytorch_grad_cam_and_equals_the_reference_formula(classifier, batch):
    x, classes = batch
    maps = build_explainer("gradcam", classifier).explain(x, classes)
    assert torch.allclose(maps, _grad_cam_formula(classifier, x, classes), atol=1e-5)
    # The package called directly resizes to the input with OpenCV (bilinear, half-pixel
    # centres, like the evaluator's upsampling) and then min-max normalises once more, which the
    # reference does not do: direct = minmax(upsample(our maps)) != upsample(our maps). Hence
    # the adapter keeps the layer's resolution and lets the evaluator upsample.
    with pytorch_grad_cam.GradCAM(classifier, classifier.target_layers) as cam:
        direct = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in classes])
    upsampled = F.interpolate(maps, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(minmax_normalize(upsampled)[:, 0].numpy(), direct, atol=1e-5)
    assert np.abs(upsampled[:, 0].numpy() - direct).max() > 1e-2
    # and layer_resolution=False returns the direct call's maps, bit for bit
    as_called = build_explainer("gradcam", classifier, layer_resolution=False).explain(x, classes)
    np.testing.assert_array_equal(as_called[:, 0].numpy(), direct)


def test_gradcampp_follows_the_reference_formula_on_the_softmax(classifier, batch):
    x, classes = batch
    maps = build_explainer("gradcampp", classifier).explain(x, classes)
    for index in range(len(x)):  # per image, the formula of docs/reference-behaviour.md written out
        image = x[index : index + 1].clone().requires_grad_(True)
        with capture_activations(classifier.target_layer) as outputs:
            score = F.softmax(classifier(image), dim=1)[0, classes[index]]
        activations = outputs[-1]
        (g,) = torch.autograd.grad(score, activations)
        denominator = 2 * g**2 + (activations * g**3).sum(dim=(2, 3), keepdim=True)
        denominator[denominator == 0] = 1
        alpha = g**2 / (denominator + 1e-7)
        weights = (alpha * F.relu(score.exp() * g)).sum(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activations).sum(1)).detach()
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        assert torch.allclose(maps[index], cam, atol=1e-5)
    # pytorch-grad-cam's own Grad-CAM++ is a different formula (documented): other maps.
    package = build_explainer("gradcam-pkg:GradCAMPlusPlus", classifier).explain(x, classes)
    assert not torch.allclose(maps, package, atol=1e-3)


def test_scorecam_batched_equals_a_per_channel_loop(classifier, batch):
    x, classes = batch
    maps = build_explainer("scorecam", classifier, chunk_size=5).explain(x, classes)
    normalized = classifier.normalize(x)
    with torch.no_grad(), capture_activations(classifier.target_layer) as outputs:
        classifier(x)
        upsampled = F.interpolate(F.relu(outputs[-1]), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        for index, k in enumerate(classes):
            cam = torch.zeros(SIZE, SIZE)
            for channel in upsampled[index]:
                span = channel.max() - channel.min()
                scaled = channel / (span if span != 0 else 1)  # the min is not subtracted
                probability = F.softmax(classifier.classifier(normalized[index : index + 1] * scaled), dim=1)[0, k]
                cam += probability * scaled
            cam = F.relu(cam)
            cam = (cam - cam.min()) / (cam.max() - cam.min())
            assert torch.allclose(maps[index, 0], cam, atol=1e-5)


def test_rise_batched_equals_a_naive_per_mask_loop(classifier, batch):
    x, classes = batch
    explainer = RISE(classifier, num_masks=30, chunk_size=8, seed=3)
    maps = explainer.explain(x, classes)
    masks = generate_rise_masks(30, (SIZE, SIZE), seed=3)
    normalized = classifier.normalize(x)
    with torch.no_grad():
        for index, k in enumerate(classes):
            saliency = torch.zeros(SIZE, SIZE)
            for mask in masks:
                probability = F.softmax(classifier.classifier(normalized[index : index + 1] * mask), dim=1)[0, k]
                saliency += probability * mask[0]
            saliency /= 30 * 0.5
            saliency = (saliency - saliency.min()) / (saliency.max() - saliency.min())
            assert torch.allclose(maps[index, 0], saliency, atol=1e-5)


def test_rise_masks_are_seeded_binary_grids_upsampled_and_shifted():
    masks = generate_rise_masks(200, (28, 28), grid_size=7, keep_probability=0.5, seed=0)
    assert masks.shape == (200, 1, 28, 28)
    assert masks.min() >= 0 and masks.max() <= 1
    assert torch.equal(masks, generate_rise_masks(200, (28, 28), seed=0))
    assert not torch.equal(masks, generate_rise_masks(200, (28, 28), seed=1))
    assert abs(float(masks.mean()) - 0.5) < 0.05  # p1 = 0.5 of the cells kept
    # cells of 4 px upsampled from an 8 x 8 grid and shifted: not aligned to a fixed grid
    assert len({tuple(mask[0, 0, :4].tolist()) for mask in masks[:20]}) > 1


def test_rise_masks_are_cached_to_a_file_and_checked(tmp_path, classifier, batch):
    x, classes = batch
    path = tmp_path / "masks" / "rise.pt"
    first = RISE(classifier, num_masks=12, mask_path=path, seed=5)
    maps = first.explain(x, classes)
    assert path.is_file()
    stored = torch.load(path, weights_only=True)
    assert torch.equal(stored["masks"], generate_rise_masks(12, (SIZE, SIZE), seed=5))
    # a new explainer reuses the file (even with another seed it would be refused)
    assert torch.equal(RISE(classifier, num_masks=12, mask_path=path, seed=5).explain(x, classes), maps)
    with pytest.raises(ValueError, match="holds masks for"):
        RISE(classifier, num_masks=13, mask_path=path, seed=5).explain(x, classes)


def test_rise_default_mask_counts_follow_the_reference(make_model, tiny_classifier):
    resnet = NormalizedClassifier.from_lcam(make_model("ResNet50_L_CAM_Img", num_classes=5))
    assert RISE(resnet).settings["num_masks"] == 8000
    assert RISE(tiny_classifier()).settings["num_masks"] == 4000  # any CNN: the generic family's count


def test_lcam_backbone_wrapper_and_package_methods_restore_modes_and_hooks(make_model, images):
    lcam = make_model("ResNet50_L_CAM_Img", num_classes=5)
    classifier = NormalizedClassifier.from_lcam(lcam)
    assert classifier.target_layer is lcam.layer4[-1]
    x = images(2, 64)
    with torch.no_grad():
        logits = lcam(x).logits
        assert torch.allclose(classifier(x), logits, atol=1e-5)
    classes = logits.argmax(1)
    lcam.layer1.train()  # a mixed state must survive pytorch-grad-cam's model.eval()
    try:
        maps = build_explainer("gradcam", classifier).explain(x, classes)
        assert lcam.layer1.training and not lcam.layer2.training
    finally:
        lcam.layer1.eval()
    assert maps.shape == (2, 1, 2, 2)
    assert not classifier.target_layer._forward_hooks
    # behind the frozen backbone the package's Grad-CAM is still the reference formula
    torch.testing.assert_close(maps, _grad_cam_formula(classifier, x, classes), rtol=1e-4, atol=1e-5)
    hand_written = build_explainer("gradcampp", classifier).explain(x, classes)
    assert hand_written.shape == (2, 1, 2, 2) and torch.isfinite(hand_written).all()


def test_registry_errors(classifier):
    with pytest.raises(ValueError, match="unknown method 'gradcam\\+\\+'; valid: gradcam, gradcampp"):
        build_explainer("gradcam++", classifier)
    with pytest.raises(TypeError, match="NormalizedClassifier"):
        build_explainer("gradcam", nn.Linear(2, 2))
    with pytest.raises(TypeError, match="torchvision VGG-16"):
        NormalizedClassifier.from_torchvision(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="'classes' must hold 2"):
        build_explainer("gradcampp", classifier).explain(torch.rand(2, 3, SIZE, SIZE), torch.tensor([1]))
    assert all(f"gradcam-pkg:{method}" in BASELINES for method in PACKAGE_METHODS)
