"""The pack inside a real, headless ComfyUI (opt-in).

Set COMFYUI_DIR to a ComfyUI checkout whose requirements are installed, and run pytest with a
Python that has them (and aiohttp), e.g.::

    COMFYUI_DIR=~/ComfyUI ~/ComfyUI/venv/bin/python -m pytest -q tests/host

The server runs on the CPU on a free port with this pack linked into a temporary custom_nodes
folder; every example workflow is queued through /prompt as the frontend would send it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from workflow_tools import EMBEDDED_WORKFLOWS, ROOT, WORKFLOWS, load, to_api

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR, reason="real-ComfyUI tests: set COMFYUI_DIR to a ComfyUI checkout (with its requirements "
                            "installed in this Python) to run them")
RED = "a red circle moving right on a black background"
BLUE = "a blue circle moving right on a black background"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    aiohttp = pytest.importorskip("aiohttp", reason="the real-ComfyUI tests talk to the server with aiohttp")
    del aiohttp
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-StreamDiT").symlink_to(ROOT, target_is_directory=True)
    config = base / "extra_model_paths.yaml"
    config.write_text(f"streamdit_test:\n    custom_nodes: {base / 'custom_nodes'}\n")
    port = _free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--output-directory", str(base / "output"), "--extra-model-paths-config", str(config)],
        cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "/object_info", timeout=5) as r:
                info = json.load(r)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"ComfyUI did not start: {(base / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield {"url": url, "info": info, "output": base / "output", "log": base / "server.log"}
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_object_info_lists_every_node(server):
    from nodes import node_classes

    for name, cls in node_classes().items():
        entry = server["info"].get(name)
        assert entry is not None, f"{name} missing from /object_info; log: {server['log'].read_text()[-2000:]}"
        schema = cls.define_schema()
        assert entry["category"] == "StreamDiT" and entry["output"] == [o.io_type for o in schema.outputs]
        assert entry["display_name"] == schema.display_name
        order = entry["input_order"]
        assert order.get("required", []) + order.get("optional", []) == [i.id for i in schema.inputs]
    failed = [line for line in server["log"].read_text().splitlines() if "IMPORT FAILED" in line]
    assert not [line for line in failed if "StreamDiT" in line], failed  # other packs' failures are not ours


async def _queue(session, url, prompt, client_id):
    async with session.post(url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body["prompt_id"]


async def _run(url: str, prompt: dict, during=None, timeout: float = 300) -> dict:
    """Queues ``prompt``, collects websocket events until it ends; ``during(session, events)`` runs
    alongside (live control)."""
    import aiohttp

    client_id = uuid.uuid4().hex
    events = {"frames": [], "live": [], "end": None, "progress": 0}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            prompt_id = await _queue(session, url, prompt, client_id)
            task = asyncio.create_task(during(session, events)) if during else None
            end = time.time() + timeout
            while events["end"] is None and time.time() < end:
                msg = await ws.receive(timeout=timeout)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                kind, body = data["type"], data.get("data", {})
                if kind == "streamdit.frames":
                    events["frames"].append(body)
                elif kind == "streamdit.live":
                    events["live"].append(body)
                elif kind == "progress":
                    events["progress"] += 1
                elif kind in ("execution_success", "execution_error", "execution_interrupted") and \
                        body.get("prompt_id") == prompt_id:
                    events["end"] = (kind, body)
            if task is not None:
                await task
            for _ in range(100):  # the history entry is written just after the end event
                async with session.get(f"{url}/history/{prompt_id}") as r:
                    events["history"] = (await r.json()).get(prompt_id, {})
                if "outputs" in events["history"]:
                    break
                await asyncio.sleep(0.1)
    return events


def _api(path: Path, info: dict, **widgets) -> dict:
    prompt = to_api(load(path), info)
    for entry in prompt.values():
        for name, value in widgets.items():
            if name in entry["inputs"] and not isinstance(entry["inputs"][name], list):
                entry["inputs"][name] = value
    return prompt


@pytest.mark.parametrize("path", [p for p in EMBEDDED_WORKFLOWS if p.stem != "live_interactive"], ids=lambda p: p.stem)
def test_example_workflow_runs_and_previews(server, path):
    events = asyncio.run(_run(server["url"], _api(path, server["info"], seconds=2.0)))
    assert events["end"][0] == "execution_success", events["end"]
    assert events["frames"], "no preview frames reached the browser during execution"
    assert events["progress"] > 0
    saved = [f for out in events["history"]["outputs"].values() for f in out.get("images", [])]
    assert saved and all((server["output"] / f["subfolder"] / f["filename"]).stat().st_size > 0 for f in saved)


def test_live_prompt_change_and_interrupt(server):
    path = next(p for p in WORKFLOWS if p.stem == "live_interactive")
    prompt = _api(path, server["info"], max_seconds=600.0, schedule=RED)
    replies = {}

    async def control(session, events):
        import aiohttp

        url = server["url"]
        while not events["live"] or len(events["frames"]) < 8:
            await asyncio.sleep(0.1)
        sid = events["live"][0]["session"]
        base = f"{url}/api/streamdit/live"
        json_type = {"Content-Type": "application/json"}
        deep = "[" * 5000 + "]" * 5000
        for name, target, body, headers in [
                ("unknown", "f" * 32, {"prompt": BLUE}, json_type), ("malformed", sid, "{nope", json_type),
                ("wrong type", sid, {"prompt": 7}, json_type), ("too long", sid, {"prompt": "x" * 5000}, json_type),
                ("nested", sid, deep, json_type), ("plain text", sid, {"prompt": BLUE}, {"Content-Type": "text/plain"})]:
            data = body if isinstance(body, str) else json.dumps(body)
            async with session.post(f"{base}/{target}/prompt", data=data, headers=headers) as r:
                replies[name] = r.status
        async with session.post(f"{base}/{sid}/prompt", json={"prompt": BLUE}) as r:
            replies["ok"] = r.status
        switched = len(events["frames"])
        while len(events["frames"]) < switched + 16:
            await asyncio.sleep(0.1)
        events["switched_at"] = switched
        async with session.post(f"{url}/interrupt") as r:
            replies["interrupt"] = r.status
        del aiohttp

    events = asyncio.run(_run(server["url"], prompt, during=control))
    assert replies == {"unknown": 404, "malformed": 400, "wrong type": 400, "too long": 413, "nested": 400,
                       "plain text": 415, "ok": 200, "interrupt": 200}
    assert events["end"][0] == "execution_interrupted", events["end"]
    prompts = [f["prompt"] for f in events["frames"]]
    assert prompts[0] == RED and prompts[-1] == BLUE
    assert [e["state"] for e in events["live"]] == ["running", "ended"]
    recording = events["live"][-1]["recording"]  # the canvas is told which partial recording was kept
    kept = server["output"] / recording["subfolder"] / recording["filename"]
    assert kept.stat().st_size > 0 and kept.name.startswith("live_") and kept.name.endswith("_.mp4")
    recordings = [kept]
    from streamdit_core.world import detect
    from streamdit_core.video import read_video

    colors = detect(read_video(recordings[-1])).color  # the prompt sent took effect in the video
    assert colors[:8] == ["red"] * 8 and colors[-8:] == ["blue"] * 8


def test_live_stop_button_ends_the_run_with_its_recording(server):
    path = next(p for p in WORKFLOWS if p.stem == "live_interactive")

    async def stop(session, events):
        while not events["live"] or len(events["frames"]) < 4:
            await asyncio.sleep(0.1)
        sid = events["live"][0]["session"]
        async with session.post(f"{server['url']}/api/streamdit/live/{sid}/stop", json={}) as r:
            assert r.status == 200

    prompt = _api(path, server["info"], max_seconds=600.0)
    names = []
    for _ in range(2):  # Run twice on the unchanged graph: the live node is never cached
        events = asyncio.run(_run(server["url"], prompt, during=stop))
        assert events["end"][0] == "execution_success", events["end"]
        assert events["frames"], "the second run on an unchanged graph did not stream"
        (saved,) = [f for out in events["history"]["outputs"].values() for f in out.get("images", [])]
        assert (server["output"] / saved["subfolder"] / saved["filename"]).stat().st_size > 0
        names.append(saved["filename"])
    assert names[0] != names[1]  # two recordings
