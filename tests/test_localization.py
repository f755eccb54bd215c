"""Localisation metrics (utils/evaluation/localization.py): energy in boxes, pointing game and
MaxBoxAccV2 on hand-computed maps and against a straightforward per-image implementation
written here from the paper; ``--boxes`` end to end on the evaluation command and compare."""

from __future__ import annotations

import csv
import json
import math
from collections import deque

import pytest
import torch
import torch.nn.functional as F

from scripts import compare
from scripts.evaluate import get_args_parser as evaluation_parser
from scripts.evaluate import main as evaluation_main
from tests.test_compare import ARCH, CROP_SIZE, INPUT_SIZE, setup  # noqa: F401  (the fixture)
from utils.data.datalists import samples_from
from utils.evaluation import LCAMExplainer, build_eval_loader, load_lcam_model, normalize_and_upsample
from utils.evaluation.localization import (
    CAM_THRESHOLDS,
    LocalizationMeter,
    best_iou_per_threshold,
    box_masks,
    energy_in_box,
    max_box_accuracy,
    peak_pixels,
    pointing_ceiling,
    pointing_game,
)
from utils.metrics import upsample_bilinear

pytestmark = pytest.mark.usefixtures("one_thread")


def test_box_masks_have_exclusive_ends_and_tolerance():
    mask = box_masks(torch.tensor([[1, 2, 3, 4]]), 5, 6)[0]
    assert mask.sum() == 4 and mask[2:4, 1:3].all()
    assert box_masks(torch.tensor([[1, 2, 3, 4]]), 5, 6, tolerance=1)[0].sum() == 4 * 4


def test_energy_in_box_hand_computed_with_one_and_several_boxes():
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = 3.0  # inside the box [0, 2) x [0, 2)
    maps[0, 0, 3, 3] = 1.0  # outside
    maps[1, 0] = 1.0  # uniform: 4 of 16 pixels inside
    boxes = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]])
    torch.testing.assert_close(energy_in_box(maps, boxes), torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert energy_in_box(torch.zeros(1, 4, 4), boxes[:1]).item() == 0.0
    # several boxes: the union, overlaps counted once
    several = [torch.tensor([[0, 0, 2, 2], [3, 3, 4, 4]]), torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3]])]
    torch.testing.assert_close(energy_in_box(maps, several), torch.tensor([1.0, 7 / 16], dtype=torch.float64))


def test_pointing_game_hits_misses_tolerance_constant_maps_and_any_box():
    maps = torch.zeros(3, 5, 5)
    maps[0, 1, 1] = 1.0  # in the box
    maps[1, 4, 4] = 1.0  # out of it, one pixel away from its corner (3, 3) at (x=4, y=4)
    boxes = torch.tensor([[0, 0, 4, 4]] * 3)
    assert pointing_game(maps, boxes).tolist() == [True, False, False]  # third: constant map
    assert pointing_game(maps, boxes, tolerance=1).tolist() == [True, True, False]
    second_box = [torch.tensor([[0, 0, 4, 4], [4, 4, 5, 5]])] * 3
    assert pointing_game(maps, second_box).tolist() == [True, True, False]


