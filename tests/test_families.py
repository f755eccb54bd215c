"""Every backbone family through every command: the registry's facts, then train (one step)
-> evaluate -> explain -> compare for the nine variants at tiny size and for the generic
family on a torchvision CNN and on a user's own module (this file's :class:`TinyNet`)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import Evaluation_L_CAM_ResNet50
import models.backbones
import train_L_CAM
from models import ARCH_CHOICES, ARCHS, GENERIC, archs_of, build_model, families, family_of, get_family
from models.backbones import RESNET50_FAMILY, VGG16_FAMILY
from models.families import IMAGENET_MEAN, IMAGENET_STD, find_submodule
from models.generic import GENERIC_FAMILY
from scripts import compare, explain
from scripts.evaluate import cli as evaluation_cli
from utils.core.checkpoint import make_checkpoint, save_checkpoint
from utils.core.cli import run_cli
from utils.core.errors import UserValueError
from utils.explainers.baselines import RISE, NormalizedClassifier
from utils.explainers.lcam import load_lcam_model

pytestmark = pytest.mark.usefixtures("one_thread")  # much faster on a loaded CPU

NUM_CLASSES = 4
INPUT_SIZE, CROP_SIZE = 36, 32
CUSTOM_NETWORK = "tests.test_families:TinyNet"


class TinyNet(nn.Module):
    """A user's own classifier (``--backbone tests.test_families:TinyNet``): seeded weights,
    so that "as built" is the same network in every command, and its own normalisation
    (``pretrained_cfg``, timm's convention)."""

    pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, num_classes)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images).mean(dim=(2, 3)))


# -- the registry ---------------------------------------------------------------------------------


def test_every_arch_names_a_registered_family():
    assert [family.name for family in families()] == ["vgg16", "resnet50", "generic"]
    assert {arch: family_of(arch).name for arch in ARCH_CHOICES} == {
        **{arch: "vgg16" for arch in ARCHS[:5]},
        **{arch: "resnet50" for arch in ARCHS[5:]},
        GENERIC: "generic",
    }
    assert sorted(arch for family in families() for arch in archs_of(family)) == sorted(ARCH_CHOICES)
    assert get_family("vgg16") is VGG16_FAMILY
    with pytest.raises(UserValueError, match="unknown backbone family 'resnet51'; did you mean 'resnet50'"):
        get_family("resnet51")


def test_the_facts_are_the_reference_recipe():
    facts = {
        family.name: (family.epochs, family.train_list, family.rise_masks, family.target_layer, family.mean, family.std)
        for family in families()
    }
    imagenet = (IMAGENET_MEAN, IMAGENET_STD)
    assert facts == {
        "vgg16": (8, "VGG16_train.txt", 4000, "features[29]", *imagenet),
        "resnet50": (26, "ResNet50_train.txt", 8000, "layer4[-1]", *imagenet),
        "generic": (8, None, 4000, None, *imagenet),
    }
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert (VGG16_FAMILY.builder, VGG16_FAMILY.weights) == (torchvision.models.vgg16, torchvision.models.VGG16_Weights)
    assert RESNET50_FAMILY.builder is torchvision.models.resnet50 and GENERIC_FAMILY.builder is None


def test_the_target_layers_are_the_reference_comparisons(torchvision_networks_built_once):
    vgg = build_model("VGG16_7x7_L_CAM_Img", pretrained=False, num_classes=NUM_CLASSES)
    resnet = build_model("ResNet50_L_CAM_Fm", pretrained=False, num_classes=NUM_CLASSES)
    assert VGG16_FAMILY.find_target_layer(vgg) is vgg.features[29]
    assert RESNET50_FAMILY.find_target_layer(resnet) is resnet.layer4[-1]
    assert NormalizedClassifier.from_lcam(vgg).target_layer is vgg.features[29]
    assert NormalizedClassifier.from_lcam(resnet).family is RESNET50_FAMILY
    assert find_submodule(resnet, "layer4[7]") is None and find_submodule(resnet, "features[29]") is None
    network, _ = VGG16_FAMILY.load_classifier(pretrained=False, num_classes=NUM_CLASSES)
    assert NormalizedClassifier.from_torchvision(network).target_layer is network.features[29]


def test_a_generic_model_explains_its_own_feature_maps_with_its_own_normalisation(images):
    model = build_model(GENERIC, pretrained=False, num_classes=3, backbone=CUSTOM_NETWORK, input_size=32).eval()
    assert model.family is GENERIC_FAMILY and model.backbone_label == f"generic:{CUSTOM_NETWORK}"
    assert model.normalization == (TinyNet.pretrained_cfg["mean"], TinyNet.pretrained_cfg["std"])
    assert model.build_settings()["mean"] == [0.5, 0.5, 0.5]
    classifier = NormalizedClassifier.from_lcam(model)
    x = images(2, 32)
    with torch.no_grad():
        assert torch.equal(classifier(x), model(x).logits)
        assert torch.equal(classifier.normalize(x), model.normalize(x))
    assert classifier.family is GENERIC_FAMILY and RISE(classifier).settings["num_masks"] == 4000
    seen = []
    handle = classifier.target_layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        with torch.no_grad():
            feature_maps = model.feature_maps(model.normalize(x))
            classifier(x)
    finally:
        handle.remove()
    assert torch.equal(seen[0], feature_maps)  # the maps the attention mechanism reads


