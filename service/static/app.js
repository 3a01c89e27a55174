// The demo page: pick an image or a clip, segment it with one of the server's models, show the
// original beside the overlay with a legend of the classes found. No build step, no dependencies.

const API_KEY_STORAGE = "ccnet.apiKey";
const CLIP_EXTENSIONS = new Set(["mp4", "m4v", "webm", "avi", "mov", "mkv", "3gp", "ogv", "mpeg", "mpg"]);
const MODELS_RETRY_LIMIT = 60;

const $ = (id) => document.getElementById(id);
const el = {
  form: $("controls"),
  fileInput: $("file-input"),
  dropZone: $("drop-zone"),
  fileName: $("file-name"),
  modelSelect: $("model-select"),
  modelKind: $("model-kind"),
  modelInfo: $("model-info"),
  modelCard: $("model-card"),
  modelCardSummary: $("model-card-summary"),
  modelCardClasses: $("model-card-classes"),
  modelCardWeights: $("model-card-weights"),
  modelCardConvert: $("model-card-convert"),
  modelCardTrain: $("model-card-train"),
  opacity: $("opacity"),
  opacityValue: $("opacity-value"),
  apiKey: $("api-key"),
  apiKeyDetails: $("api-key-details"),
  status: $("status"),
  error: $("error"),
  errorMessage: $("error-message"),
  errorHint: $("error-hint"),
  results: $("results"),
  placeholder: $("placeholder"),
  result: $("result"),
  originalFrame: $("original-frame"),
  canvas: $("overlay-canvas"),
  inferenceTime: $("inference-time"),
  resultModel: $("result-model"),
  resultSize: $("result-size"),
  legend: $("legend"),
  downloadMask: $("download-mask"),
  downloadZip: $("download-zip"),
};

const state = {
  models: [],
  file: null,
  kind: "image",
  chosenModel: { image: null, video: null }, // the person's last choice per kind
  run: null, // { id, controller } of the segmentation in flight
  runCounter: 0,
  image: null, // { original: HTMLImageElement | null, mask: HTMLImageElement } of the last image
  clip: null, // the last clip: its frames, masks and mask PNGs, playing on the canvases
  zipUrl: null,
  urls: new Set(), // object URLs owned by the current result
};

// ---------------------------------------------------------------- errors

class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function sentence(text) {
  const trimmed = String(text).trim();
  if (!trimmed) return "";
  const capital = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?…]$/.test(capital) ? capital : `${capital}.`;
}

function hintFor(status, retryAfter) {
  switch (status) {
    case 0:
      return "Check that the server is still running, then try again.";
    case 400:
      return "The server could not read this file. Use a common image format (PNG, JPEG, WebP…) or a clip (mp4, webm, avi, mov, animated GIF).";
    case 401:
      return "This server requires an API key: enter it under “API key” and try again.";
    case 403:
      return "The API key was not accepted. Check it under “API key”.";
    case 404:
      return "The server does not know this model or endpoint. Reload the page to refresh the model list.";
    case 413:
      return "The file is over this server's limits (bytes, pixels or frames). Try a smaller image or a shorter clip.";
    case 415:
      return "This file type is not supported. Use an image (PNG, JPEG, WebP…) or a clip (mp4, webm, avi, mov, animated GIF).";
    case 422:
      return "The server rejected the request's options. Pick another model and try again.";
    case 429:
      return "Too many requests at once. Wait a moment and try again.";
    case 503: {
      const wait = retryAfter ? ` in ${retryAfter} s` : " in a few seconds";
      return `The server is busy or still loading its models. Try again${wait}.`;
    }
    default:
      return status >= 500
        ? "The server hit an unexpected problem. Try again; if it persists, check the server's logs."
        : "";
  }
}

// The readable part of an error response: `error.message` of the JSON body, never the raw body.
async function errorFrom(response) {
  let code = "http_" + response.status;
  let message = "";
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && body.error && typeof body.error === "object") {
      code = body.error.code || code;
      message = body.error.message || "";
    } else if (body && Array.isArray(body.detail)) {
      message = body.detail.map((d) => d.msg).filter(Boolean).join("; ");
    } else if (body && typeof body.detail === "string") {
      message = body.detail;
    }
  } catch {
    // not JSON: use the text only when it is short plain prose, not an HTML page
    if (text && text.length < 300 && !/[<{]/.test(text)) message = text;
  }
  if (!message) {
    message = `The server answered ${response.status}${response.statusText ? " " + response.statusText : ""}`;
  }
  return new ApiError(response.status, code, sentence(message), response.headers.get("Retry-After"));
}

