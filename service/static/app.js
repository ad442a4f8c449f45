// The demo page: send an image to /segment, draw its instances on a canvas, filter them here. The camera
// streams frames over the WebSocket /segment/stream; a chosen video goes to /segment/video and each of its
// frames is drawn with its masks as its line arrives.
//
// One request per image (score_threshold=0): the score slider and the class toggles filter the answer
// in the browser, without asking again. Masks are decoded from COCO RLE here and blended into the
// image's pixels with the colours and opacity of centermask_client.overlay (written into the page as
// #overlay-style), so the page draws what `/segment?format=png` draws.
//
// A large image (a tiled one: tiling=auto) is shown downscaled to MAX_DISPLAY_SIDE, and its masks are
// sampled at that size (each display pixel takes the image pixel at its centre), so that drawing costs the
// display's pixels, not the image's.
"use strict";

(() => {
  const style = JSON.parse(document.getElementById("overlay-style").textContent);
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const KEY_STORAGE = "centermask-api-key";
  const HOVER_ALPHA = 0.7;
  const DIMMED_ALPHA = 0.2;
  const MAX_DISPLAY_SIDE = 2048;

  const state = {
    info: null, // /v1/model
    image: null, // the uploaded image, decoded by the browser
    base: null, // its pixels (ImageData), the canvas before anything is drawn
    result: null, // the /segment answer
    masks: [], // per instance: its runs at display size (decodeRle, atDisplay), or null without a mask
    scaleX: 1, // display pixels per image pixel (below 1 for a large image)
    scaleY: 1,
    blob: null, // the last image segmented, and its name: sent again when the tiling switch changes
    name: "",
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

  // A mask's runs at display size (height × width): display pixel (dx, dy) is in the mask when the image
  // pixel at its centre, (floor((dx + 0.5) / sx), floor((dy + 0.5) / sy)), is. Visits each image column
  // a run touches once, so a small object costs its own columns.
  function atDisplay(mask, height, width) {
    if (height === mask.height && width === mask.width) return mask;
    const sx = width / mask.width;
    const sy = height / mask.height;
    const source = (d, s) => Math.floor((d + 0.5) / s);
    const runs = [];
    for (let run = 0; run < mask.runs.length; run += 2) {
      let p = mask.runs[run];
      const end = mask.runs[run + 1];
      while (p < end) {
        const x = Math.floor(p / mask.height);
        const columnEnd = Math.min(end, (x + 1) * mask.height);
        const dx = Math.max(0, Math.ceil(x * sx - 0.5));
        if (dx < width && source(dx, sx) === x) {
          const y0 = p - x * mask.height;
          const y1 = columnEnd - x * mask.height;
          const dy0 = Math.max(0, Math.ceil(y0 * sy - 0.5));
          const dy1 = Math.min(height, Math.ceil(y1 * sy - 0.5));
          if (dy1 > dy0) runs.push(dx * height + dy0, dx * height + dy1);
        }
        p = columnEnd;
      }
    }
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

  // A tracked instance keeps its track's colour from frame to frame; others take their class's.
  const colour = (instance) => {
    const key = instance.track_id == null ? instance.class_id : instance.track_id;
    return style.palette[key % style.palette.length];
  };
  const css = (rgb) => `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
  const labelText = (instance) =>
    `${instance.track_id == null ? "" : `#${instance.track_id} `}${instance.class_name} ${instance.score.toFixed(2)}`;
  // Videos and the camera ask for track ids while the box is ticked (read when each starts).
  const trackQuery = () => ($("track").checked ? "&track=true" : "");
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
    const { instances } = state.result;
    // The display's size: the image's, or less for a large one (masks are already at this size).
    const { width, height } = canvas;
    const { scaleX, scaleY } = state;
    const visible = visibleIndices();
    // Worst first, so that the best-scoring instance ends on top (as the server's drawing does).
    const order = [...visible].sort((a, b) => instances[a].score - instances[b].score);
    const pixels = new Uint8ClampedArray(state.base.data);
    for (const index of order) {
      const mask = state.masks[index];
      if (!mask) continue;
      let alpha = style.mask_alpha;
      if (state.hover !== -1) alpha = index === state.hover ? HOVER_ALPHA : DIMMED_ALPHA;
      const [r, g, b] = colour(instances[index]);
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
      const rgb = colour(instance);
      const [x1, y1, x2, y2] = [
        instance.box[0] * scaleX,
        instance.box[1] * scaleY,
        instance.box[2] * scaleX,
        instance.box[3] * scaleY,
      ];
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
        swatch.style.background = css(colour(instance));
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
        swatch.style.background = css(colour({ class_id: classId }));
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
      // What the model knows, said before anyone drops a photo on a model of drawn shapes.
      const knows = $("knows");
      knows.textContent = body.description || "";
      knows.hidden = !body.description;
      knows.classList.toggle("demo", Boolean(body.bundled));
      if (!state.result) {
        $("score").value = String(body.score_threshold);
        $("score-value").textContent = body.score_threshold.toFixed(2);
      }
    } catch (error) {
      line.textContent = `cannot reach the service: ${error.message}`;
    }
  }

  async function segment(blob, name) {
    stopLive();
    setStatus("busy", `Segmenting ${name}…`);
    const form = new FormData();
    form.append("image", blob, name);
    const started = performance.now();
    let response;
    let body;
    try {
      const tiling = encodeURIComponent($("tiling").value);
      response = await fetch(`segment?score_threshold=0&mask_format=rle&tiling=${tiling}`, {
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
    state.blob = blob;
    state.name = name;
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
    const scale = Math.min(1, MAX_DISPLAY_SIDE / Math.max(width, height));
    const displayWidth = Math.max(1, Math.round(width * scale));
    const displayHeight = Math.max(1, Math.round(height * scale));
    canvas.width = displayWidth;
    canvas.height = displayHeight;
    // The browser applies EXIF orientation as the service does, so the upright sizes agree.
    context.drawImage(image, 0, 0, displayWidth, displayHeight);
    state.image = image;
    state.base = context.getImageData(0, 0, displayWidth, displayHeight);
    state.result = result;
    state.scaleX = displayWidth / width;
    state.scaleY = displayHeight / height;
    state.masks = result.instances.map((instance) =>
      instance.mask ? atDisplay(decodeRle(instance.mask), displayHeight, displayWidth) : null,
    );
    state.hiddenClasses.clear();
    state.hover = -1;
    state.roundTripMs = roundTripMs;
    renderClasses();
    renderTiming();
    $("json").textContent = JSON.stringify(result, null, 1);
    render();
    const tiles = result.tiling ? ` in ${result.tiling.tiles} tiles` : "";
    const shown = scale < 1 ? ` (shown at ${displayWidth}×${displayHeight})` : "";
    setStatus("done", `${name}: ${width}×${height}${shown}, segmented${tiles}. Hover an instance to highlight it; filter with the slider and the classes.`);
  }

  // ---------------------------------------------------------------- frames: the camera and videos

  const video = $("video");
  const grab = document.createElement("canvas");
  const grabContext = grab.getContext("2d", { willReadFrequently: true });
  const VIDEO_TYPES = ["video/mp4", "video/quicktime", "video/webm", "video/x-matroska"];
  const live = {
    mode: null, // "camera" or "video" while one runs
    socket: null,
    media: null, // the camera's MediaStream
    sent: new Map(), // frame index → { pixels, sentAt } of frames awaiting their answer
    next: 0, // the next frame's index
    answered: [], // arrival times (ms) of recent answers, for the rate
    latencyMs: 0,
    dropped: 0,
    abort: null, // cancels a video's request
  };

  // The video element's current frame, as pixels (what is sent, and what its answer is drawn over).
  function grabFrame() {
    grab.width = video.videoWidth;
    grab.height = video.videoHeight;
    grabContext.drawImage(video, 0, 0);
    return grabContext.getImageData(0, 0, grab.width, grab.height);
  }

  // A frame and its answer on the canvas, as `show` does an image and its /segment answer.
  function showFrame(pixels, result) {
    if (canvas.width !== pixels.width || canvas.height !== pixels.height) {
      canvas.width = pixels.width;
      canvas.height = pixels.height;
    }
    state.image = null;
    state.base = pixels;
    state.result = result;
    state.scaleX = 1;
    state.scaleY = 1;
    state.masks = result.instances.map((instance) => (instance.mask ? decodeRle(instance.mask) : null));
    state.hover = -1;
    renderClasses();
    if (result.timing_ms) renderTiming();
    $("json").textContent = JSON.stringify(result, null, 1);
    render();
  }

  function framesPerSecond(now) {
    live.answered = live.answered.filter((time) => now - time < 2000).concat(now);
    const span = (now - live.answered[0]) / 1000;
    return live.answered.length > 1 && span > 0 ? (live.answered.length - 1) / span : 0;
  }

  function stopLive() {
    if (live.socket) live.socket.close(1000);
    if (live.media) for (const track of live.media.getTracks()) track.stop();
    if (live.abort) live.abort.abort();
    Object.assign(live, { mode: null, socket: null, media: null, abort: null });
    live.sent.clear();
    video.srcObject = null;
    video.removeAttribute("src");
    delete document.body.dataset.live;
    $("camera").textContent = "Start the camera";
  }

  // One frame in flight: the next is taken when the answer arrives, so frames go at the rate the service
  // sustains, and what is drawn is never more than one answer old.
  function sendFrame() {
    const socket = live.socket;
    if (live.mode !== "camera" || !socket || socket.readyState !== WebSocket.OPEN || !video.videoWidth) return;
    const pixels = grabFrame();
    const index = live.next;
    live.next += 1;
    grab.toBlob(
      (blob) => {
        if (live.socket !== socket || socket.readyState !== WebSocket.OPEN) return;
        live.sent.set(index, { pixels, sentAt: performance.now() });
        socket.send(blob);
      },
      "image/jpeg",
      0.85,
    );
  }

  function streamUrl() {
    const url = new URL(`segment/stream?score_threshold=0&mask_format=rle${trackQuery()}`, document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url;
  }

  async function startCamera() {
    stopLive();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("error", "This browser offers no camera here (cameras need https, or localhost).");
      return;
    }
    setStatus("busy", "Starting the camera…");
    try {
      live.media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (error) {
      setStatus("error", `No camera: ${error.message}`);
      return;
    }
    live.mode = "camera";
    document.body.dataset.live = "camera";
    document.body.dataset.answered = "0";
    $("camera").textContent = "Stop the camera";
    video.srcObject = live.media;
    await video.play();
    const socket = new WebSocket(streamUrl());
    live.socket = socket;
    socket.addEventListener("open", () => {
      const key = apiKey.value.trim();
      // Browsers cannot set headers on a WebSocket: the key goes as the first message.
      if (key) socket.send(JSON.stringify({ api_key: key }));
      setStatus("live", "Streaming the camera: each answer brings the next frame.");
      sendFrame();
    });
    socket.addEventListener("message", (event) => {
      const answer = JSON.parse(event.data);
      if (answer.error) {
        const where = answer.error.index === undefined ? "" : ` (frame ${answer.error.index})`;
        setStatus("error", `${answer.error.code}${where}: ${answer.error.message}`);
        if (answer.error.code === "unauthorized") $("key-box").open = true;
        if (answer.error.index !== undefined) {
          live.sent.delete(answer.error.index);
          sendFrame();
        }
        return;
      }
      const sent = live.sent.get(answer.frame);
      live.sent.delete(answer.frame);
      if (!sent) return;
      const now = performance.now();
      live.latencyMs = now - sent.sentAt;
      live.dropped = answer.dropped;
      state.roundTripMs = live.latencyMs;
      showFrame(sent.pixels, answer);
      const rate = framesPerSecond(now);
      $("live-stats").textContent = `${rate.toFixed(1)} fps · ${live.latencyMs.toFixed(0)} ms latency · ${answer.instances.length} instances`;
      document.body.dataset.answered = String(Number(document.body.dataset.answered) + 1);
      sendFrame();
    });
    socket.addEventListener("close", (event) => {
      if (live.socket !== socket) return;
      const why = event.code === 1000 ? "" : ` (${event.code}${event.reason ? `: ${event.reason}` : ""})`;
      if (event.code !== 1000 && document.body.dataset.state !== "error") setStatus("error", `The stream closed${why}.`);
      stopLive();
    });
  }

  function nextEvent(target, name) {
    return new Promise((resolve, reject) => {
      target.addEventListener(name, resolve, { once: true });
      target.addEventListener("error", () => reject(new Error("this browser cannot play the video")), { once: true });
    });
  }

  // The video at a frame's time: its pixels, as the browser decodes them (the service decoded its own).
  async function frameAt(seconds) {
    // A hair past the timestamp, so that rounding cannot land on the frame before.
    const target = Math.min(seconds + 0.001, Math.max(0, video.duration - 0.001));
    if (Math.abs(video.currentTime - target) > 1e-6) {
      const seeked = nextEvent(video, "seeked");
      video.currentTime = target;
      await seeked;
    }
    return grabFrame();
  }

  async function segmentVideo(file) {
    stopLive();
    live.mode = "video";
    document.body.dataset.live = "video";
    document.body.dataset.answered = "0";
    const abort = new AbortController();
    live.abort = abort;
    setStatus("busy", `Segmenting ${file.name}…`);
    const url = URL.createObjectURL(file);
    try {
      const loaded = nextEvent(video, "loadeddata");
      video.src = url;
      await loaded;
    } catch (error) {
      // The service may still read it; say why nothing can be drawn here.
      setStatus("error", `${file.name}: ${error.message}.`);
      URL.revokeObjectURL(url);
      return;
    }
    const type = VIDEO_TYPES.includes(file.type) ? file.type : "video/mp4";
    let response;
    try {
      response = await fetch(`segment/video?score_threshold=0&mask_format=rle${trackQuery()}`, {
        method: "POST",
        body: file,
        headers: { ...authHeaders(), "Content-Type": type },
        signal: abort.signal,
      });
    } catch (error) {
      if (live.abort === abort) setStatus("error", `Cannot reach the service: ${error.message}`);
      return;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      const error = body && body.error ? body.error : { code: `http_${response.status}`, message: response.statusText };
      if (response.status === 401) $("key-box").open = true;
      setStatus("error", `${response.status} ${error.code}: ${error.message}.`);
      return;
    }
    const expected = response.headers.get("X-Video-Frames");
    const reader = response.body.getReader();
    const text = new TextDecoder();
    let buffered = "";
    let frames = 0;
    let failure = null;
    const started = performance.now();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (value) buffered += text.decode(value, { stream: true });
        const lines = buffered.split("\n");
        buffered = lines.pop();
        for (const line of lines.filter((entry) => entry.trim())) {
          const answer = JSON.parse(line);
          if (answer.error) {
            failure = answer.error;
            continue;
          }
          const pixels = await frameAt(answer.time_s);
          if (live.abort !== abort) return;
          state.roundTripMs = performance.now() - started;
          showFrame(pixels, answer);
          frames += 1;
          document.body.dataset.answered = String(frames);
          $("live-stats").textContent = `frame ${answer.frame} at ${answer.time_s.toFixed(2)} s · ${frames}${expected ? ` of ${expected}` : ""} frames`;
        }
        if (done) break;
      }
    } catch (error) {
      if (live.abort === abort) setStatus("error", `${file.name}: the answer broke off (${error.message}).`);
      return;
    }
    if (failure) {
      const where = failure.index === undefined ? "" : ` at frame ${failure.index}`;
      setStatus("error", `${file.name}: ${frames} frames, then ${failure.code}${where}: ${failure.message}`);
      return;
    }
    setStatus("done", `${file.name}: ${frames} frames segmented. Filter with the slider and the classes.`);
  }

  $("camera").addEventListener("click", () => {
    if (live.mode === "camera") {
      stopLive();
      setStatus("idle", "The camera is off.");
    } else {
      startCamera();
    }
  });

  $("video-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    event.target.value = "";
    if (file) segmentVideo(file);
  });

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

  $("tiling").addEventListener("change", () => {
    if (state.blob && !live.mode) segment(state.blob, state.name);
  });

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
