"""Tests of utils.evaluation and the evaluation scripts: the batched protocol against an
independent one-image implementation of the AD/IC protocol (docs/reference-behaviour.md),
percentages in one pass, outputs, bad inputs, AMP."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.models.resnet import Bottleneck

import Evaluation_L_CAM_ResNet50
import Evaluation_L_CAM_VGG16
from models import build_model
from scripts.evaluate import cli, get_args_parser
from tests.toy_models import tiny_lcam
from utils.core.checkpoint import make_checkpoint, save_checkpoint
from utils.core.cli import REPO_ROOT
from utils.data.datalists import Batch
from utils.evaluation import (
    EvaluationResult,
    LCAMExplainer,
    evaluate,
    evaluate_many,
    format_summary,
    load_lcam_model,
    parse_percentages,
    write_result,
)
from utils.evaluation.metrics import average_drop, increase_in_confidence

ARCH = "ResNet50_L_CAM_Img"
NUM_CLASSES = 10
INPUT_SIZE, CROP_SIZE = 54, 48  # ResNet-50: 2 x 2 CAMs, upsampled with plateaus (exact ties)
NUM_IMAGES = 5
PERCENTAGES = (0.0, 0.5, 0.85)


# -- fixtures -------------------------------------------------------------------------------


def _smooth_images(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    coarse = F.interpolate(torch.rand(count, 3, 4, 4, generator=generator), size=(size, size), mode="bilinear")
    return coarse * 0.8 + torch.rand(count, 3, size, size, generator=generator) * 0.2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random-weight ResNet50_L_CAM_Img made well-behaved (a random ResNet-50 at init
    predicts one class with probability 1 for every image): BatchNorm statistics of a
    calibration batch, residual branches halved, logits centred and scaled to std 2.
    Saved as a reference-format snapshot (the whole state_dict)."""
    torch.manual_seed(0)
    model = build_model(ARCH, pretrained=False, num_classes=NUM_CLASSES)
    generator = torch.Generator().manual_seed(0)
    calibration = _smooth_images(8, CROP_SIZE, generator)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = the calibration batch's
    model.train()
    with torch.no_grad():
        model(calibration)
        model.eval()
        for module in model.modules():
            if isinstance(module, Bottleneck):
                module.bn3.weight.mul_(0.5)
                module.bn3.bias.mul_(0.5)
        logits = model.fc(model.avgpool(model.feature_maps(model.normalize(calibration))).flatten(1))
        model.fc.bias.sub_(logits.mean(dim=0))
        factor = 2.0 / logits.std()
        model.fc.weight.mul_(factor)
        model.fc.bias.mul_(factor)
    path = tmp_path_factory.mktemp("snapshot") / "imagenet_epoch_7_glo_step_80.pth.tar"
    snapshot = {"epoch": 7, "arch": "resnet", "global_counter": 80, "state_dict": model.state_dict(), "optimizer": {}}
    torch.save(snapshot, path)
    return model, str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Smooth random RGB images of varied sizes, one corrupt file, and their datalist."""
    directory = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(1)
    lines = []
    for index in range(NUM_IMAGES):
        picture = _smooth_images(1, 64, generator)[0]
        picture = F.interpolate(picture[None], size=(60 + 4 * index, 56), mode="bilinear")[0]
        Image.fromarray((picture.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(directory / f"img_{index}.png")
        lines.append(f"img_{index}.png {index % NUM_CLASSES} ")
    (directory / "corrupt.png").write_bytes(b"this is not a png")
    lines.insert(2, "corrupt.png 3")
    datalist = directory / "list.txt"
    datalist.write_text("\n".join(lines) + "\n")
    return str(directory), str(datalist)


@pytest.fixture(scope="module", autouse=True)
def per_sample_convolutions():
    """oneDNN picks batch-size dependent convolution algorithms on the CPU whose float32
    results differ in the last bits; on 2 x 2 maps such noise can reorder near-equal
    pixels at the keep-top threshold. Without oneDNN each sample is convolved on its own,
    so a batch gives bitwise the CAMs of single images and the comparison below is exact
    up to float noise of the classifier. (Off for the whole module, so that every test
    sees the same arithmetic whatever the order.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _script_args(trained, dataset, output, *extra):
    _, snapshot = trained
    img_dir, datalist = dataset
    return [
        "--arch", ARCH, "--restore_from", snapshot, "--img_dir", img_dir, "--test_list", datalist,
        "--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE), "--num_workers", "0",
        "--device", "cpu", "--output", str(output), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def script_run(trained, dataset, tmp_path_factory):
    """The ResNet-50 evaluation script at three percentages, batch 2 (a partial last batch)."""
    output = tmp_path_factory.mktemp("run") / "result.json"
    argv = _script_args(trained, dataset, output, "--percentages", "0,0.5,0.85", "--batch_size", "2")
    result = cli(argv, **Evaluation_L_CAM_ResNet50.DEFAULTS)
    return result, output


# -- an independent one-image implementation of the AD/IC protocol ---------------------------


def _reference_keep_top(cam: torch.Tensor, percentage: float) -> torch.Tensor:
    """Step 3 of the AD/IC protocol (keep-top) for one 1 x 1 x H x W map, written as a loop."""
    if percentage == 0:
        return cam
    cam = cam.clone()
    height, width = cam.shape[-2:]
    threshold = torch.kthvalue(cam.flatten(), int(height * width * percentage)).values
    cam[cam < threshold] = 0
    excess = int(torch.count_nonzero(cam > 0)) - math.ceil((1 - percentage) * height * width)
    if excess >= 1:
        positions = torch.nonzero(cam == threshold)
        for position in positions[:excess]:
            cam[tuple(position)] = 0
    return cam


def _reference_upsample(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) of one 1 x 1 x h x w map, pixel by pixel
    from the formula, in float64 then rounded to float32: pixels equal by construction are
    exactly equal (torch's vectorised kernels can differ there by one unit in the last place)."""
    values = cam[0, 0].double().numpy()
    result = np.empty(size)
    for row in range(size[0]):
        for column in range(size[1]):
            weights_and_indices = []
            for out_index, in_size, out_size in ((row, values.shape[0], size[0]), (column, values.shape[1], size[1])):
                source = max((out_index + 0.5) * in_size / out_size - 0.5, 0.0)
                low = min(int(source), in_size - 1)
                weights_and_indices.append((low, min(low + 1, in_size - 1), source - low))
            (top, bottom, down), (left, right, across) = weights_and_indices
            upper = values[top, left] * (1 - across) + values[top, right] * across
            lower = values[bottom, left] * (1 - across) + values[bottom, right] * across
            result[row, column] = upper * (1 - down) + lower * down
    return torch.from_numpy(result).float()[None, None]


def _threshold_gaps(cam: torch.Tensor, percentage: float) -> float:
    """The distance from the keep-top threshold to the nearest other value of the map."""
    values = cam.flatten().sort().values
    threshold = values[int(values.numel() * percentage) - 1]
    others = values[values != threshold]
    return float((others - threshold).abs().min())


def _reference_protocol(model, dataset, percentages):
    """Per image, batch 1: Y, k, O per percentage, AD and IC per percentage."""
    img_dir, datalist = dataset
    transform = transforms.Compose(
        [transforms.Resize(INPUT_SIZE), transforms.CenterCrop(CROP_SIZE), transforms.ToTensor()]
    )
    y_values, classes, o_values = [], [], {percentage: [] for percentage in percentages}
    gaps = []
    for line in open(datalist).read().splitlines():
        name = line.split()[0]
        try:
            image = transform(Image.open(os.path.join(img_dir, name)).convert("RGB")).unsqueeze(0)
        except Exception:
            continue  # unreadable images are excluded
        with torch.no_grad():
            out = model(image)
            probabilities = F.softmax(out.logits, dim=1)
            k = int(probabilities.argmax(dim=1))
            y_values.append(float(probabilities[0, k]))
            classes.append(k)
            cam = out.cams[:, k : k + 1].clone()
            cam -= cam.min()
            cam /= cam.max() - cam.min()
            cam = _reference_upsample(cam, (CROP_SIZE, CROP_SIZE))
            gaps += [_threshold_gaps(cam, percentage) for percentage in percentages if percentage > 0]
            for percentage in percentages:
                masked = image * _reference_keep_top(cam, percentage)
                o_values[percentage].append(float(F.softmax(model(masked).logits, dim=1)[0, k]))
    y = np.array(y_values)
    summary = {}
    for percentage in percentages:
        o = np.array(o_values[percentage])
        summary[percentage] = (
            sum(np.divide((y - o).clip(min=0), y)) * (100 / len(y)),
            sum(value > 0 for value in o - y) * (100.0 / len(y)),
        )
    o_values = {percentage: np.array(values) for percentage, values in o_values.items()}
    return y, classes, o_values, summary, min(gaps)


# -- the protocol ---------------------------------------------------------------------------


def test_batched_script_equals_one_image_reference_loop(trained, dataset, script_run):
    model, _ = trained
    result, _ = script_run
    y, classes, o, summary, threshold_gap = _reference_protocol(model, dataset, PERCENTAGES)
    # Tolerance: the batched and the one-image forwards differ by float noise (about 1e-7
    # relative), so the scores agree to rtol 1e-5 as long as that noise cannot move the
    # keep-top threshold to another value: every map's nearest other value must be far
    # from its threshold. Pixels equal by construction (the plateaus of these 2 x 2 maps)
    # are exact ties in both implementations, and the tie rule picks the same ones.
    assert threshold_gap > 1e-6
    assert result.num_images == NUM_IMAGES and result.num_unreadable == 1
    assert result.predicted.tolist() == classes
    np.testing.assert_allclose(result.y.numpy(), y, rtol=1e-5)
    assert len(set(classes)) > 2 and 0.11 < y.min() and y.max() < 0.9  # a non-degenerate model
    for row, percentage in enumerate(PERCENTAGES):
        np.testing.assert_allclose(result.o[row].numpy(), o[percentage], rtol=1e-5)
        entry = result.summary[row]
        assert entry["percentage"] == percentage
        assert entry["average_drop"] == pytest.approx(summary[percentage][0], abs=1e-3)
        assert entry["increase_in_confidence"] == pytest.approx(summary[percentage][1])
    # the masks differ across percentages, so the scores do too
    assert not np.allclose(o[0.0], o[0.85])


@pytest.mark.parametrize("threads", [1, 3])
def test_scores_do_not_depend_on_thread_count_or_batch_size(trained, dataset, script_run, tmp_path, threads):
    # the script above ran at batch 2 with torch's default threads; here another batch size
    # and thread count: the same classes, the same kept pixels, scores equal to float noise
    expected, _ = script_run
    argv = _script_args(trained, dataset, tmp_path / "r.json", "--percentages", "0,0.5,0.85", "--batch_size", "3")
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = cli(argv, **Evaluation_L_CAM_ResNet50.DEFAULTS)
    finally:
        torch.set_num_threads(default_threads)
    assert result.predicted.tolist() == expected.predicted.tolist()
    torch.testing.assert_close(result.o, expected.o, rtol=1e-5, atol=1e-7)
    for entry, expected_entry in zip(result.summary, expected.summary):
        assert entry["increase_in_confidence"] == expected_entry["increase_in_confidence"]
        assert entry["average_drop"] == pytest.approx(expected_entry["average_drop"], abs=1e-3)


def test_lcam_classifier_is_the_plain_pass(trained):
    model, _ = trained
    images = torch.rand(2, 3, CROP_SIZE, CROP_SIZE)
    explainer = LCAMExplainer(model)
    logits, maps = explainer.predict_and_explain(images)
    with torch.no_grad():
        out = model(images)
    torch.testing.assert_close(explainer.classify(images), out.logits)
    torch.testing.assert_close(logits, out.logits)
    predicted = out.logits.argmax(dim=1)
    torch.testing.assert_close(maps, out.cams[torch.arange(2), predicted].unsqueeze(1))
    torch.testing.assert_close(explainer.explain(images, predicted), maps)


def test_three_percentages_equal_three_separate_passes():
    model = tiny_lcam()
    images = _smooth_images(6, 32, torch.Generator().manual_seed(0))
    loader = [(images[:4], torch.arange(4)), (images[4:], torch.arange(2))]
    explainer = LCAMExplainer(model)
    combined = evaluate(explainer.classify, explainer, loader, PERCENTAGES, progress=False)
    for row, percentage in enumerate(PERCENTAGES):
        single = evaluate(explainer.classify, explainer, loader, [percentage], progress=False)
        torch.testing.assert_close(single.y, combined.y, rtol=0, atol=0)
        torch.testing.assert_close(single.o[0], combined.o[row], rtol=0, atol=0)
        assert single.summary[0] == combined.summary[row]
    assert not torch.equal(combined.o[0], combined.o[2])


def test_several_methods_in_one_pass_equal_separate_passes_and_share_the_plain_forward():
    model = tiny_lcam()
    images = _smooth_images(6, 32, torch.Generator().manual_seed(0))
    loader = [(images[:4], torch.arange(4)), (images[4:], torch.arange(2))]
    lcam = LCAMExplainer(model)
    classifier = _RecordingClassifier()
    maps = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    first, second = _FixedExplainer(maps), _FixedExplainer(maps.flip(-1))
    methods = [(lcam.classify, lcam), (classifier, first), (classifier, second)]
    together = evaluate_many(methods, loader, PERCENTAGES, progress=False)
    # one plain forward per batch for the two methods of `classifier`, then their masked passes
    assert len(classifier.seen) == 2 * (1 + 2 * len(PERCENTAGES))
    for (method_classifier, explainer), result in zip(methods, together):
        alone = evaluate(method_classifier, explainer, loader, PERCENTAGES, progress=False)
        for name in ("indices", "labels", "predicted", "y", "o", "top1", "masked_top1", "masked_top5"):
            torch.testing.assert_close(getattr(result, name), getattr(alone, name), rtol=0, atol=0)
        assert result.summary == alone.summary
    assert not torch.equal(together[1].o, together[2].o)
    with pytest.raises(ValueError, match="at least one"):
        evaluate_many([], loader)


def test_compiled_explainer_scores_equal_eager():
    model = tiny_lcam()
    images = _smooth_images(6, 32, torch.Generator().manual_seed(0))
    loader = [(images[:4], torch.arange(4)), (images[4:], torch.arange(2))]
    eager = LCAMExplainer(model)
    compiled = LCAMExplainer(model, compile="default")
    expected = evaluate(eager.classify, eager, loader, PERCENTAGES, progress=False)
    result = evaluate(compiled.classify, compiled, loader, PERCENTAGES, progress=False)
    assert result.predicted.tolist() == expected.predicted.tolist()
    torch.testing.assert_close(result.y, expected.y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.o, expected.o, rtol=1e-4, atol=1e-5)
    out = compiled.explain_all_classes(images)
    torch.testing.assert_close(out.cams, model(images).cams, rtol=1e-4, atol=1e-5)


class _RecordingClassifier:
    """A toy classifier (mean colour -> logits) that keeps every batch it scores."""

    def __init__(self) -> None:
        self.weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
        self.seen: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return images.mean(dim=(2, 3)) @ self.weight * 10


class _FixedExplainer:
    """Explains with given low-resolution maps, one per image (any class)."""

    def __init__(self, maps: torch.Tensor) -> None:
        self.maps = maps
        self.calls = 0

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        assert not torch.is_inference_mode_enabled()  # gradient methods must be able to run
        assert not classes.is_inference()
        self.calls += 1
        return self.maps[: len(images)]


def test_keep_top_acts_per_image_within_a_batch():
    # maps of very different scales and ranges: a global threshold would keep pixels of
    # one image only; per image, each keeps exactly ceil((1 - p) * H * W) pixels
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 1, 4, 4, generator=generator) * torch.tensor([1.0, 100.0, 1e-3]).view(3, 1, 1, 1)
    maps[2] += 50
    images = torch.rand(3, 3, 16, 16, generator=generator) * 0.9 + 0.1  # no zero pixel
    classifier = _RecordingClassifier()
    explainer = _FixedExplainer(maps)
    loader = [(images, torch.tensor([0, 1, 2]))]
    original = images.clone()
    result = evaluate(classifier, explainer, loader, (0.0, 0.5, 0.85), progress=False)
    assert torch.equal(images, original)  # inputs are not modified
    assert explainer.calls == 1  # one explanation shared by the three percentages
    assert len(classifier.seen) == 4  # one plain forward, one masked forward per percentage
    for masked, percentage in zip(classifier.seen[2:], (0.5, 0.85)):
        kept = (masked[:, 0] > 0).flatten(1).sum(dim=1)
        assert kept.tolist() == [math.ceil((1 - percentage) * 256)] * 3
    # the map of each image is min-max normalised on its own, then upsampled
    for image, low_resolution, masked in zip(images, maps, classifier.seen[1]):
        normalized = (low_resolution - low_resolution.min()) / (low_resolution.max() - low_resolution.min())
        upsampled = F.interpolate(normalized[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(masked, image * upsampled)
    assert result.num_images == 3 and result.indices.tolist() == [0, 1, 2]


def test_explainer_maps_of_wrong_shape_fail_clearly():
    loader = [(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))]
    explainer = _FixedExplainer(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"_FixedExplainer returned maps of shape \(2, 3, 4, 4\), expected 2 x 1"):
        evaluate(_RecordingClassifier(), explainer, loader, progress=False)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_half_precision_autocast_stays_within_half_a_point_of_fp32(amp):
    # A random ResNet-50 at init is numerically chaotic (half-precision rounding changes its
    # predictions), and IC counts decisions: on 64 images one flipped O > Y moves it by 1.6
    # points. So: a well-conditioned shallow L-CAM, and IC compared on the images whose
    # O and Y differ by more than 2 % in float32 (rounding can't flip those).
    model = tiny_lcam()
    images = _smooth_images(64, 32, torch.Generator().manual_seed(3))
    loader = [(images, torch.zeros(64, dtype=torch.long))]
    explainer = LCAMExplainer(model)
    fp32 = evaluate(explainer.classify, explainer, loader, PERCENTAGES, progress=False)
    half = evaluate(explainer.classify, explainer, loader, PERCENTAGES, amp=amp, progress=False)
    assert half.predicted.tolist() == fp32.predicted.tolist()
    assert not torch.equal(half.o, fp32.o)  # the passes did run in half precision
    decisive = ((fp32.o - fp32.y).abs() > 0.02 * fp32.y).all(dim=0)
    assert decisive.sum() >= 48
    for row, (exact, mixed) in enumerate(zip(fp32.summary, half.summary)):
        assert abs(mixed["average_drop"] - exact["average_drop"]) < 0.5
        for metric in (average_drop, increase_in_confidence):
            exact_value = metric(fp32.y[decisive], fp32.o[row][decisive])
            assert abs(metric(half.y[decisive], half.o[row][decisive]) - exact_value) < 0.5


# -- outputs --------------------------------------------------------------------------------


def test_json_and_csv_hold_consistent_summary_and_per_image_scores(script_run, dataset):
    result, output = script_run
    document = json.loads(output.read_text())
    assert set(document) >= {"run", "percentages", "summary", "images", "unreadable", "num_unreadable", "num_images"}
    assert document["percentages"] == list(PERCENTAGES)
    assert document["run"]["arch"] == ARCH and document["run"]["checkpoint_epoch"] == 7
    assert document["num_images"] == NUM_IMAGES and len(document["images"]) == NUM_IMAGES
    assert document["num_unreadable"] == 1 and document["unreadable"][0]["path"].endswith("corrupt.png")
    y = np.array([image["y"] for image in document["images"]])
    for row, entry in enumerate(document["summary"]):
        key = f"{PERCENTAGES[row]:g}"
        o = np.array([image["o"][key] for image in document["images"]])
        assert entry["average_drop"] == pytest.approx(100 / len(y) * np.sum(np.maximum(0, y - o) / y))
        assert entry["increase_in_confidence"] == pytest.approx(100 / len(y) * np.sum(o > y))
        assert entry["masked_top1"] == pytest.approx(
            np.mean([image["masked_top1"][key] for image in document["images"]]) * 100
        )
        assert entry["count"] == NUM_IMAGES
    labels = [int(line.split()[1]) for line in open(dataset[1]).read().splitlines() if "corrupt" not in line]
    assert [image["label"] for image in document["images"]] == labels
    assert [image["predicted"] for image in document["images"]] == result.predicted.tolist()
    assert entry["top1"] == pytest.approx(
        100 * np.mean([image["predicted"] == image["label"] for image in document["images"]])
    )
    with open(output.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == NUM_IMAGES
    assert [float(row["o@0.85"]) for row in rows] == [image["o"]["0.85"] for image in document["images"]]
    assert [int(row["predicted"]) for row in rows] == result.predicted.tolist()


def test_printed_lines_are_the_reference_ones(script_run, capsys):
    result, _ = script_run
    single = EvaluationResult(
        percentages=(0.5,),
        indices=result.indices,
        paths=result.paths,
        labels=result.labels,
        predicted=result.predicted,
        y=result.y,
        o=result.o[1:2],
        top1=result.top1,
        top5=result.top5,
        masked_top1=result.masked_top1[1:2],
        masked_top5=result.masked_top5[1:2],
        seconds=1.0,
    )
    lines = format_summary(single)
    assert lines[0] == f"Average Drop is:  {result.summary[1]['average_drop']}"
    assert lines[1] == f"Increase in confidence is:  {result.summary[1]['increase_in_confidence']}"
    assert lines[2] == f"Top1: {result.summary[1]['top1']} Top5: {result.summary[1]['top5']}"
    assert lines[3] == f"Top1: {result.summary[1]['masked_top1']} Top5: {result.summary[1]['masked_top5']}"
    several = format_summary(result)
    assert sum(line.startswith("Average Drop is:") for line in several) == 3
    assert any("percentage 0.85 (top 15 % of the pixels kept)" in line for line in several)


def test_write_result_creates_folders(script_run, tmp_path):
    result, _ = script_run
    json_path, csv_path = write_result(result, tmp_path / "a" / "b.json", {"note": "x"})
    assert json.loads(open(json_path).read())["run"] == {"note": "x"}
    assert csv_path.endswith("b.csv") and os.path.isfile(csv_path)


# -- checkpoints and bad inputs ---------------------------------------------------------------


def test_limit_and_single_percentage_defaults(trained, dataset, tmp_path):
    argv = _script_args(trained, dataset, tmp_path / "r.json", "--limit", "2", "--batch_size", "64")
    result = cli(argv, **Evaluation_L_CAM_ResNet50.DEFAULTS)
    assert result.percentages == (0.85,)  # the reference ResNet-50 script's default
    assert result.num_images == 2
    assert get_args_parser(**Evaluation_L_CAM_VGG16.DEFAULTS).parse_args([]).arch == "VGG16_L_CAM_Img"
    assert get_args_parser(**Evaluation_L_CAM_VGG16.DEFAULTS).parse_args([]).batch_size == 64


def test_head_checkpoint_of_another_arch_fails_in_one_line(trained, dataset, tmp_path, capsys):
    model, _ = trained
    head = make_checkpoint(model, epoch=1, global_counter=5)
    path = save_checkpoint(head, tmp_path / "lcam_epoch_1_glo_step_5.pth.tar")
    argv = _script_args(trained, dataset, tmp_path / "r.json", "--arch", "ResNet50_L_CAM_Fm", "--restore_from", path)
    with pytest.raises(SystemExit) as exit_info:
        cli(argv, **Evaluation_L_CAM_ResNet50.DEFAULTS)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert "checkpoint of arch 'ResNet50_L_CAM_Img', but --arch is 'ResNet50_L_CAM_Fm'" in error


def test_head_checkpoint_rebuilds_the_recorded_backbone(trained, tmp_path):
    model, _ = trained
    backbone = {key: value for key, value in model.state_dict().items() if not key.startswith("attnM.")}
    backbone_file = tmp_path / "resnet50_backbone.pth"
    torch.save(backbone, backbone_file)  # a torchvision-format state_dict
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.attnM.op.weight.add_(1.0)
    changed.backbone_weights = str(backbone_file)  # what training records
    head = make_checkpoint(changed, epoch=2, global_counter=9)
    assert head["contents"] == "head" and "conv1.weight" not in head["state_dict"]
    run = tmp_path / "run"
    path = save_checkpoint(head, run / "lcam_epoch_2_glo_step_9.pth.tar")
    restored, metadata = load_lcam_model(ARCH, run)  # a folder: its newest checkpoint
    assert metadata["epoch"] == 2 and metadata["path"] == path and not restored.training
    images = torch.rand(2, 3, CROP_SIZE, CROP_SIZE)
    with torch.no_grad():
        expected, got = changed(images), restored(images)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.cams, expected.cams)
    with pytest.raises(ValueError, match="checkpoint has 10 classes, but --num_classes is 1000"):
        load_lcam_model(ARCH, path, num_classes=1000)
    # a head trained on a random backbone can't be evaluated faithfully: say so
    changed.backbone_weights = "none"
    save_checkpoint(make_checkpoint(changed, 3, 10), run / "lcam_epoch_3_glo_step_10.pth.tar")
    with pytest.warns(UserWarning, match="trained on a randomly initialised backbone"):
        load_lcam_model(ARCH, run)


def test_missing_checkpoint_is_an_error_not_an_untrained_head(dataset, tmp_path, capsys):
    img_dir, datalist = dataset
    empty = tmp_path / "empty_run"
    empty.mkdir()
    argv = ["--arch", ARCH, "--snapshot_dir", str(empty), "--test_list", datalist, "--img_dir", img_dir]
    with pytest.raises(SystemExit):
        cli(argv, **Evaluation_L_CAM_ResNet50.DEFAULTS)
    assert "no checkpoint to evaluate: no .pth.tar in --snapshot_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(argv + ["--restore_from", str(tmp_path / "nope.pth.tar")], **Evaluation_L_CAM_ResNet50.DEFAULTS)
    assert "checkpoint file not found" in capsys.readouterr().err


def test_list_without_readable_image_fails_clearly(trained, dataset, tmp_path, capsys):
    img_dir, _ = dataset
    datalist = tmp_path / "bad.txt"
    datalist.write_text("corrupt.png 1\nmissing.png 2\n")
    argv = _script_args(trained, (img_dir, str(datalist)), tmp_path / "r.json", "--skip_missing")
    with pytest.raises(SystemExit):
        cli(argv, **Evaluation_L_CAM_ResNet50.DEFAULTS)
    error = capsys.readouterr().err
    assert "no readable image to evaluate (1 unreadable; first:" in error and "corrupt.png" in error


def test_conflicting_or_bad_percentages_are_parser_errors(capsys):
    with pytest.raises(SystemExit):
        cli(["--percentage", "0.5", "--percentages", "0,0.5"])
    assert "give --percentage or --percentages, not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["--percentages", "0,1.5"])
    assert "in [0, 1)" in capsys.readouterr().err
    assert parse_percentages("0, 0.5,0.85") == (0.0, 0.5, 0.85)
    with pytest.raises(ValueError, match="duplicate"):
        parse_percentages("0.5,0.5")


def test_loader_of_plain_tuples_and_batches_agree():
    model = tiny_lcam()
    images = _smooth_images(3, 32, torch.Generator().manual_seed(5))
    labels = torch.tensor([1, 2, 3])
    explainer = LCAMExplainer(model)
    from_tuples = evaluate(explainer.classify, explainer, [(images, labels)], progress=False)
    batch = Batch(images, labels, torch.tensor([4, 5, 6]), [(7, "broken")])
    from_batches = evaluate(explainer.classify, explainer, [batch], progress=False)
    torch.testing.assert_close(from_tuples.o, from_batches.o)
    assert from_batches.indices.tolist() == [4, 5, 6] and from_batches.unreadable[0]["index"] == 7


def test_shell_script_runs_from_another_directory(trained, dataset, tmp_path):
    _, snapshot = trained
    img_dir, datalist = dataset
    script = os.path.join(REPO_ROOT, "scripts", "ResNet50_AD_IC.sh")
    command = [
        "sh", script, "--arch", ARCH, "--restore_from", snapshot, "--test_list", datalist, "--img_dir", img_dir,
        "--input_size", str(INPUT_SIZE), "--crop_size", str(CROP_SIZE), "--limit", "2", "--num_workers", "0",
        "--device", "cpu", "--output", "out/result.json",
    ]  # fmt: skip
    environment = {**os.environ, "LAUNCHER": sys.executable}
    completed = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.count("Average Drop is:") == 3
    assert (tmp_path / "out" / "result.json").is_file()  # relative to the caller's directory


def test_device_decode_path_scores_the_same_images(script_run, trained, dataset, tmp_path):
    reference, _ = script_run
    argv = _script_args(trained, dataset, tmp_path / "d.json", "--percentages", "0,0.5,0.85", "--decode", "device")
    result = cli(argv, **Evaluation_L_CAM_ResNet50.DEFAULTS)
    assert result.num_images == reference.num_images and result.num_unreadable == reference.num_unreadable
    assert result.paths == reference.paths
    assert (result.y - reference.y).abs().max() < 0.01  # within a grey level of the PIL pipeline
