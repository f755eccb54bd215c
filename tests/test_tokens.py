"""Transformer tokens as feature maps (models/tokens.py) and L-CAM on tiny ViT, Swin and DeiT."""

from __future__ import annotations

import copy
import dataclasses
import sys

import pytest
import torch
import torchvision
from torch import nn

from models.generic import GenericLCAM, load_network
from models.tokens import TokenConfig, TokenLayout, default_token_layers, token_config
from tests.test_generic import tiny_swin, tiny_vit
from utils.evaluation.protocol import evaluate
from utils.explainers.baselines import NormalizedClassifier, build_explainer
from utils.explainers.lcam import LCAMExplainer
from utils.training.optim import build_optimizer

timm = pytest.importorskip("timm")


def _tiny_timm(name: str, num_classes: int, img_size: int = 32, **options) -> nn.Module:
    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, img_size=img_size, embed_dim=16, **options
    )


def tiny_deit(num_classes: int = 5) -> nn.Module:
    """timm's distilled DeiT at 32 px: class and distillation tokens, 8 px patches, two blocks."""
    return _tiny_timm("deit_tiny_distilled_patch16_224", num_classes, patch_size=8, depth=2, num_heads=2)


def tiny_timm_swin(num_classes: int = 5) -> nn.Module:
    """timm's Swin at 32 px (N x h x w x C maps)."""
    options = {"depths": (1, 1), "num_heads": (1, 1), "window_size": 2}
    return _tiny_timm("swin_tiny_patch4_window7_224", num_classes, **options)


def tiny_vit_registers(num_classes: int = 5) -> nn.Module:
    """timm's ViT at 32 px with a class token and 4 register tokens, two blocks."""
    return _tiny_timm("vit_small_patch16_224", num_classes, patch_size=8, depth=2, num_heads=2, reg_tokens=4)


NETWORKS = {
    "vit": tiny_vit,
    "swin": tiny_swin,
    "deit": tiny_deit,
    "timm_swin": tiny_timm_swin,
    "vit_registers": tiny_vit_registers,
}
# The layer read by default, and whether the CAM is 4 x 4 at 32 px.
DEFAULT_LAYERS = {
    "vit": "encoder.layers.encoder_layer_0",  # the block before the last: its patch tokens reach the logits
    "swin": "norm",
    "deit": "blocks.0",
    "timm_swin": "norm",
    "vit_registers": "blocks.0",
}


def _tokens(prefix: int, grid=(3, 4), channels: int = 5) -> torch.Tensor:
    return torch.arange(2 * (prefix + grid[0] * grid[1]) * channels, dtype=torch.float32).view(2, -1, channels)


@pytest.mark.parametrize("prefix", [0, 1, 2, 5], ids=["no prefix", "class token", "distillation", "registers"])
def test_sequence_round_trip(prefix):
    tokens = _tokens(prefix)
    layout = TokenLayout("sequence", (8, 8), prefix)
    grid, prefix_tokens = layout.to_grid(tokens, (24, 32))  # a 3 x 4 patch grid
    assert grid.shape == (2, 5, 3, 4)
    # the patch tokens lie row by row: token P + i * w + j is the cell (i, j)
    assert torch.equal(grid[1, :, 2, 1], tokens[1, prefix + 2 * 4 + 1])
    assert torch.equal(layout.to_tokens(grid, prefix_tokens), tokens)
    assert layout.has_prefix_tokens == (prefix > 0)


def test_channels_last_and_grid_round_trip():
    maps = torch.randn(2, 3, 4, 6)  # N x h x w x C
    layout = TokenLayout("channels_last")
    grid, prefix_tokens = layout.to_grid(maps, (12, 16))
    assert grid.shape == (2, 6, 3, 4) and prefix_tokens is None
    assert torch.equal(grid[0, :, 1, 2], maps[0, 1, 2])
    assert torch.equal(layout.to_tokens(grid), maps)
    assert TokenLayout("grid").to_grid(grid, (12, 16))[0] is grid


