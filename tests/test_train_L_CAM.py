"""train_L_CAM.py end to end on tiny generated JPEGs (CPU): checkpoints and records,
exact resume, every bad input's message, and a two-process gloo run."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import train_L_CAM
from models import build_model
from utils.core.checkpoint import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone_weights", "none", "--num_classes", "5", "--input_size", "40", "--crop_size", "32"]
TINY += ["--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--no_progress"]


def _args(datalist, img_dir, snapshot_dir, *extra):
    argv = ["--arch", "ResNet50_L_CAM_Fm", "--train_list", str(datalist), "--img_dir", str(img_dir)]
    return train_L_CAM.get_args_parser().parse_args([*argv, "--snapshot_dir", str(snapshot_dir), *TINY, *extra])


def _head(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _subprocess_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


@pytest.mark.parametrize("arch", ["ResNet50_L_CAM_Fm", "ResNet50_L_CAM_Img"])
def test_one_epoch_writes_checkpoint_record_and_log(arch, jpeg_tree, tmp_path, one_thread):
    root, datalist, _ = jpeg_tree()
    args = _args(datalist, root, tmp_path / "snap", "--arch", arch, "--epoch", "1", "--save_full")
    (summary,) = train_L_CAM.main(args)
    files = sorted(os.listdir(tmp_path / "snap"))
    assert files == [
        "imagenet_epoch_0_glo_step_3.pth.tar",
        "lcam_epoch_0_glo_step_3.pth.tar",
        "train_log.json",
        "train_record.csv",
    ]
    with open(tmp_path / "snap" / "train_record.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["epoch", "loss", "losses_meanMask", "losses_variationMask", "losses_ce", "pred@1", "pred@5"]
    assert rows[1][0] == "0" and float(rows[1][1]) == pytest.approx(summary["loss"], abs=1e-4)
    assert float(rows[1][1]) == pytest.approx(sum(float(value) for value in rows[1][2:5]), abs=3e-4)
    log = json.loads((tmp_path / "snap" / "train_log.json").read_text())
    assert log["runs"][0]["args"]["arch"] == arch and log["runs"][0]["args"]["epoch"] == 1
    assert log["epochs"][0]["images"] == 12 and log["epochs"][0]["global_counter"] == 3
    assert log["epochs"][0]["lr"] == pytest.approx([0.01, 0.02])

    head = torch.load(tmp_path / "snap" / "lcam_epoch_0_glo_step_3.pth.tar", weights_only=True)
    assert head["contents"] == "head" and head["arch"] == arch
    assert {"optimizer", "rng", "args", "progress"} <= set(head)
    full = torch.load(tmp_path / "snap" / "imagenet_epoch_0_glo_step_3.pth.tar", weights_only=True)
    assert sorted(full) == ["arch", "epoch", "global_counter", "optimizer", "state_dict"]
    fresh = build_model(arch, pretrained=False, num_classes=5)
    load_checkpoint(tmp_path / "snap" / "imagenet_epoch_0_glo_step_3.pth.tar", fresh)
    assert torch.equal(fresh.attnM.op.weight, head["state_dict"]["attnM.op.weight"])


def test_resumed_run_ends_with_the_uninterrupted_weights(jpeg_tree, tmp_path, one_thread):
    root, datalist, _ = jpeg_tree()
    train_L_CAM.main(_args(datalist, root, tmp_path / "straight", "--epoch", "2"))
    expected = _head(tmp_path / "straight" / "lcam_epoch_1_glo_step_6.pth.tar")

    # stopped after epoch 0, resumed for epoch 1
    train_L_CAM.main(_args(datalist, root, tmp_path / "epochs", "--epoch", "1"))
    train_L_CAM.main(_args(datalist, root, tmp_path / "epochs", "--epoch", "2"))
    # stopped in the middle of epoch 1 after a mid-epoch checkpoint, resumed with a worker process
    train_L_CAM.main(
        _args(datalist, root, tmp_path / "steps", "--epoch", "2", "--save_every", "2", "--stop_after_step", "4")
    )
    assert sorted(name for name in os.listdir(tmp_path / "steps") if name.endswith(".tar")) == [
        "lcam_epoch_0_glo_step_3.pth.tar",
        "lcam_epoch_1_glo_step_4_mid.pth.tar",
    ]
    train_L_CAM.main(_args(datalist, root, tmp_path / "steps", "--epoch", "2", "--num_workers", "1"))

    for run in ("epochs", "steps"):
        resumed = _head(tmp_path / run / "lcam_epoch_1_glo_step_6.pth.tar")
        assert resumed.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(resumed[key], value), (run, key)
        rows = (tmp_path / run / "train_record.csv").read_text()
        assert rows == (tmp_path / "straight" / "train_record.csv").read_text()
    assert "lcam_epoch_1_glo_step_4_mid.pth.tar" not in os.listdir(tmp_path / "steps")  # superseded mid-epoch file
    assert train_L_CAM.main(_args(datalist, root, tmp_path / "straight", "--epoch", "2")) == []  # nothing left


def test_class_folder_instead_of_a_datalist(jpeg_tree, tmp_path, one_thread):
    root, _, _ = jpeg_tree(classes=2, per_class=2)
    (summary,) = train_L_CAM.main(_args(root, "", tmp_path / "snap", "--epoch", "1", "--backbone_mode", "frozen"))
    assert summary["images"] == 4


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        ("n00000000/n00000000_0.JPEG", ValueError, r"train\.txt:2: malformed line 'n00000000/n00000000_0\.JPEG'"),
        ("n00000000/n00000000_0.JPEG zero", ValueError, r"train\.txt:2: malformed line"),
        ("n00000000/n00000000_0.JPEG 7", ValueError, r"train\.txt:2: label 7 outside \[0, 5\)"),
        ("n00000000/missing.JPEG 1", FileNotFoundError, r"image not found: '.*missing\.JPEG'"),
    ],
)
def test_bad_datalist_fails_before_training(line, error, message, jpeg_tree, tmp_path):
    root, datalist, _ = jpeg_tree(classes=1, per_class=2)
    first = datalist.read_text().splitlines()[0]
    datalist.write_text(f"{first}\n{line}\n")
    with pytest.raises(error, match=message):
        train_L_CAM.main(_args(datalist, root, tmp_path / "snap", "--epoch", "1"))
    assert not (tmp_path / "snap").exists()


def test_corrupt_image_is_skipped_and_listed(jpeg_tree, tmp_path, capsys, one_thread):
    root, datalist, samples = jpeg_tree(classes=2, per_class=2)
    with open(samples[2][0], "wb") as handle:
        handle.write(b"\xff\xd8 truncated")
    (summary,) = train_L_CAM.main(_args(datalist, root, tmp_path / "snap", "--epoch", "1"))
    assert summary["images"] == 3
    assert [entry["path"] for entry in summary["unreadable"]] == [samples[2][0]]
    err = capsys.readouterr().err
    assert "epoch 1: 1 unreadable image(s) skipped" in err and samples[2][0] in err


def test_flag_errors(jpeg_tree, tmp_path):
    root, datalist, _ = jpeg_tree(classes=1, per_class=1)
    with pytest.raises(FileNotFoundError, match="'--restore_from' checkpoint not found"):
        train_L_CAM.main(_args(datalist, root, tmp_path, "--restore_from", str(tmp_path / "nope.pth.tar")))
    with pytest.raises(ValueError, match="'--restore_from' given with '--resume False'"):
        train_L_CAM.main(_args(datalist, root, tmp_path, "--restore_from", "x", "--resume", "False"))
    with pytest.raises(ValueError, match="'--crop_size' 300 is larger than '--input_size' 40"):
        train_L_CAM.main(_args(datalist, root, tmp_path, "--crop_size", "300"))
    with pytest.raises(FileNotFoundError, match="datalist not found"):
        train_L_CAM.main(_args(tmp_path / "none.txt", root, tmp_path))
    with pytest.raises(SystemExit):
        _args(datalist, root, tmp_path, "--resume", "maybe")
    with pytest.raises(SystemExit):
        _args(datalist, root, tmp_path, "--arch", "VGG19_L_CAM_Fm")


def test_reference_defaults():
    args = train_L_CAM.resolve_defaults(train_L_CAM.get_args_parser().parse_args(["--arch", "VGG16_L_CAM_Img"]))
    assert (args.epoch, args.batch_size, args.lr, args.input_size, args.crop_size) == (8, 64, 1e-4, 256, 224)
    assert (args.disp_interval, args.resume, args.restore_from, args.backbone_mode, args.mask_loss_maps) == (
        40,
        "True",
        "",
        "reference",
        "batch",
    )
    assert args.train_list.endswith(os.path.join("datalist", "ILSVRC", "VGG16_train.txt"))
    assert args.snapshot_dir.endswith(os.path.join("snapshots", "VGG16_L_CAM_Img"))
    args = train_L_CAM.resolve_defaults(train_L_CAM.get_args_parser().parse_args(["--arch", "ResNet50_L_CAM_ImgA"]))
    assert args.epoch == 26 and args.train_list.endswith("ResNet50_train.txt")


def test_help_explains_every_flag():
    parser = train_L_CAM.get_args_parser()
    help_text = parser.format_help()
    for action in parser._actions:
        assert action.help, action.option_strings
        assert action.option_strings[0] in help_text


@pytest.mark.parametrize(
    ("script", "arch", "train_list", "epochs"),
    [
        ("VGG16_train.sh", "VGG16_L_CAM_Img", "VGG16_train.txt", "8"),
        ("VGG16_train_CE.sh", "VGG16_L_CAM_ImgA", "VGG16_train.txt", "8"),
        ("ResNet50_train.sh", "ResNet50_L_CAM_Img", "ResNet50_train.txt", "26"),
        ("ResNet50_train_CE.sh", "ResNet50_L_CAM_ImgA", "ResNet50_train.txt", "26"),
    ],
)
def test_shell_scripts_use_the_spec_layout_from_any_directory(script, arch, train_list, epochs, tmp_path):
    env = {**os.environ, "LAUNCHER": "echo"}
    command = ["sh", os.path.join(REPO, "scripts", script), "--amp", "bf16"]
    words = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    args = train_L_CAM.get_args_parser().parse_args(words[1:])
    assert words[0] == os.path.join(REPO, "train_L_CAM.py")
    assert (args.arch, args.epoch, args.batch_size, args.lr, args.amp) == (arch, int(epochs), 64, 1e-4, "bf16")
    assert args.train_list == os.path.join(REPO, "datalist", "ILSVRC", train_list)
    assert args.img_dir == os.path.join(REPO, "dataset", "ILSVRC2012_img_train")
    assert args.snapshot_dir == os.path.join(REPO, "snapshots", arch)
    env.update(ARCH="ResNet50_L_CAM_Fm", IMG_DIR="imgs", TRAIN_LIST="list.txt", SNAPSHOT_DIR="snap")
    words = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    args = train_L_CAM.get_args_parser().parse_args(words[1:])
    assert (args.arch, args.img_dir, args.train_list, args.snapshot_dir) == (
        "ResNet50_L_CAM_Fm",
        "imgs",
        "list.txt",
        "snap",
    )


def test_shell_script_runs_and_fails_in_one_line(tmp_path):
    env = {**_subprocess_env(), "TRAIN_LIST": "missing.txt", "SNAPSHOT_DIR": str(tmp_path / "snap")}
    command = ["sh", os.path.join(REPO, "scripts", "ResNet50_train.sh"), "--backbone_weights", "none"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "train_L_CAM.py: error: datalist not found: 'missing.txt'"
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_run(jpeg_tree, tmp_path):
    root, datalist, _ = jpeg_tree()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
    ]
    command += [os.path.join(REPO, "train_L_CAM.py"), "--arch", "ResNet50_L_CAM_Fm", "--train_list", str(datalist)]
    command += ["--img_dir", str(root), "--snapshot_dir", str(tmp_path / "snap"), "--epoch", "1", *TINY]
    command[command.index("--batch_size") + 1] = "2"
    result = subprocess.run(command, capture_output=True, text=True, env=_subprocess_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "snap")) == [
        "lcam_epoch_0_glo_step_3.pth.tar",
        "train_log.json",
        "train_record.csv",
    ]
    log = json.loads((tmp_path / "snap" / "train_log.json").read_text())
    assert log["runs"][0]["world_size"] == 2
    assert log["epochs"][0]["images"] == 12  # both processes' images, counted once
    assert (
        len(torch.load(tmp_path / "snap" / "lcam_epoch_0_glo_step_3.pth.tar", weights_only=True)["rng_per_rank"]) == 2
    )


def test_device_decode_path_trains_and_resumes_exactly(jpeg_tree, tmp_path, one_thread):
    root, datalist, _ = jpeg_tree()
    device_decode = ("--decode", "device")
    (straight_first, straight_second) = train_L_CAM.main(
        _args(datalist, root, tmp_path / "straight", "--epoch", "2", *device_decode)
    )
    assert straight_first["images"] == 12 and straight_second["images"] == 12
    # resumed with a DataLoader worker reading the files (its batches cross a process boundary)
    worker = ("--num_workers", "1", "--deterministic")
    train_L_CAM.main(_args(datalist, root, tmp_path / "resumed", "--epoch", "1", *device_decode, *worker))
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    train_L_CAM.main(_args(datalist, root, tmp_path / "resumed", "--epoch", "2", *device_decode))
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    expected = _head(tmp_path / "straight" / "lcam_epoch_1_glo_step_6.pth.tar")
    resumed = _head(tmp_path / "resumed" / "lcam_epoch_1_glo_step_6.pth.tar")
    assert all(torch.equal(resumed[key], value) for key, value in expected.items())
    train_L_CAM.main(_args(datalist, root, tmp_path / "pil", "--epoch", "1"))
    pil = _head(tmp_path / "pil" / "lcam_epoch_0_glo_step_3.pth.tar")
    first_epoch = _head(tmp_path / "resumed" / "lcam_epoch_0_glo_step_3.pth.tar")
    assert not torch.equal(pil["attnM.op.weight"], first_epoch["attnM.op.weight"])  # other crops: not equal
    torch.testing.assert_close(pil["attnM.op.weight"], first_epoch["attnM.op.weight"], rtol=0.05, atol=0.05)


def test_generic_cnn_trains_and_restores_for_evaluation(jpeg_tree, tmp_path, capsys, one_thread):
    import torchvision

    from utils.evaluation import load_lcam_model

    root, datalist, _ = jpeg_tree()
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=5).state_dict(), weights)
    argv = ("--arch", "generic", "--backbone", "resnet18", "--epoch", "1", "--backbone_mode", "frozen")
    args = _args(datalist, root, tmp_path / "snap", *argv)  # frozen: BatchNorm statistics stay torchvision's
    args.backbone_weights = str(weights)
    train_L_CAM.main(args)
    # the small-data recipe without --val_list: one line says nothing compares the result with its start
    assert capsys.readouterr().err.count("note: without --val_list the last epoch is the result") == 1
    checkpoint = tmp_path / "snap" / "lcam_epoch_0_glo_step_3.pth.tar"
    settings = torch.load(checkpoint, weights_only=True)["settings"]
    assert settings["backbone"] == "resnet18" and settings["layer"] == "layer4" and settings["apply_cam_to"] == "image"

    model, metadata = load_lcam_model("generic", checkpoint)
    assert metadata["arch"] == "generic" and model.layer == "layer4" and model.num_classes == 5
    assert torch.equal(model.attnM.op.weight, _head(checkpoint)["attnM.op.weight"])
    reference = torchvision.models.resnet18(weights=None, num_classes=5)
    reference.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference.eval()(model.normalize(x)), rtol=1e-4, atol=1e-5)


def test_generic_flags_with_a_reference_arch_are_rejected(jpeg_tree, tmp_path):
    root, datalist, _ = jpeg_tree(classes=2, per_class=1)
    with pytest.raises(ValueError, match="--backbone, --layer only apply to --arch generic"):
        train_L_CAM.main(_args(datalist, root, tmp_path / "s", "--backbone", "resnet18", "--layer", "layer3"))
