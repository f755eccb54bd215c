"""scripts.reproduce_paper (utils.evaluation.reproduction): the released heads are found under
snapshots/<head>/ in the authors' snapshot format, every row of the paper's table is computed
and written (Markdown, CSV, JSON), an L-CAM row is the evaluation command's numbers, and what
is missing (heads, list, images) is named with where to get it before any work. Tiny images
(48 px), random weights, a few RISE masks; Score-CAM, which costs one forward per channel
(512 and 2048 here), is replaced by Grad-CAM in the full run (its maps: tests/test_baselines.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.resnet import Bottleneck

from models import build_model
from scripts import reproduce_paper
from scripts.evaluate import get_args_parser as evaluation_parser
from scripts.evaluate import main as evaluation_main
from utils.core.cli import REPO_ROOT
from utils.evaluation import reproduction
from utils.explainers import baselines

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 5
INPUT_SIZE, CROP_SIZE = 54, 48  # ResNet-50: 2 x 2 maps, VGG-16: 3 x 3
NUM_IMAGES = 3
VGG_HEADS = ("VGG16_L_CAM_Fm", "VGG16_L_CAM_Img", "VGG16_7x7_L_CAM_Img")
RESNET_HEADS = ("ResNet50_L_CAM_Fm", "ResNet50_L_CAM_Img")


def _authors_snapshot(model: torch.nn.Module, folders: list, arch: str) -> None:
    """The authors' snapshot format (the whole state_dict), written once and linked into each
    head's folder (the VGG-16 heads, like the ResNet-50 ones, share their keys)."""
    first = folders[0] / "imagenet_epoch_7_glo_step_80.pth.tar"
    first.parent.mkdir(parents=True)
    snapshot = {"epoch": 7, "arch": arch, "global_counter": 80, "state_dict": model.state_dict(), "optimizer": {}}
    torch.save(snapshot, first)
    for folder in folders[1:]:
        folder.mkdir(parents=True)
        os.link(first, folder / first.name)


def _calibrated(model: torch.nn.Module) -> torch.nn.Module:
    """A random-weight model made to predict varied classes with varied confidence: BatchNorm
    statistics of a batch of smooth images, ResNet's residual branches halved, the last
    layer's logits centred and scaled to std 2 on that batch (a random network at init gives
    one class probability 1, or uniform ones)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(8, 3, 4, 4, generator=generator)
    batch = torch.nn.functional.interpolate(coarse, size=(CROP_SIZE, CROP_SIZE), mode="bilinear")
    last = model.fc if hasattr(model, "fc") else model.classifier[6]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # running statistics = the batch's
            if isinstance(module, Bottleneck):
                module.bn3.weight.mul_(0.5)
        model.train()
        model(batch)
        model.eval()
        logits = model(batch).logits
        last.bias.sub_(logits.mean(dim=0))
        last.weight.mul_(2.0 / logits.std())
        last.bias.mul_(2.0 / logits.std())
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(snapshots_dir, img_dir, test_list)``: the five released heads (random weights,
    :func:`_calibrated`) and a list of three JPEGs named like the ILSVRC2012 validation images."""
    root = tmp_path_factory.mktemp("reproduce")
    torch.manual_seed(0)
    vgg = _calibrated(build_model("VGG16_L_CAM_Fm", pretrained=False, num_classes=NUM_CLASSES))
    _authors_snapshot(vgg, [root / "snapshots" / arch for arch in VGG_HEADS], "vgg")
    del vgg
    resnet = _calibrated(build_model("ResNet50_L_CAM_Img", pretrained=False, num_classes=NUM_CLASSES))
    _authors_snapshot(resnet, [root / "snapshots" / arch for arch in RESNET_HEADS], "resnet")
    img_dir = root / "ILSVRC2012_img_val"
    img_dir.mkdir()
    generator = np.random.default_rng(0)
    lines = []
    for index in range(1, NUM_IMAGES + 1):
        coarse = Image.fromarray((generator.random((5, 4, 3)) * 255).astype(np.uint8)).resize((44, 40))
        name = f"ILSVRC2012_val_{index:08d}.JPEG"
        coarse.save(img_dir / name)
        lines.append(f"{name} {index % NUM_CLASSES} \n")
    test_list = root / "Evaluation_2000.txt"
    test_list.write_text("".join(lines))
    return root / "snapshots", img_dir, test_list


def _argv(setup, output_dir, *extra) -> list[str]:
    snapshots, img_dir, test_list = setup
    return [
        "--snapshots_dir", str(snapshots), "--img_dir", str(img_dir), "--test_list", str(test_list),
        "--output_dir", str(output_dir), "--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE),
        "--baseline_weights", "head", "--rise_masks", "4", "--chunk_size", "64", "--batch_size", "2",
        "--num_workers", "0", "--device", "cpu", "--no_progress", *map(str, extra),
    ]  # fmt: skip


