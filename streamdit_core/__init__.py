"""StreamDiT: real-time streaming text-to-video with a moving-buffer flow-matching DiT.

Pure torch; imports nothing from ComfyUI. The public surface (what the ComfyUI nodes, the tests
and users rely on), by the module it lives in:

- ``schedule``: :class:`Partition`, :class:`SigmaWarp`, :class:`MixedPartitions`, :class:`TrainingNoise`.
- ``velocity``: the contracts, :class:`Geometry`, :class:`VelocityModel`, :class:`Codec`,
  :class:`ModelWrapper`, :class:`CallCounter`, :func:`placement`.
- ``conditioning``: :class:`TextEmbedding`, :class:`FrameText`, :func:`per_prompt`.
- ``prompts``: :class:`PromptSchedule`, :class:`PromptSwitch`, :class:`PromptState`, ``SWITCH_MODES``.
- ``stream``: :class:`Streamer` (the moving buffer over any velocity model), :class:`StreamState`,
  :class:`EmittedChunk`, :class:`StreamError`.
- ``model``: :class:`StreamDiT`, :class:`StreamDiTConfig`, :data:`PRESETS`.
- ``checkpoint``: :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`read_config`.
- ``pipeline``: :class:`Pipeline` (model + codec + text encoder; ``Pipeline.load()`` is the
  embedded model), the built-in model names, :func:`resolve_device`.
- ``session``: :class:`Session` (one running stream), :class:`StreamSnapshot`, :class:`FrameChunk`.
- ``runtime``: :class:`Runtime` (denoise and decode threads), :class:`RuntimeStats`.
- ``video``: :func:`open_writer`, :func:`read_video`.
- ``wan_vae``: :class:`WanFrameRule` (Wan 2.1's VAE time rule, for codecs over a Wan VAE).
- ``text``: :class:`TextEncoder` (transformers itself is imported when a prompt is first encoded).

Around them, imported on demand: ``codec`` (latent codecs, seam-free
chunk decoding), ``attention``, ``guidance``, ``world`` (the synthetic world, its metrics and
evaluation), ``train``, ``distill``, ``accel`` (the GPU fast path), ``bench``, and the CLI
``python -m streamdit_core generate|train|distill|evaluate|bench``.
"""

from .checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from .conditioning import FrameText, TextEmbedding, per_prompt
from .model import PRESETS, StreamDiT, StreamDiTConfig
from .pipeline import DEFAULT_MODEL, EMBEDDED_MODELS, EMBEDDED_TEACHER, Pipeline, model_path, resolve_device
from .prompts import SWITCH_MODES, PromptSchedule, PromptState, PromptSwitch
from .runtime import Runtime, RuntimeStats
from .schedule import MixedPartitions, Partition, SigmaWarp, TrainingNoise
from .session import FrameChunk, Session, StreamSnapshot
from .text import TextEncoder
from .stream import EmittedChunk, StreamError, Streamer, StreamState
from .velocity import CallCounter, Codec, Geometry, ModelWrapper, VelocityModel, placement
from .video import open_writer, read_video
from .wan_vae import WanFrameRule

__version__ = "0.1.0"

__all__ = [
    "CallCounter",
    "CheckpointError",
    "Codec",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "EMBEDDED_TEACHER",
    "EmittedChunk",
    "FrameChunk",
    "FrameText",
    "Geometry",
    "MixedPartitions",
    "ModelWrapper",
    "PRESETS",
    "Partition",
    "Pipeline",
    "PromptSchedule",
    "PromptState",
    "PromptSwitch",
    "Runtime",
    "RuntimeStats",
    "SWITCH_MODES",
    "Session",
    "SigmaWarp",
    "StreamDiT",
    "StreamDiTConfig",
    "StreamError",
    "StreamSnapshot",
    "StreamState",
    "Streamer",
    "TextEmbedding",
    "TextEncoder",
    "TrainingNoise",
    "VelocityModel",
    "WanFrameRule",
    "load_checkpoint",
    "model_path",
    "open_writer",
    "per_prompt",
    "placement",
    "read_config",
    "read_video",
    "resolve_device",
    "save_checkpoint",
]
