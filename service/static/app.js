// The demo page: send an image to /segment, draw its instances on a canvas, filter them here.
//
// One request per image (score_threshold=0): the score slider and the class toggles filter the answer
// in the browser, without asking again. Masks are decoded from COCO RLE here and blended into the
// image's pixels with the colours and opacity of centermask_client.overlay (written into the page as
// #overlay-style), so the page draws what `/segment?format=png` draws.
"use strict";

(() => {
  const style = JSON.parse(document.getElementById("overlay-style").textContent);
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const KEY_STORAGE = "centermask-api-key";
  const HOVER_ALPHA = 0.7;
  const DIMMED_ALPHA = 0.2;

  const state = {
    info: null, // /v1/model
    image: null, // the uploaded image, decoded by the browser
    base: null, // its pixels (ImageData), the canvas before anything is drawn
    result: null, // the /segment answer
    masks: [], // per instance: its runs (decodeRle), or null without a mask
    hiddenClasses: new Set(),
    hover: -1, // index into result.instances, -1 for none
    roundTripMs: 0,
  };

  // ---------------------------------------------------------------- API key (this tab only)

  const apiKey = $("api-key");
  apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
  apiKey.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, apiKey.value.trim());
    loadModelInfo();
  });

  function authHeaders() {
    const key = apiKey.value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  // ---------------------------------------------------------------- COCO RLE

  // pycocotools' compressed counts: each count in little-endian 5-bit groups offset by 48, 0x20 marks
  // a continuation, 0x10 in the last group is the sign; from the third count on, each is relative to
  // the count two places back. Runs alternate zeros and ones, column-major.
  function rleCounts(text) {
    const counts = [];
    let position = 0;
    while (position < text.length) {
      let value = 0;
      let group = 0;
      let more = true;
      while (more) {
        if (position >= text.length) throw new Error("truncated RLE counts");
        const c = text.charCodeAt(position) - 48;
        value += (c & 0x1f) * 2 ** (5 * group);
        more = (c & 0x20) !== 0;
        position += 1;
        group += 1;
        if (!more && (c & 0x10) !== 0) value -= 2 ** (5 * group);
      }
      if (counts.length > 2) value += counts[counts.length - 2];
      counts.push(value);
    }
    return counts;
  }

  // A mask as its runs of ones: [start, end) pairs of column-major pixel indices (index = x * height + y).
  // Memory grows with the outline, not the image, so large photos with many instances stay cheap.
  function decodeRle(rle) {
    const [height, width] = rle.size;
    const counts = rleCounts(rle.counts);
    const runs = [];
    let position = 0;
    counts.forEach((count, index) => {
      if (count < 0) throw new Error("negative RLE count");
      if (index % 2 === 1 && count > 0) runs.push(position, position + count);
      position += count;
    });
    if (position !== height * width) throw new Error(`RLE counts cover ${position} pixels, not ${height * width}`);
    return { height, width, runs: Int32Array.from(runs) };
  }

  function maskHas(mask, x, y) {
    const p = x * mask.height + y;
    let low = 0;
    let high = mask.runs.length / 2;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (mask.runs[2 * middle + 1] <= p) low = middle + 1;
      else high = middle;
    }
    return low < mask.runs.length / 2 && mask.runs[2 * low] <= p;
  }

  // ---------------------------------------------------------------- drawing

  const colour = (classId) => style.palette[classId % style.palette.length];
  const css = (rgb) => `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
  const labelText = (instance) => `${instance.class_name} ${instance.score.toFixed(2)}`;
  const fontSize = (height, width) => Math.min(32, Math.max(11, Math.round(Math.max(height, width) / 50)));

  function visibleIndices() {
    if (!state.result) return [];
    const threshold = Number($("score").value);
    return state.result.instances
      .map((instance, index) => [instance, index])
      .filter(([instance]) => instance.score >= threshold && !state.hiddenClasses.has(instance.class_id))
      .map(([, index]) => index);
  }

  function render() {
    if (!state.result) return;
    const { width, height, instances } = state.result;
    const visible = visibleIndices();
    // Worst first, so that the best-scoring instance ends on top (as the server's drawing does).
    const order = [...visible].sort((a, b) => instances[a].score - instances[b].score);
    const pixels = new Uint8ClampedArray(state.base.data);
    for (const index of order) {
      const mask = state.masks[index];
      if (!mask) continue;
      let alpha = style.mask_alpha;
      if (state.hover !== -1) alpha = index === state.hover ? HOVER_ALPHA : DIMMED_ALPHA;
      const [r, g, b] = colour(instances[index].class_id);
      for (let run = 0; run < mask.runs.length; run += 2) {
        for (let p = mask.runs[run]; p < mask.runs[run + 1]; p += 1) {
          const q = 4 * ((p % height) * width + Math.floor(p / height));
          pixels[q] = Math.round(pixels[q] * (1 - alpha) + r * alpha);
          pixels[q + 1] = Math.round(pixels[q + 1] * (1 - alpha) + g * alpha);
          pixels[q + 2] = Math.round(pixels[q + 2] * (1 - alpha) + b * alpha);
        }
      }
    }
    context.putImageData(new ImageData(pixels, width, height), 0, 0);
    const size = fontSize(height, width);
    context.font = `${size}px sans-serif`;
    context.textBaseline = "top";
    for (const index of order) {
      const instance = instances[index];
      const rgb = colour(instance.class_id);
      const [x1, y1, x2, y2] = instance.box;
      const lineWidth = index === state.hover ? 2 * style.box_width : style.box_width;
      context.strokeStyle = css(rgb);
      context.lineWidth = lineWidth;
      // Strokes straddle their path: inset by half the line so the box stays inside its edges.
      context.strokeRect(x1 + lineWidth / 2, y1 + lineWidth / 2, x2 - x1 - lineWidth, y2 - y1 - lineWidth);
      const text = labelText(instance);
      const pad = 2;
      const textWidth = Math.ceil(context.measureText(text).width);
      const boxHeight = size + 2 * pad;
      const labelY = y1 - boxHeight >= 0 ? y1 - boxHeight : y1;
      const labelX = Math.min(Math.max(0, x1), Math.max(0, width - textWidth - 2 * pad));
      context.fillStyle = css(rgb);
      context.fillRect(labelX, labelY, textWidth + 2 * pad, boxHeight);
      context.fillStyle = "#fff";
      context.fillText(text, labelX + pad, labelY + pad);
    }
    renderList(visible);
  }

  // ---------------------------------------------------------------- the side panel

  function renderList(visible) {
    const list = $("instances");
    list.replaceChildren(
      ...visible.map((index) => {
        const instance = state.result.instances[index];
        const item = document.createElement("li");
        item.dataset.index = String(index);
        item.dataset.classId = String(instance.class_id);
        item.dataset.className = instance.class_name;
        item.dataset.score = String(instance.score);
        if (index === state.hover) item.classList.add("hover");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = css(colour(instance.class_id));
        const label = document.createElement("span");
        label.className = "label";
        label.textContent = labelText(instance);
        const maskScore = document.createElement("span");
        maskScore.className = "mask-score";
        maskScore.title = "mask score";
        maskScore.textContent = `mask ${instance.mask_score.toFixed(2)}`;
        item.append(swatch, label, maskScore);
        item.addEventListener("mouseenter", () => setHover(index));
        item.addEventListener("mouseleave", () => setHover(-1));
        return item;
      }),
    );
    $("count").textContent = `${visible.length} of ${state.result.instances.length}`;
    const threshold = Number($("score").value);
    for (const shown of document.querySelectorAll(".class-count")) {
      const classId = Number(shown.dataset.classId);
      const above = state.result.instances.filter((i) => i.class_id === classId && i.score >= threshold).length;
      shown.textContent = `${above}/${shown.dataset.total}`;
    }
  }

  function renderClasses() {
    const fieldset = $("classes");
    const legend = document.createElement("legend");
    legend.textContent = "Classes";
    const counts = new Map();
    for (const instance of state.result.instances) {
      const entry = counts.get(instance.class_id) || { name: instance.class_name, count: 0 };
      entry.count += 1;
      counts.set(instance.class_id, entry);
    }
    const toggles = [...counts.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([classId, { name, count }]) => {
        const label = document.createElement("label");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.checked = !state.hiddenClasses.has(classId);
        box.dataset.classId = String(classId);
        box.addEventListener("change", () => {
          if (box.checked) state.hiddenClasses.delete(classId);
          else state.hiddenClasses.add(classId);
          render();
        });
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = css(colour(classId));
        const shown = document.createElement("span");
        shown.className = "class-count";
        shown.dataset.classId = String(classId);
        shown.title = "shown at this score threshold / found";
        shown.dataset.total = String(count);
        label.append(box, swatch, name, shown);
        return label;
      });
    fieldset.replaceChildren(legend, ...toggles);
  }

  function renderTiming() {
    const rows = Object.entries(state.result.timing_ms).map(([step, ms]) => [step, `${ms.toFixed(1)} ms`]);
    rows.push(["round trip (this browser)", `${state.roundTripMs.toFixed(1)} ms`]);
    $("timing").tBodies[0].replaceChildren(
      ...rows.map(([name, value]) => {
        const row = document.createElement("tr");
        for (const text of [name, value]) {
          const cell = document.createElement("td");
          cell.textContent = text;
          row.append(cell);
        }
        return row;
      }),
    );
  }

  function setHover(index) {
    if (index === state.hover) return;
    state.hover = index;
    render();
  }

  function setStatus(kind, message) {
    document.body.dataset.state = kind;
    $("status").textContent = message;
  }

  // ---------------------------------------------------------------- talking to the service

  async function loadModelInfo() {
    const line = $("model");
    try {
      const response = await fetch("v1/model", { headers: authHeaders() });
      const body = await response.json();
      if (!response.ok) {
        line.textContent =
          response.status === 401
            ? "This service needs an API key: enter it under “API key”."
            : `${body.error.code}: ${body.error.message}`;
        if (response.status === 401) $("key-box").open = true;
        return;
      }
      state.info = body;
      line.textContent = `${body.config_name} on ${body.device} · ${body.class_names.length} classes: ${body.class_names.slice(0, 8).join(", ")}${body.class_names.length > 8 ? ", …" : ""}`;
      if (!state.result) {
        $("score").value = String(body.score_threshold);
        $("score-value").textContent = body.score_threshold.toFixed(2);
      }
    } catch (error) {
      line.textContent = `cannot reach the service: ${error.message}`;
    }
  }

  async function segment(blob, name) {
    setStatus("busy", `Segmenting ${name}…`);
    const form = new FormData();
    form.append("image", blob, name);
    const started = performance.now();
    let response;
    let body;
    try {
      response = await fetch("segment?score_threshold=0&mask_format=rle", {
        method: "POST",
        body: form,
        headers: authHeaders(),
      });
      body = await response.json();
    } catch (error) {
      setStatus("error", `Cannot reach the service: ${error.message}`);
      return;
    }
    const roundTripMs = performance.now() - started;
    if (!response.ok) {
      const error = body && body.error ? body.error : { code: `http_${response.status}`, message: response.statusText };
      const hint = response.status === 401 ? " Enter the API key under “API key”." : "";
      if (response.status === 401) $("key-box").open = true;
      setStatus("error", `${response.status} ${error.code}: ${error.message}.${hint}`);
      return;
    }
    let image;
    try {
      image = await decodeInBrowser(blob);
    } catch {
      setStatus("error", "The service read this image, but this browser cannot display it.");
      return;
    }
    show(image, body, roundTripMs, name);
  }

  function decodeInBrowser(blob) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(blob);
      const image = new Image();
      image.onload = () => {
        URL.revokeObjectURL(url);
        resolve(image);
      };
      image.onerror = () => {
        URL.revokeObjectURL(url);
        reject(new Error("undecodable"));
      };
      image.src = url;
    });
  }

  function show(image, result, roundTripMs, name) {
    const { width, height } = result;
    canvas.width = width;
    canvas.height = height;
    // The browser applies EXIF orientation as the service does, so the upright sizes agree.
    context.drawImage(image, 0, 0, width, height);
    state.image = image;
    state.base = context.getImageData(0, 0, width, height);
    state.result = result;
    state.masks = result.instances.map((instance) => (instance.mask ? decodeRle(instance.mask) : null));
    state.hiddenClasses.clear();
    state.hover = -1;
    state.roundTripMs = roundTripMs;
    renderClasses();
    renderTiming();
    $("json").textContent = JSON.stringify(result, null, 1);
    render();
    setStatus("done", `${name}: ${width}×${height}. Hover an instance to highlight it; filter with the slider and the classes.`);
  }

  // ---------------------------------------------------------------- inputs

  $("file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    // Cleared, so that choosing the same file again (after entering a key, say) sends it again.
    event.target.value = "";
    if (file) segment(file, file.name);
  });

  const drop = $("drop");
  for (const target of [drop, $("stage")]) {
    target.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    target.addEventListener("dragleave", () => drop.classList.remove("over"));
    target.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      const [file] = event.dataTransfer.files;
      if (file) segment(file, file.name);
    });
  }

  window.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((entry) => entry.type.startsWith("image/"));
    if (!item) return;
    event.preventDefault();
    const file = item.getAsFile();
    segment(file, file.name || `pasted.${item.type.split("/")[1]}`);
  });

  for (const button of document.querySelectorAll(".example")) {
    button.addEventListener("click", async () => {
      const response = await fetch(button.dataset.src);
      segment(await response.blob(), button.title);
    });
  }

  $("score").addEventListener("input", () => {
    $("score-value").textContent = Number($("score").value).toFixed(2);
    render();
  });

  canvas.addEventListener("mousemove", (event) => {
    if (!state.result) return;
    const x = Math.floor((event.offsetX / canvas.clientWidth) * canvas.width);
    const y = Math.floor((event.offsetY / canvas.clientHeight) * canvas.height);
    // The topmost instance under the pointer: the best-scoring one, drawn last.
    const under = visibleIndices()
      .filter((index) => state.masks[index] && maskHas(state.masks[index], x, y))
      .sort((a, b) => state.result.instances[b].score - state.result.instances[a].score);
    setHover(under.length ? under[0] : -1);
  });
  canvas.addEventListener("mouseleave", () => setHover(-1));

  loadModelInfo();
})();