function showError(error) {
  if (error.name === "AbortError") return;
  const status = error instanceof ApiError ? error.status : 0;
  const message =
    error instanceof ApiError ? error.message : "Could not reach the server.";
  el.errorMessage.textContent = message;
  el.errorHint.textContent = hintFor(status, error.retryAfter);
  el.error.dataset.status = String(status);
  el.error.hidden = false;
  if (status === 401 || status === 403) {
    el.apiKeyDetails.open = true;
  }
}

function clearError() {
  el.error.hidden = true;
  el.errorMessage.textContent = "";
  el.errorHint.textContent = "";
  delete el.error.dataset.status;
}

function setStatus(text, busy = false) {
  el.status.textContent = text;
  el.status.classList.toggle("is-busy", busy);
  el.results.setAttribute("aria-busy", String(busy));
}

// ---------------------------------------------------------------- API

function authHeaders() {
  const key = el.apiKey.value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function api(path, { method = "GET", body, signal } = {}) {
  let response;
  try {
    response = await fetch(path, { method, body, signal, headers: authHeaders() });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", "Could not reach the server.", null);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

const query = (params) => new URLSearchParams(params).toString();

// ---------------------------------------------------------------- models

async function loadModels(attempt = 0) {
  setStatus("Loading the server's models…", true);
  try {
    const body = await (await api("/v1/models")).json();
    state.models = Array.isArray(body.models) ? body.models : [];
    clearError();
    fillModelSelect();
    setStatus(state.models.length ? "Ready. Pick an image or a clip." : "This server has no models loaded.");
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 503 && attempt < MODELS_RETRY_LIMIT) {
      setStatus("Waiting for the server to load its models…", true);
      const seconds = Math.min(Number(error.retryAfter) || 2, 10);
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      return loadModels(attempt + 1);
    }
    setStatus("Could not load the model list.");
    showError(error);
    el.modelSelect.replaceChildren(new Option("No models available", ""));
    el.modelSelect.disabled = true;
    return false;
  }
}

function modelsOfKind(kind) {
  return state.models.filter((m) => (m.kind || "image") === kind);
}

function fillModelSelect() {
  const kind = state.kind;
  const models = modelsOfKind(kind);
  el.modelKind.textContent = kind === "video" ? "clip" : "image";
  if (!models.length) {
    const what = kind === "video" ? "clip" : "image";
    el.modelSelect.replaceChildren(new Option(`No ${what} model on this server`, ""));
    el.modelSelect.disabled = true;
    el.modelInfo.textContent = "";
    return;
  }
  const chosen =
    models.find((m) => m.name === state.chosenModel[kind]) ||
    models.find((m) => m.default) ||
    models[0];
  el.modelSelect.replaceChildren(
    ...models.map((m) => new Option(m.name, m.name, false, m.name === chosen.name)),
  );
  el.modelSelect.disabled = false;
  describeModel();
}

function describeModel() {
  const model = selectedModel();
  if (!model) {
    el.modelInfo.textContent = "";
    el.modelCard.hidden = true;
    return;
  }
  describeTraining(model);
  const n = (model.classes || []).length;
  const details = [
    model.backend ? `${model.backend}${model.device ? ` on ${model.device}` : ""}` : null,
    n ? `${n} classes` : null,
    model.window ? `windows of ${model.window} frames` : null,
  ].filter(Boolean);
  el.modelInfo.textContent = details.join(" · ");
}

// What the model was trained on and which classes it knows (the demo models know synthetic
// textures only), with the commands to real weights when it is a demo model.
function describeTraining(model) {
  const card = model.training;
  el.modelCardSummary.textContent = card ? card.summary : "Training data not recorded.";
  el.modelCardClasses.textContent = (model.classes || []).map((c) => c.name).join(", ");
  const weights = card && card.real_weights;
  el.modelCardWeights.hidden = !weights;
  el.modelCardConvert.textContent = weights ? weights.convert : "";
  el.modelCardTrain.textContent = weights ? weights.train : "";
  el.modelCardWeights.open = Boolean(card && card.synthetic);
  el.modelCard.hidden = false;
}

function selectedModel() {
  return state.models.find((m) => m.name === el.modelSelect.value) || null;
}

// ---------------------------------------------------------------- files

function extensionOf(name) {
  const dot = name.lastIndexOf(".");
  return dot >= 0 ? name.slice(dot + 1).toLowerCase() : "";
}

// An animated GIF has more than one graphic control block (or the looping extension).
async function isAnimatedGif(file) {
  const bytes = new Uint8Array(await file.slice(0, 4 << 20).arrayBuffer());
  let controls = 0;
  for (let i = 0; i + 2 < bytes.length; i++) {
    if (bytes[i] === 0x21 && bytes[i + 1] === 0xf9 && bytes[i + 2] === 0x04 && ++controls > 1) {
      return true;
    }
  }
  return new TextDecoder("latin1").decode(bytes.subarray(0, 4096)).includes("NETSCAPE2.0");
}

async function kindOf(file) {
  const ext = extensionOf(file.name);
  if (file.type.startsWith("video/") || CLIP_EXTENSIONS.has(ext)) return "video";
  if (file.type === "image/gif" || ext === "gif") {
    return (await isAnimatedGif(file)) ? "video" : "image";
  }
  return "image";
}

function stem(name) {
  const dot = name.lastIndexOf(".");
  return (dot > 0 ? name.slice(0, dot) : name) || "input";
}

function ownUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.urls.add(url);
  return url;
}

function releaseUrls() {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls.clear();
  state.zipUrl = null;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot display this image"));
    image.src = url;
  });
}

