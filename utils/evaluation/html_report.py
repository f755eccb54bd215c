"""Browsable static web pages of explanations (every class's map of each image) and of comparisons (sortable table, figures, maps).

Both pages open from the file system (``file://``) in any current browser: no server, no
network, no third-party code. The scripts and styles are the project's own
(``utils/evaluation/report_assets``), copied next to ``index.html``; the data travel as
``.js`` files that call a function of the page (browsers refuse ``fetch`` of local files).

The explanation page (:class:`ExplanationReport`) stores per image, from the one forward
pass, every class's CAM min-max normalised to [0, 1] at the CAM's resolution (h x w) and
quantised to 8 bits (``round(255 * map)``), the softmax probabilities of every class and
the crop (PNG). The browser upsamples the chosen class's map to the crop's size with the
arithmetic of :func:`utils.explainers.maps.upsample_bilinear` (float32, emulated with
``Math.fround``), colours it with the colormap's lookup table from matplotlib and blends it
with the crop as :func:`utils.evaluation.visualize.overlay` does; :func:`render_overlay` is
the same computation in Python. The page therefore shows the PNG overlays of
``scripts.explain`` up to the 8-bit quantisation of the map (at most half a step of 1/255
before upsampling), and :func:`render_overlay`'s pixels exactly.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image

from utils.core.errors import UserValueError
from utils.core.files import atomic_open
from utils.evaluation.visualize import overlay, to_pil
from utils.explainers.maps import minmax_normalize, upsample_bilinear

__all__ = [
    "ASSETS_DIR",
    "ExplanationReport",
    "better_direction",
    "colormap_table",
    "dequantize_maps",
    "quantize_maps",
    "read_report_data",
    "read_image_data",
    "render_overlay",
    "write_comparison_report",
]

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report_assets")
_THUMBNAIL_SIDE = 112
_INDEX_CALLBACK = "lcamReportIndex"
_IMAGE_CALLBACK = "lcamReportImage"


def quantize_maps(cams: torch.Tensor) -> torch.Tensor:
    """``round(255 * minmax(cam))`` as uint8 for N x K x h x w raw CAMs (each of the N * K
    maps min-max normalised on its own, as :func:`utils.evaluation.normalize_and_upsample`
    does before upsampling)."""
    if cams.dim() != 4:
        raise UserValueError(f"'cams' must be N x K x h x w, got shape {tuple(cams.shape)}")
    normalized = minmax_normalize(cams.float().reshape(-1, *cams.shape[-2:])).reshape(cams.shape)
    return torch.round(normalized * 255).to(torch.uint8)


def dequantize_maps(quantized: torch.Tensor) -> torch.Tensor:
    """The float32 maps in [0, 1] the page shows for uint8 ``quantized`` maps (``q / 255``)."""
    return quantized.float() / 255


def render_overlay(
    image: torch.Tensor, quantized_map: torch.Tensor, alpha: float = 0.5, colormap: str = "jet"
) -> Image.Image:
    """The overlay the page draws for one class: the h x w uint8 map dequantised, upsampled
    bilinearly to the 3 x H x W crop's size and blended with it
    (:func:`utils.evaluation.visualize.overlay`)."""
    saliency = upsample_bilinear(dequantize_maps(quantized_map)[None, None], image.shape[-2:])[0, 0]
    return overlay(image, saliency, alpha, colormap)


def colormap_table(colormap: str) -> list[list[float]]:
    """The colormap's lookup table (N entries of RGB in [0, 1], as float32 values), the
    colours :func:`utils.evaluation.visualize.heatmap` picks from."""
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError as error:
        raise UserValueError(f"unknown colormap {colormap!r}; e.g. jet, turbo, viridis, inferno, magma") from error
    table = cmap(np.arange(cmap.N))[:, :3].astype(np.float32)
    return [[float(value) for value in row] for row in table]


def better_direction(column: str) -> str | None:
    """``"lower"``, ``"higher"`` or None: which values of a comparison table's column are
    better (AD, deletion AUC, ROAD MoRF: lower; IC, insertion AUC, ROAD LeRF and combined,
    speeds: higher)."""
    name = column.lower()
    if name.startswith("ad@") or "deletion" in name or "morf" in name or "↓" in column:
        return "lower"
    if name.startswith("ic@") or "insertion" in name or "lerf" in name or "combined" in name or "img/s" in name:
        return "higher"
    if "↑" in column:
        return "higher"
    return None


def _script_json(value: Any) -> str:
    """JSON that is safe inside a script (no ``</script>``, no HTML comment start)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def _write_callback_file(path: str, callback: str, *arguments: Any) -> None:
    with atomic_open(path) as handle:
        handle.write(f"{callback}({','.join(_script_json(argument) for argument in arguments)});\n")


