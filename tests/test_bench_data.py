"""bench.bench_data runs end to end on the CPU (tiny sizes; no speed is checked)."""

from __future__ import annotations

import json

from bench import bench_data


def test_data_bench_compares_both_decoders_with_a_training_step(tmp_path):
    flags = ["--device", "cpu", "--images", "4", "--batch_size", "2", "--num_workers", "1"]
    figures = bench_data.main(bench_data.get_args_parser().parse_args([*flags, "--output", str(tmp_path / "d.json")]))
    assert figures["pil_workers"] > 0 and figures["device_decode"] > 0 and figures["training_step"] > 0
    assert json.loads((tmp_path / "d.json").read_text())["training_step"] == figures["training_step"]
