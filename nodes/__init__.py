"""ComfyUI nodes: thin adapters over streamdit_core (classic V1 node API).

``host.py`` is the only module that touches ComfyUI services; everything here also imports and
runs without ComfyUI (tests call the nodes' functions directly).
"""

from . import host
from .live import StreamDiTLive
from .models import StreamDiTModelLoader, StreamDiTPromptSchedule
from .routes import register_routes
from .sampler import StreamDiTBufferInit, StreamDiTChunkDenoise, StreamDiTSampler
from .v2v import StreamDiTVideoToVideo
from .wan import StreamDiTWanModel

NODE_CLASS_MAPPINGS = {
    "StreamDiTModelLoader": StreamDiTModelLoader,
    "StreamDiTPromptSchedule": StreamDiTPromptSchedule,
    "StreamDiTSampler": StreamDiTSampler,
    "StreamDiTBufferInit": StreamDiTBufferInit,
    "StreamDiTChunkDenoise": StreamDiTChunkDenoise,
    "StreamDiTVideoToVideo": StreamDiTVideoToVideo,
    "StreamDiTLive": StreamDiTLive,
    "StreamDiTWanModel": StreamDiTWanModel,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "StreamDiTModelLoader": "StreamDiT Model Loader",
    "StreamDiTPromptSchedule": "StreamDiT Prompt Schedule",
    "StreamDiTSampler": "StreamDiT Stream Sampler",
    "StreamDiTBufferInit": "StreamDiT Buffer Init",
    "StreamDiTChunkDenoise": "StreamDiT Chunk Denoise",
    "StreamDiTVideoToVideo": "StreamDiT Video to Video",
    "StreamDiTLive": "StreamDiT Live Stream",
    "StreamDiTWanModel": "StreamDiT Wan Model (MODEL + CLIP + VAE)",
}


def setup_host() -> None:
    """Registers models/streamdit/ and the live routes with ComfyUI (no-ops outside it)."""
    host.register_model_folder()
    host.add_routes(register_routes)