def _read_callback_file(path: str | os.PathLike, callback: str) -> list[Any]:
    with open(path, encoding="utf-8") as handle:
        text = handle.read().strip()
    prefix = f"{callback}("
    if not text.startswith(prefix) or not text.endswith(");"):
        raise UserValueError(f"{path}: not a report data file of {callback}")
    return json.loads(f"[{text[len(prefix) : -2]}]")


def _png_data_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _copy_assets(output_dir: str, names: Sequence[str]) -> None:
    for name in names:
        shutil.copyfile(os.path.join(ASSETS_DIR, name), os.path.join(output_dir, name))


def _page(title: str, body: str, scripts: Sequence[str]) -> str:
    tags = "\n".join(f'<script src="{html.escape(script)}"></script>' for script in scripts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        '<link rel="stylesheet" href="report.css">\n</head>\n'
        f"<body>\n{body}\n{tags}\n</body>\n</html>\n"
    )


class ExplanationReport:
    """Writes the browsable explanation page of a run under ``output_dir``:
    ``index.html``, ``report.js``/``report.css`` (the page), ``report_index.js`` (the
    class names, the colormap, and per image its name, top-k classes and probabilities, or
    why it could not be read), per image ``data/NNNN.js`` (the crop, every class's
    quantised map and every probability: about ``K * h * w`` bytes, base64) and
    ``thumbs/NNNN.jpg`` (the gallery's thumbnail).

    :func:`utils.evaluation.explanations.explain_images` feeds it (its ``report`` option):
    :meth:`add_image` per explained image, :meth:`add_failure` per unreadable one,
    :meth:`write_index` after each batch (so an interrupted run leaves a page of what it
    did).

    Args:
        output_dir: the page's folder (created).
        class_names: one name per class.
        alpha: the opacity the page starts with.
        colormap: a matplotlib colormap, the overlays' (``jet``).
        title: the page's title.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        alpha: float = 0.5,
        colormap: str = "jet",
        title: str = "L-CAM explanations",
    ) -> None:
        if not 0 <= alpha <= 1:
            raise UserValueError(f"'alpha' must be in [0, 1], got {alpha!r}")
        self.output_dir = os.fspath(output_dir)
        self.class_names = [str(name) for name in class_names]
        self.alpha = float(alpha)
        self.colormap = colormap
        self.title = title
        self._lut = colormap_table(colormap)
        self._entries: list[dict[str, Any]] = []
        self._shapes: dict[str, list[int]] = {}
        for folder in ("data", "thumbs"):
            os.makedirs(os.path.join(self.output_dir, folder), exist_ok=True)
        _copy_assets(self.output_dir, ("report.js", "report.css"))
        with atomic_open(os.path.join(self.output_dir, "index.html")) as handle:
            handle.write(_page(title, '<div id="app">Loading the report…</div>', ["report.js", "report_index.js"]))

    @property
    def index_path(self) -> str:
        return os.path.join(self.output_dir, "index.html")

    def add_image(
        self,
        path: str,
        label: int,
        image: torch.Tensor,
        quantized_maps: torch.Tensor,
        probabilities: torch.Tensor,
        topk: Sequence[int],
    ) -> None:
        """One explained image: its 3 x H x W crop in [0, 1], every class's K x h x w uint8
        map (:func:`quantize_maps`), its K probabilities and the classes listed in the
        gallery (its top-k)."""
        num_classes = len(self.class_names)
        if quantized_maps.dtype != torch.uint8 or quantized_maps.dim() != 3 or len(quantized_maps) != num_classes:
            raise UserValueError(
                f"'quantized_maps' must be uint8 K x h x w with K = {num_classes}, got "
                f"{quantized_maps.dtype} {tuple(quantized_maps.shape)}"
            )
        if probabilities.numel() != num_classes:
            raise UserValueError(f"{probabilities.numel()} probabilities for {num_classes} classes")
        number = len(self._entries)
        picture = to_pil(image)
        data_file = f"data/{number:04d}.js"
        thumb_file = f"thumbs/{number:04d}.jpg"
        probabilities = probabilities.detach().float().cpu().contiguous()
        payload = {
            "image": _png_data_uri(picture),
            "maps": base64.b64encode(quantized_maps.cpu().contiguous().numpy().tobytes()).decode("ascii"),
            "probabilities": base64.b64encode(probabilities.numpy().astype("<f4").tobytes()).decode("ascii"),
        }
        _write_callback_file(os.path.join(self.output_dir, data_file), _IMAGE_CALLBACK, number, payload)
        thumbnail = picture.copy()
        thumbnail.thumbnail((_THUMBNAIL_SIDE, _THUMBNAIL_SIDE))
        thumbnail.save(os.path.join(self.output_dir, thumb_file), quality=85)
        self._shapes = {"crop": list(image.shape[-2:]), "cam": list(quantized_maps.shape[-2:])}
        self._entries.append(
            {
                "name": os.path.basename(path),
                "path": path,
                "label": int(label),
                "top": [[int(index), float(probabilities[index])] for index in topk],
                "data": data_file,
                "thumb": thumb_file,
            }
        )

    def add_failure(self, path: str, reason: str) -> None:
        """An image that could not be read: shown in the gallery with its name and why."""
        self._entries.append({"name": os.path.basename(path), "path": path, "failed": str(reason)})

    def write_index(self) -> str:
        """(Re)write ``report_index.js``; returns the path of ``index.html``."""
        index = {
            "title": self.title,
            "classes": self.class_names,
            "named": any(name != str(number) for number, name in enumerate(self.class_names)),
            "colormap": {"name": self.colormap, "table": self._lut},
            "alpha": self.alpha,
            **self._shapes,
            "images": self._entries,
        }
        _write_callback_file(os.path.join(self.output_dir, "report_index.js"), _INDEX_CALLBACK, index)
        return self.index_path


def read_report_data(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The index of an explanation page (what ``report_index.js`` holds), as a dict."""
    return _read_callback_file(os.path.join(os.fspath(output_dir), "report_index.js"), _INDEX_CALLBACK)[0]


