"""How big is the explanation web page, and how fast does it open? A page of ``--images``
synthetic ImageNet-sized crops with every class's map (``--classes`` maps of ``--cam`` x
``--cam`` each), built by :class:`utils.evaluation.html_report.ExplanationReport`, then
opened in headless Chromium from the file system ``--loads`` times.

    python -m bench.html_report                                  # 100 images, 1000 classes, 14 x 14, 224 px
    python -m bench.html_report --images 8 --classes 10 --loads 1 --output runs/html_report.json

Figures: the page's size on disk (all files; per image: its data file and thumbnail), and per
load the time from navigation until the first image's chosen map is drawn (the page's own
``performance.now()`` at that moment, which counts from navigation start), then the time to
switch to another image (load its data file, draw) and to pick another class (draw). The crops
are smooth random pictures with some noise (a PNG of about the size of a photo's); the maps
smooth random fields. Needs Chromium (``--chromium``, default the one on PATH) and Playwright
for Python; without them only the size is measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from utils.core.cli import positive_int
from utils.core.files import write_json
from utils.evaluation.explanations import class_names_for
from utils.evaluation.html_report import ExplanationReport, quantize_maps


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), add_help=add_help)
    parser.add_argument("--images", type=positive_int, default=100, help="images in the page")
    parser.add_argument("--classes", type=positive_int, default=1000, help="classes (1000: ImageNet's names)")
    parser.add_argument("--cam", type=positive_int, default=14, help="side of each CAM")
    parser.add_argument("--crop", type=positive_int, default=224, help="side of each crop")
    parser.add_argument("--loads", type=positive_int, default=5, help="times the page is opened")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "", help="the browser's executable")
    parser.add_argument("--page_dir", default="", help="build the page here and keep it [a temporary folder]")
    parser.add_argument("--output", default="", help="also write the figures to this JSON file")
    return parser


def build_page(folder: str, images: int, classes: int, cam: int, crop: int, seed: int = 0) -> str:
    """Write a page of synthetic data under ``folder``; returns the path of ``index.html``."""
    generator = torch.Generator().manual_seed(seed)
    report = ExplanationReport(folder, class_names_for(classes))
    for number in range(images):
        coarse = torch.rand(1, 3, 8, 8, generator=generator)
        picture = F.interpolate(coarse, size=(crop, crop), mode="bicubic", align_corners=False)[0]
        picture = (picture + 0.08 * torch.randn(picture.shape, generator=generator)).clamp(0, 1)
        fields = F.interpolate(torch.randn(1, classes, 4, 4, generator=generator), size=(cam, cam), mode="bilinear")
        probabilities = torch.randn(classes, generator=generator).mul(3).softmax(0)
        top = probabilities.topk(min(3, classes)).indices.tolist()
        report.add_image(f"synthetic/{number:05d}.JPEG", -1, picture, quantize_maps(fields)[0], probabilities, top)
    return report.write_index()


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(path, name)) for path, _, names in os.walk(folder) for name in names)


def measure_loads(page: str, chromium: str, loads: int) -> dict[str, list[float]]:
    """Seconds to open ``page`` until its first map is drawn, to switch image, to pick a class."""
    from playwright.sync_api import sync_playwright

    timings: dict[str, list[float]] = {
        "open_s": [],
        "open_wall_s": [],
        "switch_image_s": [],
        "pick_class_s": [],
        "pick_class_render_s": [],
    }
    ready = "document.body.dataset.state === 'ready' && document.querySelector('#panel-a canvas').dataset.{} === '{}'"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for _ in range(loads):
                tab = browser.new_page(viewport={"width": 1280, "height": 900})
                start = time.perf_counter()
                tab.goto("file://" + os.path.abspath(page))
                tab.wait_for_function("window.lcamReportFirstRender !== undefined", timeout=60000)
                timings["open_wall_s"].append(time.perf_counter() - start)
                timings["open_s"].append(tab.evaluate("window.lcamReportFirstRender") / 1000)
                start = time.perf_counter()
                tab.click(".card:nth-child(2)")
                tab.wait_for_function(ready.format("image", 1), timeout=60000)
                timings["switch_image_s"].append(time.perf_counter() - start)
                start = time.perf_counter()
                tab.select_option("#panel-a .picker", index=5)
                tab.wait_for_function(
                    f"document.querySelector('#panel-a canvas').dataset.class === {tab.input_value('#panel-a .picker')!r}"
                )
                timings["pick_class_s"].append(time.perf_counter() - start)
                timings["pick_class_render_s"].append(float(tab.evaluate("document.body.dataset.renderMs")) / 1000)
                tab.close()
        finally:
            browser.close()
    return timings


def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.page_dir or os.path.join(scratch, "page")
        start = time.perf_counter()
        page = build_page(folder, args.images, args.classes, args.cam, args.crop)
        figures: dict = {
            "images": args.images,
            "classes": args.classes,
            "cam": args.cam,
            "crop": args.crop,
            "build_s": round(time.perf_counter() - start, 2),
            "total_mb": round(_folder_bytes(folder) / 1e6, 2),
            "data_file_kb": round(os.path.getsize(os.path.join(folder, "data", "0000.js")) / 1e3, 1),
            "thumbnail_kb": round(os.path.getsize(os.path.join(folder, "thumbs", "0000.jpg")) / 1e3, 1),
            "index_kb": round(os.path.getsize(os.path.join(folder, "report_index.js")) / 1e3, 1),
        }
        print(
            f"page of {args.images} images x {args.classes} classes ({args.cam} x {args.cam} maps, {args.crop} px): "
            f"{figures['total_mb']} MB ({figures['data_file_kb']} kB data + {figures['thumbnail_kb']} kB thumbnail "
            f"per image, {figures['index_kb']} kB index), built in {figures['build_s']} s"
        )
        if args.chromium and os.path.exists(args.chromium):
            timings = measure_loads(page, args.chromium, args.loads)
            for name, values in timings.items():
                figures[name] = {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}
                print(f"{name}: median {figures[name]['median']} s, max {figures[name]['max']} s over {len(values)}")
        else:
            print("no chromium: load time not measured (apt-get install chromium; pip install playwright)")
    if args.output:
        write_json(args.output, figures, indent=1)
    return figures


if __name__ == "__main__":
    main(get_args_parser().parse_args())