function base64ToBlob(data, type) {
  return new Blob([base64ToBytes(data)], { type });
}

async function handleFile(file) {
  if (!file) return;
  state.file = file;
  state.kind = await kindOf(file);
  el.fileName.textContent = file.name;
  el.fileName.hidden = false;
  fillModelSelect();
  await segment();
}

// ---------------------------------------------------------------- segmentation

function startRun() {
  if (state.run) state.run.controller.abort();
  state.run = { id: ++state.runCounter, controller: new AbortController() };
  return state.run;
}

const isCurrent = (run) => state.run && state.run.id === run.id;

async function segment() {
  const file = state.file;
  if (!file) return;
  clearError();
  const model = selectedModel();
  if (!model) {
    const what = state.kind === "video" ? "clip" : "image";
    if (state.models.length) {
      showError(new ApiError(422, "no_model", `This server has no ${what} model loaded.`, null));
    }
    setStatus(`Cannot segment ${file.name}.`);
    return;
  }
  const run = startRun();
  const what = state.kind === "video" ? "clip" : "image";
  setStatus(`Segmenting the ${what} ${file.name} with ${model.name}…`, true);
  const started = performance.now();
  try {
    const summary =
      state.kind === "video" ? await segmentClip(run, file, model) : await segmentImage(run, file, model);
    if (!isCurrent(run)) return;
    el.result.classList.remove("is-stale");
    const roundTrip = Math.round(performance.now() - started);
    setStatus(`Segmented ${file.name}: ${summary} (${roundTrip} ms round trip).`);
  } catch (error) {
    if (!isCurrent(run) || error.name === "AbortError") return;
    setStatus(`Could not segment ${file.name}.`);
    showError(error);
    el.result.classList.add("is-stale");
  } finally {
    if (isCurrent(run)) state.run = null;
  }
}

async function segmentImage(run, file, model) {
  const form = new FormData();
  form.append("image", file, file.name);
  const response = await api(`/v1/segment?${query({ model: model.name, output: "json" })}`, {
    method: "POST",
    body: form,
    signal: run.controller.signal,
  });
  const data = await response.json();
  if (!isCurrent(run)) return "";

  releaseUrls();
  const maskBlob = base64ToBlob(data.mask_png, "image/png");
  const maskUrl = ownUrl(maskBlob);
  const mask = await loadImage(maskUrl);
  let original = null;
  try {
    original = await loadImage(ownUrl(file));
  } catch {
    original = null; // the server decoded it, the browser cannot: show the mask alone
  }
  if (!isCurrent(run)) return "";

  stopClip();
  state.image = { original, mask };
  showOriginal(original ? original.cloneNode() : null, "This browser cannot display the original.");
  el.canvas.hidden = false;
  drawOverlay();

  showSummary(data, model, `${data.width} × ${data.height}`);
  el.downloadMask.href = maskUrl;
  el.downloadMask.download = `${stem(file.name)}_mask.png`;
  el.downloadMask.hidden = false;
  el.downloadZip.hidden = true;
  return `${countClasses(data.classes)}, ${formatMs(data.inference_ms)} inference`;
}

