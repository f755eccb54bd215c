"""Training and checkpoint faults made on tiny inputs: one error line, exit status 2, no file lost or changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import train_L_CAM
from tests.checksums import file_checksums
from utils.core.checkpoint import find_newest_checkpoint
from utils.core.cli import run_cli
from utils.training import ARCHIVE_PREFIX, CSV_NAME, LOG_NAME

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_BACKBONE = "tests.test_faults:tiny_cnn"
TINY = ["--arch", "generic", "--backbone", TINY_BACKBONE, "--backbone_weights", "none", "--num_classes", "3"]
TINY += ["--input_size", "36", "--crop_size", "32", "--batch_size", "4", "--num_workers", "0", "--device", "cpu"]
TINY += ["--no_progress", "--disp_interval", "1"]


def tiny_cnn(num_classes: int = 3) -> nn.Module:
    """Two strided convolutions and a linear head: the cheapest backbone for ``--arch generic``."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 seeded 40 x 44 JPEGs in 3 class folders and their datalist: ``(image folder, datalist)``."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    lines = []
    for label in range(3):
        (root / f"class{label}").mkdir()
        for index in range(4):
            relative = f"class{label}/image{index}.jpg"
            Image.fromarray((rng.random((40, 44, 3)) * 255).astype("uint8")).save(root / relative)
            lines.append(f"{relative} {label}\n")
    datalist = root / "train.txt"
    datalist.write_text("".join(lines))
    return root, datalist


def _train_argv(dataset, snapshot_dir, *extra: str) -> list[str]:
    root, datalist = dataset
    return ["--train_list", str(datalist), "--img_dir", str(root), "--snapshot_dir", str(snapshot_dir), *TINY, *extra]