@pytest.fixture
def run(run_command):
    """``run(argv)``: the command as from a shell; (exit status, stdout, stderr)."""
    return lambda argv: run_command(reproduce_paper.main, reproduce_paper.get_args_parser(), argv)


def _fails_if_called(*args, **kwargs):
    raise AssertionError("long work started before the fault was reported")


def test_the_whole_table_from_the_released_heads(setup, tmp_path, monkeypatch, run):
    monkeypatch.setitem(baselines.BASELINES, "scorecam", baselines.BASELINES["gradcam"])  # see the module docstring
    status, out, err = run(_argv(setup, tmp_path / "out"))
    assert status == 0, err
    assert "is not the authors' Evaluation_2000.txt" in err  # a synthetic list, named as such

    expected = [("VGG-16", method) for method in ("Grad-CAM", "Grad-CAM++", "Score-CAM", "RISE", *VGG_HEADS)]
    expected += [("ResNet-50", method) for method in ("Grad-CAM", "Grad-CAM++", "Score-CAM", "RISE", *RESNET_HEADS)]
    with open(tmp_path / "out" / "paper_table.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["backbone", "method", "AD 100% ↓", "IC 100% ↑", "AD 50% ↓", "IC 50% ↑", "AD 15% ↓", "IC 15% ↑"]
    assert [tuple(row[:2]) for row in table[1:]] == expected
    assert all(float(cell) >= 0 for row in table[1:] for cell in row[2:])
    markdown = (tmp_path / "out" / "paper_table.md").read_text()
    assert all(f"| {backbone} | {method} |" in markdown for backbone, method in expected)
    assert f"{NUM_IMAGES} images of" in markdown and "NOT the authors' Evaluation_2000.txt" in markdown

    document = json.loads((tmp_path / "out" / "paper_table.json").read_text())
    assert len(document["rows"]) == len(expected) and document["authors_list"] is False
    assert document["settings"]["heads"] == [*VGG_HEADS, *RESNET_HEADS] and document["missing_heads"] == []
    rows = {(row["family"], row["method"]): row for row in document["rows"]}
    assert all(row["num_images"] == NUM_IMAGES for row in rows.values())
    assert rows["vgg16", "VGG16_L_CAM_Img"]["source"].endswith("VGG16_L_CAM_Img/imagenet_epoch_7_glo_step_80.pth.tar")
    assert rows["resnet50", "rise"]["source"] == "backbone of ResNet50_L_CAM_Fm"
    assert os.path.isfile(tmp_path / "out" / "results" / "resnet50_ResNet50_L_CAM_Img.json")
    assert os.path.isfile(tmp_path / "out" / "rise_masks" / f"rise_N4_s7_p0.5_seed0_{CROP_SIZE}px.pt")

    # an L-CAM row holds the numbers of the evaluation command for that head
    snapshots, img_dir, test_list = setup
    evaluation = evaluation_parser().parse_args(
        [
            "--arch", "ResNet50_L_CAM_Img", "--snapshot_dir", str(snapshots / "ResNet50_L_CAM_Img"),
            "--img_dir", str(img_dir), "--test_list", str(test_list), "--input_size", str(INPUT_SIZE),
            "--crop_size", str(CROP_SIZE), "--percentages", "0,0.5,0.85", "--batch_size", "2",
            "--num_workers", "0", "--device", "cpu", "--output", str(tmp_path / "evaluation.json"),
        ]
    )  # fmt: skip
    summary = evaluation_main(evaluation).summary
    for ours, theirs in zip(rows["resnet50", "ResNet50_L_CAM_Img"]["summary"], summary):
        assert ours["average_drop"] == pytest.approx(theirs["average_drop"], abs=1e-9)
        assert ours["increase_in_confidence"] == pytest.approx(theirs["increase_in_confidence"], abs=1e-9)


def test_dry_run_names_a_missing_head_and_builds_nothing(setup, tmp_path, monkeypatch, run):
    snapshots, _, _ = setup
    partial = tmp_path / "snapshots"
    for arch in (*VGG_HEADS[:2], *RESNET_HEADS):
        (partial / arch).mkdir(parents=True)
        os.link(snapshots / arch / "imagenet_epoch_7_glo_step_80.pth.tar", partial / arch / "e.pth.tar")
    monkeypatch.setattr(reproduction, "load_lcam_model", _fails_if_called)
    monkeypatch.setattr(reproduction, "build_eval_loader", _fails_if_called)
    argv = _argv(setup, tmp_path / "out", "--dry_run")
    argv[argv.index("--snapshots_dir") + 1] = str(partial)
    status, out, err = run(argv)
    assert status == 0, err
    warning = [line for line in err.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "VGG16_7x7_L_CAM_Img" in warning[0] and reproduction.AUTHORS_HEADS_URL in warning[0]
    assert "VGG-16: heads VGG16_L_CAM_Fm" in out and "VGG16_7x7" not in out and "ResNet-50: heads" in out
    assert f"{NUM_IMAGES} images" in out and "12 rows at 100%, 50%, 15% kept" in out
    assert not os.path.exists(tmp_path / "out" / "paper_table.md")


def test_everything_missing_is_named_in_one_line_before_any_work(tmp_path, monkeypatch, run):
    monkeypatch.setattr(reproduction, "load_lcam_model", _fails_if_called)
    monkeypatch.setattr(reproduction, "read_datalist", _fails_if_called)
    (tmp_path / "snapshots").mkdir()
    argv = [
        "--root_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--no_progress",
    ]  # fmt: skip
    status, _, err = run(argv)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"the list {tmp_path / 'datalist' / 'ILSVRC' / 'Evaluation_2000.txt'}" in lines[0]
    assert "python -m scripts.make_datalist authors Evaluation_2000.txt" in lines[0]
    assert f"the image folder {tmp_path / 'dataset' / 'ILSVRC2012_img_val'}" in lines[0]
    assert "dataset/README.md" in lines[0]
    assert "the heads " + ", ".join(reproduction.RELEASED_HEADS) in lines[0]
    assert reproduction.AUTHORS_HEADS_URL in lines[0]
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--heads", "ResNet50_L_CAM_Fm,ResNet50_L_CAM_ImgA"], "missing the heads ResNet50_L_CAM_ImgA (no .pth.tar"),
        (["--heads", "ResNet50_L_CAM_Im"], "--heads: unknown head 'ResNet50_L_CAM_Im'; did you mean"),
        (["--methods", "gradcam,risee"], "--methods: unknown method 'risee'; did you mean 'rise'"),
        (["--heads", ""], "--heads is empty"),
        (["--crop_size", "60"], "--crop_size 60 is larger than --input_size 54"),
        (["--baseline_weights", "IMAGENET1K_V9"], "--baseline_weights 'IMAGENET1K_V9': not a file, nor torchvision"),
        (["--percentages", "0,1.5"], "percentages must be in [0, 1)"),
    ],
)
def test_bad_heads_methods_and_percentages_fail_in_one_line(setup, tmp_path, monkeypatch, run, extra, message):
    monkeypatch.setattr(reproduction, "load_lcam_model", _fails_if_called)
    status, _, err = run(_argv(setup, tmp_path / "out", *extra))
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err


def test_offline_torchvision_weights_name_the_flag_that_avoids_them(setup, tmp_path, monkeypatch, run):
    from models.backbones import WeightsDownloadError

    def offline(*args, **kwargs):
        raise WeightsDownloadError("could not download")

    monkeypatch.setattr(type(reproduction.families()[0]), "load_classifier", offline)
    monkeypatch.setattr(reproduction, "build_eval_loader", _fails_if_called)
    argv = _argv(setup, tmp_path / "out", "--heads", "ResNet50_L_CAM_Fm", "--methods", "gradcam")
    argv[argv.index("--baseline_weights") + 1] = "IMAGENET1K_V1"
    status, _, err = run(argv)
    line = [text for text in err.splitlines() if "error:" in text]
    assert status == 2 and len(line) == 1
    assert "torchvision's ResNet-50 weights IMAGENET1K_V1" in line[0] and "--baseline_weights head" in line[0]


def test_shell_script_checks_the_setup_from_another_directory(setup, tmp_path):
    snapshots, img_dir, test_list = setup
    environment = {
        **os.environ,
        "SNAPSHOTS_DIR": str(snapshots),
        "IMG_DIR": str(img_dir),
        "TEST_LIST": str(test_list),
        "OUTPUT_DIR": str(tmp_path / "out"),
    }
    script = os.path.join(REPO_ROOT, "scripts", "reproduce_paper.sh")
    completed = subprocess.run(
        ["sh", script, "--dry_run", "--device", "cpu", "--crop_size", str(CROP_SIZE), "--input_size", str(INPUT_SIZE)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr
    assert "13 rows at 100%, 50%, 15% kept" in completed.stdout
    assert "torchvision resnet50 (IMAGENET1K_V1)" in completed.stdout