// One request per clip: statistics, every mask and every frame as the model saw it. The page
// plays the frames itself, recomposites the overlay at any opacity and writes the masks' zip
// from what it already has, so nothing is segmented twice.
async function segmentClip(run, file, model) {
  const body = new FormData();
  body.append("video", file, file.name);
  const params = query({ model: model.name, output: "json", masks: "true", frames: "true" });
  const response = await api(`/v1/segment/video?${params}`, {
    method: "POST",
    body,
    signal: run.controller.signal,
  });
  const data = await response.json();
  if (!isCurrent(run)) return "";
  const clip = {
    name: file.name,
    // compressed until shown: a 300-frame HD clip decoded whole would hold ~1 GB of bitmaps
    frames: data.frames.map((frame) => base64ToBlob(frame.frame_jpeg, "image/jpeg")),
    maskPngs: data.frames.map((frame) => base64ToBytes(frame.mask_png)), // shown and zipped
    described: { classes: model.classes ? model.classes.map((c) => c.name) : [], fps: data.fps, model: data.model },
    fps: data.fps,
    index: 0,
    shown: null, // { frame, mask } bitmaps of the frame on screen
    decoding: false,
    timer: null,
    original: document.createElement("canvas"),
  };
  const first = await decodeClipFrame(clip, 0);
  if (!isCurrent(run)) {
    closeBitmaps(first);
    return "";
  }

  releaseUrls();
  stopClip();
  state.image = null;
  clip.original.setAttribute("aria-label", `Original clip ${file.name}, as the server decoded it`);
  state.clip = clip;
  showOriginal(clip.original);
  el.canvas.hidden = false;
  showClipFrame(clip, 0, first);
  playClip(clip);

  const fps = data.fps ? `, ${Number(data.fps).toFixed(Number.isInteger(data.fps) ? 0 : 1)} fps` : "";
  showSummary(data, model, `${data.width} × ${data.height}, ${data.frame_count} frames${fps}`);
  el.downloadMask.hidden = true;
  el.downloadMask.removeAttribute("href");
  el.downloadZip.hidden = false;
  return `${data.frame_count} frames, ${countClasses(data.classes)}, ${formatMs(data.inference_ms)} inference`;
}

