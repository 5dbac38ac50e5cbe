// Live prompt box: the StreamDiT Live Stream node gets a prompt field with Send and Stop buttons
// that post to the pack's routes while the stream runs ("streamdit.live" events say which
// session the node is running).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { LIVE_NODE, chain, findNode } from "./common.js";
import { playerOf } from "./stream_player.js";

function liveBox(node) {
  const box = document.createElement("div");
  Object.assign(box.style, { display: "flex", flexDirection: "column", gap: "4px", width: "100%" });
  const text = document.createElement("textarea");
  text.placeholder = "type a new prompt, then Send (Ctrl+Enter)";
  text.rows = 2;
  Object.assign(text.style, { width: "100%", resize: "vertical", font: "12px sans-serif", boxSizing: "border-box" });
  const row = document.createElement("div");
  Object.assign(row.style, { display: "flex", gap: "4px", alignItems: "center" });
  const send = document.createElement("button");
  send.textContent = "Send";
  const stop = document.createElement("button");
  stop.textContent = "Stop";
  const status = document.createElement("span");
  Object.assign(status.style, { font: "11px monospace", color: "#ccc", overflow: "hidden", whiteSpace: "nowrap" });
  status.textContent = "not running";
  row.append(send, stop, status);
  box.append(text, row);

  async function post(action, body) {
    if (!node.streamditSession) {
      status.textContent = "not running: press Run first";
      return;
    }
    try {
      const res = await api.fetchApi(`/streamdit/live/${node.streamditSession}/${action}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const data = await res.json().catch(() => ({}));
      status.textContent = res.ok ? (action === "prompt" ? `sent: ${data.prompt}` : "stopping…")
                                  : `error ${res.status}: ${data.error ?? res.statusText}`;
    } catch (err) {
      status.textContent = `error: ${err}`;
    }
  }
  send.onclick = () => post("prompt", { prompt: text.value });
  stop.onclick = () => post("stop", {});
  text.addEventListener("keydown", (e) => {
    e.stopPropagation(); // keep canvas shortcuts out of the text box
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send.onclick();
  });
  return { box, status, text };
}

// The recording the stream kept, shown as the node's output preview. A stopped or timed-out run
// also gets it from ComfyUI's "executed" message; a cancelled one only from here.
function showRecording(node, recording, frames) {
  const output = { images: [recording], animated: [true] };
  try {
    if (app.nodeOutputs) app.nodeOutputs[node.id] = output;
  } catch (err) { /* an older frontend without a writable output store */ }
  node.onExecuted?.(output);
  node.streamditLive.status.textContent = `ended: ${frames} frames recorded in ${recording.filename}`;
  fitLater(node);
}

// Grows the node to hold what was added to it (the recording's preview), never shrinking it;
// again as the video loads and takes its height.
function fitLater(node) {
  for (const delay of [0, 250, 1000, 2500]) {
    setTimeout(() => requestAnimationFrame(() => {
      const [w, h] = node.computeSize?.() ?? node.size;
      if (h > node.size[1] || w > node.size[0]) node.setSize([Math.max(w, node.size[0]), Math.max(h, node.size[1])]);
      app.graph?.setDirtyCanvas(true, true);
    }), delay);
  }
}

app.registerExtension({
  name: "streamdit.live_prompt",
  async setup() {
    api.addEventListener("streamdit.live", ({ detail }) => {
      const node = findNode(detail.node);
      if (!node || node.comfyClass !== LIVE_NODE || !node.streamditLive) return;
      const running = detail.state === "running";
      node.streamditSession = running ? detail.session : null;
      node.streamditLive.status.textContent = running ? "live: type a prompt and Send" : "ended";
      if (!running && detail.recording) showRecording(node, detail.recording, detail.frames);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== LIVE_NODE) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      playerOf(this); // the player first, whichever extension loaded first: a fixed widget order
      this.streamditLive = liveBox(this);
      const widget = this.addDOMWidget("streamdit_live_prompt", "streamdit_live_prompt", this.streamditLive.box, {
        serialize: false, hideOnZoom: false, getMinHeight: () => 80,
      });
      widget.serialize = false; // typed live, never saved into the workflow
    });
    chain(nodeType.prototype, "onExecuted", function () {
      fitLater(this); // the recording's preview fits inside the node
    });
  },
});