def test_layout_refusals():
    with pytest.raises(ValueError, match="13 tokens - 1 prefix tokens = 12 patch tokens, not the 4 x 4 patches"):
        TokenLayout("sequence", (8, 8), 1).to_grid(_tokens(1), (32, 32))
    with pytest.raises(ValueError, match="cannot be mapped to a grid"):
        TokenLayout.of_output(torch.zeros(2, 10, 4), None, "blocks")
    with pytest.raises(ValueError, match="N x L x C tokens, got shape \\(2, 4\\)"):
        TokenLayout.of_output(torch.zeros(2, 4), None, "head")
    with pytest.raises(ValueError, match="class/distillation/register token"):
        TokenLayout("sequence", (8, 8), 2).to_tokens(torch.zeros(2, 5, 3, 4))


def test_token_config_comes_from_the_network():
    assert token_config(tiny_vit()) == TokenConfig((8, 8), 1, False, "torchvision VisionTransformer")
    assert token_config(tiny_swin()).channels_last
    deit = token_config(tiny_deit())
    assert (deit.patch_size, deit.num_prefix_tokens, deit.channels_last) == ((8, 8), 2, False)
    assert token_config(tiny_vit_registers()).num_prefix_tokens == 5
    assert token_config(tiny_timm_swin()).channels_last
    assert token_config(torchvision.models.resnet18()) is None
    assert default_token_layers(tiny_vit()) == ["encoder.ln", "encoder.layers.encoder_layer_0"]


@pytest.fixture(scope="module", params=list(NETWORKS))
def tiny_model(request):
    torch.manual_seed(0)
    network = NETWORKS[request.param]()
    return request.param, GenericLCAM(network, input_size=32, backbone_mode="frozen")


def test_split_reproduces_the_logits(tiny_model, images, one_thread):
    name, model = tiny_model
    assert model.layer == DEFAULT_LAYERS[name]
    batch = images(3, size=32)
    model.eval()
    with torch.no_grad():
        out = model(batch)
        expected = model.network(model.normalize(batch))
        classified = model.classify(model.normalize(batch))
    assert out.cams.shape == (3, 5, 4, 4)
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(classified, expected, rtol=1e-4, atol=1e-5)


def test_one_training_step_and_evaluation(tiny_model, images, one_thread):
    name, model = tiny_model
    model = GenericLCAM(model.network, input_size=32, backbone_mode="frozen")  # a fresh head
    model.freeze_backbone()
    batch, labels = images(4, size=32), torch.tensor([0, 1, 2, 3])
    before = model.attnM.op.weight.detach().clone()
    optimizer = build_optimizer(model, lr=1e-3)
    model.train()
    loss = model.loss(model(batch, labels), labels)
    optimizer.zero_grad()
    loss.total.backward()
    optimizer.step()
    assert torch.isfinite(loss.total) and not torch.equal(model.attnM.op.weight, before)
    model.eval()
    explainer = LCAMExplainer(model)
    (summary,) = evaluate(explainer.classify, explainer, [(batch, labels)], (0.5,), progress=False).summary
    assert 0 <= summary["average_drop"] <= 100 and 0 <= summary["increase_in_confidence"] <= 100
    assert summary["count"] == 4


def test_fm_masks_the_tokens_at_an_inner_block(images, one_thread):
    torch.manual_seed(0)
    model = GenericLCAM(tiny_vit(), layer="encoder.layers.encoder_layer_0", input_size=32, apply_cam_to="feature_maps")
    model.freeze_backbone()
    labels = torch.tensor([1, 2])
    loss = model.loss(model(images(2, size=32), labels), labels)
    loss.total.backward()
    assert model.attnM.op.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("factory", "layer"), [(tiny_vit, "encoder.ln"), (tiny_deit, "norm")])
def test_fm_after_the_last_block_is_refused(factory, layer):
    with pytest.raises(ValueError, match="L-CAM-Fm .* cannot be trained at 'layer' .* reads only its class token"):
        GenericLCAM(factory(), layer=layer, input_size=32, apply_cam_to="feature_maps")


def test_tokens_without_a_grid_are_refused():
    class TokenNet(nn.Module):  # tokens, but no patch size stated
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(3, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.embed(x.flatten(2).transpose(1, 2)).mean(dim=1))

    with pytest.raises(ValueError, match="states no patch size .* cannot be mapped to a grid"):
        GenericLCAM(TokenNet(), layer="embed", input_size=16)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "scorecam", "rise"])
