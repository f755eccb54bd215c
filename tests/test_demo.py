"""The end-to-end demo (demo.py): a shortened run writes every output, the CNN goes through
the generic path, the help is plain words, bad flags and unwritable folders fail in one line
before any work, and an interrupted run keeps the steps it finished."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch

import demo
from models import build_model
from models.generic import GenericLCAM
from utils.core.checkpoint import find_newest_checkpoint, load_checkpoint
from utils.data.digits import make_digits_dataset
from utils.evaluation.html_report import read_report_data


def test_digits_cnn_splits_after_its_last_stage_and_loads_by_path(images):
    model = build_model("generic", pretrained=False, num_classes=10, backbone="demo:DigitsCNN", input_size=64)
    assert (model.layer, model.attnM.op.in_channels) == ("features", 64)
    model.eval()
    with torch.no_grad():
        out = model(images(2, 64))
    assert out.cams.shape == (2, 10, 8, 8)


def test_quick_demo_writes_table_figures_and_checkpoints(tmp_path, capsys):
    output_dir = tmp_path / "demo"
    parser = demo.get_args_parser()
    args = parser.parse_args(["--quick", "--output_dir", str(output_dir), "--device", "cpu", "--eval_images", "24"])
    rows = demo.main(args, parser)
    assert f"note: {demo.QUICK_NOTE}" in capsys.readouterr().out  # a quick run says its numbers mean nothing

    assert [row["method"] for row in rows] == list(demo.ALL_METHODS)
    for row in rows:
        for column in demo.COLUMNS:
            assert 0 <= row[column] <= 100 and math.isfinite(row[column]), (row["method"], column)
    assert rows[-1]["images"] == demo.QUICK["rise_images"] and rows[0]["images"] == 24
    assert all(row["road_images"] == demo.QUICK["road_images"] for row in rows)  # the ROAD columns' images
    for name in ("results.md", "results.csv", "results.json", "metrics.png", "overlays.png", "classifier.pth"):
        assert os.path.getsize(output_dir / name) > 0, name
    assert len(read_report_data(output_dir / "report")["images"]) == demo.REPORT_IMAGES  # the web page
    with open(output_dir / "results.json", encoding="utf-8") as handle:
        stored = json.load(handle)
    assert stored["results"] == json.loads(json.dumps(rows)) and stored["info"]["device"] == "cpu"
    assert stored["info"]["status"] == "complete" and stored["info"]["note"] == demo.QUICK_NOTE
    assert (
        stored["info"]["command"] == f"python demo.py --output_dir {output_dir} --quick --device cpu --eval_images 24"
    )
    markdown = (output_dir / "results.md").read_text(encoding="utf-8")
    assert all(name in markdown for name, _ in demo.LCAM_METHODS.values()) and demo.QUICK_NOTE in markdown
    with open(output_dir / "model_truth_train.txt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == demo.QUICK["num_train"] and lines[0].startswith("images/train/")

    # A head checkpoint restores into a freshly built model on the same classifier.
    classifier = demo.DigitsCNN()
    classifier.load_state_dict(torch.load(output_dir / "classifier.pth", weights_only=True)["state_dict"])
    model = GenericLCAM.build(backbone=classifier, num_classes=10, input_size=64, backbone_mode="frozen")
    metadata = load_checkpoint(find_newest_checkpoint(output_dir / "heads" / "lcam_img_own"), model)
    assert metadata["settings"]["mask_loss_maps"] == "own" and metadata["arch"] == "generic"
    assert model.attnM.op.weight.abs().sum() > 0


def test_quick_vit_demo_explains_the_patch_tokens(tmp_path):
    parser = demo.get_args_parser()
    flags = ["--quick", "--backbone", "vit", "--vit_width", "32", "--output_dir", str(tmp_path), "--device", "cpu"]
    flags += ["--methods", "lcam_img_own,lcam_fm_own,gradcam", "--eval_images", "8", "--classifier_epochs", "1"]
    flags += ["--num_train", "64", "--num_val", "8", "--num_test", "8", "--overlay_images", "2"]
    rows = demo.main(parser.parse_args(flags), parser)
    assert [row["method"] for row in rows] == ["lcam_img_own", "lcam_fm_own", "gradcam"]
    assert all(0 <= row["AD100"] <= 100 and row["images"] == 8 for row in rows)
    network = demo.digits_vit(width=32)
    network.load_state_dict(torch.load(tmp_path / "classifier.pth", weights_only=True)["state_dict"])
    model = GenericLCAM(network, input_size=64)
    assert model.layer == "encoder.layers.encoder_layer_2" and model.token_layout.kind == "sequence"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--methods", "lcam_img_own,gradcamx"], "unknown \\['gradcamx'\\]"),
        (["--num_train", "0"], "argument --num_train: expected an integer >= 1, got '0'"),
        (["--canvas_size", "16"], "--canvas_size must be in"),
    ],
)
def test_bad_flags_fail_in_one_line(flags, message, tmp_path, capsys):
    parser = demo.get_args_parser()
    with pytest.raises(SystemExit):
        demo.main(parser.parse_args(["--output_dir", str(tmp_path), *flags]), parser)
    assert re.search(message, capsys.readouterr().err)


def test_help_is_plain_words(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.cli(["-h"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--output_dir" in help_text and "smoke test" in help_text
    for markup in ("``", ":mod:", ":func:", ":class:", "a few minutes"):
        assert markup not in help_text, markup


@pytest.mark.parametrize("flag", ["--output_dir", "--data_dir"])
def test_unwritable_folder_fails_in_one_line_before_any_work(flag, tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the demo started working before checking its folders")

    monkeypatch.setattr(demo, "make_digits_dataset", must_not_run)
    blocker = tmp_path / "a_file"  # a regular file used as a folder: unwritable even for root
    blocker.write_text("")
    folders = {"--output_dir": str(tmp_path / "out"), "--data_dir": str(tmp_path / "data"), flag: str(blocker / "sub")}
    with pytest.raises(SystemExit) as exit_info:
        demo.cli(["--quick", *(item for pair in folders.items() for item in pair)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(f"demo.py: error: cannot write to .*a_file/sub.* \\({flag}\\).*{flag}\n", captured.err)


def test_dataset_of_other_settings_fails_in_one_line_naming_the_flag(tmp_path, capsys):
    data_dir = tmp_path / "data"
    make_digits_dataset(data_dir, num_train=3, num_val=2, num_test=2, progress=False)
    with pytest.raises(SystemExit) as exit_info:
        demo.cli(["--quick", "--output_dir", str(tmp_path / "out"), "--data_dir", str(data_dir)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "other settings (counts" in error and "with --data_dir" in error


def test_interrupted_demo_keeps_the_finished_steps(tmp_path, capsys, monkeypatch):
    evaluate_method = demo.evaluate_method

    def interrupted_at_the_second_method(key, *args, **kwargs):
        if key == "gradcam":
            raise KeyboardInterrupt
        return evaluate_method(key, *args, **kwargs)

    monkeypatch.setattr(demo, "evaluate_method", interrupted_at_the_second_method)
    output_dir = tmp_path / "out"
    flags = ["--num_train", "64", "--classifier_epochs", "1", "--eval_images", "8", "--head_train_images", "32"]
    with pytest.raises(SystemExit) as exit_info:
        demo.cli(["--quick", "--output_dir", str(output_dir), "--methods", "lcam_img_own,gradcam", *flags])
    assert exit_info.value.code == 130
    assert "demo.py: interrupted; the finished steps are saved" in capsys.readouterr().err

    assert torch.load(output_dir / "classifier.pth", weights_only=True)["accuracy"]["test"] >= 0
    assert find_newest_checkpoint(output_dir / "heads" / "lcam_img_own") is not None
    with open(output_dir / "results.json", encoding="utf-8") as handle:
        stored = json.load(handle)
    assert stored["info"]["status"] == "1 of 2 methods evaluated" and "classifier_accuracy_test" in stored["info"]
    assert [row["method"] for row in stored["results"]] == ["lcam_img_own"]
    assert "L-CAM-Img (own-label maps)" in (output_dir / "results.md").read_text(encoding="utf-8")
    assert (output_dir / "results.csv").read_text(encoding="utf-8").count("\n") == 2  # header and one row
    assert not (output_dir / "metrics.png").exists()  # the figures come after the last method
