"""Tests of utils.evaluation.html_report: the data files of the explanation page (every
class, the model's maps after quantisation), the comparison page, and both pages driven in
headless Chromium (the rendered overlay against Python's, switching images, hostile names,
an unreadable image, sorting the table)."""

from __future__ import annotations

import os
import shutil

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from scripts.explain import get_args_parser, main
from tests.toy_models import tiny_lcam
from utils.core.checkpoint import make_checkpoint, save_checkpoint
from utils.core.cli import run_cli
from utils.evaluation.explanations import ExplainOptions, explain_images
from utils.evaluation.html_report import (
    better_direction,
    colormap_table,
    dequantize_maps,
    quantize_maps,
    read_image_data,
    read_report_data,
    render_overlay,
    write_comparison_report,
)
from utils.explainers.maps import upsample_bilinear

CROP = 32
NUM_CLASSES = 6
CLASS_NAMES = ["tabby <b>cat</b>", 'dog "&" co', "</script><i>x</i>", "plain", "ünïcode ✓", "six"]
HOSTILE = ["<script>.png", "<img src=x onerror=window.pwned=1>.png"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _write_images(folder, names, seed=0):
    generator = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = os.path.join(folder, name)
        Image.fromarray((generator.random((40, 36, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run of the tiny L-CAM on four images (two with hostile names) and an unreadable
    one, with the PNG overlays and the page."""
    root = tmp_path_factory.mktemp("report")
    folder = root / "photos"
    folder.mkdir()
    paths = _write_images(str(folder), ["a.png", *HOSTILE, "d.png"])
    (folder / "broken.png").write_bytes(b"not an image")
    paths.insert(1, str(folder / "broken.png"))
    model = tiny_lcam(NUM_CLASSES)
    options = ExplainOptions(
        topk=3,
        class_names=CLASS_NAMES,
        input_size=40,
        crop_size=CROP,
        output_dir=root / "png",
        html_dir=root / "html",
        progress=False,
    )
    run = explain_images(model, paths, options)
    return model, run, str(root / "html")


# --- the data files ---


def test_data_files_hold_every_class_equal_to_the_models_quantised_maps(tiny_run):
    model, run, page = tiny_run
    index = read_report_data(page)
    assert index["classes"] == CLASS_NAMES and index["named"] and index["crop"] == [CROP, CROP]
    entries = [entry for entry in index["images"] if "failed" not in entry]
    assert [entry["path"] for entry in entries] == [item.path for item in run.explanations]
    crops = torch.stack([item.image for item in run.explanations])
    with torch.inference_mode():
        out = model(crops)
    expected_maps = quantize_maps(out.cams)
    expected_probabilities = out.logits.float().softmax(dim=1)
    assert list(index["cam"]) == list(out.cams.shape[-2:])
    for row, (entry, item) in enumerate(zip(entries, run.explanations)):
        data = read_image_data(page, entry)
        assert data["maps"].shape == (NUM_CLASSES, *out.cams.shape[-2:])  # every class
        assert torch.equal(data["maps"], expected_maps[row])
        assert torch.equal(data["probabilities"], expected_probabilities[row])
        assert np.array_equal(np.asarray(data["image"]), np.round(item.image.permute(1, 2, 0).numpy() * 255))
        assert [k for k, _ in entry["top"]] == item.classes
        assert [p for _, p in entry["top"]] == pytest.approx(item.probabilities)


def test_page_maps_are_the_pngs_maps_up_to_quantisation(tiny_run):
    _, run, page = tiny_run
    entries = [entry for entry in read_report_data(page)["images"] if "failed" not in entry]
    for entry, item in zip(entries, run.explanations):
        data = read_image_data(page, entry)
        for rank, k in enumerate(item.classes):
            shown = upsample_bilinear(dequantize_maps(data["maps"][k])[None, None], (CROP, CROP))[0, 0]
            assert (shown - item.maps[rank]).abs().max() <= 0.5 / 255 + 1e-6  # bilinear: a convex mix
            with Image.open(item.files[rank]) as written:
                png = np.asarray(written, dtype=np.int16)
            drawn = np.asarray(render_overlay(item.image, data["maps"][k]), dtype=np.int16)
            assert np.abs(drawn - png).mean() < 0.5 and np.abs(drawn - png).max() <= 8


def test_unreadable_image_is_a_named_failure_in_the_index(tiny_run):
    _, run, page = tiny_run
    failed = [entry for entry in read_report_data(page)["images"] if "failed" in entry]
    assert [entry["name"] for entry in failed] == ["broken.png"]
    assert failed[0]["failed"] == run.unreadable[0]["reason"]


def test_quantize_maps_normalises_each_map_and_rounds():
    cams = torch.tensor([[[[1.0, 3.0], [5.0, 2.0]], [[7.0, 7.0], [7.0, 7.0]]]])
    expected = torch.tensor([[[[0, 128], [255, 64]], [[0, 0], [0, 0]]]], dtype=torch.uint8)
    assert torch.equal(quantize_maps(cams), expected)  # 0.5 * 255 = 127.5 -> 128, 0.25 * 255 = 63.75 -> 64
    assert torch.equal(dequantize_maps(expected)[0, 0, 1], torch.tensor([1.0, 64 / 255]))
    with pytest.raises(ValueError, match="N x K x h x w"):
        quantize_maps(cams[0])


def test_colormap_table_is_matplotlibs():
    table = np.asarray(colormap_table("viridis"), dtype=np.float32)
    values = np.linspace(0, 1, 37, dtype=np.float32)
    picked = table[np.minimum((values * len(table)).astype(int), len(table) - 1)]
    assert np.array_equal(picked, matplotlib.colormaps["viridis"](values)[:, :3].astype(np.float32))
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        colormap_table("nope")


def test_better_direction_of_the_comparison_columns():
    lower = ["AD@100%", "deletion AUC ↓", "ROAD MoRF"]
    higher = ["IC@15%", "insertion AUC ↑", "ROAD LeRF", "ROAD combined", "explain img/s", "eval img/s"]
    assert [better_direction(column) for column in lower] == ["lower"] * 3
    assert [better_direction(column) for column in higher] == ["higher"] * 6
    assert better_direction("method") is None and better_direction("images") is None


def test_comparison_page_escapes_and_copies_its_figures(tmp_path, images):
    chart = tmp_path / "chart.png"
    Image.new("RGB", (8, 8)).save(chart)
    batch = images(2, 16)
    maps = [torch.rand(2, 1, 16, 16), torch.rand(2, 16, 16)]
    page = write_comparison_report(
        tmp_path / "page",
        ["method", "AD@100%", "IC@100%"],
        [["<script>x</script>", 10.5, 3.0], ["gradcam", 20.25, 1.0]],
        figures=[("AD and IC", str(chart))],
        images=batch,
        maps=maps,
        method_titles=["L-CAM <i>", "Grad-CAM"],
        map_titles=[["class 1", "class 2"], ["class 1", "class <3>"]],
    )
    text = open(page, encoding="utf-8").read()
    assert "<script>x" not in text and "&lt;script&gt;x&lt;/script&gt;" in text and "class &lt;3&gt;" in text
    assert 'data-better="lower"' in text and "AD@100% ↓" in text and "IC@100% ↑" in text
    assert os.path.isfile(tmp_path / "page" / "figure_0.png")
    assert sorted(os.listdir(tmp_path / "page" / "maps")) == [
        "000_00.png", "000_01.png", "000_image.png", "001_00.png", "001_01.png", "001_image.png",
    ]  # fmt: skip


def test_explain_command_writes_the_page_with_imagenet_names(make_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _write_images(str(folder), ["x.png"])
    model = make_model("ResNet50_L_CAM_Fm", num_classes=1000)
    checkpoint = save_checkpoint(make_checkpoint(model, 1, 1), tmp_path / "run" / "lcam_epoch_1_glo_step_1.pth.tar")
    argv = [
        "--arch", "ResNet50_L_CAM_Fm", "--restore_from", checkpoint, "--backbone_weights", "none",
        "--input", str(folder), "--output_dir", str(tmp_path / "png"), "--html", str(tmp_path / "page"),
        "--input_size", "40", "--crop_size", str(CROP), "--device", "cpu",
    ]  # fmt: skip
    run = run_cli(main, get_args_parser(), argv)
    index = read_report_data(tmp_path / "page")
    assert run.page == str(tmp_path / "page" / "index.html") and len(index["classes"]) == 1000
    assert index["classes"][281] == "tabby" and index["images"][0]["name"] == "x.png"
    assert read_image_data(tmp_path / "page", index["images"][0])["maps"].shape == (1000, 1, 1)


def test_unwritable_html_folder_fails_in_one_line_before_any_work(tmp_path, run_command):
    (tmp_path / "taken").write_text("a file")
    argv = ["--input", str(tmp_path), "--output_dir", str(tmp_path / "png"), "--html", str(tmp_path / "taken" / "page")]
    status, out, err = run_command(main, get_args_parser(), argv)
    assert status == 2 and out == ""
    assert "(--html)" in err and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


# --- in the browser ---


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's ``chromium``) driven by Playwright for Python. Skipped
    where either is missing, except in CI (``CI`` set), whose script installs both: there a
    missing browser fails, so the browser tests cannot pass by being skipped."""
    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    if CHROMIUM is None:
        missing("no chromium executable on PATH (apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        missing("Playwright for Python is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser):
    """``open_page(path)``: a new tab on ``file://path``; page errors and dialogs collected
    in ``tab.problems``."""
    tabs = []

    def open_(path, ready="ready"):
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        tab.problems = []
        tab.on("pageerror", lambda error: tab.problems.append(f"error: {error}"))
        tab.on("dialog", lambda dialog: (tab.problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        tab.goto("file://" + os.path.abspath(path))
        if ready:
            tab.wait_for_function(f"document.body.dataset.state === {ready!r}", timeout=15000)
        tabs.append(tab)
        return tab

    yield open_
    for tab in tabs:
        tab.close()


def _canvas_pixels(tab, panel="a") -> np.ndarray:
    values = tab.evaluate(
        f"""() => {{
        const canvas = document.querySelector('#panel-{panel} canvas');
        return Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data);
    }}"""
    )
    return np.asarray(values, dtype=np.int16).reshape(CROP, CROP, 4)[..., :3]


def _card(tab, name):
    return tab.locator(".card", has=tab.locator(".card-name", has_text=name)).first


def _shows(tab, image, k, panel="a"):
    tab.wait_for_function(
        f"""() => {{ const c = document.querySelector('#panel-{panel} canvas');
        return document.body.dataset.state === 'ready' && c.dataset.image === '{image}' && c.dataset.class === '{k}'; }}""",
        timeout=15000,
    )


def test_picked_class_is_drawn_as_python_draws_it(tiny_run, open_page):
    _, run, page = tiny_run
    entries = read_report_data(page)["images"]
    number = next(i for i, entry in enumerate(entries) if entry["name"] == "d.png")
    item = run.explanations[-1]
    k = next(k for k in range(NUM_CLASSES) if k not in item.classes[:1])
    tab = open_page(os.path.join(page, "index.html"))
    _card(tab, "d.png").click()
    _shows(tab, number, item.classes[0])
    tab.fill("#panel-a .search", "</script><i>")  # a class by (part of) its name
    tab.select_option("#panel-a .picker", str(2))
    _shows(tab, number, 2)
    tab.fill("#panel-a .search", "")
    tab.select_option("#panel-a .picker", str(k))
    _shows(tab, number, k)
    data = read_image_data(page, entries[number])
    picture = torch.from_numpy(np.asarray(data["image"], dtype=np.float32) / 255).permute(2, 0, 1)
    expected = np.asarray(render_overlay(picture, data["maps"][k]), dtype=np.int16)
    drawn = _canvas_pixels(tab)
    assert np.array_equal(drawn, expected)  # the same float32 arithmetic, to the bit
    caption = tab.inner_text("#panel-a .caption")
    assert caption.startswith(f"{CLASS_NAMES[k]} ({k}): p = ")
    assert float(caption.split("p = ")[1]) == pytest.approx(float(data["probabilities"][k]), abs=1e-3)
    top_png = item.files[0]  # the PNG overlay of its top class, against the page's
    tab.select_option("#panel-a .picker", str(item.classes[0]))
    _shows(tab, number, item.classes[0])
    with Image.open(top_png) as written:
        difference = np.abs(_canvas_pixels(tab) - np.asarray(written, dtype=np.int16))
    assert difference.mean() < 0.5 and difference.max() <= 8
    assert tab.problems == []


def test_switching_images_and_comparing_two_classes(tiny_run, open_page):
    _, run, page = tiny_run
    entries = read_report_data(page)["images"]
    tab = open_page(os.path.join(page, "index.html"))
    first = next(i for i, entry in enumerate(entries) if "failed" not in entry)
    _shows(tab, first, entries[first]["top"][0][0])
    before = _canvas_pixels(tab)
    last = len(entries) - 1
    _card(tab, entries[last]["name"]).click()
    _shows(tab, last, entries[last]["top"][0][0])
    assert tab.inner_text("#image-title") == entries[last]["name"]
    assert not np.array_equal(_canvas_pixels(tab), before)
    assert tab.is_hidden("#panel-b")
    tab.check("#compare")
    second = entries[last]["top"][1][0]
    _shows(tab, last, second, panel="b")
    assert tab.is_visible("#panel-b") and not np.array_equal(_canvas_pixels(tab, "b"), _canvas_pixels(tab, "a"))
    tab.fill("#alpha", "0")  # opacity 0: the crop itself
    tab.wait_for_function("document.querySelector('#panel-a canvas').dataset.alpha === '0'")
    data = read_image_data(page, entries[last])
    assert np.array_equal(_canvas_pixels(tab), np.asarray(data["image"], dtype=np.int16))
    assert tab.problems == []


def test_hostile_names_are_text_and_unreadable_image_is_named(tiny_run, open_page):
    _, _, page = tiny_run
    tab = open_page(os.path.join(page, "index.html"))
    for name in HOSTILE:
        _card(tab, name).click()
        tab.wait_for_function(f"document.getElementById('image-title').textContent === {name!r}")
    assert tab.evaluate("window.pwned") is None
    assert tab.locator("img[src='x'], b, i, nav script").count() == 0  # no markup from names
    assert "tabby <b>cat</b>" in tab.inner_text("#panel-a .picker")
    _card(tab, "broken.png").click()
    tab.wait_for_function("document.body.dataset.state === 'failed'")
    assert "could not be read: UnidentifiedImageError" in tab.inner_text("#message")
    assert "could not read" in _card(tab, "broken.png").inner_text()
    assert tab.problems == []


def test_missing_data_file_is_reported_in_the_page(tiny_run, open_page, tmp_path):
    _, _, page = tiny_run
    copy = shutil.copytree(page, tmp_path / "page")
    entries = read_report_data(copy)["images"]
    os.remove(os.path.join(copy, entries[-1]["data"]))
    tab = open_page(os.path.join(copy, "index.html"))
    _card(tab, entries[-1]["name"]).click()
    tab.wait_for_function("document.body.dataset.state === 'failed'")
    assert "The data of this image are missing: cannot load " + entries[-1]["data"] in tab.inner_text("#message")
    _card(tab, "a.png").click()  # the other images still work
    tab.wait_for_function("document.body.dataset.state === 'ready'")
    assert tab.problems == []


def test_comparison_table_sorts_by_a_clicked_column(tmp_path, open_page):
    rows = [["vgg16", "L-CAM", 10.5, 3.0], ["vgg16", "gradcam", 20.25, 9.0], ["vgg16", "rise", 2.0, 1.0]]
    page = write_comparison_report(tmp_path, ["backbone", "method", "AD@100%", "IC@100%"], rows)
    tab = open_page(page, ready=None)

    def methods():
        return tab.locator("table.metrics tbody tr td:nth-child(2)").all_inner_texts()

    assert methods() == ["L-CAM", "gradcam", "rise"]
    tab.click("th:nth-child(3) button")
    assert methods() == ["rise", "L-CAM", "gradcam"]  # AD ascending: the best first
    tab.click("th:nth-child(3) button")
    assert methods() == ["gradcam", "L-CAM", "rise"]
    tab.click("th:nth-child(4) button")
    assert methods() == ["rise", "L-CAM", "gradcam"]
    assert tab.get_attribute("th:nth-child(4)", "aria-sort") == "ascending"
    assert tab.inner_text("th:nth-child(3)").startswith("AD@100% ↓")
    assert tab.problems == []