def test_baselines_explain_the_same_grid(method, images, one_thread):
    torch.manual_seed(0)
    model = GenericLCAM(tiny_vit(), input_size=32).eval()
    explainer = build_explainer(method, NormalizedClassifier.from_lcam(model), rise_masks=50, chunk_size=25)
    maps = explainer.explain(images(2, size=32), torch.tensor([0, 3]))
    expected_size = (32, 32) if method in ("scorecam", "rise") else (4, 4)  # the grid the AM reads
    assert maps.shape == (2, 1, *expected_size)
    assert torch.isfinite(maps).all() and (maps.flatten(1).amax(dim=1) > maps.flatten(1).amin(dim=1)).all()


def test_gradient_baselines_refuse_a_layer_the_logits_ignore():
    model = GenericLCAM(tiny_vit(), layer="encoder.ln", input_size=32).eval()
    classifier = NormalizedClassifier.from_lcam(model)
    for method in ("gradcam", "gradcampp"):
        with pytest.raises(ValueError, match="'encoder.ln' of .*every gradient is zero"):
            build_explainer(method, classifier)
    build_explainer("rise", classifier, rise_masks=10)  # no gradient: allowed


def test_timm_names(monkeypatch):
    network, weights = load_network("timm:resnet10t", pretrained=False, num_classes=3)
    assert weights == "none" and network.num_classes == 3
    with pytest.raises(ValueError, match="unknown timm model 'deit_smal_patch16_224'.*deit_small_patch16_224"):
        load_network("timm:deit_smal_patch16_224")
    calls, tiny = [], tiny_deit()

    def create_model(name, pretrained=False, **options):  # timm's loading, without the download
        calls.append((name, pretrained))
        network = copy.deepcopy(tiny)
        network.pretrained_cfg = {"architecture": name.split(".")[0], "tag": "fb_in1k", "mean": (0.5,) * 3}
        return network

    monkeypatch.setattr(timm, "create_model", create_model)
    _, weights = load_network("timm:deit_small_patch16_224", pretrained="IMAGENET1K_V1")  # the commands' default
    assert weights == "timm:deit_small_patch16_224.fb_in1k"
    load_network("timm:deit_small_patch16_224", pretrained="augreg_in21k")  # a pretrained tag
    load_network("timm:deit_small_patch16_224", pretrained=weights)  # as a checkpoint records it
    assert calls == [
        ("deit_small_patch16_224", True),
        ("deit_small_patch16_224.augreg_in21k", True),
        ("deit_small_patch16_224.fb_in1k", True),
    ]
    model = GenericLCAM.build(backbone="timm:deit_small_patch16_224", pretrained=True, num_classes=5, input_size=32)
    assert model.normalization[0] == (0.5, 0.5, 0.5)  # the data config's mean
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ValueError, match="needs timm, which is not installed: pip install timm"):
        load_network("timm:deit_small_patch16_224")


