"""L-CAM on any CNN (models/generic.py): torchvision families, named layers, custom modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import build_model
from models.generic import GenericLCAM, find_feature_layer, load_network
from utils.training.optim import build_optimizer


def small_sequential_cnn(num_classes: int = 4) -> nn.Module:
    """A custom CNN without named stages (used through 'tests.test_generic:small_sequential_cnn')."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


class SelfSplittingNet(nn.Module):
    """A model that says itself where its feature maps are (no tracing needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x))

    def classify_feature_maps(self, fm: torch.Tensor) -> torch.Tensor:
        return self.head(fm.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify_feature_maps(self.feature_maps(x))


def _one_step(model: GenericLCAM, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One optimizer step; asserts that only the AM moved and the loss is finite."""
    frozen = {name: value.clone() for name, value in model.network.state_dict().items() if value.is_floating_point()}
    attention_before = model.attnM.op.weight.detach().clone()
    optimizer = build_optimizer(model, lr=1e-4)
    model.train()
    out = model(images, labels)
    loss = model.loss(out, labels)
    assert torch.isfinite(loss.total)
    optimizer.zero_grad()
    loss.total.backward()
    optimizer.step()
    assert not torch.equal(model.attnM.op.weight, attention_before)
    for name, value in model.network.state_dict().items():
        if name in frozen:
            assert torch.equal(value, frozen[name]), name  # frozen mode: no weight nor BN statistic moves


# One member of each family; (backbone, automatic layer, FM channels).
FAMILIES = [
    ("resnet18", "layer4", 512),
    ("vgg11", "features", 512),
    ("vgg11_bn", "features", 512),
    ("densenet121", "features", 1024),
    ("mobilenet_v3_small", "features", 576),
    ("efficientnet_b0", "features", 1280),
    ("convnext_tiny", "features", 768),
]


@pytest.mark.parametrize(("backbone", "layer", "channels"), FAMILIES)
def test_each_family_trains_one_step(backbone, layer, channels, images):
    torch.manual_seed(0)
    model = GenericLCAM.build(backbone=backbone, pretrained=False, num_classes=3, input_size=32, backbone_mode="frozen")
    assert (model.layer, model.num_classes, model.attnM.op.in_channels) == (layer, 3, channels)
    x = images(2, 32)
    model.eval()
    with torch.no_grad():
        out = model(x)
        expected = model.network(model.normalize(x))
    torch.testing.assert_close(out.logits, expected)
    assert out.cams.shape == (2, 3, 1, 1)
    _one_step(model, x, torch.tensor([0, 2]))


@pytest.fixture(scope="module")
def resnet18_5_classes() -> nn.Module:
    """One random ResNet-18 shared by the tests that only wrap it (frozen: never changes)."""
    torch.manual_seed(0)
    return load_network("resnet18", pretrained=False, num_classes=5)[0]


def test_fm_variant_ce_loss_and_named_layer(images, resnet18_5_classes):
    model = GenericLCAM.build(
        backbone=resnet18_5_classes,
        num_classes=5,
        layer="layer3",
        input_size=64,
        apply_cam_to="feature_maps",
        loss="ce",
        backbone_mode="frozen",
    )
    x = images(2, 64)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.cams.shape == (2, 5, 4, 4)  # layer3: stride 16
    torch.testing.assert_close(out.logits, model.network(model.normalize(x)))
    loss = model.loss(model(x, torch.tensor([1, 4])), torch.tensor([1, 4]))
    assert loss.area == 0 and loss.smoothness == 0 and loss.total == loss.ce
    _one_step(model, x, torch.tensor([1, 4]))


def test_custom_module_path_extends_over_bn_and_relu(images):
    model = build_model(
        "generic",
        pretrained=False,
        num_classes=4,
        backbone="tests.test_generic:small_sequential_cnn",
        input_size=32,
        backbone_mode="frozen",
    )
    assert model.arch == "generic" and model.backbone_name == "tests.test_generic:small_sequential_cnn"
    assert (model.layer, model.cut_node) == ("3", "_5")  # conv "3", then BN "4" and ReLU "5"
    x = images(3, 32)
    fm = model.feature_maps(model.normalize(x))
    assert fm.shape == (3, 16, 16, 16) and fm.min() >= 0  # after the ReLU
    _one_step(model, x, torch.tensor([0, 1, 3]))
    assert set(model.state_dict()) == {f"network.{key}" for key in model.network.state_dict()} | {
        "attnM.op.weight",
        "attnM.op.bias",
    }


def test_self_splitting_module_is_used_as_is(images):
    model = GenericLCAM.build(backbone=SelfSplittingNet(), num_classes=None, input_size=16)
    assert model.num_classes == 2 and model.layer == "feature_maps"
    x = images(2, 16)
    torch.testing.assert_close(model(x).logits, model.network(model.normalize(x)))
    with pytest.raises(ValueError, match="splits itself"):
        GenericLCAM(SelfSplittingNet(), layer="body", input_size=16)


def test_in_place_rest_does_not_modify_feature_maps(images):
    network = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    model = GenericLCAM(network, layer="0", input_size=16)
    fm = model.feature_maps(images(2, 16))
    before = fm.clone()
    model.classify_feature_maps(fm)
    assert fm.min() < 0 and torch.equal(fm, before)


def test_find_feature_layer():
    assert find_feature_layer(small_sequential_cnn()) == "3"
    with pytest.raises(ValueError, match="no convolution"):
        find_feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backbone": "resnet_nineteen"}, ValueError, "unknown backbone 'resnet_nineteen'.*resnet18"),
        ({"backbone": "no_such_package.mod:fn"}, ValueError, "cannot import module 'no_such_package.mod'"),
        ({"backbone": "tests.test_generic:missing"}, ValueError, "has no attribute 'missing'"),
        ({"backbone": "tests.test_generic:FAMILIES"}, TypeError, "is not callable"),
        ({"backbone": "resnet18", "layer": "layer9"}, ValueError, "'layer9' is not a module of ResNet"),
        ({"backbone": "resnet18", "layer": "layer4.0.conv1"}, ValueError, "connection across the split"),
        ({"backbone": "resnet18", "layer": "fc"}, ValueError, "must be N x C x h x w"),
        ({"backbone": "resnet18", "input_size": 4}, ValueError, "'input_size' must be an integer >= 8"),
        (
            {"backbone": "tests.test_generic:small_sequential_cnn", "pretrained": "/no/such.pth"},
            FileNotFoundError,
            "/no/such.pth",
        ),
        ({"backbone": 3}, TypeError, "'backbone' must be"),
    ],
)
def test_errors_are_one_clear_line(kwargs, error, message, resnet18_5_classes):
    options = {"pretrained": False, "num_classes": 5, "input_size": 32, **kwargs}
    if options["backbone"] == "resnet18":  # reuse one network: building it is the slow part
        options["backbone"] = resnet18_5_classes
    with pytest.raises(error, match=message):
        GenericLCAM.build(**options)


def test_num_classes_mismatch_and_inference():
    network, weights = load_network("tests.test_generic:small_sequential_cnn", num_classes=None)
    assert weights == "as built" and network[-1].out_features == 4
    with pytest.raises(ValueError, match="outputs 2 classes, but num_classes=1000"):
        GenericLCAM.build(backbone=SelfSplittingNet(), num_classes=1000, input_size=16)


def test_unknown_arch_lists_generic():
    with pytest.raises(ValueError, match="generic"):
        build_model("no_such_arch")
