// Live stream player: every StreamDiT node that makes video (IMAGE or VIDEO out) gets a player
// that shows the frames as the server emits them ("streamdit.frames" events, JPEG frames per
// chunk) at the stream's frame rate, with a status line of what is measured.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { chain, findNode, keepWidgetsByName, streams } from "./common.js";

const MAX_QUEUE = 256; // frames waiting to play; older ones are dropped when the player falls behind
const WINDOW_MS = 3000; // rates are measured over the last three seconds

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
    this.status.className = "streamdit-status";
    Object.assign(this.status.style, {
      flex: "0 0 auto", font: "11px monospace", color: "#ccc", whiteSpace: "normal", overflowWrap: "anywhere",
      lineHeight: "1.3",
    });
    this.status.textContent = "waiting for frames";
    this.element.append(this.canvas, this.status);
    this.reset();
    this._tick = this._tick.bind(this);
    this._frame = requestAnimationFrame(this._tick);
  }

  reset() {
    this.queue = [];         // {image, prompt} waiting to be drawn
    this.fps = 16;
    this.shown = 0;          // frames drawn since the stream started
    this.received = 0;       // frames received
    this.arrivals = [];      // [time, frames] of recent chunks, for the arrival rate
    this.draws = [];         // times of recent draws, for the playing rate
    this.nextDue = 0;
    this.onScreen = "";      // the prompt of the frame on screen
    this.firstArrival = null;
    this.started = null;     // when the first frame was drawn
    this.lastArrival = 0;
  }

  push(detail) {
    if (detail.index === 0) this.reset();
    this.fps = detail.fps || this.fps;
    const now = performance.now();
    this.arrivals.push([now, detail.frames.length]);
    this.firstArrival = this.firstArrival ?? now;
    this.lastArrival = now;
    for (const data of detail.frames) {
      const image = new Image();
      image.src = "data:image/jpeg;base64," + data;
      this.queue.push({ image, prompt: detail.prompt || "" });
      this.received += 1;
    }
    if (this.queue.length > MAX_QUEUE) this.queue.splice(0, this.queue.length - MAX_QUEUE);
  }

  // Frames per second: the frames counted in the last WINDOW_MS over that window (or over the
  // time since the stream's first frame, early on, but never under half a second), so a burst
  // of frames does not read as the rate and a steady stream never reads 0.
  _rate(events, now, since) {
    const frames = events.filter(([t]) => now - t < WINDOW_MS).reduce((n, [, k]) => n + k, 0);
    const span = Math.max(Math.min(WINDOW_MS, now - since), 500);
    return (frames * 1000) / span;
  }

  stop() {
    cancelAnimationFrame(this._frame);
    this._frame = null;
  }

  _tick(now) {
    if (this._frame === null) return;
    this._frame = requestAnimationFrame(this._tick);
    if (this.queue.length && this.queue[0].image.complete && now >= this.nextDue) {
      const { image, prompt } = this.queue.shift();
      const ctx = this.canvas.getContext("2d");
      if (this.canvas.width !== image.naturalWidth * 4) {
        this.canvas.width = image.naturalWidth * 4;
        this.canvas.height = image.naturalHeight * 4;
      }
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(image, 0, 0, this.canvas.width, this.canvas.height);
      this.shown += 1;
      this.onScreen = prompt;
      this.started = this.started ?? now;
      this.draws.push([now, 1]);
      this.nextDue = Math.max(now, this.nextDue) + 1000 / this.fps;
      if (this.nextDue < now - 250) this.nextDue = now; // caught up after a stall
    }
    this.draws = this.draws.filter(([t]) => now - t < WINDOW_MS);
    this.arrivals = this.arrivals.filter(([t]) => now - t < WINDOW_MS);
    const idle = this.lastArrival && now - this.lastArrival > WINDOW_MS;
    const text = this.received === 0 ? "waiting for frames" :
      `frame ${this.shown}/${this.received} · playing ${this._rate(this.draws, now, this.started ?? now).toFixed(1)} fps` +
      ` · arriving ${idle ? "stopped" : this._rate(this.arrivals, now, this.firstArrival).toFixed(1) + " fps"}` +
      ` (target ${this.fps})` + (this.onScreen ? ` · ${this.onScreen}` : "");
    if (this.status.textContent !== text) this.status.textContent = text;
  }
}

export function playerOf(node) {
  if (!node.streamditPlayer) {
    const player = new StreamPlayer();
    const widget = node.addDOMWidget("streamdit_player", "streamdit_player", player.element, {
      serialize: false, hideOnZoom: false, getMinHeight: () => 290,
    });
    widget.serialize = false; // display only: never in widgets_values or the prompt
    node.streamditPlayer = player;
  }
  return node.streamditPlayer;
}

app.registerExtension({
  name: "streamdit.player",
  async setup() {
    api.addEventListener("streamdit.frames", ({ detail }) => {
      const node = findNode(detail.node);
      if (node?.streamditPlayer) node.streamditPlayer.push(detail);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.category === "StreamDiT") keepWidgetsByName(nodeType.prototype);
    if (!streams(nodeData)) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      playerOf(this); // the live prompt box (live_prompt.js) always goes below it
    });
    chain(nodeType.prototype, "onRemoved", function () {
      this.streamditPlayer?.stop(); // no animation loop outlives its node
    });
  },
});
