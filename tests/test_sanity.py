"""utils.evaluation.sanity and scripts.sanity: Spearman and SSIM against independent
implementations, the layer order, the randomisation (seeded, on a copy), known answers of the
checks, a trained classifier's Grad-CAM failing the correlation bound once randomised, and the
command end to end with its one-line errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torchvision
from PIL import Image
from torch import nn

from models import build_model
from scripts import sanity as sanity_command
from tests.test_faults import tiny_cnn
from tests.toy_models import tiny_lcam
from utils.core.checkpoint import make_checkpoint, save_checkpoint
from utils.evaluation.comparison import Entry
from utils.evaluation.sanity import (
    HEAD_NAME,
    LABEL_STEP,
    average_ranks,
    layer_groups,
    randomize_,
    run_sanity_checks,
    spearman_correlation,
    ssim,
)
from utils.explainers.baselines import NormalizedClassifier, build_explainer
from utils.explainers.lcam import LCAMExplainer, lcam_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
NUM_CLASSES = 3  # the square's colour; with 2 classes Grad-CAM's ReLU blanks many maps


def _blob_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dim noise with one bright 8 x 8 square anywhere: red, green or blue for class 0, 1 or 2."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.2
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    corners = torch.randint(0, SIZE - 8, (count, 2), generator=generator)
    for image, label, (y, x) in zip(images, labels, corners.tolist()):
        image[int(label), y : y + 8, x : x + 8] = 1.0
    return images, labels


@pytest.fixture(scope="module")
def trained_classifier() -> NormalizedClassifier:
    """The tiny CNN of ``tests.test_faults`` trained for 60 steps to tell the squares'
    colours (Grad-CAM at its last ReLU then points at the square)."""
    torch.manual_seed(0)
    network = tiny_cnn(NUM_CLASSES)
    classifier = NormalizedClassifier(network, network[3])
    optimizer = torch.optim.Adam(network.parameters(), lr=0.02)
    images, labels = _blob_images(256, seed=1)
    for step in range(60):
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        loss = nn.functional.cross_entropy(classifier(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.requires_grad_(False)
    return classifier.eval()


def _gradcam_entries(network: NormalizedClassifier) -> list[Entry]:
    return [Entry("gradcam", "blob", network, build_explainer("gradcam", network), "")]


def _loader(count: int = 8, seed: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = _blob_images(count, seed)
    return [(images[: count // 2], labels[: count // 2]), (images[count // 2 :], labels[count // 2 :])]


def _rows(result, test: str | None = None) -> dict[tuple[str, str], dict]:
    return {(row["randomized"], row["method"]): row for row in result.rows if test in (None, row["test"])}


# -- the metrics ------------------------------------------------------------------------------------


def _maps_with_ties(count: int, seed: int) -> torch.Tensor:
    """Maps with plateaus and repeated values, as CAMs upsampled from a coarse grid."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 5, 5, generator=generator).round(decimals=1)
    maps = nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="nearest")
    return torch.relu(maps - 0.3)


def test_average_ranks_equal_scipys_with_ties():
    values = _maps_with_ties(3, seed=0).flatten(1)
    expected = np.stack([scipy.stats.rankdata(row, method="average") - 1 for row in values.numpy()])
    np.testing.assert_array_equal(average_ranks(values).numpy(), expected)


def test_spearman_equals_scipys_and_is_undefined_for_a_constant_map():
    first, second = _maps_with_ties(4, seed=1), _maps_with_ties(4, seed=2)
    second[1] = first[1] * 2 + 0.5  # the same order: 1
    second[2] = -first[2]  # the reverse order: -1
    measured = spearman_correlation(first, second)
    expected = [scipy.stats.spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(first, second)]
    np.testing.assert_allclose(measured.numpy(), expected, rtol=0, atol=1e-6)
    assert measured[1] == pytest.approx(1.0, abs=1e-6) and measured[2] == pytest.approx(-1.0, abs=1e-6)
    constant = torch.zeros_like(first)
    assert spearman_correlation(constant, second).tolist() == [0.0] * 4  # a blank map keeps no order
    assert spearman_correlation(constant, constant + 1).tolist() == [1.0] * 4  # two blank maps
    second[3, 0, 0, 0] = math.nan
    assert torch.isnan(spearman_correlation(first, second)).tolist() == [False] * 3 + [True]