def read_image_data(output_dir: str | os.PathLike, entry: Mapping[str, Any]) -> dict[str, Any]:
    """One image's data of an explanation page: ``image`` (PIL), ``maps`` (K x h x w uint8
    tensor) and ``probabilities`` (K float32), decoded as the page decodes them."""
    index = read_report_data(output_dir)
    _, payload = _read_callback_file(os.path.join(os.fspath(output_dir), entry["data"]), _IMAGE_CALLBACK)
    encoded = payload["image"].split(",", 1)[1]
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    image.load()
    maps = np.frombuffer(base64.b64decode(payload["maps"]), dtype=np.uint8)
    probabilities = np.frombuffer(base64.b64decode(payload["probabilities"]), dtype="<f4")
    return {
        "image": image,
        "maps": torch.from_numpy(maps.copy()).view(len(index["classes"]), *index["cam"]),
        "probabilities": torch.from_numpy(probabilities.copy()),
    }


def write_comparison_report(
    output_dir: str | os.PathLike,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    figures: Sequence[tuple[str, str]] = (),
    images: torch.Tensor | None = None,
    maps: Sequence[torch.Tensor] = (),
    method_titles: Sequence[str] = (),
    map_titles: Sequence[Sequence[str]] | None = None,
    note: str = "",
    title: str = "L-CAM comparison",
) -> str:
    """Write the comparison page ``output_dir/index.html``: the metrics table (sortable by
    any column in the browser; each column's better direction shown), the ``figures``
    (``(title, PNG path)``, copied next to the page) and, per image of ``images`` (N x 3 x
    H x W in [0, 1]), a row of every method's map (``maps``: per method N x 1 x H x W or N
    x H x W in [0, 1]) overlaid on it. Returns the page's path."""
    if len(maps) != len(method_titles):
        raise UserValueError(f"{len(maps)} methods' maps for {len(method_titles)} titles")
    output_dir = os.fspath(output_dir)
    os.makedirs(os.path.join(output_dir, "maps"), exist_ok=True)
    _copy_assets(output_dir, ("report.css", "table.js"))
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts.append(_table_html(header, rows))
    parts.append('<p class="note">↓: lower is better, ↑: higher is better. Click a column\'s name to sort by it.</p>')
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    for number, (figure_title, path) in enumerate(figures):
        name = f"figure_{number}{os.path.splitext(path)[1]}"
        shutil.copyfile(path, os.path.join(output_dir, name))
        parts.append(
            f'<figure><img src="{name}" alt="{html.escape(figure_title)}">'
            f"<figcaption>{html.escape(figure_title)}</figcaption></figure>"
        )
    if images is not None and len(maps):
        parts.append(_maps_html(output_dir, images.detach().cpu(), maps, method_titles, map_titles))
    path = os.path.join(output_dir, "index.html")
    with atomic_open(path) as handle:
        handle.write(_page(title, '<main class="comparison">\n' + "\n".join(parts) + "\n</main>", ["table.js"]))
    return path


