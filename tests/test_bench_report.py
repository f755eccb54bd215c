"""bench.report: markdown tables from the benchmarks' JSON files."""

from __future__ import annotations

import json

import pytest

from bench import report

ARGS = {"amp": "bf16", "channels_last": True, "compile": "reduce-overhead", "backbone_mode": "reference"}


def _row(family, key, measure, images_per_s, ratio, target=None, peak=None, **extra):
    return {
        "family": family,
        "key": key,
        "measure": measure,
        "images_per_s": images_per_s,
        "ratio_to_backbone": ratio,
        "target_ratio": target,
        "peak_mib": peak,
        **extra,
    }


LCAM_REPORT = {
    "device": "NVIDIA H100 80GB HBM3",
    "torch": "2.14.1",
    "args": {**ARGS, "batch_size": 128, "train_batch_size": 64, "size": 224},
    "rows": [
        _row("vgg16", "backbone", "backbone forward", 8000.0, 1.0, peak=1000.0),
        _row(
            "vgg16", "train_img", "training step Img", 2800.0, 0.35, 0.33, 9000.0, peak_ratio_to_reference_settings=0.5
        ),
        _row("resnet50", "backbone", "backbone forward", 14000.0, 1.0, peak=800.0),
        _row("resnet50", "train_img", "training step Img", 3000.0, 0.2143, 0.25, 7000.0),
        _row("resnet50", "baseline_rise", "baseline rise", None, None, error="OutOfMemoryError: a | b"),
    ],
}
DATA_REPORT = {
    "device": "NVIDIA H100 80GB HBM3",
    "args": {"batch_size": 128, "num_workers": 16, "arch": "ResNet50_L_CAM_Fm", "amp": "bf16"},
    "pil_workers": 5600.0,
    "device_decode": 20000.0,
    "training_step": 8000.0,
}


def test_table_has_a_column_group_per_family_and_the_verdicts():
    lines = report.lcam_table(LCAM_REPORT).splitlines()
    assert lines[0] == (
        "**NVIDIA H100 80GB HBM3**, torch 2.14.1: bf16, channels_last, compile reduce-overhead, "
        "backbone reference, batch 128 (training 64), 224 px"
    )
    assert lines[2].startswith("| measure | VGG-16 img/s | VGG-16 ratio | VGG-16 peak MiB | ResNet-50 img/s")
    assert lines[4] == "| backbone forward | 8000.0 | 1.000 | 1000 | 14000.0 | 1.000 | 800 |"
    assert lines[5] == (
        "| training step Img | 2800.0 | 0.350 (met >= 0.33) | 9000 (0.50 x ref. settings) "
        "| 3000.0 | 0.214 (missed >= 0.25) | 7000 |"
    )
    assert lines[6] == "| baseline rise |  |  |  | failed | OutOfMemoryError: a / b |  |"


def test_main_renders_both_kinds_and_rejects_other_json(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(LCAM_REPORT))
    (tmp_path / "b.json").write_text(json.dumps(DATA_REPORT))
    output = tmp_path / "out" / "report.md"
    markdown = report.main(
        report.get_args_parser().parse_args(
            [str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--output", str(output)]
        )
    )
    assert output.read_text() == markdown == capsys.readouterr().out
    assert "PIL in 16 workers 5600 img/s (0.70 x the ResNet50_L_CAM_Fm training step's 8000 img/s at bf16)" in markdown
    assert "device decode 20000 img/s (2.50 x)" in markdown
    (tmp_path / "c.json").write_text(json.dumps({"something": 1}))
    with pytest.raises(SystemExit, match=r"c\.json: neither a bench_lcam nor a bench_data report"):
        report.main(report.get_args_parser().parse_args([str(tmp_path / "c.json")]))
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"d\.json: not a readable bench JSON file"):
        report.main(report.get_args_parser().parse_args([str(tmp_path / "d.json")]))
