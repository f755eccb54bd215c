"""scripts.compare: L-CAM gives the AD/IC of Evaluation_L_CAM_*.py, baselines share the
evaluator, tables, figures and throughput are written; bad flags fail in one line."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from models import build_model
from scripts import compare
from scripts.evaluate import get_args_parser as evaluation_parser
from scripts.evaluate import main as evaluation_main
from utils.core.checkpoint import make_checkpoint, save_checkpoint
from utils.data.datalists import samples_from
from utils.evaluation import build_eval_loader, evaluate
from utils.explainers.baselines import NormalizedClassifier, build_explainer

pytestmark = pytest.mark.usefixtures("one_thread")  # much faster on a loaded CPU

ARCH = "ResNet50_L_CAM_Img"
NUM_CLASSES = 5
INPUT_SIZE, CROP_SIZE = 72, 64  # ResNet-50: 2 x 2 CAMs
SMALL_SIZES = (36, 32)  # 1 x 1 CAMs: enough to check the outputs, 4 x cheaper


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A full-checkpoint ResNet50_L_CAM_Img (random weights, calibrated BatchNorm) and a
    folder of 6 smooth random images in 3 class subfolders."""
    root = tmp_path_factory.mktemp("compare")
    generator = np.random.default_rng(0)
    for index in range(6):
        folder = root / "data" / f"class{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray((generator.random((6, 5, 3)) * 255).astype(np.uint8)).resize((80, 90), Image.BILINEAR)
        noisy = np.asarray(coarse) * 0.8 + generator.random((90, 80, 3)) * 60
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"img{index}.png")
    torch.manual_seed(0)
    model = build_model(ARCH, pretrained=False, num_classes=NUM_CLASSES)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, CROP_SIZE, CROP_SIZE))
        model.fc.weight.mul_(3.0)
    model.eval()
    checkpoint = save_checkpoint(make_checkpoint(model, 1, 10, full=True), root / "ckpt" / "lcam.pth.tar")
    return root, checkpoint


def _compare_args(root, checkpoint, *extra: str, sizes=(INPUT_SIZE, CROP_SIZE)):
    parser = compare.get_args_parser()
    argv = [
        "--lcam",
        f"{ARCH}={checkpoint}",
        "--test_list",
        str(root / "data"),
        "--input_size",
        str(sizes[0]),
        "--crop_size",
        str(sizes[1]),
        "--num_workers",
        "0",
        "--batch_size",
        "4",
        "--device",
        "cpu",
        "--no_progress",
        *extra,
    ]
    return parser, parser.parse_args(argv)


def test_lcam_through_compare_equals_the_evaluation_script(setup, tmp_path):
    root, checkpoint = setup
    parser, args = _compare_args(
        root, checkpoint, "--methods", "", "--figure_images", "1", "--output_dir", str(tmp_path / "cmp")
    )
    rows = compare.main(args, parser)
    evaluation_args = evaluation_parser(arch=ARCH).parse_args(
        [
            "--restore_from",
            checkpoint,
            "--test_list",
            str(root / "data"),
            "--input_size",
            str(INPUT_SIZE),
            "--crop_size",
            str(CROP_SIZE),
            "--percentages",
            "0,0.5,0.85",
            "--num_workers",
            "0",
            "--batch_size",
            "4",  # as compare (other batch sizes differ in the last float digits only)
            "--device",
            "cpu",
            "--output",
            str(tmp_path / "eval.json"),
        ]
    )
    evaluation_main(evaluation_args)
    reference = json.loads((tmp_path / "eval.json").read_text())["summary"]
    assert [row["method"] for row in rows] == [ARCH]
    for ours, theirs in zip(rows[0]["summary"], reference):
        assert ours["average_drop"] == theirs["average_drop"]  # identical, not just close
        assert ours["increase_in_confidence"] == theirs["increase_in_confidence"]
    assert rows[0]["num_images"] == 6


