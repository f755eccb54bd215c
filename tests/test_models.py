"""The nine variants: shapes, the reference forward, frozen backbone, backbone modes, keys."""

from __future__ import annotations

import copy
import importlib
import inspect

import pytest
import torch
import torch.nn.functional as F
import torchvision

from models import ARCHS, build_model
from models.families import IMAGENET_MEAN, IMAGENET_STD

VGG_ARCHS = [arch for arch in ARCHS if arch.startswith("VGG16")]
RESNET_ARCHS = [arch for arch in ARCHS if arch.startswith("ResNet50")]


def _normalize(x):
    return torchvision.transforms.functional.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("arch", ARCHS)
def test_variant_shapes_at_two_sizes_and_both_paths(arch, make_model, images):
    model = make_model(arch, num_classes=1000)
    expected_side = {32: 2, 64: 4} if arch.startswith("VGG16_L") else {32: 1, 64: 2}
    for size in (32, 64):
        x = images(2, size)
        with torch.no_grad():
            plain = model(x)
            masked = model(x, torch.tensor([3, 999]))
        side = expected_side[size]
        assert plain.logits.shape == (2, 1000)
        assert plain.cams.shape == (2, 1000, side, side)
        assert masked.logits.shape == (2, 1000)
        assert torch.equal(masked.cams, plain.cams)  # the CAMs always come from the unmasked image
        assert not torch.allclose(masked.logits, plain.logits)


def test_variant_module_api_is_the_public_signature():
    for arch in ARCHS:
        module = importlib.import_module(f"models.{arch}")
        parameters = inspect.signature(module.model).parameters
        assert list(parameters)[:3] == ["pretrained", "num_classes", "backbone_mode"]
        assert parameters["pretrained"].default is True
        assert parameters["num_classes"].default == 1000
        assert parameters["backbone_mode"].default == "reference"
        assert module.model.__doc__


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="unknown arch 'VGG19'.*VGG16_L_CAM_Img"):
        build_model("VGG19")


@pytest.mark.parametrize("name, value", [("backbone_mode", "eval"), ("mask_loss_maps", "all")])
def test_bad_settings_are_rejected(name, value):
    with pytest.raises(ValueError, match=f"'{name}' must be one of"):
        build_model("ResNet50_L_CAM_Fm", pretrained=False, num_classes=3, **{name: value})


def _torchvision_copy(builder, model):
    """A torchvision classifier holding ``model``'s backbone weights, and a separate 1x1
    convolution holding its attention weights, both in eval mode."""
    with torch.device("meta"):
        network = builder(weights=None, num_classes=model.num_classes)
    backbone_state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("attnM")}
    network.load_state_dict(backbone_state, assign=True)
    conv = torch.nn.Conv2d(model.attnM.op.in_channels, model.num_classes, 1)
    conv.load_state_dict({"weight": model.attnM.op.weight, "bias": model.attnM.op.bias})
    return network.eval(), conv


def _own_upsampled(c, labels, size):
    """sigmoid(c) of each image's label, N x 1 x h x w, and its bilinear upsampling to ``size``."""
    a = torch.sigmoid(c)
    own = torch.stack([a[i, label] for i, label in enumerate(labels)]).unsqueeze(1)
    return own, F.interpolate(own, size=size, mode="bilinear", align_corners=False)


def _vgg_reference_forward(model, x, labels, feature_end, apply_to):
    """The reference VGG-16 forward written out step by step, on a torchvision
    VGG-16 holding the same weights."""
    vgg, conv = _torchvision_copy(torchvision.models.vgg16, model)
    features = vgg.features[:feature_end]

    def head(fm):
        if feature_end == 30:
            fm = F.max_pool2d(fm, 2, 2)
        return vgg.classifier(torch.flatten(F.adaptive_avg_pool2d(fm, 7), 1))

    fm = features(_normalize(x))
    c = conv(fm)
    if labels is None:
        return head(fm), c
    own, up = _own_upsampled(c, labels, x.shape[-2:])
    if apply_to == "feature_maps":
        return head(fm * own), c
    return head(features(_normalize(x * up))), c


def _resnet_reference_forward(model, x, labels, apply_to, normalize_first=True):
    resnet, conv = _torchvision_copy(torchvision.models.resnet50, model)
    trunk = torch.nn.Sequential(*list(resnet.children())[:-2])

    fm = trunk(_normalize(x) if normalize_first else x)
    c = conv(fm)
    if labels is None:
        return resnet(_normalize(x)), c
    own, up = _own_upsampled(c, labels, x.shape[-2:])
    if apply_to == "feature_maps":
        return resnet.fc(torch.flatten(F.adaptive_avg_pool2d(fm * own, 1), 1)), c
    return resnet(_normalize(x * up)), c


def _check_against_reference(model, x, labels, reference_forward):
    with torch.no_grad():
        for given in (None, labels):
            out = model(x, given)
            logits, cams = reference_forward(model, x, given)
            torch.testing.assert_close(out.logits, logits, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.cams, cams, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "arch, feature_end, apply_to",
    [("VGG16_L_CAM_Fm", 30, "feature_maps"), ("VGG16_L_CAM_Img", 30, "image"), ("VGG16_7x7_L_CAM_Img", 31, "image")],
)
def test_vgg_forward_equals_reference_formulation(arch, feature_end, apply_to, make_model, images):
    _check_against_reference(
        make_model(arch, num_classes=10),
        images(2, 48, seed=1),
        torch.tensor([4, 7]),
        lambda model, x, labels: _vgg_reference_forward(model, x, labels, feature_end, apply_to),
    )