def test_commands_train_evaluate_explain_and_compare_a_transformer(jpeg_tree, tmp_path, one_thread):
    """A tiny DeiT through every command: train_L_CAM.py, the evaluation, scripts.explain and
    scripts.compare (L-CAM beside Grad-CAM and RISE on the same grid)."""
    import train_L_CAM
    from scripts import compare, explain
    from scripts.evaluate import get_args_parser as evaluation_parser
    from scripts.evaluate import main as evaluation_main

    root, datalist, _ = jpeg_tree(classes=5, per_class=1, size=(40, 44))
    snapshots = tmp_path / "snap"
    common = ["--num_classes", "5", "--input_size", "36", "--crop_size", "32", "--num_workers", "0", "--device", "cpu"]
    backbone = ["--arch", "generic", "--backbone", "tests.test_tokens:tiny_deit", "--backbone_weights", "none"]
    train_args = [*backbone, "--train_list", str(datalist), "--img_dir", str(root), "--snapshot_dir", str(snapshots)]
    train_args += [*common, "--batch_size", "5", "--epoch", "1", "--no_progress"]
    # the small-data recipe starts the head from the classifier, which a class-token head cannot give
    with pytest.warns(UserWarning, match="cannot start from the classifier.*the head starts from random weights"):
        train_L_CAM.main(train_L_CAM.get_args_parser().parse_args(train_args))
    (checkpoint,) = snapshots.glob("lcam_*.pth.tar")
    settings = torch.load(checkpoint, weights_only=True)["settings"]
    assert (settings["backbone"], settings["layer"], settings["input_size"], settings["interpolation"]) == (
        "tests.test_tokens:tiny_deit",
        "blocks.0",
        32,
        "bicubic",  # the DeiT's data config
    )

    output = tmp_path / "ad_ic.json"
    evaluation = ["--arch", "generic", "--restore_from", str(checkpoint), "--test_list", str(datalist)]
    evaluation += [
        "--img_dir",
        str(root),
        *common,
        "--batch_size",
        "5",
        "--percentages",
        "0,0.5",
        "--output",
        str(output),
    ]
    evaluation_main(evaluation_parser("generic").parse_args(evaluation))
    assert output.is_file()

    explained = tmp_path / "explained"
    explain_args = ["--arch", "generic", "--restore_from", str(checkpoint), "--input", str(root)]
    explain_args += ["--output_dir", str(explained), "--device", "cpu", "--topk", "1", "--input_size", "36"]
    explain_args += ["--crop_size", "32"]
    explain.main(explain.get_args_parser().parse_args(explain_args))
    assert list(explained.rglob("*.png"))

    compared = tmp_path / "compared"
    compare_args = ["--lcam", f"generic={checkpoint}", "--methods", "gradcam,rise", "--rise_masks", "20"]
    compare_args += ["--test_list", str(datalist), "--img_dir", str(root), *common, "--batch_size", "5"]
    compare_args += ["--output_dir", str(compared), "--no_progress", "--figure_images", "1"]
    compare.main(compare.get_args_parser().parse_args(compare_args))
    assert list(compared.glob("*.csv"))


def test_timm_interpolation_is_recorded_and_used(tmp_path):
    """A timm network's bicubic data config: the model reports it, a checkpoint restores it,
    and the transforms resize with it; the default stays torchvision's bilinear Resize."""
    from PIL import Image
    from torchvision import transforms

    from models.lcam import LCAM
    from utils.core.checkpoint import make_checkpoint, save_checkpoint
    from utils.data.datalists import eval_transform, train_transform
    from utils.data.device_decode import DeviceDecoder
    from utils.explainers.lcam import load_lcam_model

    backbone = "tests.test_tokens:tiny_deit"
    model = GenericLCAM.build(backbone=backbone, pretrained=False, num_classes=5, input_size=32)
    assert model.interpolation == "bicubic" and model.build_settings()["interpolation"] == "bicubic"
    path = save_checkpoint(make_checkpoint(model, 1, 1, full=True), tmp_path / "lcam.pth.tar")
    restored, _ = load_lcam_model("generic", path)
    assert restored.interpolation == "bicubic"
    assert GenericLCAM(tiny_deit(), input_size=32, interpolation="nearest").interpolation == "nearest"
    assert GenericLCAM(tiny_vit(), input_size=32).interpolation == "bilinear"  # no data config
    assert LCAM.interpolation == "bilinear"  # the reference variants
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        GenericLCAM(tiny_deit(), input_size=32, interpolation="cubic")
    with pytest.raises(ValueError, match="device decode path resizes with bilinear or bicubic, not 'nearest'"):
        DeviceDecoder(36, 32, interpolation="nearest")

    image = Image.fromarray(torch.randint(0, 256, (40, 44, 3), dtype=torch.uint8).numpy())

    def reference(mode=None):
        resize = transforms.Resize(36) if mode is None else transforms.Resize(36, mode)
        return transforms.Compose([resize, transforms.CenterCrop(32), transforms.ToTensor()])(image)

    assert torch.equal(eval_transform(36, 32, "bicubic")(image), reference(transforms.InterpolationMode.BICUBIC))
    assert torch.equal(eval_transform(36, 32)(image), reference())
    assert not torch.equal(reference(transforms.InterpolationMode.BICUBIC), reference())
    assert train_transform(36, 32, "bicubic")(image).shape == (3, 32, 32)


