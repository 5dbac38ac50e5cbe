"""The example workflows: valid for the nodes as declared, and runnable on the embedded model."""

from fractions import Fraction

import pytest
import torch

from nodes import host, node_classes
from workflow_tools import (EMBEDDED_WORKFLOWS, WORKFLOWS, check_value, load, object_info, run_prompt, to_api,
                            widget_values)

NODES = node_classes()
INFO = object_info(NODES)
NAMES = [p.stem for p in WORKFLOWS]


def test_the_promised_workflows_are_there():
    assert {"basic_text_to_video", "prompt_story", "live_interactive", "video_to_video",
            "wan21_t2v_1_3b_stream"} <= set(NAMES)


@pytest.mark.parametrize("path", WORKFLOWS, ids=NAMES)
def test_workflow_is_valid_for_the_declared_nodes(path):
    wf = load(path)
    assert {"last_node_id", "last_link_id", "nodes", "links", "version"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for node in wf["nodes"]:
        assert node["type"] in INFO, f"unknown node type {node['type']}"
        spec = INFO[node["type"]]
        for name, value in widget_values(node, spec).items():
            section = "required" if name in spec["input"]["required"] else "optional"
            problem = check_value(name, spec["input"][section][name], value)
            assert problem is None, f"node {node['id']} ({node['type']}): {problem}"
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert kind == out["type"] == INFO[nodes[src]["type"]]["output"][src_slot]
        assert inp["type"] in (kind, "*") or (inp.get("widget") and kind in ("FLOAT", "INT"))
    # every required input is fed by a link or a widget
    for key, entry in to_api(wf, INFO).items():
        spec = INFO[entry["class_type"]]["input"]["required"]
        missing = set(spec) - set(entry["inputs"])
        assert not missing, f"node {key} ({entry['class_type']}) lacks {missing}"


# --------------------------------------------------------------------------------------------
# Running them: our nodes for real, ComfyUI's two video nodes as checking stand-ins.

class CreateVideo:
    def run(self, images, fps, audio=None):
        assert images.dim() == 4 and images.shape[-1] == 3 and 1 <= fps <= 120
        return ({"images": images, "fps": Fraction(fps)},)


class SaveVideo:
    saved = []

    def run(self, video, filename_prefix, format, codec):
        SaveVideo.saved.append((filename_prefix, video))
        return ()


def execute(prompt: dict, overrides: dict) -> dict:
    return run_prompt(prompt, overrides, {**NODES, "CreateVideo": CreateVideo, "SaveVideo": SaveVideo})


@pytest.mark.parametrize("path", EMBEDDED_WORKFLOWS, ids=[p.stem for p in EMBEDDED_WORKFLOWS])
def test_workflow_runs_on_the_embedded_model(path, tmp_path):
    SaveVideo.saved.clear()
    host.set_output_directory(tmp_path)
    try:  # shortened where a graph asks for long video, so the suite stays quick
        done = execute(to_api(load(path), INFO), {"StreamDiTLive": {"max_seconds": 2.0},
                                                  "StreamDiTSampler": {"seconds": 2.0}})
    finally:
        host.set_output_directory(None)
    produced = [v for v in done.values() if v and isinstance(v[0], torch.Tensor)]
    for prefix, video in SaveVideo.saved:
        assert video["images"].shape[1:] == (64, 64, 3) and video["fps"] == 16 and video["images"].shape[0] >= 16
    assert SaveVideo.saved or list(tmp_path.rglob("*.mp4")), "the workflow saved nothing"
    assert produced or list(tmp_path.rglob("*.mp4"))



@pytest.mark.parametrize("path", WORKFLOWS, ids=NAMES)
def test_every_workflow_has_its_thumbnail_for_the_template_browser(path):
    from PIL import Image

    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"{thumbnail.name} is missing: run python workflows/make_thumbnails.py"
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.size == (512, 256)
