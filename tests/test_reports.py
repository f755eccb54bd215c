"""utils.evaluation.reports: the results table in Markdown and CSV, the scores chart and the
overlay grid the commands write."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from utils.evaluation import reports


def test_table_as_markdown_and_csv(tmp_path):
    table = reports.ResultsTable(["method", "AD@100%", "images"], [["gradcam", 12.35, 6], ["rise", 3.1, 2]])
    assert (
        table.markdown() == "| method | AD@100% | images |\n|---|---|---|\n| gradcam | 12.35 | 6 |\n| rise | 3.1 | 2 |"
    )
    with open(table.write_csv(tmp_path / "t.csv"), newline="") as handle:
        assert list(csv.reader(handle)) == [
            ["method", "AD@100%", "images"],
            ["gradcam", "12.35", "6"],
            ["rise", "3.1", "2"],
        ]
    records = [{"method": "a", "AD100": 1.5, "extra": "x"}]
    assert reports.ResultsTable.from_records(records, ["method", "AD100"]) == reports.ResultsTable(
        ["method", "AD100"], [["a", 1.5]]
    )


def test_markdown_file_skips_empty_blocks(tmp_path):
    path = reports.write_markdown(tmp_path / "r.md", "# title", "", "| a |\n|---|", "- note")
    assert open(path, encoding="utf-8").read() == "# title\n\n| a |\n|---|\n\n- note\n"


def test_kept_label_names_the_share_kept():
    assert [reports.kept_label(percentage) for percentage in (0.0, 0.5, 0.85)] == ["100%", "50%", "15%"]


def test_scores_chart_adds_a_localisation_panel_when_there_are_scores(tmp_path):
    summary = [
        {"average_drop": 5.0, "increase_in_confidence": 20.0},
        {"average_drop": 9.0, "increase_in_confidence": 15.0},
    ]
    plain = reports.MethodScores.from_summary("gradcam (vgg16)", summary)
    assert plain == reports.MethodScores("gradcam (vgg16)", [5.0, 9.0], [20.0, 15.0])
    localised = reports.MethodScores("L-CAM", [4.0, 8.0], [21.0, 16.0], {"energy_in_box": 36.5, "pointing_game": 98.0})
    with Image.open(reports.save_scores_chart([plain], (0.0, 0.5), tmp_path / "two.png")) as two_panels:
        with Image.open(
            reports.save_scores_chart([plain, localised], (0.0, 0.5), tmp_path / "three.png")
        ) as three_panels:
            assert three_panels.size[0] > two_panels.size[0] * 1.3
    with pytest.raises(ValueError, match="no method to draw"):
        reports.save_scores_chart([], (0.0,), tmp_path / "none.png")


def test_overlay_grid_has_a_row_per_image_and_a_column_per_method(tmp_path):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = [torch.rand(2, 1, 16, 16), torch.rand(2, 16, 16)]
    path = reports.save_overlay_grid(
        images, maps, ["L-CAM", "Grad-CAM"], tmp_path / "grid.png", map_titles=[["a", "b"]] * 2
    )
    with Image.open(path) as grid:
        assert grid.size == (600, 440)  # 3 columns x 2 rows of 2-inch cells at 100 dpi, plus the title band
    boxes = torch.tensor([[2, 2, 10, 10], [0, 0, 16, 16]])
    with Image.open(
        reports.save_overlay_grid(images, maps[:1], ["L-CAM"], tmp_path / "b.png", boxes=boxes, cell_inches=1.0)
    ) as grid:
        assert grid.size == (200, 240)
    with pytest.raises(ValueError, match="2 methods' maps for 1 titles"):
        reports.save_overlay_grid(images, maps, ["L-CAM"], tmp_path / "x.png")