@pytest.mark.parametrize("grid", [2, 3, 4, 7, 8, 64])
@pytest.mark.parametrize("size", [64, 50])
def test_peak_pixels_are_exactly_where_upsampled_maps_peak(grid, size):
    """Every pixel named is the peak of some random map, and no other pixel is."""
    generator = torch.Generator().manual_seed(grid * 100 + size)
    maps = torch.rand(2000, 1, grid, grid, generator=generator, dtype=torch.float64)  # float32 can round near-ties
    peaks = upsample_bilinear(maps, (size, size)).flatten(1).argmax(dim=1)
    for seen in (peaks % size, peaks // size):
        assert set(seen.tolist()) == set(torch.nonzero(peak_pixels(grid, size)).flatten().tolist())


def test_a_plateau_points_at_its_first_pixel():
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = maps[0, 0, 0, 1] = 1.0  # two equal cells: the first pixel after the first centre
    maps[1, 0, 3, 3] = 1.0  # the corner cell: the constant run that ends both axes
    peaks = upsample_bilinear(maps, (64, 64)).flatten(1).argmax(dim=1)
    assert [(int(peak % 64), int(peak // 64)) for peak in peaks] == [(0, 0), (56, 56)]


def test_peak_pixels_of_a_4x4_map_at_64_px_and_the_ceiling_of_boxes_between_them():
    assert torch.nonzero(peak_pixels(4, 64)).flatten().tolist() == [0, 23, 24, 39, 40, 56]
    assert peak_pixels(1, 10).tolist() == [True] + [False] * 9
    boxes = torch.tensor([[9, 9, 20, 20], [9, 20, 20, 30], [20, 20, 30, 30], [56, 0, 57, 1]])
    # a box between the centres of a 4 x 4 grid; reachable in one axis; in both; the corners
    assert pointing_ceiling(boxes, (4, 4), (64, 64)).tolist() == [False, False, True, True]
    assert pointing_ceiling(boxes, (8, 8), (64, 64)).tolist() == [True, True, True, False]
    assert pointing_ceiling(boxes, (64, 64), (64, 64)).all()
    assert pointing_ceiling(boxes, (4, 4), (64, 64), tolerance=4).all()
    assert not pointing_ceiling(boxes, (1, 1), (64, 64)).any()  # a constant map never points
    with pytest.raises(ValueError, match="'grid' and 'size' must be >= 1"):
        peak_pixels(0, 64)


@pytest.mark.parametrize("grid", [4, 8])
def test_no_map_points_better_than_the_ceiling(grid):
    generator = torch.Generator().manual_seed(grid)
    corners = torch.randint(0, 56, (500, 2), generator=generator)
    sides = torch.randint(2, 9, (500, 2), generator=generator)
    boxes = torch.cat([corners, corners + sides], dim=1)
    reachable = pointing_ceiling(boxes, (grid, grid), (64, 64))
    assert 0 < reachable.sum() < len(boxes)
    for _ in range(5):
        maps = upsample_bilinear(torch.rand(500, 1, grid, grid, generator=generator), (64, 64))
        assert not (pointing_game(maps, boxes) & ~reachable).any()


def test_a_map_equal_to_the_box_scores_100_and_a_constant_map_gets_the_whole_image_box():
    boxes = torch.tensor([[2, 3, 9, 7], [0, 0, 12, 10]])
    maps = box_masks(boxes, 10, 12).float().unsqueeze(1)
    meter = LocalizationMeter()
    meter.update(maps[:1], boxes[:1])
    summary = meter.summary()
    assert summary["pointing_game"] == summary["energy_in_box"] == 100.0
    assert summary["max_box_acc_30"] == summary["max_box_acc_70"] == summary["max_box_acc_v2"] == 100.0
    # constant (all-zero after min-max) maps: no point, no energy; the only box is the
    # whole image, at tau = 0: a hit for the whole-image box, a miss for the small one
    constant = torch.zeros(2, 1, 10, 12)
    ious = best_iou_per_threshold(constant, boxes)
    assert ious[:, 0].tolist() == [28 / 120, 1.0] and not ious[:, 1:].any()
    meter = LocalizationMeter()
    meter.update(constant, boxes)
    summary = meter.summary()
    assert summary["pointing_game"] == summary["energy_in_box"] == 0.0
    assert summary["max_box_acc_30"] == summary["max_box_acc_v2"] == 50.0


def test_meter_averages_in_percent_and_checks_inputs():
    meter = LocalizationMeter()
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = 1.0
    maps[1, 0, 3, 3] = 1.0
    meter.update(maps, torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]]))
    summary = meter.summary()
    assert (summary["energy_in_box"], summary["pointing_game"], summary["count"]) == (50.0, 50.0, 2)
    # image 0: at tau > 0 the component is pixel (0, 0): IoU 1/4 with the 2 x 2 box
    assert summary["max_box_acc_30"] == 0.0 and summary["best_threshold_30"] == 0
    with pytest.raises(ValueError, match="non-negative"):
        energy_in_box(-maps, torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="x1 > x0"):
        pointing_game(maps, torch.tensor([[2, 0, 2, 2], [0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="N x 4"):
        energy_in_box(maps, torch.tensor([[0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="at least one box"):
        energy_in_box(maps, [torch.tensor([[0, 0, 2, 2]]), torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="no batch"):
        LocalizationMeter().summary()


# -- MaxBoxAccV2 written out from the paper, one image and one threshold at a time --------------


def _components(mask: list[list[bool]]) -> list[tuple[int, int, int, int]]:
    """Tight boxes (x0, y0, x1, y1; ends exclusive) of the 8-connected components, by flood fill."""
    height, width = len(mask), len(mask[0])
    seen = [[False] * width for _ in range(height)]
    boxes = []
    for y in range(height):
        for x in range(width):
            if not mask[y][x] or seen[y][x]:
                continue
            seen[y][x] = True
            queue, xs, ys = deque([(y, x)]), [], []
            while queue:
                cy, cx = queue.popleft()
                xs.append(cx)
                ys.append(cy)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < height and 0 <= nx < width and mask[ny][nx] and not seen[ny][nx]:
                            seen[ny][nx] = True
                            queue.append((ny, nx))
            boxes.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return boxes


def _iou(a, b) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union


def _reference_max_box_acc_v2(maps, boxes, thresholds, deltas=(0.3, 0.5, 0.7)) -> dict[int, float]:
    """MaxBoxAcc(delta) = max_tau 1/N sum_n [max over estimated b and ground truth B of
    IoU(b, B) >= delta]; V2 = their mean. Returns {30: ..., 50: ..., 70: ..., 0: V2}."""
    best = []
    for image_map, image_boxes in zip(maps, boxes):
        values = image_map.tolist()
        per_threshold = []
        for tau in thresholds:
            estimated = _components([[value >= tau for value in row] for row in values])
            per_threshold.append(max((_iou(b, g) for b in estimated for g in image_boxes.tolist()), default=0.0))
        best.append(per_threshold)
    result = {}
    for delta in deltas:
        accuracies = [sum(row[t] >= delta for row in best) / len(best) * 100 for t in range(len(thresholds))]
        result[round(delta * 100)] = max(accuracies)
    result[0] = sum(result[round(delta * 100)] for delta in deltas) / len(deltas)
    return result


def test_max_box_acc_v2_equals_a_per_image_implementation_of_the_paper():
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(6, 1, 4, 4, generator=generator)
    maps = normalize_and_upsample(
        F.interpolate(coarse, size=(14, 16), mode="bilinear") + 0.3 * torch.rand(6, 1, 14, 16, generator=generator),
        (14, 16),
    )
    boxes = []
    for _ in range(6):
        count = int(torch.randint(1, 4, (1,), generator=generator))
        corners = torch.randint(0, 14, (count, 2, 2), generator=generator).sort(dim=1).values
        boxes.append(torch.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0] + 2, corners[:, 1, 1] + 1], 1))
    thresholds = [index / 20 for index in range(20)]
    ours = max_box_accuracy(best_iou_per_threshold(maps, boxes, thresholds))
    reference = _reference_max_box_acc_v2(maps[:, 0], boxes, thresholds)
    for key in (30, 50, 70):
        assert ours[f"max_box_acc_{key}"] == pytest.approx(reference[key])
    assert ours["max_box_acc_v2"] == pytest.approx(reference[0])
    assert 0 < ours["max_box_acc_v2"] < 100  # a case that discriminates
    assert len(CAM_THRESHOLDS) == 100 and CAM_THRESHOLDS[1] == 0.01


# -- --boxes end to end: the evaluation command and compare -----------------------------------


@pytest.fixture(scope="module")
def boxed_list(setup, tmp_path_factory):  # noqa: F811
    """A datalist of the compare fixture's images labelled with the model's own predictions
    (so the map explains the labelled class) and a box file for all but one image."""
    root, checkpoint = setup
    samples = samples_from(root / "data")
    model, _ = load_lcam_model(ARCH, checkpoint, device="cpu")
    loader = build_eval_loader(samples, INPUT_SIZE, CROP_SIZE, batch_size=6)
    batch = next(iter(loader))
    explainer = LCAMExplainer(model)
    logits, raw = explainer.predict_and_explain(batch.images)
    predicted = logits.argmax(dim=1)
    maps = normalize_and_upsample(raw.detach(), (CROP_SIZE, CROP_SIZE))
    folder = tmp_path_factory.mktemp("boxed")
    datalist = folder / "list.txt"
    datalist.write_text("".join(f"{path} {int(label)}\n" for (path, _), label in zip(samples, predicted)))
    # the images are 80 x 90: Resize(72) -> 72 x 81, CenterCrop(64): left 4, top 8 (scale 0.9)
    box_file = folder / "boxes.csv"
    rows = [(path.split("/")[-1], 10, 20, 60, 70) for path, _ in samples[:-1]] + [
        (samples[0][0].split("/")[-1], 0, 0, 20, 30)
    ]
    box_file.write_text("image,x0,y0,x1,y1\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    # mapped: x * 0.9 - 4, y * 0.9 - 8, clipped to the crop
    boxes = [torch.tensor([[5, 10, 50, 55]]) for _ in samples[:-1]]
    boxes[0] = torch.tensor([[5, 10, 50, 55], [0, 0, 14, 19]])
    meter = LocalizationMeter()
    meter.update(maps[:-1], boxes)
    ceiling = pointing_ceiling(boxes, raw.shape[-2:], (CROP_SIZE, CROP_SIZE)).double().mean() * 100
    return (
        datalist,
        box_file,
        meter.summary() | {"pointing_game_ceiling": float(ceiling), "map_size": list(raw.shape[-2:])},
    )


def test_boxes_on_the_evaluation_command_and_compare(setup, boxed_list, tmp_path):  # noqa: F811
    root, checkpoint = setup
    datalist, box_file, expected = boxed_list
    output = tmp_path / "eval" / "result.json"
    parser = evaluation_parser(arch=ARCH)
    argv = [
        "--arch", ARCH, "--restore_from", str(checkpoint), "--test_list", str(datalist), "--img_dir", "",
        "--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE), "--num_workers", "0", "--device", "cpu",
        "--batch_size", "4", "--output", str(output), "--boxes", str(box_file),
    ]  # fmt: skip
    with pytest.warns(UserWarning, match="1 of 6 images of the list have no box"):
        evaluation_main(parser.parse_args(argv), parser)
    written = json.loads((tmp_path / "eval" / "result_localization.json").read_text())
    for key in ("pointing_game", "energy_in_box", "max_box_acc_30", "max_box_acc_50", "max_box_acc_70"):
        assert written["summary"][key] == pytest.approx(expected[key])
    assert written["summary"]["map_size"] == expected["map_size"]
    assert written["summary"]["pointing_game_ceiling"] == pytest.approx(expected["pointing_game_ceiling"])
    assert written["summary"]["count"] == 5 and written["summary"]["without_box"] == 1
    with open(tmp_path / "eval" / "result_localization.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 5

    compare_parser = compare.get_args_parser()
    compare_args = compare_parser.parse_args(
        [
            "--lcam", f"{ARCH}={checkpoint}", "--methods", "gradcam", "--test_list", str(datalist),
            "--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE), "--num_workers", "0",
            "--batch_size", "4", "--device", "cpu", "--no_progress", "--figure_images", "1",
            "--output_dir", str(tmp_path / "compare"), "--boxes", str(box_file),
        ]
    )  # fmt: skip
    with pytest.warns(UserWarning, match="have no box"):
        rows = compare.main(compare_args, compare_parser)
    assert rows[0]["max_box_acc_v2"] == pytest.approx(expected["max_box_acc_v2"])
    assert rows[0]["localized_images"] == 5
    with open(tmp_path / "compare" / "comparison.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert float(table[0]["MaxBoxAccV2 % ↑"]) == pytest.approx(round(expected["max_box_acc_v2"], 2))
    assert float(table[0]["pointing game ceiling %"]) == pytest.approx(round(expected["pointing_game_ceiling"], 2))
    assert not math.isnan(float(table[1]["pointing game % ↑"]))  # Grad-CAM's row


def test_pointing_tolerance_on_the_evaluation_command_and_compare(setup, boxed_list, tmp_path, capsys):  # noqa: F811
    root, checkpoint = setup
    datalist, box_file, expected = boxed_list
    assert expected["pointing_game"] < 100  # a tolerance as large as the image makes every point a hit
    output = tmp_path / "eval" / "result.json"
    parser = evaluation_parser(arch=ARCH)
    argv = [
        "--arch", ARCH, "--restore_from", str(checkpoint), "--test_list", str(datalist), "--img_dir", "",
        "--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE), "--num_workers", "0", "--device", "cpu",
        "--batch_size", "4", "--output", str(output), "--boxes", str(box_file), "--pointing_tolerance", "100",
    ]  # fmt: skip
    with pytest.warns(UserWarning, match="have no box"):
        evaluation_main(parser.parse_args(argv), parser)
    summary = json.loads((tmp_path / "eval" / "result_localization.json").read_text())["summary"]
    assert (summary["pointing_game"], summary["pointing_tolerance"]) == (100.0, 100)
    assert summary["energy_in_box"] == pytest.approx(expected["energy_in_box"])  # the tolerance is the point's only
    assert "Pointing game (tolerance 100 px): 100.00 % (at most 100.00 % for maps of" in capsys.readouterr().out

    compare_parser = compare.get_args_parser()
    compare_args = compare_parser.parse_args(
        [
            "--lcam", f"{ARCH}={checkpoint}", "--methods", "gradcam", "--test_list", str(datalist),
            "--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE), "--num_workers", "0",
            "--batch_size", "4", "--device", "cpu", "--no_progress", "--figure_images", "1",
            "--output_dir", str(tmp_path / "compare"), "--boxes", str(box_file), "--pointing_tolerance", "100",
        ]
    )  # fmt: skip
    with pytest.warns(UserWarning, match="have no box"):
        rows = compare.main(compare_args, compare_parser)
    assert [(row["pointing_game"], row["pointing_tolerance"]) for row in rows] == [(100.0, 100)] * 2