def test_a_generic_checkpoint_records_its_normalisation(tmp_path):
    model = build_model(
        GENERIC, pretrained=False, num_classes=3, backbone=CUSTOM_NETWORK, input_size=32, mean=[0.1, 0.2, 0.3]
    )
    path = save_checkpoint(make_checkpoint(model, 1, 1), tmp_path / "head.pth.tar")
    restored, _ = load_lcam_model(GENERIC, path)
    assert restored.normalization == ((0.1, 0.2, 0.3), TinyNet.pretrained_cfg["std"])
    assert torch.equal(restored.attnM.op.weight, model.attnM.op.weight)
    with pytest.raises(UserValueError, match="'std' must hold 3 numbers"):
        build_model(GENERIC, pretrained=False, backbone=CUSTOM_NETWORK, input_size=32, std=[0.5])


# -- every command on every family ------------------------------------------------------------------

CASES = [
    *((arch, ()) for arch in ARCHS),
    (GENERIC, ("--backbone", "resnet18")),
    (GENERIC, ("--backbone", CUSTOM_NETWORK)),
]
CASE_IDS = [*ARCHS, "generic-resnet18", "generic-TinyNet"]


def test_the_cases_cover_every_family_and_arch():
    assert {arch for arch, _ in CASES} == set(ARCH_CHOICES)
    assert {family_of(arch) for arch, _ in CASES} == set(families())
    assert len({backbone for arch, backbone in CASES if arch == GENERIC}) == 2


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Six smooth random images in class folders 0..3 (the train, test and explain input)."""
    root = tmp_path_factory.mktemp("families") / "data"
    generator = np.random.default_rng(0)
    for index in range(6):
        folder = root / f"class{index % NUM_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray((generator.random((4, 4, 3)) * 255).astype(np.uint8)).resize((40, 44))
        coarse.save(folder / f"img{index}.png")
    return root


@pytest.fixture(scope="module")
def torchvision_networks_built_once():
    """The random VGG-16 and ResNet-50 classifiers built once per family and copied for every
    command (building VGG-16 takes seconds), the copies sharing the frozen parameters (no
    command changes them) but not the buffers: the commands run unchanged on the same weights."""
    built = {}
    load = models.backbones.load_torchvision_classifier

    def load_once(builder, weights_enum, pretrained, num_classes=1000):
        key = (builder, str(pretrained), num_classes)
        if key not in built:
            built[key] = load(builder, weights_enum, pretrained, num_classes)
        network, weights_name = built[key]
        return copy.deepcopy(
            network, memo={id(parameter): parameter for parameter in network.parameters()}
        ), weights_name

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.backbones, "load_torchvision_classifier", load_once)
        yield


def _common(*flags: str) -> list[str]:
    sizes = ["--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE)]
    return [*flags, *sizes, "--num_workers", "0", "--device", "cpu"]


@pytest.mark.parametrize(("arch", "generic_flags"), CASES, ids=CASE_IDS)
@pytest.mark.filterwarnings("ignore:.*randomly initialised backbone.*")
def test_every_command_handles_the_family(arch, generic_flags, image_folder, tmp_path, torchvision_networks_built_once):
    snapshots = tmp_path / "snapshots"
    train_argv = [
        *("--arch", arch, *generic_flags, "--train_list", str(image_folder), "--snapshot_dir", str(snapshots)),
        *("--num_classes", str(NUM_CLASSES), "--backbone_weights", "none", "--batch_size", "6", "--epoch", "1"),
        *("--resume", "False", "--no_progress", "--disp_interval", "1"),
    ]
    records = run_cli(train_L_CAM.main, train_L_CAM.get_args_parser(), _common(*train_argv))
    assert records and records[-1]["global_counter"] == 1  # one optimizer step

    evaluation_argv = ["--arch", arch, "--restore_from", str(snapshots), "--test_list", str(image_folder)]
    evaluation_argv += ["--limit", "3", "--batch_size", "3", "--output", str(tmp_path / "evaluation.json")]
    result = evaluation_cli(_common(*evaluation_argv), **Evaluation_L_CAM_ResNet50.DEFAULTS)
    assert result.num_images == 3
    assert json.loads((tmp_path / "evaluation.json").read_text())["run"]["arch"] == arch

    explain_argv = ["--arch", arch, "--restore_from", str(snapshots), "--input", str(image_folder), "--topk", "2"]
    explain_argv += ["--output_dir", str(tmp_path / "explain"), "--limit", "2"]
    run = run_cli(explain.main, explain.get_args_parser(), _common(*explain_argv))
    assert [len(item.classes) for item in run.explanations] == [2, 2]

    methods = "gradcam,gradcampp,scorecam,rise" if CUSTOM_NETWORK in generic_flags else "gradcam"
    compare_argv = ["--lcam", f"{arch}={snapshots}", "--methods", methods, "--rise_masks", "4"]
    compare_argv += ["--test_list", str(image_folder), "--limit", "3", "--percentages", "0"]
    compare_argv += ["--figure_images", "1", "--batch_size", "3", "--output_dir", str(tmp_path / "compare")]
    rows = run_cli(compare.main, compare.get_args_parser(), _common(*compare_argv, "--no_progress"))
    label = f"generic:{generic_flags[1]}" if arch == GENERIC else family_of(arch).name
    assert [(row["method"], row["family"]) for row in rows] == [(arch, label)] + [
        (method, label) for method in methods.split(",")
    ]
    assert all(row["num_images"] == 3 for row in rows)