def _ssim_reference(first: np.ndarray, second: np.ndarray) -> float:
    """SSIM as Wang et al. (2004) define it: Gaussian window 11 / sigma 1.5, the mean over
    the positions where the window fits (skimage's, when installed)."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        pass
    else:
        return structural_similarity(
            first, second, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
    offsets = np.arange(11) - 5
    kernel = np.exp(-(offsets**2) / (2 * 1.5**2))
    window = np.outer(kernel, kernel) / np.outer(kernel, kernel).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for y in range(first.shape[0] - 10):
        for x in range(first.shape[1] - 10):
            a, b = first[y : y + 11, x : x + 11], second[y : y + 11, x : x + 11]
            mean_a, mean_b = (window * a).sum(), (window * b).sum()
            variance_a = (window * (a - mean_a) ** 2).sum()
            variance_b = (window * (b - mean_b) ** 2).sum()
            covariance = (window * (a - mean_a) * (b - mean_b)).sum()
            values.append(
                ((2 * mean_a * mean_b + c1) * (2 * covariance + c2))
                / ((mean_a**2 + mean_b**2 + c1) * (variance_a + variance_b + c2))
            )
    return float(np.mean(values))


def test_ssim_equals_an_independent_implementation():
    generator = torch.Generator().manual_seed(3)
    first = torch.rand(3, 1, SIZE, SIZE + 4, generator=generator)
    second = (first + 0.3 * torch.rand(3, 1, SIZE, SIZE + 4, generator=generator)).clamp(0, 1)
    second[2] = torch.rand(1, SIZE, SIZE + 4, generator=generator)
    measured = ssim(first, second)
    expected = [_ssim_reference(a[0].double().numpy(), b[0].double().numpy()) for a, b in zip(first, second)]
    np.testing.assert_allclose(measured.numpy(), expected, rtol=0, atol=1e-5)
    assert 0.1 < expected[0] < 0.95 and abs(expected[2]) < 0.2  # cases that tell implementations apart


def test_identical_maps_give_correlation_one_and_ssim_one():
    maps = _maps_with_ties(3, seed=4)
    assert spearman_correlation(maps, maps.clone()).tolist() == pytest.approx([1.0] * 3, abs=1e-7)
    assert ssim(maps, maps.clone()).tolist() == pytest.approx([1.0] * 3, abs=1e-6)


def test_ssim_rejects_maps_smaller_than_the_window():
    with pytest.raises(ValueError, match="smaller than the 11-pixel window"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


# -- the layers -------------------------------------------------------------------------------------


def test_layer_groups_run_from_the_output_down_in_torchvision_blocks():
    with torch.device("meta"):  # the structure alone
        network = torchvision.models.resnet18(weights=None, num_classes=3)
        vgg = torchvision.models.vgg11(weights=None, num_classes=3)
    names = [group.name for group in layer_groups(NormalizedClassifier.from_torchvision(network, "resnet50"))]
    expected = ["fc", *(f"layer{stage}.{block}" for stage in (4, 3, 2, 1) for block in (1, 0)), "conv1+bn1"]
    assert names == [f"classifier.{name}" for name in expected]
    vgg_names = [group.name for group in layer_groups(vgg)]
    assert vgg_names[:4] == ["classifier.6", "classifier.3", "classifier.0", "features.18"]
    assert vgg_names[-1] == "features.0" and len(vgg_names) == 11


def test_an_lcam_models_head_is_randomised_last():
    model = tiny_lcam()
    assert [group.name for group in layer_groups(model)] == ["head", "features.2", "features.0", HEAD_NAME]
    wrapped = [group.name for group in layer_groups(NormalizedClassifier.from_lcam(model))]
    assert wrapped == [
        "classifier.lcam_model.head",
        "classifier.lcam_model.features.2",
        "classifier.lcam_model.features.0",
        HEAD_NAME,
    ]


def test_randomize_changes_the_group_only_and_is_seeded():
    model = tiny_lcam()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    group = layer_groups(model)[1]  # features.2
    randomize_(group, seed=5)
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == {"features.2.weight", "features.2.bias"}
    again = tiny_lcam()
    randomize_(layer_groups(again)[1], seed=5)
    assert torch.equal(again.features[2].weight, model.features[2].weight)


# -- the checks -------------------------------------------------------------------------------------


def test_a_randomised_classifiers_gradcam_fails_the_correlation_bound(trained_classifier):
    before = {name: value.clone() for name, value in trained_classifier.state_dict().items()}
    result = run_sanity_checks(trained_classifier, _gradcam_entries, _loader(), progress=False)
    cascade = [row for row in result.rows if row["test"] == "cascading"]
    assert [row["randomized"] for row in cascade] == ["classifier.6", "classifier.2", "classifier.0"]
    fully_random = cascade[-1]
    assert fully_random["spearman"] < 0.5 and fully_random["ssim"] < 0.5  # the bound: the maps changed
    assert fully_random["undefined"] == 0 and fully_random["images"] == 8
    assert cascade[0]["constant"] > 0  # a random top layer blanks some ReLU'd maps
    label = _rows(result, "label")[(LABEL_STEP, "gradcam")]
    assert label["spearman"] < 0.5  # the other colours' evidence is elsewhere
    # the original network is untouched, and so is its mode
    assert all(torch.equal(value, before[name]) for name, value in trained_classifier.state_dict().items())
    assert not any(module.training for module in trained_classifier.modules())


def test_a_trained_classifiers_gradcam_maps_stay_when_nothing_changes(trained_classifier):
    """Known answer of the machinery: a step that re-initialises a layer Grad-CAM's map of a
    fixed class does not depend on gives correlation 1 (here: an unused layer)."""
    wrapper = nn.Module()
    wrapper.classifier = trained_classifier
    wrapper.unused = nn.Linear(3, 3)  # registered last: randomised first, used by nobody
    result = run_sanity_checks(
        wrapper, lambda net: _gradcam_entries(net.classifier), _loader(4), progress=False, label_test=False
    )
    first = result.rows[0]
    assert first["randomized"] == "unused"
    assert first["spearman"] == pytest.approx(1.0, abs=1e-6) and first["ssim"] == pytest.approx(1.0, abs=1e-6)


def _lcam_entries(network) -> list[Entry]:
    classifier = NormalizedClassifier.from_lcam(network)
    return [
        Entry("L-CAM", "tiny", lcam_classifier(network), LCAMExplainer(network), ""),
        Entry("gradcam", "tiny", classifier, build_explainer("gradcam", classifier), ""),
    ]


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_lcam_known_answers(mode):
    """L-CAM's maps of a fixed class do not depend on the classifier's last layer (it reads
    the feature maps), the baselines' do not depend on the L-CAM head; with every class's
    map the same, the random label changes nothing."""
    model = tiny_lcam(num_classes=4)
    with torch.no_grad():  # every class's map the same
        model.attnM.op.weight.copy_(model.attnM.op.weight[:1].expand_as(model.attnM.op.weight))
        model.attnM.op.bias.fill_(0.1)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    result = run_sanity_checks(model, _lcam_entries, [(images, torch.zeros(4))], mode=mode, progress=False)
    rows = _rows(result)
    assert [row["randomized"] for row in result.rows[::2]] == [
        "head",
        "features.2",
        "features.0",
        HEAD_NAME,
        LABEL_STEP,
    ]
    for metric in ("spearman", "spearman_abs", "ssim"):
        assert rows[("head", "L-CAM")][metric] == pytest.approx(1.0, abs=1e-6)
        assert rows[(LABEL_STEP, "L-CAM")][metric] == pytest.approx(1.0, abs=1e-6)
    assert rows[("head", "gradcam")]["spearman"] < 0.9  # Grad-CAM's map goes through the classifier's top
    assert rows[(HEAD_NAME, "L-CAM")]["spearman"] < 0.9
    head_on_gradcam = rows[(HEAD_NAME, "gradcam")]
    if mode == "independent":  # the head alone: the classifier, hence Grad-CAM's maps, as trained
        assert head_on_gradcam["spearman"] == pytest.approx(1.0, abs=1e-6)
    else:  # everything random by then, the head changing nothing more for Grad-CAM
        assert head_on_gradcam["spearman"] == pytest.approx(rows[("features.0", "gradcam")]["spearman"], abs=1e-6)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="'mode' must be one of cascading, independent"):
        run_sanity_checks(tiny_lcam(), _lcam_entries, [], mode="layerwise")


# -- the command ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def command_setup(tmp_path_factory):
    """A full checkpoint of a generic L-CAM on :func:`tests.test_faults.tiny_cnn` and a datalist of 4 PNGs."""
    root = tmp_path_factory.mktemp("sanity")
    images, labels = _blob_images(4, seed=7)
    lines = []
    for index, (image, label) in enumerate(zip(images, labels)):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / f"img{index}.png")
        lines.append(f"img{index}.png {int(label)}\n")
    (root / "list.txt").write_text("".join(lines))
    torch.manual_seed(0)
    model = build_model(
        "generic", pretrained=False, num_classes=NUM_CLASSES, backbone="tests.test_faults:tiny_cnn", input_size=SIZE
    )
    checkpoint = save_checkpoint(make_checkpoint(model, 1, 4, full=True), root / "lcam.pth.tar")
    return root, checkpoint


def _argv(root, checkpoint, output, *extra) -> list[str]:
    return [
        "--lcam", f"generic={checkpoint}", "--methods", "gradcam", "--test_list", str(root / "list.txt"),
        "--img_dir", str(root), "--input_size", str(SIZE), "--crop_size", str(SIZE), "--batch_size", "2",
        "--num_workers", "0", "--device", "cpu", "--output_dir", str(output), "--no_progress", *extra,
    ]  # fmt: skip


def test_the_command_writes_its_tables_and_figures(command_setup, tmp_path, run_command):
    root, checkpoint = command_setup
    output = tmp_path / "out"
    status, out, err = run_command(
        sanity_command.main, sanity_command.get_args_parser(), _argv(root, checkpoint, output)
    )
    assert status == 0, err
    document = json.loads((output / "sanity.json").read_text())
    steps = ["network.6", "network.2", "network.0", HEAD_NAME, LABEL_STEP]
    assert document["steps"] == ["original", *steps] and document["num_images"] == 4
    assert [(row["randomized"], row["method"]) for row in document["results"]] == [
        (step, method) for step in steps for method in ("generic", "gradcam")
    ]
    with open(output / "sanity.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and float(rows[0]["spearman"]) == pytest.approx(1.0)  # L-CAM ignores the fc layer
    markdown = (output / "sanity.md").read_text()
    assert "| cascading | 1 | network.6 | 1.00 / 1.00 / 1.00 |" in markdown and markdown in out
    maps = Image.open(output / "sanity_maps.png")
    curves = Image.open(output / "sanity_curves.png")
    assert maps.size[1] > 1.5 * maps.size[0] and curves.size[0] > curves.size[1]  # 6 rows x 3 columns; 3 panels
    assert document["run"]["mode"] == "cascading" and math.isfinite(document["results"][-1]["ssim"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "gradcam,gradcan"], "unknown method 'gradcan'"),
        (["--lcam", "generic"], "--lcam expects ARCH=PATH"),
        (["--classifier", "vgg16=none"], "give --lcam or --classifier, not both"),
        (["--lcam", "VGG16_L_CAM_Imgg=x"], "unknown arch 'VGG16_L_CAM_Imgg'"),
        (["--mode", "layerwise"], "invalid choice: 'layerwise'"),
        (["--limit", "0"], "expected an integer >= 1"),
    ],
)
def test_bad_flags_fail_in_one_line(command_setup, tmp_path, run_command, extra, message):
    root, checkpoint = command_setup
    status, _, err = run_command(
        sanity_command.main, sanity_command.get_args_parser(), _argv(root, checkpoint, tmp_path / "out") + extra
    )
    lines = err.strip().splitlines()
    assert status == 2 and "Traceback" not in err
    assert message in lines[-1] and ": error: " in lines[-1]
    assert not (tmp_path / "out").exists()
