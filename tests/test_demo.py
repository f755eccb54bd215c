"""The end-to-end demo (demo.py): a shortened run writes every output, the CNN goes through
the generic path, bad flags fail in one line."""

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
from utils.checkpoint import find_newest_checkpoint, load_checkpoint


def test_digits_cnn_splits_after_its_last_stage_and_loads_by_path(images):
    model = build_model("generic", pretrained=False, num_classes=10, backbone="demo:DigitsCNN", input_size=64)
    assert (model.layer, model.attnM.op.in_channels) == ("features", 64)
    model.eval()
    with torch.no_grad():
        out = model(images(2, 64))
    assert out.cams.shape == (2, 10, 8, 8)


def test_quick_demo_writes_table_figures_and_checkpoints(tmp_path):
    output_dir = tmp_path / "demo"
    parser = demo.get_args_parser()
    args = parser.parse_args(["--quick", "--output_dir", str(output_dir), "--device", "cpu", "--eval_images", "24"])
    rows = demo.main(args, parser)

    assert [row["method"] for row in rows] == list(demo.ALL_METHODS)
    for row in rows:
        for column in demo.COLUMNS:
            assert 0 <= row[column] <= 100 and math.isfinite(row[column]), (row["method"], column)
    assert rows[-1]["images"] == demo.QUICK["rise_images"] and rows[0]["images"] == 24
    for name in ("results.md", "results.csv", "results.json", "metrics.png", "overlays.png", "classifier.pth"):
        assert os.path.getsize(output_dir / name) > 0, name
    with open(output_dir / "results.json", encoding="utf-8") as handle:
        stored = json.load(handle)
    assert stored["results"] == json.loads(json.dumps(rows)) and stored["info"]["device"] == "cpu"
    markdown = (output_dir / "results.md").read_text(encoding="utf-8")
    assert all(name in markdown for name, _ in demo.LCAM_METHODS.values())
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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--methods", "lcam_img_own,gradcamx"], "unknown \\['gradcamx'\\]"),
        (["--num_train", "0"], "--num_train must be positive"),
        (["--canvas_size", "16"], "--canvas_size must be in"),
    ],
)
def test_bad_flags_fail_in_one_line(flags, message, tmp_path, capsys):
    parser = demo.get_args_parser()
    with pytest.raises(SystemExit):
        demo.main(parser.parse_args(["--output_dir", str(tmp_path), *flags]), parser)
    assert re.search(message, capsys.readouterr().err)