def _train(capsys, argv: list[str]) -> tuple[int, str]:
    """Run train_L_CAM.py in this process as the command line does: ``(exit status, stderr)``."""
    parser = train_L_CAM.get_args_parser()
    parser.prog = "train_L_CAM.py"
    capsys.readouterr()
    try:
        run_cli(train_L_CAM.main, parser, argv)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def _error_line(status: int, err: str) -> str:
    """The one ``error:`` line of a failed run (asserting exit status 2 and no other output)."""
    assert status == 2, err
    assert "Traceback" not in err and "weights_only=False" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_L_CAM.py: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    """A 2-epoch run's folder (two checkpoints, train_record.csv, train_log.json); copy it to change it."""
    snapshot_dir = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_L_CAM.main(train_L_CAM.get_args_parser().parse_args(_train_argv(dataset, snapshot_dir, "--epoch", "2")))
    finally:
        torch.set_num_threads(threads)
    return snapshot_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of :func:`finished_run` and its checksums."""
    snapshot_dir = tmp_path / "snap"
    shutil.copytree(finished_run, snapshot_dir)
    return snapshot_dir, file_checksums(snapshot_dir)


def test_fresh_start_over_a_run_refuses_and_archive_old_moves_it_aside(dataset, run_copy, capsys, one_thread):
    snapshot_dir, before = run_copy
    assert {"lcam_epoch_0_glo_step_3.pth.tar", "lcam_epoch_1_glo_step_6.pth.tar", CSV_NAME, LOG_NAME} == set(before)
    line = _error_line(*_train(capsys, _train_argv(dataset, snapshot_dir, "--resume", "False")))
    assert "already holds a run (2 checkpoint(s), train_log.json, train_record.csv)" in line
    assert "--snapshot_dir NEW" in line and "--archive_old" in line and "archived-YYYYmmdd-HHMMSS" in line
    assert file_checksums(snapshot_dir) == before

    status, err = _train(capsys, _train_argv(dataset, snapshot_dir, "--resume", "False", "--archive_old"))
    assert status == 0, err
    (archive,) = [name for name in os.listdir(snapshot_dir) if name.startswith(ARCHIVE_PREFIX)]
    assert file_checksums(snapshot_dir / archive) == before  # the old run, moved whole
    assert {"lcam_epoch_0_glo_step_3.pth.tar", CSV_NAME, LOG_NAME} <= set(os.listdir(snapshot_dir))

    line = _error_line(*_train(capsys, _train_argv(dataset, snapshot_dir, "--archive_old")))
    assert "'--archive_old' applies to a fresh start: add '--resume False'" in line


def test_resume_without_checkpoints_keeps_the_run_records(dataset, run_copy, capsys):
    snapshot_dir, _ = run_copy
    for name in os.listdir(snapshot_dir):
        if name.endswith(".pth.tar"):
            os.rename(snapshot_dir / name, snapshot_dir.parent / name)
    before = file_checksums(snapshot_dir)
    line = _error_line(*_train(capsys, _train_argv(dataset, snapshot_dir)))
    assert "holds a run (train_log.json, train_record.csv) but no checkpoint to resume from" in line
    assert "--resume False --archive_old" in line and "--snapshot_dir NEW" in line
    assert file_checksums(snapshot_dir) == before


def test_unwritable_snapshot_dir_fails_before_training(dataset, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = _error_line(*_train(capsys, _train_argv(dataset, blocker / "snap")))
    assert f"cannot write to '{blocker / 'snap'}' (--snapshot_dir)" in line
    assert blocker.read_text() == "not a folder"


def _foreign_pickle(path) -> None:
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module: weights_only refuses it


def _truncated(path) -> None:
    torch.save({"state_dict": {"weight": torch.zeros(64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_truncated, r"truncated checkpoint \(it ends after \d+ bytes\)"),
        (lambda path: path.write_bytes(b""), r"empty file \(0 bytes\), not a checkpoint"),
        (
            lambda path: path.write_text("epoch 3\nloss 0.5\n"),
            r"a text file, not a checkpoint \(it begins 'epoch 3 loss",
        ),
        (_foreign_pickle, r"not a checkpoint written by this project or the L-CAM authors: .*not loaded, for safety"),
        (
            lambda path: torch.save({"state_dict": {"features.0.weight": torch.zeros(1)}}, path),
            r"checkpoint does not fit generic: missing keys .*unexpected keys \['features.0.weight'\]",
        ),
        (lambda path: torch.save({"epoch": 3}, path), r"not a checkpoint: no state_dict of tensors in it"),
    ],
    ids=["truncated", "empty", "text", "foreign", "other-architecture", "no-state-dict"],
)
def test_unreadable_restore_from_says_which_in_one_line(make, expected, dataset, tmp_path, capsys):
    checkpoint = tmp_path / "given.pth.tar"
    make(checkpoint)
    before = file_checksums(tmp_path)
    line = _error_line(*_train(capsys, _train_argv(dataset, tmp_path / "snap", "--restore_from", str(checkpoint))))
    assert line.startswith(f"train_L_CAM.py: error: {checkpoint}: ")
    assert re.search(expected, line), line
    assert "weights_only" not in line and "KeyError" not in line and "Errno" not in line
    after = file_checksums(tmp_path)
    assert {name: value for name, value in after.items() if not name.startswith("snap")} == before
    assert not [name for name in after if name.startswith("snap")]  # nothing written


def test_damaged_newest_checkpoint_names_the_older_ones(dataset, run_copy, capsys, one_thread):
    snapshot_dir, _ = run_copy
    newest = snapshot_dir / "lcam_epoch_1_glo_step_6.pth.tar"
    newest.write_bytes(newest.read_bytes()[:100])
    before = file_checksums(snapshot_dir)
    line = _error_line(*_train(capsys, _train_argv(dataset, snapshot_dir, "--epoch", "3")))
    older = snapshot_dir / "lcam_epoch_0_glo_step_3.pth.tar"
    assert f"{newest}: truncated checkpoint" in line and "it is the newest checkpoint of --snapshot_dir" in line
    assert f"--restore_from {older}" in line and "older checkpoints there: ['lcam_epoch_0_glo_step_3.pth.tar']" in line
    assert "move the damaged file out of" in line
    assert file_checksums(snapshot_dir) == before

    (snapshot_dir / "damaged").mkdir()
    newest.rename(snapshot_dir / "damaged" / newest.name)  # the way on the message gives
    status, err = _train(capsys, _train_argv(dataset, snapshot_dir, "--epoch", "2", "--restore_from", str(older)))
    assert status == 0, err
    assert (snapshot_dir / "lcam_epoch_1_glo_step_6.pth.tar").is_file()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No internet and an empty torchvision weights cache: every download fails as urllib does."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)


@pytest.mark.parametrize(
    ("model_flags", "weights_name"),
    [
        (["--arch", "VGG16_L_CAM_Img"], "VGG16_Weights.IMAGENET1K_V1"),
        (["--arch", "generic", "--backbone", "resnet18"], "ResNet18_Weights.IMAGENET1K_V1"),
    ],
)
def test_offline_default_weights_name_the_flag(model_flags, weights_name, offline, dataset, tmp_path, capsys):
    root, datalist = dataset
    argv = ["--train_list", str(datalist), "--img_dir", str(root), "--snapshot_dir", str(tmp_path / "snap")]
    line = _error_line(*_train(capsys, [*argv, *model_flags, "--device", "cpu", "--no_progress"]))
    assert f"could not download the {weights_name} backbone weights (URLError: " in line
    assert "--backbone_weights PATH" in line and "--backbone_weights none" in line
    assert "pretrained=<path" not in line


def test_imagenet_weights_with_other_classes_name_the_flag(dataset, tmp_path, capsys):
    root, datalist = dataset
    argv = ["--train_list", str(datalist), "--img_dir", str(root), "--snapshot_dir", str(tmp_path / "snap")]
    line = _error_line(*_train(capsys, [*argv, "--arch", "VGG16_L_CAM_Img", "--num_classes", "4"]))
    assert "ImageNet weights with 1000 classes, but num_classes=4 (--num_classes)" in line
    assert "--backbone_weights none" in line and "--backbone_weights PATH" in line
    assert "use pretrained=False" not in line


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda path: path.write_text("not weights"), "backbone weights (--backbone_weights) unreadable: a text file"),
        (_truncated, "backbone weights (--backbone_weights) unreadable: truncated checkpoint"),
        (_foreign_pickle, "backbone weights (--backbone_weights) unreadable: not a checkpoint written by this project"),
        (lambda path: torch.save([1, 2], path), "not a resnet18 state_dict (--backbone_weights): it holds a list"),
        (lambda path: torch.save({"fc.weight": torch.zeros(2)}, path), "is not a torchvision resnet18 state_dict"),
    ],
    ids=["text", "truncated", "foreign", "list", "other-network"],
)
def test_bad_backbone_weights_file_is_one_line(make, expected, dataset, tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    make(weights)
    argv = _train_argv(dataset, tmp_path / "snap", "--backbone", "resnet18", "--backbone_weights", str(weights))
    line = _error_line(*_train(capsys, argv))
    assert expected in line and "weights_only" not in line


def test_unknown_backbone_suggests_the_closest_names(dataset, tmp_path, capsys):
    line = _error_line(*_train(capsys, _train_argv(dataset, tmp_path / "snap", "--backbone", "resnet_nineteen")))
    assert "unknown backbone 'resnet_nineteen'" in line and "did you mean 'resnet50', 'resnet34', 'resnet18'?" in line
    assert len(line) < 300


def test_missing_images_refuse_by_default_and_skip_missing_drops_them(dataset, tmp_path, capsys, one_thread):
    root, datalist = dataset
    with_missing = tmp_path / "with_missing.txt"
    lines = datalist.read_text().splitlines()
    with_missing.write_text("\n".join([lines[0], "class0/gone.jpg 0", *lines[1:5], "class2/lost.jpg 2", ""]))
    argv = ["--train_list", str(with_missing), "--img_dir", str(root), "--snapshot_dir", str(tmp_path / "snap"), *TINY]
    line = _error_line(*_train(capsys, argv))
    assert f"{with_missing}:2: image not found: '{root / 'class0' / 'gone.jpg'}'" in line
    assert "2 of 7 listed images are missing (also line 7)" in line and "--skip_missing" in line
    assert not (tmp_path / "snap").exists()

    status, err = _train(capsys, [*argv, "--skip_missing", "--epoch", "1"])
    assert status == 0, err
    (warning,) = [line for line in err.splitlines() if "warning:" in line]
    assert "2 of 7 listed images are missing, left out (--skip_missing)" in warning
    assert find_newest_checkpoint(tmp_path / "snap").endswith("lcam_epoch_0_glo_step_2.pth.tar")  # 5 images


def test_mid_epoch_resume_reports_this_runs_speed_and_names(dataset, tmp_path, capsys, one_thread):
    snapshot_dir = tmp_path / "snap"
    interrupted = _train_argv(dataset, snapshot_dir, "--epoch", "2", "--save_every", "2", "--stop_after_step", "4")
    assert _train(capsys, interrupted)[0] == 0
    assert sorted(name for name in os.listdir(snapshot_dir) if name.endswith(".tar")) == [
        "lcam_epoch_0_glo_step_3.pth.tar",
        "lcam_epoch_1_glo_step_4_mid.pth.tar",
    ]
    assert find_newest_checkpoint(snapshot_dir).endswith("lcam_epoch_0_glo_step_3.pth.tar")  # what evaluation takes
    assert find_newest_checkpoint(snapshot_dir, mid_epoch=True).endswith("lcam_epoch_1_glo_step_4_mid.pth.tar")
    # a mid-epoch checkpoint under the name earlier versions gave it still resumes
    os.rename(snapshot_dir / "lcam_epoch_1_glo_step_4_mid.pth.tar", snapshot_dir / "lcam_epoch_1_glo_step_4.pth.tar")

    assert _train(capsys, _train_argv(dataset, snapshot_dir, "--epoch", "2"))[0] == 0
    epoch = json.loads((snapshot_dir / LOG_NAME).read_text())["epochs"][1]
    assert epoch["images"] == 12  # the whole epoch's figures ...
    assert epoch["images_per_s"] * epoch["seconds"] == pytest.approx(
        8, rel=0.1
    )  # ... this run's 8 images in the speed (rounded)


def test_sigkill_after_a_mid_epoch_checkpoint_then_resume_equals_an_uninterrupted_run(dataset, tmp_path, one_thread):
    """The process dies without any chance to clean up (SIGKILL), right after writing a
    mid-epoch checkpoint; resuming must end with the weights of a run never interrupted.
    (tests/test_train_L_CAM.py checks the same for an orderly stop, --stop_after_step.)"""
    recipe = ("--epoch", "8", "--batch_size", "2", "--save_every", "1")
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    command = [sys.executable, os.path.join(REPO, "train_L_CAM.py"), *_train_argv(dataset, killed_dir, *recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (killed_dir.is_dir() and any(name.endswith("_mid.pth.tar") for name in os.listdir(killed_dir))):
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 60 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not os.path.isfile(killed_dir / "lcam_epoch_7_glo_step_48.pth.tar")  # it really was cut short

    train_L_CAM.main(train_L_CAM.get_args_parser().parse_args(_train_argv(dataset, killed_dir, *recipe)))
    train_L_CAM.main(train_L_CAM.get_args_parser().parse_args(_train_argv(dataset, straight_dir, *recipe)))
    final = "lcam_epoch_7_glo_step_48.pth.tar"
    resumed = torch.load(killed_dir / final, weights_only=True)["state_dict"]
    expected = torch.load(straight_dir / final, weights_only=True)["state_dict"]
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
