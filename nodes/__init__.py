"""ComfyUI nodes: thin adapters over streamdit_core on ComfyUI's V3 node schema.

``host.py`` is the only module that touches ComfyUI; inside ComfyUI the nodes are
``comfy_api.latest.io.ComfyNode`` classes, outside it they run on the stand-ins of
``standalone_io.py`` (tests call ``execute`` directly).
"""

from . import host
from .live import StreamDiTLive
from .models import StreamDiTModelLoader, StreamDiTPromptSchedule
from .routes import register_routes
from .sampler import StreamDiTBufferInit, StreamDiTChunkDenoise, StreamDiTSampler
from .v2v import StreamDiTVideoToVideo
from .wan import StreamDiTWanModel

NODES = [StreamDiTModelLoader, StreamDiTPromptSchedule, StreamDiTSampler, StreamDiTBufferInit, StreamDiTChunkDenoise,
         StreamDiTVideoToVideo, StreamDiTLive, StreamDiTWanModel]


def node_classes() -> dict[str, type]:
    """``{node id: class}`` of every node, as ComfyUI registers them."""
    return {node.define_schema().node_id: node for node in NODES}


class StreamDiTExtension(host.ComfyExtension):
    """The pack as ComfyUI's V3 loader takes it: its node list."""

    async def get_node_list(self) -> list:
        return list(NODES)


def setup_host() -> None:
    """Registers models/streamdit/ and the live routes with ComfyUI (no-ops outside it)."""
    host.register_model_folder()
    host.add_routes(register_routes)