TIMM_48PX = "timm:deit_tiny_distilled_patch16_224"


@pytest.fixture
def timm_48px(monkeypatch):
    """``timm:deit_tiny_distilled_patch16_224`` as a tiny DeiT of fixed size 48 px whose data
    config asks for 48 px crops of a 53 px Resize (crop_pct 0.9, 48 / 0.9 = 53.3), without
    downloads. Returns the config, to change it."""
    config = dataclasses.replace(timm.get_pretrained_cfg(TIMM_48PX[5:]), input_size=(3, 48, 48), crop_pct=0.9)
    original_config, original_create = timm.get_pretrained_cfg, timm.create_model

    def create_model(name, pretrained=False, **options):
        if "img_size" in options:  # the tests' own tiny networks
            return original_create(name, pretrained=pretrained, **options)
        tiny = {"img_size": 48, "embed_dim": 16, "patch_size": 8, "depth": 2, "num_heads": 2}
        network = original_create(name.split(".")[0], pretrained=False, **tiny, **options)
        network.pretrained_cfg = config.to_dict()
        return network

    def get_pretrained_cfg(name, *args, **kwargs):
        return config if name.startswith(TIMM_48PX[5:]) else original_config(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    monkeypatch.setattr(timm, "get_pretrained_cfg", get_pretrained_cfg)
    return config


def test_image_sizes_from_timm_data_config(timm_48px, monkeypatch):
    """The sizes not given come from timm's data config (crop = input_size, Resize =
    floor(crop / crop_pct), as timm's eval transform); a size given wins; other backbones and
    the reference variants keep 256 / 224."""
    import train_L_CAM
    from models.generic import backbone_image_sizes, resolve_image_sizes
    from models.lcam import LCAM

    assert backbone_image_sizes(TIMM_48PX) == (53, 48)
    assert resolve_image_sizes(None, None, TIMM_48PX) == (53, 48)
    assert resolve_image_sizes(64, None, TIMM_48PX) == (64, 48)
    assert resolve_image_sizes(None, 40, TIMM_48PX) == (53, 40)
    assert resolve_image_sizes(60, 52, TIMM_48PX) == (60, 52)
    assert backbone_image_sizes("timm:deit_small_patch16_224") == (248, 224)  # timm's own config: crop_pct 0.9
    assert backbone_image_sizes("timm:resnet10t") == (201, 176)  # 176 / 0.875
    assert backbone_image_sizes("timm:convnext_tiny", "in12k_ft_in1k_384") == (384, 384)  # the tag's config
    for source in ("resnet18", "tests.test_tokens:tiny_deit", None, LCAM, tiny_vit()):
        assert resolve_image_sizes(None, None, source) == (256, 224)
    with pytest.raises(ValueError, match="'--crop_size' 60 is larger than '--input_size' 53 .the size not given"):
        resolve_image_sizes(None, 60, TIMM_48PX)
    # a model records its sizes: the probe as the crop, timm's Resize for it unless given
    assert GenericLCAM(tiny_deit(), input_size=32).image_sizes == (35, 32)  # the DeiT's crop_pct 0.9
    assert GenericLCAM(tiny_vit(), input_size=32).image_sizes == (36, 32)  # 0.875, as 256 for 224
    assert GenericLCAM(tiny_vit(), input_size=32, resize_size=40).build_settings()["resize_size"] == 40
    with pytest.raises(ValueError, match="'resize_size' must be an integer >= 'input_size' 32, got 30"):
        GenericLCAM(tiny_vit(), input_size=32, resize_size=30)

    def train_sizes(*flags):
        parsed = train_L_CAM.get_args_parser().parse_args([*flags, "--train_list", "x.txt"])
        args = train_L_CAM.resolve_defaults(parsed)
        return args.input_size, args.crop_size

    assert train_sizes("--arch", "generic", "--backbone", TIMM_48PX) == (53, 48)
    assert train_sizes("--arch", "generic", "--backbone", TIMM_48PX, "--input_size", "64") == (64, 48)
    assert train_sizes("--arch", "generic", "--backbone", "resnet18") == (256, 224)
    assert train_sizes("--arch", "generic") == (256, 224)
    assert train_sizes("--arch", "VGG16_L_CAM_Img") == (256, 224)
    monkeypatch.setattr(timm_48px, "input_size", (3, 64, 48))
    with pytest.raises(ValueError, match="asks for 64 x 48 images, but the commands crop squares"):
        train_sizes("--arch", "generic", "--backbone", TIMM_48PX)
    assert train_sizes("--arch", "generic", "--backbone", TIMM_48PX, "--input_size", "60", "--crop_size", "48") == (
        60,
        48,
    )


@pytest.mark.filterwarnings("ignore:.*head-only checkpoint trained on a randomly initialised backbone")
def test_commands_take_image_sizes_from_timm_data_config(timm_48px, jpeg_tree, tmp_path, one_thread):
    """A timm model of fixed size 48 px, no size flags: training resizes to 53 and crops 48 (timm's
    data config) and records both; evaluation, explanation and comparison use the checkpoint's
    sizes, and so do the sanity checks (at 256 / 224 the network would refuse the images)."""
    import json

    from PIL import Image

    import train_L_CAM
    from scripts import compare, explain, sanity
    from scripts.evaluate import get_args_parser as evaluation_parser
    from scripts.evaluate import main as evaluation_main

    root, datalist, _ = jpeg_tree(classes=5, per_class=1, size=(40, 44))
    snapshots = tmp_path / "snap"
    common = ["--num_classes", "5", "--num_workers", "0", "--device", "cpu", "--batch_size", "5"]
    train_args = ["--arch", "generic", "--backbone", TIMM_48PX, "--backbone_weights", "none", *common]
    train_args += ["--train_list", str(datalist), "--img_dir", str(root), "--snapshot_dir", str(snapshots)]
    train_args += ["--epoch", "1", "--no_progress"]
    with pytest.warns(UserWarning, match="the head starts from random weights"):
        train_L_CAM.main(train_L_CAM.get_args_parser().parse_args(train_args))
    (checkpoint,) = snapshots.glob("lcam_*.pth.tar")
    settings = torch.load(checkpoint, weights_only=True)["settings"]
    assert (settings["backbone"], settings["input_size"], settings["resize_size"]) == (TIMM_48PX, 48, 53)

    output = tmp_path / "ad_ic.json"
    evaluation = ["--arch", "generic", "--restore_from", str(checkpoint), "--test_list", str(datalist)]
    evaluation += ["--img_dir", str(root), *common, "--percentages", "0", "--output", str(output)]
    evaluation_main(evaluation_parser("generic").parse_args(evaluation))
    run_args = json.loads(output.read_text())["run"]["args"]
    assert (run_args["input_size"], run_args["crop_size"]) == (53, 48)

    explained = tmp_path / "explained"
    explain_args = ["--arch", "generic", "--restore_from", str(checkpoint), "--input", str(root), "--topk", "1"]
    explain.main(explain.get_args_parser().parse_args([*explain_args, "--output_dir", str(explained)]))
    overlays = sorted(explained.rglob("*.png"))
    assert overlays and Image.open(overlays[0]).size == (48, 48)

    compared = tmp_path / "compared"
    compare_args = ["--lcam", f"generic={checkpoint}", "--methods", "", "--test_list", str(datalist)]
    compare_args += ["--img_dir", str(root), *common, "--output_dir", str(compared), "--no_progress"]
    compare.main(compare.get_args_parser().parse_args([*compare_args, "--figure_images", "1"]))
    assert list(compared.glob("*.csv"))

    checked = tmp_path / "sanity"
    sanity_args = ["--lcam", f"generic={checkpoint}", "--methods", "", "--test_list", str(datalist), "--img_dir"]
    sanity_args += [str(root), *common, "--output_dir", str(checked), "--no_progress", "--no_label_test"]
    sanity.main(sanity.get_args_parser().parse_args(sanity_args))
    assert (checked / "sanity.csv").is_file()