function base64ToBytes(data) {
  const binary = atob(data);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

async function decodeClipFrame(clip, index) {
  const [frame, mask] = await Promise.all([
    createImageBitmap(clip.frames[index]),
    createImageBitmap(new Blob([clip.maskPngs[index]], { type: "image/png" })),
  ]);
  return { frame, mask };
}

function closeBitmaps(bitmaps) {
  if (!bitmaps) return;
  bitmaps.frame.close();
  bitmaps.mask.close();
}

function showClipFrame(clip, index, bitmaps) {
  closeBitmaps(clip.shown);
  clip.shown = bitmaps;
  clip.index = index;
  drawClipFrame(clip);
}

// The clip plays at its own frame rate (clamped to 1–30 fps) on both canvases at once; a
// frame still decoding when the next is due is skipped rather than queued.
function playClip(clip) {
  if (clip.frames.length < 2) return;
  const fps = Math.min(30, Math.max(1, Number(clip.fps) || 10));
  clip.timer = setInterval(async () => {
    if (state.clip !== clip || clip.decoding) return;
    clip.decoding = true;
    const next = (clip.index + 1) % clip.frames.length;
    try {
      const bitmaps = await decodeClipFrame(clip, next);
      if (state.clip === clip) showClipFrame(clip, next, bitmaps);
      else closeBitmaps(bitmaps);
    } finally {
      clip.decoding = false;
    }
  }, 1000 / fps);
}

function stopClip() {
  const clip = state.clip;
  if (!clip) return;
  if (clip.timer) clearInterval(clip.timer);
  closeBitmaps(clip.shown);
  clip.shown = null;
  state.clip = null;
}

function drawClipFrame(clip) {
  if (!clip.shown) return;
  const { frame, mask } = clip.shown;
  const canvas = clip.original;
  if (canvas.width !== frame.width) canvas.width = frame.width;
  if (canvas.height !== frame.height) canvas.height = frame.height;
  canvas.getContext("2d").drawImage(frame, 0, 0);
  markSmall(canvas, frame.width, frame.height);
  paintOverlay(frame, mask);
  el.canvas.dataset.frame = String(clip.index);
}

// The masks as the server's output=zip names them, built in the page from the masks it holds.
function downloadZip() {
  const clip = state.clip;
  if (!clip) return;
  if (!state.zipUrl) {
    const entries = clip.maskPngs.map((bytes, index) => ({
      name: `frame_${String(index).padStart(5, "0")}.png`,
      bytes,
    }));
    const described = JSON.stringify(clip.described, null, 2) + "\n";
    entries.push({ name: "clip.json", bytes: new TextEncoder().encode(described) });
    state.zipUrl = ownUrl(zipStored(entries));
  }
  const link = document.createElement("a");
  link.href = state.zipUrl;
  link.download = `${stem(clip.name)}_masks.zip`;
  document.body.append(link);
  link.click();
  link.remove();
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// A zip of stored (uncompressed) entries: PNGs are compressed already. Timestamps are the
// DOS epoch, as in the server's zip, so the same masks give the same bytes.
function zipStored(entries) {
  const encoder = new TextEncoder();
  const parts = [];
  const directory = [];
  let offset = 0;
  for (const { name, bytes } of entries) {
    const nameBytes = encoder.encode(name);
    const crc = crc32(bytes);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true); // version needed
    local.setUint16(10, 0, true); // time 00:00
    local.setUint16(12, 0x21, true); // date 1980-01-01
    local.setUint32(14, crc, true);
    local.setUint32(18, bytes.length, true);
    local.setUint32(22, bytes.length, true);
    local.setUint16(26, nameBytes.length, true);
    parts.push(local, nameBytes, bytes);
    const central = new DataView(new ArrayBuffer(46));
    central.setUint32(0, 0x02014b50, true);
    central.setUint16(4, 20, true); // made by
    central.setUint16(6, 20, true); // version needed
    central.setUint16(12, 0, true);
    central.setUint16(14, 0x21, true);
    central.setUint32(16, crc, true);
    central.setUint32(20, bytes.length, true);
    central.setUint32(24, bytes.length, true);
    central.setUint16(28, nameBytes.length, true);
    central.setUint32(42, offset, true);
    directory.push(central, nameBytes);
    offset += 30 + nameBytes.length + bytes.length;
  }
  const size = directory.reduce((total, part) => total + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...directory, end], { type: "application/zip" });
}

// ---------------------------------------------------------------- drawing

function drawOverlay() {
  if (state.clip) {
    drawClipFrame(state.clip);
    return;
  }
  const result = state.image;
  if (!result) return;
  paintOverlay(result.original, result.mask);
}

// source-over at opacity a: picture × (1 − a) + class colour × a, as the server's overlay
function paintOverlay(original, mask) {
  const width = mask.naturalWidth || mask.width;
  const height = mask.naturalHeight || mask.height;
  const canvas = el.canvas;
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const context = canvas.getContext("2d");
  context.globalAlpha = 1;
  context.clearRect(0, 0, width, height);
  if (original) context.drawImage(original, 0, 0, width, height);
  context.globalAlpha = Number(el.opacity.value);
  context.imageSmoothingEnabled = false;
  context.drawImage(mask, 0, 0, width, height);
  context.globalAlpha = 1;
  markSmall(canvas, width, height);
  canvas.dataset.drawn = "true";
  canvas.dataset.alpha = el.opacity.value;
}

// Inputs of a few dozen pixels are scaled up to the frame: draw them pixelated, not blurred.
function markSmall(node, width, height) {
  node.classList.toggle("is-small", Math.max(width, height) < 256);
}

function whenLoaded(image) {
  const mark = () => markSmall(image, image.naturalWidth, image.naturalHeight);
  if (image.complete && image.naturalWidth) mark();
  else image.addEventListener("load", mark, { once: true });
}

function showOriginal(node, fallbackText = "") {
  if (node) {
    el.originalFrame.replaceChildren(node);
  } else {
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = fallbackText;
    el.originalFrame.replaceChildren(note);
  }
  if (node && node.tagName === "IMG") {
    if (!node.alt) node.alt = `Original ${state.file.name}`;
    whenLoaded(node);
  }
  el.placeholder.hidden = true;
  el.result.hidden = false;
}

