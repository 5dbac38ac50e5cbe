"""The one module that touches ComfyUI: folders, device, interrupt, progress, the web server.

Every function works outside ComfyUI too (tests, scripts): there is then no folder registry
(the embedded model is still listed), the device is CUDA when present, interrupts come from
:func:`interrupt`, progress goes nowhere, events are dropped and routes are not served.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import torch

FOLDER = "streamdit"  # models/streamdit/
MODEL_EXTENSIONS = {".safetensors"}


def _comfy(module: str):
    """A ComfyUI module, or None outside ComfyUI.

    ComfyUI imports all of these before it loads custom nodes, so a lookup is enough; it costs
    nothing in the per-call loop, where a failed import would search the path every time.
    """
    return sys.modules.get(module)


def _node_schema():
    """ComfyUI's V3 node schema (``comfy_api.latest``) inside ComfyUI, else the stand-ins of
    :mod:`nodes.standalone_io` (the nodes then run without ComfyUI: tests, scripts)."""
    if _comfy("comfy") is not None or _comfy("folder_paths") is not None:
        from comfy_api.latest import ComfyExtension, io
    else:
        from .standalone_io import ComfyExtension, io
    return ComfyExtension, io


ComfyExtension, io = _node_schema()


# ------------------------------------------------------------------------------------- folders

def register_model_folder() -> None:
    """Adds ``models/streamdit/`` to ComfyUI's folder registry, keeping folders a user's
    extra_model_paths.yaml already gave it."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    paths = list(paths) + ([default] if default not in paths else [])
    folder_paths.folder_names_and_paths[FOLDER] = (paths, MODEL_EXTENSIONS)


def model_files() -> list[str]:
    """Checkpoints in ``models/streamdit/`` (relative names), empty outside ComfyUI."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return []
    try:
        return folder_paths.get_filename_list(FOLDER)
    except KeyError:
        return []


def model_path(name: str) -> Path | None:
    """The full path of a file listed by :func:`model_files`, or None."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return None
    found = folder_paths.get_full_path(FOLDER, name)
    return Path(found) if found else None


_output_override: Path | None = None


def set_output_directory(path: str | os.PathLike | None) -> None:
    """Where recordings go outside ComfyUI (tests); None restores the default."""
    global _output_override
    _output_override = None if path is None else Path(path)


def output_directory() -> Path:
    """ComfyUI's output folder; outside it, a ``streamdit-output`` folder in the temp dir."""
    if _output_override is not None:
        return _output_override
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return Path(tempfile.gettempdir()) / "streamdit-output"


def save_path(prefix: str, extension: str, width: int = 0, height: int = 0) -> tuple[Path, str, str]:
    """A new output file for ``prefix`` named as ComfyUI's own savers name theirs
    (``<output>/<subfolder>/<name>_<NNNNN>_.<ext>``, the counter one past the highest there):
    ComfyUI's ``folder_paths.get_save_image_path`` does it (``%date%``-style fields, and a refusal
    of a path outside the output folder); outside ComfyUI the same rule runs here. Returns
    ``(path, subfolder, filename)``."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None and _output_override is None:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            prefix, folder_paths.get_output_directory(), width, height)
        filename = f"{name}_{counter:05}_.{extension}"
        return Path(folder) / filename, subfolder, filename
    root = output_directory().resolve()
    subfolder, _, name = os.path.normpath(prefix).rpartition(os.sep)
    folder = (root / subfolder).resolve()
    if name in ("", ".", "..") or os.path.commonpath((root, folder)) != str(root):
        raise ValueError(f"filename_prefix {prefix!r} leaves the output folder; use a name like 'streamdit/live'")
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[len(name) + 1:len(name) + 6]) for p in folder.iterdir()
             if p.name.startswith(name + "_") and p.name[len(name) + 1:len(name) + 6].isdigit()
             and p.name[len(name) + 6:len(name) + 7] == "_"]
    filename = f"{name}_{max(taken, default=0) + 1:05}_.{extension}"
    return folder / filename, subfolder, filename


# ------------------------------------------------------------------------------------- device

def device() -> torch.device:
    """The device ComfyUI computes on (its ``--cpu`` respected); CUDA when present outside it."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_models(models: list) -> None:
    """Has ComfyUI's model management load ComfyUI models (ModelPatchers) to its device,
    offloading others as memory requires; models it holds loaded already cost only the check
    (so a stream's model is loaded once, not on every call); nothing outside ComfyUI."""
    mm = _comfy("comfy.model_management")
    if mm is None or not models:
        return
    loaded = mm.loaded_models(only_currently_used=False)
    missing = [m for m in models if not any(m is held for held in loaded)]
    if missing:
        mm.load_models_gpu(missing)