def test_compare_writes_tables_figures_and_throughput(setup, tmp_path):
    root, checkpoint = setup
    output = tmp_path / "out"
    parser, args = _compare_args(
        root,
        checkpoint,
        "--methods",
        "gradcampp,rise,gradcam-pkg:EigenCAM",
        "--rise_masks",
        "8",
        "--limit",
        "3",
        "--road_percentiles",
        "50",
        "--figure_images",
        "2",
        "--road",
        "--road_limit",
        "1",
        "--insertion_deletion",
        "--id_step",
        "200",
        "--id_limit",
        "2",
        "--id_substrate",
        "blur",
        "--output_dir",
        str(output),
        "--html",
        str(tmp_path / "page"),
        sizes=SMALL_SIZES,
    )
    rows = compare.main(args, parser)
    assert [(row["method"], row["family"]) for row in rows] == [
        (ARCH, "resnet50"),
        ("gradcampp", "resnet50"),
        ("rise", "resnet50"),
        ("gradcam-pkg:EigenCAM", "resnet50"),
    ]
    for row in rows:
        assert row["num_images"] == 3
        assert row["explain_images_per_second"] > 0 and row["device"].startswith("cpu")
        assert all(np.isfinite(row[key]) for key in ("road_morf", "road_lerf", "road_combined"))
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1 and row["id_count"] == 2
        assert len(row["deletion_curve"]) == len(row["insertion_curve"]) > 2
    with open(output / "comparison.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0][:8] == ["backbone", "method", "AD@100%", "IC@100%", "AD@50%", "IC@50%", "AD@15%", "IC@15%"]
    assert "explain img/s" in table[0] and "ROAD combined" in table[0] and "ROAD MoRF acc % ↓" in table[0]
    assert (output / "road.csv").read_text().count("\n") == 1 + len(rows)  # one percentile per row
    assert table[0][-2:] == ["deletion AUC ↓", "insertion AUC ↑"]
    assert float(table[2][-2]) == pytest.approx(rows[1]["deletion_auc"], abs=1e-4)
    assert float(table[2][2]) == pytest.approx(rows[1]["summary"][0]["average_drop"], abs=0.01)
    assert table[2][1] == "gradcampp"
    markdown = (output / "comparison.md").read_text()
    assert "| resnet50 | gradcampp |" in markdown
    for picture in ("ad_ic.png", "qualitative.png", "insertion_deletion.png"):
        with Image.open(output / picture) as image:
            assert image.size[0] > 300
    assert (output / "rise_masks" / "rise_N8_s7_p0.5_seed0_32px.pt").is_file()
    page = (tmp_path / "page" / "index.html").read_text()  # the web page: table, both figures, maps
    assert page.count("<tr>") == 1 + 4 + 1 + 2 and "deletion AUC ↓ ↓" not in page
    assert os.path.isfile(tmp_path / "page" / "figure_1.png") and os.path.isfile(tmp_path / "page" / "maps/001_03.png")
    assert os.path.isfile(output / "results" / "resnet50_gradcam-pkg_EigenCAM.json")
    # The baseline row is the shared evaluator on the L-CAM model's classifier, nothing else.
    model = compare.load_lcam_model(ARCH, checkpoint, device="cpu")[0]
    classifier = NormalizedClassifier.from_lcam(model)
    loader = build_eval_loader(samples_from(str(root / "data"))[:3], *SMALL_SIZES, 4)
    direct = evaluate(classifier, build_explainer("gradcampp", classifier), loader, (0, 0.5, 0.85), progress=False)
    assert direct.summary == rows[1]["summary"]


def test_classifier_flag_gives_the_baselines_a_torchvision_model():
    parser = compare.get_args_parser()
    args = parser.parse_args(["--test_list", "x", "--classifier", "resnet50=none", "--methods", "gradcam,rise"])
    compare._check_args(parser, args)
    args.num_classes = 3
    entries = compare._build_entries(args, torch.device("cpu"))
    assert [(entry.name, entry.family, entry.source) for entry in entries] == [
        ("gradcam", "resnet50", "torchvision resnet50 (none)"),
        ("rise", "resnet50", "torchvision resnet50 (none)"),
    ]
    assert entries[1].explainer.settings["num_masks"] == 8000  # the reference's ResNet-50 RISE
    assert not entries[0].classifier.training


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lcam", "VGG16=x"], "unknown arch 'VGG16'"),
        (["--lcam", "nonsense"], "expects KEY=VALUE"),
        (["--classifier", "alexnet=none", "--methods", "gradcam"], "unknown family 'alexnet'"),
        (["--methods", "gradcam"], "the baselines need a classifier"),
        (["--methods", ""], "nothing to compare"),
        (["--methods", "gradcam", "--classifier", "resnet50=none", "--percentages", "1"], "--percentages"),
        (["--methods", "gradcam", "--classifier", "resnet50=none", "--road_percentiles", "0,50"], "(0, 100)"),
    ],
)
def test_bad_flags_fail_in_one_line(extra, message, capsys, tmp_path):
    parser = compare.get_args_parser()
    args = parser.parse_args(["--test_list", str(tmp_path), *extra])
    with pytest.raises(SystemExit):
        compare.main(args, parser)
    assert message in capsys.readouterr().err


def test_unknown_method_lists_the_valid_ones(setup, tmp_path):
    root, checkpoint = setup
    parser, args = _compare_args(root, checkpoint, "--methods", "gradcam,lime", "--output_dir", str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown method 'lime'; did you mean 'rise'\? \(valid: gradcam, gradcampp"):
        compare.main(args, parser)