// ---------------------------------------------------------------- summary

function formatMs(ms) {
  const value = Number(ms);
  if (!Number.isFinite(value)) return "–";
  return value < 10 ? `${value.toFixed(1)} ms` : `${Math.round(value)} ms`;
}

function formatPercent(fraction) {
  const pct = fraction * 100;
  if (pct > 0 && pct < 0.1) return "< 0.1 %";
  return `${pct.toFixed(1)} %`;
}

function countClasses(classes) {
  const n = (classes || []).length;
  return `${n} ${n === 1 ? "class" : "classes"}`;
}

function colourOf(entry, model) {
  const colour = entry.color || model?.classes?.find((c) => c.id === entry.id)?.color || [128, 128, 128];
  return `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
}

function showSummary(data, model, size) {
  el.inferenceTime.textContent = formatMs(data.inference_ms);
  el.inferenceTime.dataset.ms = String(data.inference_ms);
  el.resultModel.textContent = data.model || model.name;
  el.resultSize.textContent = size;

  const classes = [...(data.classes || [])].sort((a, b) => b.fraction - a.fraction);
  el.legend.replaceChildren(
    ...classes.map((entry) => {
      const name = entry.name || model?.classes?.find((c) => c.id === entry.id)?.name || `class ${entry.id}`;
      const colour = colourOf(entry, model);
      const item = document.createElement("li");
      item.className = "legend-item";
      item.dataset.classId = String(entry.id);
      item.dataset.fraction = String(entry.fraction);
      item.dataset.pixels = String(entry.pixels);

      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour;
      swatch.setAttribute("aria-hidden", "true");

      const label = document.createElement("span");
      label.className = "legend-name";
      label.textContent = name;
      label.title = name;

      const pct = document.createElement("span");
      pct.className = "legend-pct";
      pct.textContent = formatPercent(entry.fraction);

      const bar = document.createElement("span");
      bar.className = "legend-bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(1, entry.fraction)) * 100}%`;
      fill.style.setProperty("--bar-colour", colour);
      bar.append(fill);

      item.append(swatch, label, pct, bar);
      return item;
    }),
  );
}

// ---------------------------------------------------------------- wiring

function updateOpacityLabel() {
  el.opacityValue.textContent = `${Math.round(Number(el.opacity.value) * 100)} %`;
}

function openPicker() {
  el.fileInput.click();
}

el.dropZone.addEventListener("click", openPicker);
el.dropZone.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    openPicker();
  }
});

el.fileInput.addEventListener("change", () => {
  const file = el.fileInput.files && el.fileInput.files[0];
  handleFile(file);
  el.fileInput.value = ""; // picking the same file again still segments it
});

let dragDepth = 0;
el.dropZone.addEventListener("dragenter", (event) => {
  event.preventDefault();
  dragDepth += 1;
  el.dropZone.classList.add("is-dragover");
});
el.dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
});
el.dropZone.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) el.dropZone.classList.remove("is-dragover");
});
el.dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  el.dropZone.classList.remove("is-dragover");
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (file) handleFile(file);
});
// a file dropped beside the zone must not make the browser navigate away to it
for (const type of ["dragover", "drop"]) {
  window.addEventListener(type, (event) => {
    if (!el.dropZone.contains(event.target)) event.preventDefault();
  });
}

document.addEventListener("paste", (event) => {
  const file = event.clipboardData && event.clipboardData.files[0];
  if (file) {
    event.preventDefault();
    handleFile(file);
  }
});

el.modelSelect.addEventListener("change", () => {
  state.chosenModel[state.kind] = el.modelSelect.value;
  describeModel();
  segment();
});

el.opacity.addEventListener("input", () => {
  updateOpacityLabel();
  drawOverlay();
});

el.apiKey.value = sessionStorage.getItem(API_KEY_STORAGE) || "";
if (el.apiKey.value) el.apiKeyDetails.open = true;
el.apiKey.addEventListener("input", () => {
  const key = el.apiKey.value.trim();
  if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
  else sessionStorage.removeItem(API_KEY_STORAGE);
});
el.apiKey.addEventListener("change", () => {
  if (!state.models.length) loadModels();
});

el.form.addEventListener("submit", (event) => {
  event.preventDefault();
  segment();
});
el.downloadZip.addEventListener("click", downloadZip);

updateOpacityLabel();
loadModels();
