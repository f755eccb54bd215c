"""bench.html_report builds its synthetic page and measures its size (tiny sizes; the browser
part runs only where Chromium is, and no speed is checked)."""

from __future__ import annotations

import json

from bench import html_report
from utils.evaluation.html_report import read_image_data, read_report_data


def test_bench_builds_a_page_of_every_class_and_measures_its_size(tmp_path):
    flags = ["--images", "3", "--classes", "7", "--cam", "3", "--crop", "24", "--chromium", ""]
    flags += ["--page_dir", str(tmp_path / "page"), "--output", str(tmp_path / "figures.json")]
    figures = html_report.main(html_report.get_args_parser().parse_args(flags))
    index = read_report_data(tmp_path / "page")
    assert len(index["images"]) == 3 and index["classes"] == [str(k) for k in range(7)]
    assert index["crop"] == [24, 24] and index["cam"] == [3, 3]
    data = read_image_data(tmp_path / "page", index["images"][2])
    assert data["maps"].shape == (7, 3, 3) and abs(float(data["probabilities"].sum()) - 1) < 1e-5
    assert 0 < figures["total_mb"] and figures["data_file_kb"] > 7 * 9 / 1000
    assert "open_s" not in figures  # no browser given: the size only
    assert json.loads((tmp_path / "figures.json").read_text())["total_mb"] == figures["total_mb"]
