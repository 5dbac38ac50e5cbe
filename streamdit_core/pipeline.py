"""A ready-to-stream model: StreamDiT + latent codec + text encoder, loaded from one checkpoint.

A StreamDiT checkpoint names its codec (``codec`` metadata: a file beside it) and its text
encoder (``text_encoder``); :meth:`Pipeline.load` resolves both, so ``Pipeline.load()`` gives
the embedded default model, offline, on the best available device.

:meth:`Pipeline.frames` is the streaming loop ``generate`` and ``evaluate`` share: it starts a
:class:`~streamdit_core.stream.Streamer`, applies prompt switches at their video times, decodes
each emitted chunk seam-free and yields frames ``[T, 3, H, W]`` as they are produced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from .checkpoint import CheckpointError, load_checkpoint, load_codec, read_metadata
from .codec import ChunkDecoder, PixelCodec
from .guidance import Guided
from .model import StreamDiT
from .schedule import Partition
from .stream import Streamer
from .text import TextEncoder

__all__ = ["DEFAULT_MODEL", "Pipeline", "PromptSchedule", "resolve_device", "FrameChunk"]

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "embedded" / "model.safetensors"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto": CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class PromptSchedule:
    """Prompts over video time: ``[(seconds, prompt), ...]`` starting at 0, times increasing."""

    entries: tuple[tuple[float, str], ...]

    def __post_init__(self) -> None:
        if not self.entries or self.entries[0][0] != 0:
            raise ValueError("a prompt schedule starts with a prompt at 0 seconds")
        times = [t for t, _ in self.entries]
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError(f"prompt switch times must increase, got {times}")
        for t, p in self.entries:
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"the prompt at {t} s is empty; give it some text")

    @classmethod
    def single(cls, prompt: str) -> "PromptSchedule":
        return cls(((0.0, prompt),))

    def at(self, seconds: float) -> str:
        """The prompt in force at ``seconds`` of video."""
        current = self.entries[0][1]
        for t, p in self.entries:
            if t <= seconds + 1e-9:
                current = p
        return current


@dataclass(frozen=True)
class FrameChunk:
    """Decoded frames leaving the stream: ``frames [T, 3, H, W]`` in 0..1, the index of the
    first one, and the model calls made so far."""

    frames: Tensor
    index: int
    calls: int


@dataclass
class Pipeline:
    """What a stream needs, on one device."""

    model: StreamDiT
    codec: object
    text: TextEncoder
    fps: int
    path: Path | None = None
    guidance: float = 1.0  # the checkpoint's recommended classifier-free guidance scale

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None) -> "Pipeline":
        """Loads a StreamDiT checkpoint with its codec and text encoder (default: the embedded model)."""
        path = Path(path) if path is not None else DEFAULT_MODEL
        if not path.exists():
            hint = (" (the embedded model ships with the package; reinstall it)" if path == DEFAULT_MODEL
                    else "; give the path of a .safetensors StreamDiT checkpoint")
            raise CheckpointError(f"{path}: no such model file{hint}")
        dev = resolve_device(device)
        meta = read_metadata(path)
        model = load_checkpoint(path, device=dev, dtype=dtype)
        codec_name = meta.get("codec", "pixel")
        if codec_name == "pixel":
            codec = PixelCodec()
        else:
            codec_path = Path(codec_name) if Path(codec_name).is_absolute() else path.parent / codec_name
            codec = load_codec(codec_path, device=dev)
        text = TextEncoder()  # the only encoder shipped; other folders can be passed to TextEncoder
        return cls(model, codec, text, int(meta.get("fps", "16")), path, float(meta.get("guidance", "1")))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def frames_per_latent(self) -> int:
        return self.codec.time_factor

    def default_partition(self, chunk: int = 2, steps: int = 16) -> Partition:
        """StreamDiT partition of this model's buffer: ``c = chunk``, ``T = steps`` (K = 0)."""
        return Partition.streamdit(self.model.config.buffer_frames, chunk, T=steps)

    def encode(self, prompts: str | Sequence[str]):
        return self.text.encode(prompts).to(self.device)

    def frames(self, schedule: PromptSchedule | str, partition: Partition | None = None, seed: int = 0,
               warm_start: bool = True, batch: int = 1, overlap: bool = True,
               schedules: Sequence[PromptSchedule] | None = None, guidance: float = 1.0) -> Iterator[FrameChunk]:
        """Streams decoded frames for ever (stop iterating to stop the stream).

        Args:
            schedule: the prompt schedule (or one prompt).
            partition: default :meth:`default_partition`.
            warm_start: start with the uniform trajectory (paper Fig. 13), so the first frames
                are fully denoised; otherwise start from a noise-filled buffer.
            batch: streams run side by side (all with the same schedule unless ``schedules``
                gives one per stream). Frames of stream i are ``frames[i]`` when batch > 1.
            overlap: seam-free chunk decoding (False: each chunk decoded alone, for comparison).
            guidance: classifier-free guidance scale (1: none; each call then runs both
                branches in one batched call, see :class:`~streamdit_core.guidance.Guided`).
        """
        if isinstance(schedule, str):
            schedule = PromptSchedule.single(schedule)
        schedules = list(schedules) if schedules is not None else [schedule] * batch
        if len(schedules) != batch:
            raise ValueError(f"need {batch} prompt schedules, got {len(schedules)}")
        partition = partition or self.default_partition()
        cfg = self.model.config
        shape = (cfg.in_channels, *cfg.latent_size)
        tf = self.frames_per_latent

        def text_at(seconds: float):
            return self.encode([s.at(seconds) for s in schedules])

        current = [s.at(0) for s in schedules]
        with torch.inference_mode():
            model = self.model if guidance == 1.0 else Guided(self.model, guidance)
            stream = Streamer(model, partition, shape, text=text_at(0), batch=batch, seed=seed,
                              device=self.device, dtype=next(self.model.parameters()).dtype)
            decoder = ChunkDecoder(self.codec, overlap=overlap)
            opening = stream.warm_start() if warm_start else None
            if opening is not None:  # K > 0: the reference frames open the video
                yield self._decoded(decoder, opening, batch)
            while True:
                # Switch prompts when the next frame to leave the buffer reaches the switch time.
                seconds = int(stream.state.frame_index[partition.K]) * tf / self.fps
                wanted = [s.at(seconds) for s in schedules]
                if wanted != current:
                    current = wanted
                    stream.set_text(self.encode(current))
                chunk = stream.step()
                if chunk is not None:
                    yield self._decoded(decoder, chunk, batch)

    def _decoded(self, decoder: ChunkDecoder, chunk, batch: int) -> FrameChunk:
        video = decoder.decode(chunk.latents)  # [b, 3, T, H, W]
        frames = video.permute(0, 2, 1, 3, 4).float().cpu()  # [b, T, 3, H, W]
        return FrameChunk(frames[0] if batch == 1 else frames, chunk.index * self.frames_per_latent, chunk.calls)