def _table_html(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = []
    for column in header:
        better = better_direction(column)
        mark = "" if "↓" in column or "↑" in column else {"lower": " ↓", "higher": " ↑"}.get(better, "")
        hint = f"{better} is better; click to sort" if better else "click to sort"
        attribute = f' data-better="{better}"' if better else ""
        cells.append(
            f'<th{attribute} title="{hint}"><button type="button">{html.escape(str(column))}{mark}</button></th>'
        )
    lines = ['<table class="metrics sortable">', "<thead><tr>" + "".join(cells) + "</tr></thead>", "<tbody>"]
    for row in rows:
        lines.append(
            "<tr>"
            + "".join(f'<td data-value="{html.escape(str(cell))}">{html.escape(str(cell))}</td>' for cell in row)
            + "</tr>"
        )
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _maps_html(
    output_dir: str,
    images: torch.Tensor,
    maps: Sequence[torch.Tensor],
    method_titles: Sequence[str],
    map_titles: Sequence[Sequence[str]] | None,
) -> str:
    head = "<th>image</th>" + "".join(f"<th>{html.escape(title)}</th>" for title in method_titles)
    lines = ["<h2>Maps</h2>", '<table class="maps">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for row, image in enumerate(images):
        name = f"maps/{row:03d}_image.png"
        to_pil(image).save(os.path.join(output_dir, name))
        cells = [f'<td><img src="{name}" alt="image {row}"></td>']
        for column, method_maps in enumerate(maps):
            name = f"maps/{row:03d}_{column:02d}.png"
            overlay(image, method_maps[row]).save(os.path.join(output_dir, name))
            caption = html.escape(map_titles[column][row]) if map_titles is not None else ""
            cells.append(f'<td><img src="{name}" alt="{html.escape(method_titles[column])}"><br>{caption}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)
