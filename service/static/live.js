// Live mode: the webcam streamed to WS /v1/stream, each mask drawn over its own frame.
//
// Frames go up as JPEG (one binary message each); the server answers per frame with a JSON
// header then the mask PNG (palette colours, so the browser draws it as is). At most
// IN_FLIGHT frames are unanswered at a time: the page never outruns the model, and frames
// the server skips anyway are named in "skipped" messages. The API key, when one is set,
// travels as the subprotocol "ccnet.key.KEY" next to "ccnet.v1": browsers cannot set headers
// on a WebSocket, and a key in the URL would land in access logs.

const IN_FLIGHT = 2;
const MAX_SIDE = 320; // frames are scaled down before upload: the model runs at this size
const $ = (id) => document.getElementById(id);

const el = {
  start: $("live-start"),
  stop: $("live-stop"),
  canvas: $("live-canvas"),
  stats: $("live-stats"),
  status: $("live-status"),
  video: $("live-video"),
  apiKey: $("api-key"),
  opacity: $("opacity"),
};

let session = null;

function setStatus(text) {
  el.status.textContent = text;
}

async function clipModel() {
  const headers = el.apiKey && el.apiKey.value.trim() ? { "X-API-Key": el.apiKey.value.trim() } : {};
  const response = await fetch("/v1/models", { headers });
  if (!response.ok) throw new Error(`cannot list models (HTTP ${response.status})`);
  const { models } = await response.json();
  const video = models.find((m) => m.kind === "video");
  if (!video) throw new Error("this server has no clip (CCNet3D) model to stream with");
  return video.name;
}

class LiveSession {
  constructor(stream, model) {
    this.stream = stream;
    this.model = model;
    this.sent = new Map(); // frame index -> {bitmap, sentAt}
    this.next = 0;
    this.pending = null; // the JSON header waiting for its mask
    this.answered = 0;
    this.skipped = 0;
    this.latencies = [];
    this.began = performance.now();
    this.stopped = false;
    this.grab = document.createElement("canvas");
    this.sending = false; // one sendFrames loop at a time (events overlap)
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/stream?model=${encodeURIComponent(this.model)}`;
    const key = el.apiKey ? el.apiKey.value.trim() : "";
    const protocols = key ? ["ccnet.v1", `ccnet.key.${key}`] : ["ccnet.v1"];
    this.ws = new WebSocket(url, protocols);
    this.ws.binaryType = "blob";
    this.ws.addEventListener("message", (event) => this.onMessage(event));
    this.ws.addEventListener("close", (event) => this.onClose(event));
  }

  async sendFrames() {
    if (this.sending) return;
    this.sending = true;
    try {
      await this.sendLoop();
    } finally {
      this.sending = false;
    }
  }

  async sendLoop() {
    while (!this.stopped && this.ws.readyState === WebSocket.OPEN && this.sent.size < IN_FLIGHT) {
      const video = el.video;
      if (!video.videoWidth) return;
      const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
      const width = Math.round(video.videoWidth * scale);
      const height = Math.round(video.videoHeight * scale);
      this.grab.width = width;
      this.grab.height = height;
      this.grab.getContext("2d").drawImage(video, 0, 0, width, height);
      const index = this.next++;
      const bitmap = await createImageBitmap(this.grab);
      const blob = await new Promise((done) => this.grab.toBlob(done, "image/jpeg", 0.85));
      if (this.stopped || this.ws.readyState !== WebSocket.OPEN) return;
      this.sent.set(index, { bitmap, sentAt: performance.now() });
      this.ws.send(blob);
    }
  }

  async onMessage(event) {
    if (typeof event.data !== "string") {
      const header = this.pending;
      this.pending = null;
      if (header) await this.draw(header, event.data);
      this.sendFrames();
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      setStatus(`Live: ${message.model}, window of ${message.window} frames`);
      el.canvas.dataset.model = message.model;
      this.sendFrames();
    } else if (message.type === "mask") {
      this.pending = message;
    } else if (message.type === "skipped") {
      for (const index of message.skipped) this.sent.delete(index);
      this.skipped += message.skipped.length;
      this.sendFrames();
    } else if (message.type === "error") {
      setStatus(`Live error: ${message.message} (${message.code})`);
      el.canvas.dataset.error = message.code;
      if (message.frame !== undefined) this.sent.delete(message.frame);
    } else if (message.type === "end") {
      setStatus(`Live ended: ${message.processed} frames segmented, ${message.skipped} skipped`);
    }
  }

  async draw(header, maskBlob) {
    const entry = this.sent.get(header.frame);
    this.sent.delete(header.frame);
    if (!entry) return;
    const mask = await createImageBitmap(maskBlob);
    const canvas = el.canvas;
    canvas.width = entry.bitmap.width;
    canvas.height = entry.bitmap.height;
    const context = canvas.getContext("2d");
    context.globalAlpha = 1;
    context.drawImage(entry.bitmap, 0, 0);
    context.globalAlpha = el.opacity ? Number(el.opacity.value) : 0.5;
    context.drawImage(mask, 0, 0, canvas.width, canvas.height);
    entry.bitmap.close();
    mask.close();
    this.answered += 1;
    this.latencies.push(performance.now() - entry.sentAt);
    if (this.latencies.length > 30) this.latencies.shift();
    const seconds = (performance.now() - this.began) / 1000;
    const fps = this.answered / seconds;
    const latency = this.latencies.reduce((a, b) => a + b, 0) / this.latencies.length;
    el.stats.textContent =
      `${fps.toFixed(1)} frames/s · ${latency.toFixed(0)} ms latency · ` +
      `${this.answered} frames, ${this.skipped} skipped`;
    canvas.hidden = false;
    canvas.dataset.frames = String(this.answered);
    canvas.dataset.fps = fps.toFixed(2);
    canvas.dataset.latencyMs = latency.toFixed(1);
  }

  onClose(event) {
    if (!this.stopped && event.code !== 1000) {
      setStatus(`Live closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`);
    }
    el.canvas.dataset.closed = String(event.code);
    this.finish();
  }

  stop() {
    if (this.stopped) return;
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "end" }));
    this.stopped = true;
  }

  finish() {
    this.stopped = true;
    for (const track of this.stream.getTracks()) track.stop();
    el.start.disabled = false;
    el.stop.disabled = true;
    session = null;
  }
}

async function start() {
  el.start.disabled = true;
  try {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser gives no camera to pages served over plain http from " +
        "another host (open it as https or on localhost)");
    }
    const model = await clipModel();
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    el.video.srcObject = stream;
    await el.video.play();
    session = new LiveSession(stream, model);
    session.open();
    el.stop.disabled = false;
    setStatus("Connecting…");
  } catch (error) {
    setStatus(`Live mode unavailable: ${error.message}`);
    el.start.disabled = false;
  }
}

if (el.start) {
  el.start.addEventListener("click", start);
  el.stop.addEventListener("click", () => session && session.stop());
}