def wan_text_to_video_problem(model) -> str | None:
    """Why a ComfyUI MODEL is not a Wan 2.1-architecture text-to-video model (said for the
    artist, with the fix), or None when it is one: read from ComfyUI's own model class, not from
    tensor shapes."""
    model_base = _comfy("comfy.model_base")
    base = getattr(model, "model", None)
    if model_base is None or base is None or not hasattr(base, "diffusion_model"):
        return ("the MODEL input is not a ComfyUI video diffusion model; load a Wan 2.1 text-to-video model "
                "with Load Diffusion Model")
    if not isinstance(base, model_base.WAN21):
        return (f"the MODEL is a {type(base).__name__} model, not Wan 2.1; load a Wan 2.1 text-to-video model "
                "(wan2.1_t2v_1.3B or 14B) with Load Diffusion Model")
    if type(base) is not model_base.WAN21 or getattr(base, "image_to_video", False):
        kind = "image-to-video" if getattr(base, "image_to_video", False) else type(base).__name__
        return (f"the MODEL is a Wan {kind} model, which needs conditioning a text stream does not have; use a "
                "text-to-video model (wan2.1_t2v_1.3B or 14B)")
    return None


# ----------------------------------------------------------------------------------- interrupt

class _StandaloneInterrupt(Exception):
    """Raised outside ComfyUI after :func:`interrupt` (ComfyUI raises its own class)."""


_interrupt_flag = threading.Event()


def interrupt_exception() -> type[BaseException]:
    """The exception class an interrupted loop raises: ComfyUI's InterruptProcessingException."""
    mm = _comfy("comfy.model_management")
    return mm.InterruptProcessingException if mm is not None else _StandaloneInterrupt


def interrupt() -> None:
    """Requests an interrupt, as ComfyUI's Cancel button does."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.interrupt_current_processing(True)
    else:
        _interrupt_flag.set()


def check_interrupt() -> None:
    """Raises :func:`interrupt_exception` when an interrupt was requested (and clears it)."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    elif _interrupt_flag.is_set():
        _interrupt_flag.clear()
        raise _StandaloneInterrupt("processing interrupted")


# ------------------------------------------------------------------------------------ progress

class Progress:
    """ComfyUI's progress bar on a node (a no-op outside ComfyUI)."""

    def __init__(self, total: int, node_id: str | None = None):
        utils = _comfy("comfy.utils")
        self.total = max(1, int(total))
        self._bar = utils.ProgressBar(self.total, node_id=node_id) if utils is not None else None

    def update(self, value: int) -> None:
        """Sets the bar to ``value`` (inside ComfyUI also an interrupt check point)."""
        if self._bar is not None:
            self._bar.update_absolute(min(int(value), self.total), self.total)


# ------------------------------------------------------------------------------ server, events

def _server():
    server = _comfy("server")
    return None if server is None else getattr(server.PromptServer, "instance", None)


def has_server() -> bool:
    """Whether ComfyUI's web server runs (events then reach the browser)."""
    return _server() is not None


def send_event(event: str, data: dict) -> bool:
    """Sends a JSON event to the browser that queued the running prompt (all when unknown).
    Thread-safe. Returns False when there is no server."""
    server = _server()
    if server is None:
        return False
    server.send_sync(event, data, getattr(server, "client_id", None))
    return True


def add_routes(register: Callable[[Any, Any], None]) -> bool:
    """Calls ``register(routes, web)`` with the server's aiohttp route table and ``aiohttp.web``;
    False when there is no server (routes must be added while ComfyUI loads the pack)."""
    server = _server()
    if server is None:
        return False
    from aiohttp import web

    register(server.routes, web)
    return True


def video_output(path: Path) -> Any:
    """A VIDEO value for ComfyUI's video nodes (SaveVideo, GetVideoComponents) from a file;
    the path itself outside ComfyUI."""
    try:
        from comfy_api.input_impl import VideoFromFile
    except ImportError:
        return str(path)
    return VideoFromFile(str(path))
