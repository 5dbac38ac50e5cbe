"""StreamDiT: real-time streaming text-to-video with a moving-buffer flow-matching DiT.

Pure torch; imports nothing from ComfyUI. The public surface:

- :class:`Partition`, :class:`SigmaWarp`, :class:`MixedPartitions`: the schedule (``schedule.py``).
- :class:`Streamer`: the moving buffer over any velocity model ``model(x, sigma, text) -> v``.
- :class:`StreamDiT`, :class:`StreamDiTConfig`, :data:`PRESETS`: the model.
- :func:`save_checkpoint`, :func:`load_checkpoint`: safetensors with the config inside.

Around them, imported on demand: ``text`` (TextEncoder), ``codec`` (latent codecs, seam-free
chunk decoding), ``data`` (the synthetic world), ``train``, ``metrics``, ``evaluate``,
``pipeline`` (model + codec + text encoder: ``Pipeline.load()`` is the embedded model),
``runtime`` (denoise and decode threads), ``accel`` (the GPU fast path), ``bench``, ``video``
(streaming file writers) and the CLI ``python -m streamdit_core generate|train|evaluate|bench``.
"""

from .checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from .conditioning import FrameText, TextEmbedding
from .model import PRESETS, StreamDiT, StreamDiTConfig
from .schedule import MixedPartitions, Partition, SigmaWarp, TrainingNoise
from .stream import EmittedChunk, StreamError, Streamer, StreamState

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "EmittedChunk",
    "FrameText",
    "MixedPartitions",
    "PRESETS",
    "Partition",
    "SigmaWarp",
    "StreamDiT",
    "StreamDiTConfig",
    "StreamError",
    "StreamState",
    "Streamer",
    "TextEmbedding",
    "TrainingNoise",
    "load_checkpoint",
    "read_config",
    "save_checkpoint",
]
