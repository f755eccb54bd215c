// The explanation page of L-CAM's report (utils/evaluation/html_report.py writes its data).
// No library, no network: report_index.js and data/NNNN.js call lcamReportIndex and
// lcamReportImage. A class's map is upsampled, coloured and blended here with the float32
// arithmetic of utils.explainers.maps.upsample_bilinear and utils.evaluation.visualize.overlay.
"use strict";
(function () {
  const f32 = Math.fround;
  let report = null;
  const loaded = new Map(); // image number -> decoded data
  const waiting = new Map(); // image number -> [resolve, reject]
  const state = { image: -1, classes: [0, 0], compare: false, alpha: 0.5 };
  const ui = {};

  window.lcamReportIndex = function (data) {
    report = data;
  };

  window.lcamReportImage = function (number, payload) {
    const image = new Image();
    image.src = payload.image;
    const decoded = image.decode().then(function () {
      return {
        picture: pixelsOf(image),
        maps: bytesOf(payload.maps),
        probabilities: new Float32Array(bytesOf(payload.probabilities).buffer),
      };
    });
    const pending = waiting.get(number);
    if (pending) {
      waiting.delete(number);
      decoded.then(pending[0], pending[1]);
    }
  };

  function bytesOf(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  function pixelsOf(image) {
    const canvas = document.createElement("canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    return context.getImageData(0, 0, canvas.width, canvas.height).data;
  }

  function imageData(number) {
    if (loaded.has(number)) return loaded.get(number);
    const promise = new Promise(function (resolve, reject) {
      waiting.set(number, [resolve, reject]);
      const script = document.createElement("script");
      script.src = report.images[number].data;
      script.onerror = function () {
        waiting.delete(number);
        reject(new Error("cannot load " + report.images[number].data));
      };
      document.head.appendChild(script);
    });
    loaded.set(number, promise);
    promise.catch(function () {
      loaded.delete(number);
    });
    return promise;
  }

  // --- the arithmetic of upsample_bilinear (align_corners=False), in float32 ---
  function sourcePositions(inSize, outSize) {
    const scale = f32(inSize / outSize);
    const lower = new Int32Array(outSize);
    const upper = new Int32Array(outSize);
    const lowerWeight = new Float32Array(outSize);
    const upperWeight = new Float32Array(outSize);
    for (let i = 0; i < outSize; i++) {
      let source = f32(f32(f32(i + 0.5) * scale) - 0.5);
      if (source < 0) source = 0;
      const low = Math.min(Math.floor(source), inSize - 1);
      const high = Math.min(low + 1, inSize - 1);
      const weight = high > low ? f32(source - low) : 0;
      lower[i] = low;
      upper[i] = high;
      upperWeight[i] = weight;
      lowerWeight[i] = f32(1 - weight);
    }
    return { lower: lower, upper: upper, lowerWeight: lowerWeight, upperWeight: upperWeight };
  }

  function upsampled(quantized, h, w, H, W) {
    const values = new Float32Array(h * w);
    for (let i = 0; i < h * w; i++) values[i] = f32(quantized[i] / 255);
    const rows = sourcePositions(h, H);
    const cols = sourcePositions(w, W);
    const alongWidth = new Float32Array(h * W);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < W; x++) {
        alongWidth[y * W + x] = f32(
          f32(values[y * w + cols.lower[x]] * cols.lowerWeight[x]) +
            f32(values[y * w + cols.upper[x]] * cols.upperWeight[x])
        );
      }
    }
    const out = new Float32Array(H * W);
    for (let y = 0; y < H; y++) {
      const low = rows.lower[y] * W;
      const high = rows.upper[y] * W;
      for (let x = 0; x < W; x++) {
        out[y * W + x] = f32(
          f32(alongWidth[low + x] * rows.lowerWeight[y]) + f32(alongWidth[high + x] * rows.upperWeight[y])
        );
      }
    }
    return out;
  }

  function roundHalfEven(value) {
    const rounded = Math.round(value);
    return value - Math.floor(value) === 0.5 && rounded % 2 !== 0 ? rounded - 1 : rounded;
  }

  // overlay(): (1 - alpha) * picture + alpha * colormap(map), rounded to 8 bits
  function blend(picture, saliency, alpha, H, W) {
    const table = report.colormap.table;
    const size = table.length;
    const keep = f32(1 - alpha);
    const mix = f32(alpha);
    const out = new ImageData(W, H);
    for (let i = 0; i < H * W; i++) {
      const value = Math.min(Math.max(saliency[i], 0), 1);
      let position = f32(value * size);
      if (position === size) position = size - 1;
      const colour = table[Math.min(Math.trunc(position), size - 1)];
      for (let c = 0; c < 3; c++) {
        const pixel = f32(picture[4 * i + c] / 255);
        let mixed = f32(f32(keep * pixel) + f32(mix * colour[c]));
        mixed = Math.min(Math.max(mixed, 0), 1);
        out.data[4 * i + c] = roundHalfEven(f32(mixed * 255));
      }
      out.data[4 * i + 3] = 255;
    }
    return out;
  }

  // --- the page ---
  function element(tag, attributes, children) {
    const node = document.createElement(tag);
    for (const key in attributes || {}) {
      if (key === "text") node.textContent = attributes[key];
      else if (key === "className") node.className = attributes[key];
      else node.setAttribute(key, attributes[key]);
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  function className(k) {
    const name = report.classes[k];
    return report.named ? name + " (" + k + ")" : "class " + k;
  }

  function formatProbability(p) {
    return p >= 0.001 ? p.toFixed(3) : p.toExponential(1);
  }

  function buildGallery() {
    const list = element("ol", { className: "gallery", id: "gallery" });
    report.images.forEach(function (entry, number) {
      const card = element("li", { className: "card", "data-number": String(number), tabindex: "0" });
      card.appendChild(element("div", { className: "card-name", text: entry.name, title: entry.path }));
      if (entry.failed) {
        card.classList.add("failed");
        card.appendChild(element("div", { className: "failure", text: "could not read: " + entry.failed }));
      } else {
        card.appendChild(element("img", { src: entry.thumb, alt: entry.name, loading: "lazy" }));
        const top = element("ol", { className: "top" });
        for (const [k, p] of entry.top) top.appendChild(element("li", { text: className(k) + " " + formatProbability(p) }));
        card.appendChild(top);
      }
      card.addEventListener("click", function () {
        selectImage(number);
      });
      card.addEventListener("keydown", function (event) {
        if (event.key === "Enter") selectImage(number);
      });
      list.appendChild(card);
    });
    return list;
  }

  function buildPanel(side) {
    const search = element("input", {
      type: "search",
      className: "search",
      placeholder: report.named ? "search a class by name or index" : "search a class by index",
      "aria-label": "search class " + "AB"[side],
    });
    const picker = element("select", { className: "picker", size: "8", "aria-label": "class " + "AB"[side] });
    const canvas = element("canvas", { className: "overlay" });
    const caption = element("div", { className: "caption" });
    const panel = element("section", { className: "panel", id: "panel-" + "ab"[side] }, [
      search,
      picker,
      canvas,
      caption,
    ]);
    search.addEventListener("input", function () {
      fillPicker(side);
    });
    picker.addEventListener("change", function () {
      if (picker.value !== "") pickClass(side, Number(picker.value));
    });
    return { panel: panel, search: search, picker: picker, canvas: canvas, caption: caption };
  }

  function buildLegend() {
    const canvas = element("canvas", { className: "legend", width: "256", height: "12" });
    const context = canvas.getContext("2d");
    const table = report.colormap.table;
    for (let x = 0; x < 256; x++) {
      const colour = table[Math.min(Math.floor((x / 256) * table.length), table.length - 1)];
      context.fillStyle = "rgb(" + colour.map((v) => Math.round(v * 255)).join(",") + ")";
      context.fillRect(x, 0, 1, 12);
    }
    return element("span", { className: "legend-box" }, [
      element("span", { text: "0" }),
      canvas,
      element("span", { text: "1 (" + report.colormap.name + ", each map min-max normalised)" }),
    ]);
  }

  function build(app) {
    app.textContent = "";
    const readable = report.images.filter((entry) => !entry.failed).length;
    const summary =
      readable + " image(s), " + (report.images.length - readable) + " unreadable, " + report.classes.length + " classes";
    ui.alpha = element("input", { type: "range", min: "0", max: "1", step: "0.05", id: "alpha", "aria-label": "opacity" });
    ui.alpha.value = String(state.alpha);
    ui.alpha.addEventListener("input", function () {
      state.alpha = Number(ui.alpha.value);
      render();
    });
    ui.compare = element("input", { type: "checkbox", id: "compare" });
    ui.compare.addEventListener("change", function () {
      state.compare = ui.compare.checked;
      render();
    });
    ui.title = element("h2", { id: "image-title" });
    ui.message = element("div", { className: "message", id: "message" });
    ui.top = element("div", { className: "top-classes", id: "top-classes" });
    ui.panels = [buildPanel(0), buildPanel(1)];
    const controls = element("div", { className: "controls" }, [
      element("label", { text: "opacity " }, [ui.alpha]),
      element("label", {}, [ui.compare, document.createTextNode(" compare two classes side by side")]),
      buildLegend(),
    ]);
    const viewer = element("main", { className: "viewer" }, [
      ui.title,
      ui.message,
      ui.top,
      controls,
      element("div", { className: "panels" }, [ui.panels[0].panel, ui.panels[1].panel]),
    ]);
    const header = element("header", {}, [element("h1", { text: report.title }), element("p", { text: summary })]);
    app.appendChild(header);
    app.appendChild(element("div", { className: "layout" }, [element("nav", {}, [buildGallery()]), viewer]));
  }

  function fillPicker(side) {
    const panel = ui.panels[side];
    const entry = report.images[state.image];
    const data = panel.data;
    const query = panel.search.value.trim().toLowerCase();
    const order = [];
    for (let k = 0; k < report.classes.length; k++) {
      const name = report.classes[k].toLowerCase();
      if (query === "" || String(k) === query || (report.named ? name.includes(query) : String(k).startsWith(query)))
        order.push(k);
    }
    if (data) order.sort((a, b) => data.probabilities[b] - data.probabilities[a] || a - b);
    panel.filled = true;
    const options = document.createDocumentFragment();
    for (const k of order) {
      const p = data ? " " + formatProbability(data.probabilities[k]) : "";
      const option = new Option(className(k) + p, String(k), false, k === state.classes[side]);
      options.appendChild(option);
    }
    panel.picker.replaceChildren(options);
    return entry;
  }

  function selectImage(number) {
    state.image = number;
    const entry = report.images[number];
    for (const card of document.querySelectorAll(".card")) card.classList.toggle("selected", card.dataset.number === String(number));
    ui.title.textContent = entry.name;
    ui.title.title = entry.path;
    ui.top.textContent = "";
    ui.message.textContent = "";
    if (entry.failed) {
      ui.message.textContent = "This image could not be read: " + entry.failed;
      document.body.dataset.state = "failed";
      for (const panel of ui.panels) panel.panel.hidden = true;
      updateHash();
      return Promise.resolve();
    }
    state.classes = [entry.top[0][0], entry.top.length > 1 ? entry.top[1][0] : entry.top[0][0]];
    for (const [k, p] of entry.top) {
      const chip = element("button", { type: "button", className: "chip", text: className(k) + " " + formatProbability(p) });
      chip.addEventListener("click", function () {
        pickClass(0, k);
      });
      ui.top.appendChild(chip);
    }
    document.body.dataset.state = "loading";
    return imageData(number).then(
      function (data) {
        if (state.image !== number) return;
        for (const panel of ui.panels) {
          panel.data = data;
          panel.search.value = "";
          panel.filled = false;
        }
        render();
      },
      function (error) {
        ui.message.textContent = "The data of this image are missing: " + error.message;
        document.body.dataset.state = "failed";
      }
    );
  }

  function pickClass(side, k) {
    state.classes[side] = k;
    render();
  }

  function render() {
    const entry = report.images[state.image];
    if (!entry || entry.failed || !ui.panels[0].data) return;
    const started = performance.now();
    const [H, W] = report.crop;
    const [h, w] = report.cam;
    ui.panels.forEach(function (panel, side) {
      panel.panel.hidden = side === 1 && !state.compare;
      if (panel.panel.hidden) return;
      const k = state.classes[side];
      const data = panel.data;
      const saliency = upsampled(data.maps.subarray(k * h * w, (k + 1) * h * w), h, w, H, W);
      panel.canvas.width = W;
      panel.canvas.height = H;
      panel.canvas.getContext("2d").putImageData(blend(data.picture, saliency, state.alpha, H, W), 0, 0);
      panel.canvas.dataset.image = String(state.image);
      panel.canvas.dataset.class = String(k);
      panel.canvas.dataset.alpha = String(state.alpha);
      panel.caption.textContent = className(k) + ": p = " + formatProbability(data.probabilities[k]);
      if (!panel.filled) fillPicker(side);
      else if (panel.picker.value !== String(k)) panel.picker.value = String(k);
    });
    document.body.dataset.state = "ready";
    document.body.dataset.renderMs = (performance.now() - started).toFixed(1);
    if (window.lcamReportFirstRender === undefined) window.lcamReportFirstRender = performance.now();
    updateHash();
  }

  function updateHash() {
    const parts = ["image=" + state.image, "a=" + state.classes[0], "b=" + state.classes[1]];
    if (state.compare) parts.push("compare=1");
    history.replaceState(null, "", "#" + parts.join("&"));
  }

  function start() {
    const app = document.getElementById("app");
    if (!report) {
      app.textContent = "report_index.js is missing or broken: rewrite the report.";
      return;
    }
    state.alpha = report.alpha;
    build(app);
    const wanted = new URLSearchParams(location.hash.slice(1));
    let first = report.images.findIndex((entry) => !entry.failed);
    if (wanted.has("image") && report.images[Number(wanted.get("image"))]) first = Number(wanted.get("image"));
    state.compare = wanted.get("compare") === "1";
    ui.compare.checked = state.compare;
    if (first < 0) {
      ui.message.textContent = "No image could be read.";
      document.body.dataset.state = "failed";
      return;
    }
    selectImage(first).then(function () {
      const K = report.classes.length;
      ["a", "b"].forEach(function (key, side) {
        const k = Number(wanted.get(key));
        if (wanted.has(key) && Number.isInteger(k) && k >= 0 && k < K && state.classes[side] !== k) pickClass(side, k);
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
