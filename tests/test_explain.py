"""Tests of scripts.explain and utils.evaluation.explanations: the command on a folder as a
new user runs it, and the library function (classes, maps, files, errors)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from scripts.explain import get_args_parser, main
from tests.toy_models import tiny_lcam
from utils.core.checkpoint import make_checkpoint, save_checkpoint
from utils.core.cli import run_cli
from utils.evaluation.explanations import ExplainOptions, class_names_for, collect_inputs, explain_images

CROP = 32


def _write_images(folder, names, size=(40, 36), seed=0):
    generator = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((generator.random((size[0], size[1], 3)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def photos(tmp_path):
    """A folder with two images of the same name in different subfolders and a corrupt file."""
    folder = tmp_path / "photos"
    paths = _write_images(folder, ["a/cat.png", "b/cat.png", "dog.jpg"])
    (folder / "broken.png").write_bytes(b"not an image")
    return folder, paths


def test_command_on_a_folder_writes_overlays_grid_and_index(make_model, photos, tmp_path, capsys):
    folder, paths = photos
    model = make_model("ResNet50_L_CAM_Fm", num_classes=1000)
    checkpoint = save_checkpoint(make_checkpoint(model, 3, 30), tmp_path / "run" / "lcam_epoch_3_glo_step_30.pth.tar")
    output = tmp_path / "out"
    argv = [
        "--arch", "ResNet50_L_CAM_Fm", "--snapshot_dir", os.path.dirname(checkpoint), "--backbone_weights", "none",
        "--input", str(folder), "--topk", "2", "--grid", "4", "--output_dir", str(output),
        "--input_size", "40", "--crop_size", str(CROP), "--device", "cpu",
    ]  # fmt: skip
    run = run_cli(main, get_args_parser(), argv)
    printed = capsys.readouterr().out
    assert len(run.explanations) == 3 and run.unreadable[0]["path"].endswith("broken.png")
    categories = torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"]
    index = json.loads((output / "explanations.json").read_text())
    assert [entry["path"] for entry in index["images"]] == sorted(paths)
    for item, entry in zip(run.explanations, index["images"]):
        assert item.names == [categories[k] for k in item.classes]  # ImageNet names, no download
        assert item.probabilities == sorted(item.probabilities, reverse=True)
        assert [c["class"] for c in entry["classes"]] == item.classes and len(item.files) == 3
        assert f"{item.names[0]} ({item.classes[0]})" in printed
        for file in item.files[:2]:
            with Image.open(file) as overlay:
                assert overlay.size == (CROP, CROP)  # the shown crop's size
    inputs = sorted(name for name in os.listdir(output) if name.endswith("_input.png"))
    assert inputs == ["a__cat_input.png", "b__cat_input.png", "dog_input.png"]  # unique per image
    grids = sorted(name for name in os.listdir(output) if name.endswith("_grid.png"))
    assert grids == ["a__cat_grid.png", "b__cat_grid.png", "dog_grid.png"]


def test_function_maps_are_the_normalised_upsampled_cams_of_chosen_classes(photos):
    _, paths = photos
    model = tiny_lcam()
    run = explain_images(model, paths, ExplainOptions(classes=[4, 1], input_size=40, crop_size=CROP, progress=False))
    assert [item.classes for item in run.explanations] == [[4, 1]] * 3
    assert run.explanations[0].names == ["4", "1"]  # indices as names below 1000 classes
    item = run.explanations[2]
    with torch.no_grad():
        out = model(item.image[None])
    probabilities = out.logits.softmax(dim=1)[0]
    assert item.probabilities == pytest.approx(probabilities[[4, 1]].tolist())
    for rank, k in enumerate((4, 1)):
        cam = out.cams[0, k]
        normalized = (cam - cam.min()) / (cam.max() - cam.min())
        expected = F.interpolate(normalized[None, None], size=(CROP, CROP), mode="bilinear", align_corners=False)
        torch.testing.assert_close(item.maps[rank], expected[0, 0])
    assert item.files == []  # no output_dir: nothing written


def test_function_topk_follows_the_prediction_and_grid_adds_files(photos, tmp_path):
    _, paths = photos
    model = tiny_lcam()
    names = ["zero", "one", "two", "three", "four", "five"]
    options = ExplainOptions(topk=3, grid=6, class_names=names, output_dir=tmp_path, crop_size=CROP, progress=False)
    run = explain_images(model, paths[:1], options)
    item = run.explanations[0]
    with torch.no_grad():
        top = model(item.image[None]).logits.topk(3).indices[0].tolist()
    assert item.classes == top and item.names == [names[k] for k in top]
    assert [os.path.basename(file) for file in item.files[:3]] == [
        f"cat_{rank + 1}_{k}_{names[k]}.png" for rank, k in enumerate(top)
    ]
    assert item.files[3].endswith("cat_grid.png") and os.path.isfile(item.files[3])


def test_datalist_input_and_class_names_file(tmp_path):
    _write_images(tmp_path / "imgs", ["x.png", "y.png"])
    datalist = tmp_path / "list.txt"
    datalist.write_text("x 1\ny.png 2 \n")
    assert collect_inputs(datalist, tmp_path / "imgs") == [
        (str(tmp_path / "imgs" / "x.jpg"), 1),  # the reference appends .jpg to bare names
        (str(tmp_path / "imgs" / "y.png"), 2),
    ]
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    assert class_names_for(3, names) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="3 class names, but the model has 6 classes"):
        class_names_for(6, names)
    assert class_names_for(1000)[281] == "tabby"


def test_bad_requests_fail_clearly(photos, tmp_path):
    folder, paths = photos
    model = tiny_lcam()
    with pytest.raises(ValueError, match=r"'classes' must be class indices in \[0, 6\), got \[7\]"):
        explain_images(model, paths, ExplainOptions(classes=[7], progress=False))
    with pytest.raises(ValueError, match=r"'topk' must be in \[1, 6\], got 9"):
        explain_images(model, paths, ExplainOptions(topk=9, progress=False))
    with pytest.raises(ValueError, match="no readable image to explain"):
        explain_images(model, [str(folder / "broken.png")], ExplainOptions(progress=False))
    with pytest.raises(FileNotFoundError, match="--input not found"):
        collect_inputs(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        collect_inputs(tmp_path / "empty")
