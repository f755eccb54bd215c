"""Faults a user makes with the evaluation, explain, compare and datalist commands and the
shell scripts, on tiny inputs: each ends in one ``error:`` line with exit status 2 (0 for
``--help``) before any long work, and no file is lost or overwritten (checksums before and
after); results are written as each stage ends, so an interruption keeps them."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import Evaluation_L_CAM_VGG16
from models import build_model
from scripts import compare, explain, make_datalist
from scripts import evaluate as evaluate_script
from tests.checksums import file_checksums
from utils.core.checkpoint import make_checkpoint, save_checkpoint
from utils.core.cli import REPO_ROOT, run_cli
from utils.evaluation import comparison, explanations

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 4
INPUT_SIZE, CROP_SIZE = 40, 32
SHELL_SCRIPTS = sorted(glob.glob(os.path.join(REPO_ROOT, "scripts", "*.sh"))) + [
    os.path.join(REPO_ROOT, "bench", "gpu_suite.sh")
]


class TinyCNN(nn.Module):
    """A two-convolution classifier (8 x 8 feature maps at 32 px), the backbone of the
    generic L-CAM checkpoint below (rebuilt from ``tests.test_faults_commands:TinyCNN``)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(images)).flatten(1))


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A full checkpoint of a random-weight generic L-CAM on :class:`TinyCNN`."""
    torch.manual_seed(0)
    model = build_model(
        "generic",
        pretrained=False,
        num_classes=NUM_CLASSES,
        backbone="tests.test_faults_commands:TinyCNN",
        input_size=CROP_SIZE,
    )
    path = tmp_path_factory.mktemp("run") / "lcam_epoch_1_glo_step_4.pth.tar"
    return save_checkpoint(make_checkpoint(model, 1, 4, full=True), path)


@pytest.fixture
def images(tmp_path):
    """``(img_dir, datalist)``: three readable PNGs and a corrupt one, listed with two
    images that do not exist (lines 2 and 4)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    generator = np.random.default_rng(0)
    for index in range(3):
        pixels = (generator.random((INPUT_SIZE, INPUT_SIZE + 4, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(img_dir / f"img_{index}.png")
    (img_dir / "corrupt.png").write_bytes(b"not a png")
    datalist = tmp_path / "list.txt"
    names = ["img_0.png", "missing_a.png", "img_1.png", "missing_b.png", "corrupt.png", "img_2.png"]
    datalist.write_text("".join(f"{name} {position % NUM_CLASSES}\n" for position, name in enumerate(names)))
    return img_dir, datalist


def _error_line(stderr: str, *words: str) -> str:
    """The one line of ``stderr``: an ``error:`` line holding ``words``, no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert ": error: " in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _fails_if_called(*args, **kwargs):
    raise AssertionError("long work started before the fault was reported")


def _exit_status(function, *args) -> int:
    with pytest.raises(SystemExit) as exit_info:
        function(*args)
    return exit_info.value.code


def _evaluation_argv(checkpoint, images, output, *extra):
    img_dir, datalist = images
    return [
        "--arch", "generic", "--restore_from", checkpoint, "--img_dir", str(img_dir), "--test_list", str(datalist),
        "--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE), "--num_workers", "0", "--device", "cpu",
        "--percentages", "0,0.5", "--batch_size", "2", "--output", str(output), *extra,
    ]  # fmt: skip


def _evaluation(argv):
    return evaluate_script.cli(argv, **Evaluation_L_CAM_VGG16.DEFAULTS)


# -- evaluation ---------------------------------------------------------------------------------


def test_evaluation_unwritable_output_fails_before_any_work(checkpoint, images, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file used as a folder")
    monkeypatch.setattr(evaluate_script, "load_lcam_model", _fails_if_called)
    monkeypatch.setattr(evaluate_script, "evaluate", _fails_if_called)
    before = file_checksums(tmp_path)
    argv = _evaluation_argv(checkpoint, images, blocker / "result.json")
    assert _exit_status(_evaluation, argv) == 2
    _error_line(capsys.readouterr().err, "cannot write", "a_file", "--output")
    assert file_checksums(tmp_path) == before


@pytest.mark.parametrize(
    ("contents", "words"),
    [
        (b"", ("empty",)),
        (b"this is a text file, not a checkpoint\n", ("not a checkpoint",)),
        (None, ("not loaded",)),  # a pickled Python object: never unpickled
    ],
    ids=["empty", "text", "foreign-pickle"],
)
def test_evaluation_unreadable_checkpoint_is_one_line(images, tmp_path, capsys, contents, words):
    path = tmp_path / "head.pth.tar"
    if contents is None:
        torch.save({"state_dict": {"weight": torch.zeros(2)}, "model": TinyCNN()}, path)
    else:
        path.write_bytes(contents)
    before = file_checksums(tmp_path)
    argv = _evaluation_argv(str(path), images, tmp_path / "out" / "result.json")
    assert _exit_status(_evaluation, argv) == 2
    line = _error_line(capsys.readouterr().err, "head.pth.tar", *words)
    assert "weights_only" not in line
    assert file_checksums(tmp_path) == before


def test_evaluation_refuses_missing_images_naming_file_and_line(checkpoint, images, tmp_path, monkeypatch, capsys):
    output = tmp_path / "out" / "result.json"
    output.parent.mkdir()
    output.write_text('{"an earlier run": true}')
    monkeypatch.setattr(evaluate_script, "evaluate", _fails_if_called)
    before = file_checksums(tmp_path)
    assert _exit_status(_evaluation, _evaluation_argv(checkpoint, images, output)) == 2
    line = _error_line(capsys.readouterr().err, "list.txt:2: image not found", "missing_a.png", "--skip_missing")
    assert "2 of 6 listed images are missing (also line 4)" in line
    assert file_checksums(tmp_path) == before


def test_evaluation_skip_missing_runs_on_and_names_unreadable_images(checkpoint, images, tmp_path, capsys):
    output = tmp_path / "out" / "result.json"
    result = _evaluation(_evaluation_argv(checkpoint, images, output, "--skip_missing"))
    assert result.num_images == 3 and result.num_unreadable == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]
    assert len(warnings) == 2, warnings
    assert "2 of 6 listed images are missing, left out (--skip_missing)" in warnings[0]
    assert "list.txt:2" in warnings[0]
    assert "1 image(s) could not be read" in warnings[1] and "corrupt.png" in warnings[1]
    document = json.loads(output.read_text())
    assert document["num_images"] == 3 and document["unreadable"][0]["path"].endswith("corrupt.png")


# -- compare ------------------------------------------------------------------------------------


def test_compare_misspelled_method_fails_before_any_model_or_image(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "load_lcam_model", _fails_if_called)
    monkeypatch.setattr(compare, "evaluation_samples", _fails_if_called)
    argv = ["--lcam", "generic=x", "--methods", "gradcam,gradcm", "--test_list", "x"]
    argv += ["--output_dir", str(tmp_path / "cmp")]
    assert _exit_status(run_cli, compare.main, compare.get_args_parser(), argv) == 2
    _error_line(capsys.readouterr().err, "unknown method 'gradcm'", "did you mean 'gradcam'")
    assert os.listdir(tmp_path) == []


def test_compare_command_misspelled_method_is_one_line_in_a_new_process(tmp_path):
    # the ImageNet weights are not looked for (no download without internet): the name is checked first
    command = [sys.executable, "-m", "scripts.compare", "--classifier", "vgg16=IMAGENET1K_V1"]
    command += ["--methods", "gradcam-pkg:EigenCam", "--test_list", "x"]
    environment = {**os.environ, "PYTHONPATH": REPO_ROOT}
    completed = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    _error_line(completed.stderr, "compare.py: error:", "did you mean 'gradcam-pkg:EigenCAM'")
    assert os.listdir(tmp_path) == []  # no runs/compare made


def test_compare_unwritable_output_dir_fails_before_any_model(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(compare, "load_lcam_model", _fails_if_called)
    argv = ["--lcam", "generic=x", "--methods", "", "--test_list", "x", "--output_dir", str(blocker / "cmp")]
    assert _exit_status(run_cli, compare.main, compare.get_args_parser(), argv) == 2
    _error_line(capsys.readouterr().err, "cannot write", "--output_dir")
    assert file_checksums(tmp_path) == {"a_file": hashlib.sha256(b"x").hexdigest()}


def test_compare_writes_its_table_after_each_method(checkpoint, images, tmp_path, monkeypatch, capsys):
    img_dir, datalist = images
    real_evaluate, calls = comparison.evaluate, []

    def interrupted_at_the_second_method(*args, **kwargs):
        calls.append(kwargs["description"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(comparison, "evaluate", interrupted_at_the_second_method)
    output = tmp_path / "cmp"
    argv = ["--lcam", f"generic={checkpoint}", "--lcam", f"generic={checkpoint}", "--methods", ""]
    argv += ["--test_list", str(datalist), "--img_dir", str(img_dir), "--skip_missing", "--no_progress"]
    argv += ["--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE), "--num_workers", "0"]
    argv += ["--device", "cpu", "--output_dir", str(output)]
    assert _exit_status(run_cli, compare.main, compare.get_args_parser(), argv) == 130
    assert len(calls) == 2
    rows = (output / "comparison.csv").read_text().splitlines()
    backbone = "generic:tests.test_faults_commands:TinyCNN"  # the generic family's row names its network
    assert len(rows) == 2 and rows[1].startswith(f"{backbone},generic,")  # the header and the finished method
    assert len(json.loads((output / "comparison.json").read_text())["results"]) == 1
    assert (output / "results" / "generic_tests.test_faults_commands_TinyCNN_generic.json").is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]
    assert len(warnings) == 2 and "corrupt.png" in warnings[1]  # missing ones, then the unreadable one


# -- explain ------------------------------------------------------------------------------------


def _explain_argv(checkpoint, source, output_dir, *extra):
    return [
        "--arch", "generic", "--restore_from", checkpoint, "--input", str(source), "--output_dir", str(output_dir),
        "--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE), "--device", "cpu", "--topk", "1", *extra,
    ]  # fmt: skip


def test_explain_unwritable_output_dir_fails_before_any_work(checkpoint, images, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(explain, "load_lcam_model", _fails_if_called)
    before = file_checksums(tmp_path)
    argv = _explain_argv(checkpoint, images[0], blocker / "out")
    assert _exit_status(run_cli, explain.main, explain.get_args_parser(), argv) == 2
    _error_line(capsys.readouterr().err, "cannot write", "--output_dir")
    assert file_checksums(tmp_path) == before


def test_explain_missing_images_refused_then_skipped(checkpoint, images, tmp_path, capsys):
    img_dir, datalist = images
    output = tmp_path / "out"
    argv = _explain_argv(checkpoint, datalist, output, "--img_dir", str(img_dir))
    assert _exit_status(run_cli, explain.main, explain.get_args_parser(), argv) == 2
    _error_line(capsys.readouterr().err, "list.txt:2: image not found", "--skip_missing")
    assert not any(name.endswith(".png") for name in os.listdir(output))
    run = run_cli(explain.main, explain.get_args_parser(), argv + ["--skip_missing"])
    assert len(run.explanations) == 3 and len(run.unreadable) == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]
    assert len(warnings) == 2 and "corrupt.png" in warnings[1] and "explanations.json" in warnings[1]


def test_explain_writes_each_batch_as_it_goes(checkpoint, images, tmp_path, monkeypatch):
    real_batch, calls = explanations._explain_batch, []

    def interrupted_at_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(explanations, "_explain_batch", interrupted_at_the_second_batch)
    output = tmp_path / "out"
    argv = _explain_argv(checkpoint, images[0], output, "--batch_size", "2")
    assert _exit_status(run_cli, explain.main, explain.get_args_parser(), argv) == 130
    index = json.loads((output / "explanations.json").read_text())
    # the first batch (sorted names): corrupt.png and img_0.png
    assert [os.path.basename(entry["path"]) for entry in index["images"]] == ["img_0.png"]
    assert index["unreadable"][0]["path"].endswith("corrupt.png")
    assert all(os.path.isfile(file) for entry in index["images"] for file in entry["files"])


# -- make_datalist ------------------------------------------------------------------------------


def test_make_datalist_val_leaves_out_unreadable_images(tmp_path, capsys):
    root = tmp_path / "val"
    names = []
    for label in range(2):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(3):
            name = f"class{label}/img{index}.png"
            Image.new("RGB", (8, 8), (40 * index, 0, 0)).save(root / name)
            names.append((name, label))
    output = tmp_path / "list.txt"
    argv = ["val", "--img_dir", str(root), "--num_images", "5", "--num_classes", "2", "--output", str(output)]
    run_cli(make_datalist.main, make_datalist.get_args_parser(), argv)
    expected = random.Random(0).sample(names, 5)  # nothing unreadable: the same list as before the check
    assert output.read_text().splitlines() == [f"{name} {label}" for name, label in expected]
    broken = expected[0][0]
    (root / broken).write_bytes(b"\x89PNG broken")
    run_cli(make_datalist.main, make_datalist.get_args_parser(), argv)
    lines = output.read_text().splitlines()
    # left out, and another drawn in its place
    assert sorted(lines) == sorted(f"{name} {label}" for name, label in names if name != broken)
    warnings = [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]
    assert len(warnings) == 1 and "1 image(s) could not be read" in warnings[0] and broken in warnings[0]


@pytest.mark.parametrize("command", ["train", "val"])
def test_make_datalist_unwritable_output_fails_before_any_work(command, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(make_datalist, "load_torchvision_classifier", _fails_if_called)
    monkeypatch.setattr(make_datalist, "folder_samples", _fails_if_called)
    extra = ["--backbone", "ResNet50"] if command == "train" else []
    argv = [command, *extra, "--img_dir", str(tmp_path), "--output", str(blocker / "list.txt")]
    assert _exit_status(run_cli, make_datalist.main, make_datalist.get_args_parser(), argv) == 2
    _error_line(capsys.readouterr().err, "cannot write", "--output")
    assert file_checksums(tmp_path) == {"a_file": hashlib.sha256(b"x").hexdigest()}


# -- shell scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=os.path.basename)
def test_shell_script_help_prints_usage_and_runs_nothing(script, flag, tmp_path):
    environment = {**os.environ, "LAUNCHER": "false"}  # would fail if anything were run
    completed = subprocess.run(["sh", script, flag], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert completed.returncode == 0 and completed.stderr == ""
    assert f"Usage: sh {os.path.relpath(script, REPO_ROOT)}" in completed.stdout
    assert os.listdir(tmp_path) == []  # no folder named --help, no runs/


def test_gpu_suite_refuses_an_option_for_its_output_folder(tmp_path):
    script = os.path.join(REPO_ROOT, "bench", "gpu_suite.sh")
    completed = subprocess.run(["sh", script, "--out"], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 2
    _error_line(completed.stderr, "unknown option '--out'")
    assert os.listdir(tmp_path) == []
