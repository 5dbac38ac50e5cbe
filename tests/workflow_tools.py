"""Reading the example workflows (ComfyUI's UI format) as the frontend does: widget values by
input order, links, and the API-format prompt the backend executes."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import with_node_id

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Workflows that load model files a user downloads (Wan 2.1); the others run on the embedded model.
MODEL_FILES = {
    "wan21_t2v_1_3b_stream": {"UNETLoader": "wan2.1_t2v_1.3B_fp16.safetensors",
                              "CLIPLoader": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                              "VAELoader": "wan_2.1_vae.safetensors"},
}
EMBEDDED_WORKFLOWS = [p for p in WORKFLOWS if p.stem not in MODEL_FILES]

# The ComfyUI core nodes the workflows use, as /object_info describes them
# (comfy_extras/nodes_video.py, nodes.py; the loaders list the files the Wan workflow names):
# enough to check values without ComfyUI installed.
_WAN = MODEL_FILES["wan21_t2v_1_3b_stream"]
CORE_NODES = {
    "UNETLoader": {
        "input": {"required": {"unet_name": [[_WAN["UNETLoader"]], {}],
                               "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {}]}},
        "input_order": {"required": ["unet_name", "weight_dtype"]},
        "output": ["MODEL"],
    },
    "CLIPLoader": {
        "input": {"required": {"clip_name": [[_WAN["CLIPLoader"]], {}], "type": [["stable_diffusion", "sd3", "wan"], {}]},
                  "optional": {"device": [["default", "cpu"], {"advanced": True}]}},
        "input_order": {"required": ["clip_name", "type"], "optional": ["device"]},
        "output": ["CLIP"],
    },
    "VAELoader": {
        "input": {"required": {"vae_name": [[_WAN["VAELoader"]], {}]}},
        "input_order": {"required": ["vae_name"]},
        "output": ["VAE"],
    },
    "CreateVideo": {
        "input": {"required": {"images": ["IMAGE", {}], "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0}]},
                  "optional": {"audio": ["AUDIO", {}]}},
        "input_order": {"required": ["images", "fps"], "optional": ["audio"]},
        "output": ["VIDEO"],
    },
    "SaveVideo": {
        "input": {"required": {"video": ["VIDEO", {}], "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                               "format": [["auto", "mp4"], {}], "codec": [["auto", "h264"], {}]}},
        "input_order": {"required": ["video", "filename_prefix", "format", "codec"]},
        "output": [],
    },
}


def _v1(i) -> list:
    """One V3 input as ``/object_info`` lists it: ``[type or options, {options}]``."""
    declared = getattr(i, "declared", None)
    if declared is None:  # ComfyUI's own io (inside a real ComfyUI): what it lists itself
        declared = i.as_dict()
    io_type = i.get_io_type() if hasattr(i, "get_io_type") else i.io_type
    options = {k: v for k, v in declared.items() if k != "options" and v is not None}
    kind = list(i.options) if io_type == "COMBO" else io_type
    return [kind, options]


def object_info(nodes: dict) -> dict:
    """``/object_info`` entries for V3 node classes (as ComfyUI's server builds them), plus CORE_NODES."""
    info = dict(CORE_NODES)
    for name, cls in nodes.items():
        schema = cls.define_schema()
        sections = {"required": [i for i in schema.inputs if not i.optional],
                    "optional": [i for i in schema.inputs if i.optional]}
        info[name] = {
            "input": {k: {i.id: _v1(i) for i in v} for k, v in sections.items()},
            "input_order": {k: [i.id for i in v] for k, v in sections.items()},
            "output": [o.io_type for o in schema.outputs],
        }
    return info


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _kind(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def widget_values(node: dict, info: dict) -> dict:
    """``{input name: value}`` from a UI node's ``widgets_values``, in the frontend's order: widget
    inputs in input order; an INT named seed/noise_seed (or with control_after_generate) is
    followed by its control value, which is skipped."""
    values = list(node.get("widgets_values") or [])
    out = {}
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            if _kind(spec) not in WIDGET_TYPES:
                continue
            if not values:
                raise ValueError(f"node {node['id']} ({node['type']}): no value for widget {name!r}")
            out[name] = values.pop(0)
            options = spec[1] if len(spec) > 1 else {}
            if _kind(spec) == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed")):
                values.pop(0)
    if values:
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values left over: {values}")
    return out


def check_value(name: str, spec: list, value) -> str | None:
    """Why ``value`` is invalid for the input ``spec``, or None."""
    kind, options = _kind(spec), (spec[1] if len(spec) > 1 else {})
    if kind == "COMBO":
        return None if value in spec[0] else f"{name}={value!r} is not one of {spec[0]}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}={value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{name}={value!r} is not a string"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and not isinstance(value, int)):
        return f"{name}={value!r} is not {kind}"
    if value < options.get("min", -float("inf")) or value > options.get("max", float("inf")):
        return f"{name}={value!r} is outside {options.get('min')}..{options.get('max')}"
    return None


def to_api(workflow: dict, info: dict) -> dict:
    """The API-format prompt ``{id: {"class_type", "inputs"}}`` for a UI workflow's active nodes."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        spec = info[node["type"]]
        inputs = widget_values(node, spec)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def run_prompt(prompt: dict, overrides: dict, classes: dict) -> dict:
    """Runs an API-format prompt in dependency order with node ``classes`` (by class_type) and
    input ``overrides`` ({class_type: {input: value}}); returns each node's outputs."""
    done: dict[str, tuple] = {}

    def run(key):
        if key in done:
            return done[key]
        entry = prompt[key]
        kwargs = {}
        for name, value in {**entry["inputs"], **overrides.get(entry["class_type"], {})}.items():
            kwargs[name] = run(value[0])[value[1]] if isinstance(value, list) else value
        cls = classes[entry["class_type"]]
        if hasattr(cls, "define_schema"):  # a V3 node: its hidden unique_id is the prompt key
            out = with_node_id(cls, key).execute(**kwargs)
            done[key] = out.result or ()
        else:  # a stand-in for a ComfyUI node (its FUNCTION, or run)
            done[key] = getattr(cls(), getattr(cls, "FUNCTION", "run"))(**kwargs)
        return done[key]

    for key in prompt:
        run(key)
    return done
