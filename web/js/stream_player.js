// Live stream player: every StreamDiT node that streams gets a player that shows the frames
// as the server emits them ("streamdit.frames" events, JPEG frames per chunk), at the stream's
// frame rate, with a frame counter and the measured rates.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const STREAMING_NODES = new Set([
  "StreamDiTSampler", "StreamDiTChunkDenoise", "StreamDiTVideoToVideo", "StreamDiTLive",
]);
const MAX_QUEUE = 256; // frames waiting to play; older ones are dropped when the player falls behind

class StreamPlayer {
  constructor() {
    this.element = document.createElement("div");
    this.element.className = "streamdit-player";
    Object.assign(this.element.style, {
      display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%", boxSizing: "border-box",
    });
    this.canvas = document.createElement("canvas");
    this.canvas.width = 256;
    this.canvas.height = 256;
    Object.assign(this.canvas.style, {
      flex: "1 1 auto", minHeight: "0", width: "100%", objectFit: "contain", imageRendering: "pixelated",
      background: "#111", borderRadius: "4px",
    });
    this.status = document.createElement("div");
    Object.assign(this.status.style, {
      flex: "0 0 auto", font: "11px monospace", color: "#ccc", whiteSpace: "nowrap", overflow: "hidden",
      textOverflow: "ellipsis",
    });
    this.status.textContent = "waiting for frames";
    this.element.append(this.canvas, this.status);
    this.reset();
    this._tick = this._tick.bind(this);
    requestAnimationFrame(this._tick);
  }

  reset() {
    this.queue = [];
    this.fps = 16;
    this.shown = 0;          // frames drawn since the stream started
    this.received = 0;       // frames received
    this.arrivals = [];      // [time, frames] of recent chunks, for the arrival rate
    this.draws = [];         // times of recent draws, for the playback rate
    this.nextDue = 0;
    this.prompt = "";
  }

  push(detail) {
    if (detail.index === 0) this.reset();
    this.fps = detail.fps || this.fps;
    this.prompt = detail.prompt || "";
    const now = performance.now();
    this.arrivals.push([now, detail.frames.length]);
    for (const data of detail.frames) {
      const image = new Image();
      image.src = "data:image/jpeg;base64," + data;
      this.queue.push(image);
      this.received += 1;
    }
    if (this.queue.length > MAX_QUEUE) this.queue.splice(0, this.queue.length - MAX_QUEUE);
  }

  _rate(times, now) {
    const recent = times.filter((t) => now - t < 2000);
    return recent.length > 1 ? (recent.length - 1) * 1000 / (recent[recent.length - 1] - recent[0]) : 0;
  }

  _tick(now) {
    requestAnimationFrame(this._tick);
    if (!this.element.isConnected && this.queue.length === 0) return;
    if (this.queue.length && this.queue[0].complete && now >= this.nextDue) {
      const image = this.queue.shift();
      const ctx = this.canvas.getContext("2d");
      if (this.canvas.width !== image.naturalWidth * 4) {
        this.canvas.width = image.naturalWidth * 4;
        this.canvas.height = image.naturalHeight * 4;
      }
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(image, 0, 0, this.canvas.width, this.canvas.height);
      this.shown += 1;
      this.draws.push(now);
      this.nextDue = Math.max(now, this.nextDue) + 1000 / this.fps;
      if (this.nextDue < now - 250) this.nextDue = now; // caught up after a stall
    }
    this.draws = this.draws.filter((t) => now - t < 2000);
    this.arrivals = this.arrivals.filter(([t]) => now - t < 2000);
    const arrived = this.arrivals.reduce((n, [, k]) => n + k, 0);
    const span = this.arrivals.length > 1 ? (now - this.arrivals[0][0]) / 1000 : 0;
    const arriving = span > 0 ? arrived / span : 0;
    this.status.textContent =
      `frame ${this.shown}/${this.received} · playing ${this._rate(this.draws, now).toFixed(1)} fps` +
      ` · streaming ${arriving.toFixed(1)} fps (target ${this.fps})` + (this.prompt ? ` · ${this.prompt}` : "");
  }
}

function playerOf(node) {
  if (!node.streamditPlayer) {
    const player = new StreamPlayer();
    const widget = node.addDOMWidget("streamdit_player", "streamdit_player", player.element, {
      serialize: false, hideOnZoom: false, getMinHeight: () => 260,
    });
    widget.serialize = false; // display only: never in widgets_values or the prompt
    node.streamditPlayer = player;
  }
  return node.streamditPlayer;
}

function findNode(id) {
  if (id === null || id === undefined) return null;
  const key = String(id).split(":").pop(); // a node inside a subgraph reports "parent:child"
  return app.graph?.getNodeById(Number(key)) ?? app.graph?.getNodeById(key) ?? null;
}

app.registerExtension({
  name: "streamdit.player",
  async setup() {
    api.addEventListener("streamdit.frames", ({ detail }) => {
      const node = findNode(detail.node);
      if (node && STREAMING_NODES.has(node.comfyClass)) playerOf(node).push(detail);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!STREAMING_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      playerOf(this);
      return result;
    };
  },
});
