"""L-CAM on any CNN (models/generic.py): torchvision families, named layers, custom modules."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from models import build_model
from models.generic import GenericLCAM, find_feature_layer, load_network, torchvision_classifiers
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


def tiny_vit(num_classes: int = 5) -> nn.Module:
    """torchvision's ViT at 32 px: 8 px patches (a 4 x 4 grid), two blocks of width 16, its
    head drawn at random (torchvision starts it at zero: constant logits, no gradient)."""
    network = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=num_classes
    )
    nn.init.normal_(network.heads.head.weight, std=0.5)
    return network


def tiny_swin(num_classes: int = 5, version: int = 1) -> nn.Module:
    """torchvision's Swin (v1 or v2) at 32 px: 4 px patches, two stages (a 4 x 4 grid, channels last)."""
    swin = torchvision.models.swin_transformer
    options = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2} if version == 2 else {}
    return swin.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=[2, 2],
        num_classes=num_classes,
        **options,
    )


def tiny_maxvit(num_classes: int = 5) -> nn.Module:
    """torchvision's MaxViT at 64 px: two stages of width 8 and 16 (an 8 x 8 grid)."""
    return torchvision.models.MaxVit(
        input_size=(64, 64),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 1],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=num_classes,
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


# One member of each torchvision family (the module of its builder), at a small image of
# height x width: 2:1 where the network takes any size. Transformers and MaxViT at tiny widths;
# VGG, GoogLeNet and Inception without their (slow) weight initialisation.
TORCHVISION_FAMILIES = {
    "alexnet": ("alexnet", (100, 200)),
    "convnext": ("convnext_tiny", (64, 128)),
    "densenet": ("densenet121", (64, 128)),
    "efficientnet": ("efficientnet_b0", (64, 128)),
    "googlenet": (
        lambda num_classes: torchvision.models.googlenet(num_classes=num_classes, init_weights=False),
        (64, 128),
    ),
    "inception": (
        lambda num_classes: torchvision.models.inception_v3(num_classes=num_classes, init_weights=False),
        (107, 214),
    ),
    "maxvit": (tiny_maxvit, (64, 64)),
    "mnasnet": ("mnasnet0_5", (64, 128)),
    "mobilenetv2": ("mobilenet_v2", (64, 128)),
    "mobilenetv3": ("mobilenet_v3_small", (64, 128)),
    "regnet": ("regnet_x_400mf", (64, 128)),
    "resnet": ("resnet18", (64, 128)),
    "shufflenetv2": ("shufflenet_v2_x0_5", (64, 128)),
    "squeezenet": ("squeezenet1_1", (64, 128)),
    "swin_transformer": (tiny_swin, (32, 64)),
    "swin_transformer_v2": (lambda num_classes: tiny_swin(num_classes, version=2), (32, 64)),
    "vgg": (lambda num_classes: torchvision.models.vgg11(num_classes=num_classes, init_weights=False), (64, 128)),
    "vision_transformer": (tiny_vit, (32, 32)),
}


def test_every_torchvision_classifier_has_a_checked_family():
    modules = {
        torchvision.models.get_model_builder(name).__module__.split(".")[-1] for name in torchvision_classifiers()
    }
    assert modules <= set(TORCHVISION_FAMILIES), modules - set(TORCHVISION_FAMILIES)


@pytest.mark.parametrize("family", sorted(TORCHVISION_FAMILIES))
def test_each_torchvision_family_gives_a_grid_of_the_image(family, one_thread):
    backbone, (height, width) = TORCHVISION_FAMILIES[family]
    torch.manual_seed(0)
    network = load_network(backbone, num_classes=3)[0] if isinstance(backbone, str) else backbone(num_classes=3)
    model = GenericLCAM(network, input_size=height).eval()
    with torch.no_grad():
        cams = model(torch.rand(1, 3, height, width)).cams
    cells_high, cells_wide = cams.shape[-2:]
    assert cells_high > 1 and cells_wide > 1, (model.layer, cams.shape)
    assert abs(cells_wide - cells_high * width / height) <= 1, (model.layer, cams.shape)  # the image's aspect