@pytest.mark.parametrize(
    "arch, apply_to, normalize_first",
    [
        ("ResNet50_L_CAM_Fm", "feature_maps", True),
        ("ResNet50_L_CAM_Img", "image", True),
        ("ResNet50_L_CAM_ImgA", "image", False),  # the reference's first-pass quirk
    ],
)
def test_resnet_forward_equals_reference_formulation(arch, apply_to, normalize_first, make_model, images):
    _check_against_reference(
        make_model(arch, num_classes=10),
        images(2, 64, seed=2),
        torch.tensor([1, 9]),
        lambda model, x, labels: _resnet_reference_forward(model, x, labels, apply_to, normalize_first),
    )


def test_imga_quirk_flag_normalizes_the_first_pass(images):
    torch.manual_seed(0)
    quirky = build_model("ResNet50_L_CAM_ImgA", pretrained=False, num_classes=5).eval()
    fixed = build_model("ResNet50_L_CAM_ImgA", pretrained=False, num_classes=5, normalize_first_pass=True).eval()
    fixed.load_state_dict(quirky.state_dict())
    reference_img = build_model("ResNet50_L_CAM_Img", pretrained=False, num_classes=5).eval()
    reference_img.load_state_dict(quirky.state_dict())
    x = images(2, 32)
    with torch.no_grad():
        assert not torch.allclose(quirky(x).cams, fixed(x).cams)
        torch.testing.assert_close(fixed(x).cams, reference_img(x).cams)
        torch.testing.assert_close(
            quirky(x).logits, fixed(x).logits, rtol=1e-4, atol=1e-5
        )  # plain logits normalised in both


@pytest.mark.parametrize("arch", ["VGG16_L_CAM_Img", "ResNet50_L_CAM_Fm", "ResNet50_L_CAM_ImgA"])
def test_only_the_attention_mechanism_gets_gradients(arch, make_model, images):
    model = copy.deepcopy(make_model(arch, num_classes=6)).train()
    labels = torch.tensor([0, 5])
    out = model(images(2, 32), labels)
    model.loss(out, labels).total.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"attnM.op.weight", "attnM.op.bias"}
    assert all(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if name in with_grad)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == with_grad


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def test_reference_mode_lets_batchnorm_statistics_drift(make_model, images):
    model = copy.deepcopy(make_model("ResNet50_L_CAM_Img", num_classes=4)).train()
    before = _bn_stats(model)
    model(images(2, 32), torch.tensor([0, 1]))
    after = _bn_stats(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert model.bn1.training and model.layer4[0].bn1.training


def test_frozen_mode_keeps_batchnorm_and_dropout_in_eval(images):
    torch.manual_seed(0)
    resnet = build_model("ResNet50_L_CAM_Img", pretrained=False, num_classes=4, backbone_mode="frozen").train()
    before = _bn_stats(resnet)
    resnet(images(2, 32), torch.tensor([0, 1]))
    assert all(torch.equal(before[k], v) for k, v in _bn_stats(resnet).items())
    assert resnet.training and resnet.attnM.training
    assert not any(m.training for name, m in resnet.named_modules() if name and not name.startswith("attnM"))

    vgg = build_model("VGG16_L_CAM_Fm", pretrained=False, num_classes=4, backbone_mode="frozen").train()
    x, labels = images(2, 32), torch.tensor([2, 3])
    with torch.no_grad():
        torch.testing.assert_close(vgg(x, labels).logits, vgg(x, labels).logits)  # no dropout
    assert not any(isinstance(m, torch.nn.Dropout) and m.training for m in vgg.modules())


def test_reference_mode_keeps_dropout_on_in_the_masked_pass(make_model, images):
    model = copy.deepcopy(make_model("VGG16_L_CAM_Fm", num_classes=4)).train()
    x, labels = images(2, 32), torch.tensor([2, 3])
    with torch.no_grad():
        assert not torch.allclose(model(x, labels).logits, model(x, labels).logits)
        model.eval()
        torch.testing.assert_close(model(x, labels).logits, model(x, labels).logits)


def test_state_dict_keys_and_shapes_match_the_authors_snapshots(make_model):
    vgg = make_model("VGG16_L_CAM_Img").state_dict()
    conv_layers = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    expected = {f"features.{i}.{p}" for i in conv_layers for p in ("weight", "bias")}
    expected |= {f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}
    expected |= {"attnM.op.weight", "attnM.op.bias"}
    assert set(vgg) == expected
    assert vgg["attnM.op.weight"].shape == (1000, 512, 1, 1)
    assert set(make_model("VGG16_7x7_L_CAM_Img").state_dict()) == expected

    resnet = make_model("ResNet50_L_CAM_Fm").state_dict()
    torchvision_keys = set(torchvision.models.resnet50(weights=None).state_dict())
    assert set(resnet) == torchvision_keys | {"attnM.op.weight", "attnM.op.bias"}
    assert resnet["attnM.op.weight"].shape == (1000, 2048, 1, 1)
    assert not any(k in ("mean", "std") for k in resnet)


def test_model_follows_the_input_device_and_dtype(make_model, images):
    model = make_model("ResNet50_L_CAM_Img", num_classes=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(2, 32), torch.tensor([0, 2]))
    assert out.logits.dtype == torch.bfloat16
    loss = model.loss(out, torch.tensor([0, 2]))
    assert loss.total.dtype == torch.float32 and torch.isfinite(loss.total)


def test_bad_inputs_fail_clearly(make_model, images):
    model = make_model("ResNet50_L_CAM_Fm", num_classes=3)
    with pytest.raises(ValueError, match="'images' must be N x 3 x H x W"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="'labels' must have shape"):
        model(images(2, 32), torch.tensor([1]))
