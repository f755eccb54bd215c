"""bench.bench_lcam (and bench/gpu_suite.sh) run end to end on the CPU (tiny sizes: this
checks that the benchmark works and reports what it promises, not any speed)."""

from __future__ import annotations

import json
import subprocess

import pytest

from bench import bench_lcam

TINY = ["--device", "cpu", "--families", "resnet50", "--size", "32", "--batch_size", "2", "--train_batch_size", "2"]
QUICK = ["--warmup", "1", "--iters", "1", "--baseline_iters", "1", "--baselines", "gradcam"]


@pytest.fixture(scope="module")
def fast_settings_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    flags = [*TINY, *QUICK, "--channels_last", "--profile", str(folder / "profile"), "--output", str(folder / "b.json")]
    return bench_lcam.main(bench_lcam.get_args_parser().parse_args(flags)), folder


def test_every_measure_has_a_ratio_to_the_backbone_and_its_target(fast_settings_run):
    report, folder = fast_settings_run
    keys = [row["key"] for row in report["rows"]]
    assert keys == [
        "backbone",
        "explanation",
        "predict_and_explain",
        "evaluation",
        "train_fm",
        "train_fm_reference_settings",
        "train_img",
        "train_img_reference_settings",
        "baseline_gradcam",
    ]
    backbone = report["rows"][0]
    for row in report["rows"]:
        assert row["images_per_s"] > 0 and row["peak_mib"] is None  # no CUDA memory on the CPU
        assert row["ratio_to_backbone"] == pytest.approx(row["images_per_s"] / backbone["images_per_s"])
    targets = {row["key"]: row["target_ratio"] for row in report["rows"]}
    assert targets["explanation"] == 0.95 and targets["evaluation"] == 0.24
    assert targets["train_fm"] == 0.75 and targets["train_img"] == 0.25 and targets["backbone"] is None
    assert json.loads((folder / "b.json").read_text())["rows"] == report["rows"]
    assert report["device"].startswith("CPU")


def test_profile_tables_name_the_operators(fast_settings_run):
    _, folder = fast_settings_run
    table = (folder / "profile" / "resnet50_train_img.txt").read_text()
    assert "aten::" in table and "Self CPU" in table
    assert not list((folder / "profile").glob("*.trace.json"))  # traces only with --profile_trace


def test_reference_settings_are_not_measured_twice_and_a_failing_measure_is_recorded(capsys):
    flags = [*TINY, *QUICK, "--baselines", "no_such_method"]
    report = bench_lcam.main(bench_lcam.get_args_parser().parse_args(flags))
    assert [row["key"] for row in report["rows"]][-3:] == ["train_fm", "train_img", "baseline_no_such_method"]
    failed = report["rows"][-1]
    assert failed["images_per_s"] is None and failed["ratio_to_backbone"] is None
    assert failed["error"].startswith("UserValueError: ") and "no_such_method" in failed["error"]
    assert all("error" not in row and row["images_per_s"] > 0 for row in report["rows"][:-1])
    out = capsys.readouterr().out
    assert "training step Img (batch 2)" in out and "baseline no_such_method" in out and "FAILED: UserValueError" in out


@pytest.mark.parametrize(
    ("families", "message"),
    [("alexnet", "unknown backbone family 'alexnet'"), ("vgg16:resnet18", "only a family without a fixed network")],
)
def test_unknown_family_is_refused(families, message):
    with pytest.raises(SystemExit, match=message):
        bench_lcam.main(bench_lcam.get_args_parser().parse_args(["--device", "cpu", "--families", families]))


def test_generic_family_on_any_network(capsys):
    flags = ["--families", "generic:tests.test_families:TinyNet", *TINY[4:], *QUICK, "--no_reference_settings"]
    report = bench_lcam.main(bench_lcam.get_args_parser().parse_args(["--device", "cpu", *flags]))
    assert {row["family"] for row in report["rows"]} == {"generic:tests.test_families:TinyNet"}
    assert [row["key"] for row in report["rows"]] == [
        "backbone",
        "explanation",
        "predict_and_explain",
        "evaluation",
        "train_fm",
        "train_img",
        "baseline_gradcam",
    ]
    assert all("error" not in row and row["images_per_s"] > 0 for row in report["rows"])
    assert bench_lcam.benched_family("generic", 32).variants == {
        "feature_maps": (
            "generic",
            {"backbone": "resnet18", "input_size": 32, "apply_cam_to": "feature_maps", "loss": "lcam"},
        ),
        "image": ("generic", {"backbone": "resnet18", "input_size": 32}),
    }
    assert bench_lcam.benched_family("vgg16", 32).variants == {
        "feature_maps": ("VGG16_L_CAM_Fm", {}),
        "image": ("VGG16_L_CAM_Img", {}),
    }


def test_gpu_suite_is_valid_shell():
    assert subprocess.run(["sh", "-n", "bench/gpu_suite.sh"], check=False).returncode == 0


def test_a_row_per_transformer():
    families = "generic:tests.test_generic:tiny_vit,generic:tests.test_generic:tiny_swin"
    flags = ["--device", "cpu", "--families", families, *TINY[4:], *QUICK, "--no_reference_settings"]
    report = bench_lcam.main(bench_lcam.get_args_parser().parse_args(flags))
    rows = {(row["family"], row["key"]) for row in report["rows"] if "error" not in row and row["images_per_s"] > 0}
    for network in ("tiny_vit", "tiny_swin"):
        for key in ("backbone", "explanation", "evaluation", "train_fm", "train_img", "baseline_gradcam"):
            assert (f"generic:tests.test_generic:{network}", key) in rows
