// What the pack's canvas extensions share: finding a node from a server event, chaining a node
// type's callbacks (never replacing what ComfyUI or another extension set), and telling which
// nodes stream from their own definitions.
import { app } from "../../../scripts/app.js";

// A node from the id a server event names ("parent:child" for a node inside a subgraph).
export function findNode(id) {
  if (id === null || id === undefined) return null;
  const key = String(id).split(":").pop();
  return app.graph?.getNodeById(Number(key)) ?? app.graph?.getNodeById(key) ?? null;
}

// Runs `fn` after the prototype's own `name` callback, keeping its result.
export function chain(prototype, name, fn) {
  const previous = prototype[name];
  prototype[name] = function () {
    const result = previous?.apply(this, arguments);
    fn.apply(this, arguments);
    return result;
  };
}

// A StreamDiT node streams frames to the canvas when it makes video: IMAGE or VIDEO out.
export function streams(nodeData) {
  const outputs = nodeData?.output ?? [];
  return nodeData?.category === "StreamDiT" && outputs.some((t) => t === "IMAGE" || t === "VIDEO");
}

export const LIVE_NODE = "StreamDiTLive";

// Widget values kept by name as well as by position: a workflow saved with one input order
// still restores every value to the widget of that name after the node's inputs change.
const NAMED = "streamdit_widgets";

export function keepWidgetsByName(prototype) {
  chain(prototype, "onSerialize", function (data) {
    const named = {};
    for (const w of this.widgets ?? []) {
      if (w.serialize !== false && w.options?.serialize !== false && w.name) named[w.name] = w.value;
    }
    data.properties = { ...(data.properties ?? {}), [NAMED]: named };
  });
  chain(prototype, "onConfigure", function (data) {
    const named = data?.properties?.[NAMED];
    if (!named) return;
    for (const w of this.widgets ?? []) {
      if (w.name in named && w.value !== named[w.name]) w.value = named[w.name];
    }
  });
}
