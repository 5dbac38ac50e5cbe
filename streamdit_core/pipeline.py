"""A ready-to-stream model: StreamDiT + latent codec + text encoder, loaded from one checkpoint.

A StreamDiT checkpoint names its codec (``codec`` metadata: a file beside it) and its text
encoder (``text_encoder``); :meth:`Pipeline.load` resolves both, so ``Pipeline.load()`` gives
the embedded default model, offline, on the best available device. Two models are embedded: the
default, a distilled student that makes one unguided call per chunk (``"embedded"``), and the
guided multi-step teacher it was distilled from (``"embedded-teacher"``).

:class:`Session` is one running stream: a :class:`~streamdit_core.stream.Streamer` plus
seam-free chunk decoding, prompts that change while it runs (:class:`PromptSwitch`: immediate,
blended, or per chunk), video-to-video fill, and snapshots another session continues exactly.
:meth:`Pipeline.frames` is the loop ``generate`` and ``evaluate`` share: a session that follows a
:class:`PromptSchedule` and yields frames ``[T, 3, H, W]`` as they are produced. The ComfyUI
nodes drive sessions directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from .accel import Accelerated, FastPath, accelerate
from .checkpoint import CheckpointError, load_checkpoint, load_codec, read_metadata
from .codec import ChunkDecoder, PixelCodec
from .guidance import Guided
from .model import StreamDiT
from .prompts import SWITCH_MODES, PromptSchedule, PromptSwitch
from .schedule import Partition
from .stream import EmittedChunk, StreamState, Streamer
from .text import TextEncoder
from .velocity import ModelWrapper, placement

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "EMBEDDED_TEACHER", "FrameChunk", "Pipeline", "PromptSchedule",
           "PromptSwitch", "Session", "StreamSnapshot", "SWITCH_MODES", "model_path", "resolve_device"]

_EMBEDDED_DIR = Path(__file__).resolve().parent / "weights" / "embedded"
DEFAULT_MODEL = _EMBEDDED_DIR / "model.safetensors"  # the distilled student: 1 unguided call per chunk
EMBEDDED_TEACHER = _EMBEDDED_DIR / "teacher.safetensors"  # its teacher: guidance 5, 16 steps per frame
EMBEDDED_MODELS = {"embedded": DEFAULT_MODEL, "embedded-teacher": EMBEDDED_TEACHER}
UNDISTILLED_STEPS = 16  # default denoising steps per frame T for a model that is not distilled


def model_path(model: str | os.PathLike | None = None) -> Path:
    """A checkpoint path from a path, an embedded model's name (``"embedded"``,
    ``"embedded-teacher"``) or None (the default model). Does not check that the file exists."""
    if model is None:
        return DEFAULT_MODEL
    name = os.fspath(model)
    if name in EMBEDDED_MODELS and not Path(name).exists():
        return EMBEDDED_MODELS[name]
    return Path(name)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto": CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    accelerated: Accelerated | None = None  # the model on a fast path (see accelerate), or None
    steps_per_chunk: int | None = None  # a distilled student's micro steps per chunk (None: not distilled)

    @property
    def velocity(self):
        """What streams call: the model on its fast path, or the model itself."""
        return self.model if self.accelerated is None else self.accelerated

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, fast: FastPath | str | None = "auto") -> "Pipeline":
        """Loads a StreamDiT checkpoint with its codec and text encoder (default: the embedded model).

        ``path``: a checkpoint file, or an embedded model's name (see :func:`model_path`).
        ``fast``: the :class:`~streamdit_core.accel.FastPath` streams run the model on;
        ``"auto"`` is :meth:`FastPath.auto` on CUDA (bf16 with CUDA graphs) and the plain model
        on a CPU; None is always the plain model.
        """
        path = model_path(path)
        if not path.exists():
            hint = (" (the embedded models ship with the package; reinstall it)" if path in EMBEDDED_MODELS.values()
                    else "; give the path of a .safetensors StreamDiT checkpoint, or "
                         + " / ".join(repr(n) for n in EMBEDDED_MODELS))
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
        pipe = cls(model, codec, text, int(meta.get("fps", "16")), path, float(meta.get("guidance", "1")),
                   steps_per_chunk=int(meta["steps_per_chunk"]) if "steps_per_chunk" in meta else None)
        if fast == "auto":
            fast = FastPath.auto(dev) if dev.type == "cuda" else None
        return pipe.accelerate(fast) if fast is not None else pipe

    def accelerate(self, path: FastPath | None = None) -> "Pipeline":
        """Streams from now on run the model on ``path`` (default: the best for its device);
        the model is converted in place (dtype, fp8 layers). Returns self."""
        self.accelerated = accelerate(self.model, path)
        return self

    @property
    def device(self) -> torch.device:
        """Where streams run (:func:`~streamdit_core.velocity.placement` of the model)."""
        return placement(self.model)[0]

    @property
    def geometry(self):
        """The model's :class:`~streamdit_core.velocity.Geometry` (buffer, channels, sizes, warp)."""
        return self.model.geometry

    @property
    def frames_per_latent(self) -> int:
        return self.codec.time_factor

    def default_steps(self, chunks: int) -> int:
        """Denoising steps per frame ``T`` this model expects with ``chunks`` chunks in its buffer:
        ``N x steps_per_chunk`` for a distilled student (its checkpoint says ``steps_per_chunk``,
        1 for one call per chunk), 16 otherwise."""
        return chunks * self.steps_per_chunk if self.steps_per_chunk else UNDISTILLED_STEPS

    def default_steps_per_chunk(self, chunks: int) -> int:
        """Micro steps per chunk ``s`` for :meth:`default_steps` (at least 1)."""
        return max(1, round(self.default_steps(chunks) / chunks))

    def default_partition(self, chunk: int = 2, steps: int | None = None) -> Partition:
        """StreamDiT partition of this model's buffer: ``c = chunk``, ``T = steps`` (K = 0;
        default: :meth:`default_steps_per_chunk` micro steps per chunk)."""
        B = self.geometry.buffer_frames
        if steps is None:
            return Partition.streamdit(B, chunk, s=self.default_steps_per_chunk(max(1, B // chunk)))
        return Partition.streamdit(B, chunk, T=steps)

    def encode(self, prompts: str | Sequence[str]):
        return self.text.encode(prompts).to(self.device)

    def session(self, prompt: str | Sequence[str], partition: Partition | None = None, **kwargs) -> "Session":
        """A :class:`Session` on this model (see there for the arguments)."""
        return Session(self, prompt, partition, **kwargs)

    def frames(self, schedule: PromptSchedule | str, partition: Partition | None = None, seed: int = 0,
               warm_start: bool = True, batch: int = 1, overlap: bool = True,
               schedules: Sequence[PromptSchedule] | None = None, guidance: float = 1.0,
               switch: PromptSwitch | None = None) -> Iterator[FrameChunk]:
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
            switch: how scheduled prompt changes apply (default: immediately, as in the paper).
                Immediate and blended switches start when the next frame to leave the buffer
                reaches the switch time; a per-chunk switch conditions the frames from the
                switch time on, from the moment they enter.
        """
        if isinstance(schedule, str):
            schedule = PromptSchedule.single(schedule)
        schedules = list(schedules) if schedules is not None else [schedule] * batch
        if len(schedules) != batch:
            raise ValueError(f"need {batch} prompt schedules, got {len(schedules)}")
        session = Session(self, [s.at(0) for s in schedules], partition, seed=seed, guidance=guidance,
                          batch=batch, overlap=overlap, switch=switch)
        opening = session.start(warm_start)
        if opening is not None:  # K > 0: the reference frames open the video
            yield opening
        while True:
            session.follow(schedules)
            chunk = session.step()
            if chunk is not None:
                yield chunk


@dataclass(frozen=True)
class StreamSnapshot:
    """A paused stream that a later :class:`Session` continues exactly (see :meth:`Session.snapshot`).

    Attributes:
        state: the buffer (a private copy).
        prompts: the prompt per stream in force.
        guidance, overlap, switch: the session's settings.
        decoder_tail: the decoder's left context, so the continued video has no seam.
    """

    state: StreamState
    prompts: tuple[str, ...]
    guidance: float
    overlap: bool
    switch: PromptSwitch
    decoder_tail: Tensor | None

    @property
    def partition(self) -> Partition:
        return self.state.partition

    @property
    def frames_out(self) -> int:
        """Latent frames the stream has emitted so far."""
        K = self.state.partition.K
        return int(self.state.frame_index[K])


class Session:
    """One stream on a :class:`Pipeline`: prompts that can change while it runs, decoding, counters.

    Args:
        pipe: the model, codec and text encoder.
        prompt: one prompt, or one per stream when ``batch > 1``.
        partition: default :meth:`Pipeline.default_partition`.
        seed: seeds all of the stream's noise.
        guidance: classifier-free guidance scale (default: the checkpoint's recommended scale).
        batch: streams side by side.
        overlap: seam-free chunk decoding.
        switch: how :meth:`set_prompt` takes effect.
        snapshot: continue a :class:`StreamSnapshot` instead of starting a new buffer (its
            partition, guidance, overlap and switch then apply unless given here).
        size: ``(H, W)`` of the video frames (default: the model's own size); multiples of the
            codec's spatial factor times the patch size.
        before_call: called with no arguments before every model call, warm start included
            (a host's progress and interrupt check: an exception it raises stops the stream
            before the call, leaving it where it was).

    Frames come out as :class:`FrameChunk` (``frames [T, 3, H, W]``, ``[b, T, 3, H, W]`` when
    ``batch > 1``); a model error or an interrupt leaves the stream where it was.
    """

    def __init__(self, pipe: Pipeline, prompt: str | Sequence[str], partition: Partition | None = None, *,
                 seed: int = 0, guidance: float | None = None, batch: int = 1, overlap: bool | None = None,
                 switch: PromptSwitch | None = None, snapshot: StreamSnapshot | None = None,
                 size: tuple[int, int] | None = None, before_call: Callable[[], None] | None = None):
        self.pipe = pipe
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        if len(prompts) != batch:
            raise ValueError(f"need {batch} prompts (one per stream), got {len(prompts)}")
        self.batch = batch
        if snapshot is not None:
            partition = partition or snapshot.partition
            guidance = snapshot.guidance if guidance is None else guidance
            overlap = snapshot.overlap if overlap is None else overlap
            switch = switch or snapshot.switch
        self.switch = switch or PromptSwitch()
        guidance = pipe.guidance if guidance is None else float(guidance)
        if guidance < 0:
            raise ValueError(f"guidance must be at least 0, got {guidance}")
        self.guidance = guidance
        self.overlap = True if overlap is None else overlap
        self.model = pipe.velocity if guidance == 1.0 else Guided(pipe.velocity, guidance)
        if before_call is not None:
            self.model = _Hooked(self.model, before_call)
        self.prompts = prompts
        if snapshot is not None:
            if snapshot.state.x.shape[0] != batch:
                raise ValueError(f"the snapshot holds {snapshot.state.x.shape[0]} streams, not batch={batch}")
            if partition != snapshot.partition:
                raise ValueError(f"a snapshot continues with its own partition {snapshot.partition}, not {partition}")
            self.stream = Streamer.resume(self.model, snapshot.state.clone())  # its prompt state included
            tail = snapshot.decoder_tail
            self.decoder = ChunkDecoder(pipe.codec, overlap=self.overlap, tail=None if tail is None else tail.clone())
            self.prompts = list(snapshot.prompts)
            self.set_prompt(prompts)  # a new prompt switches as asked; the same one changes nothing
        else:
            text = pipe.encode(prompts)
            partition = partition or pipe.default_partition()
            device, dtype = placement(pipe.model)
            self.stream = Streamer(self.model, partition, (pipe.geometry.in_channels, *self._latent_size(size)),
                                   text=text, batch=batch, seed=seed, device=device, dtype=dtype)
            self.decoder = ChunkDecoder(pipe.codec, overlap=self.overlap)

    # ------------------------------------------------------------------------------- clocks

    @property
    def partition(self) -> Partition:
        return self.stream.partition

    @property
    def calls(self) -> int:
        """Model calls made by this stream (a guided call counts once)."""
        return self.stream.state.calls

    @property
    def seconds_out(self) -> float:
        """Video time of the next frame to leave the buffer."""
        st = self.stream.state
        return int(st.frame_index[self.partition.K]) * self.pipe.frames_per_latent / self.pipe.fps

    @property
    def seconds_in(self) -> float:
        """Video time of the next frame to enter the buffer."""
        return self.stream.state.next_index * self.pipe.frames_per_latent / self.pipe.fps

    # ------------------------------------------------------------------------------- starts

    @torch.inference_mode()
    def start(self, warm: bool = True) -> FrameChunk | None:
        """Warm start (the uniform trajectory; paper Fig. 13) or keep the cold noise buffer.

        Returns the opening reference frames when ``K > 0``.
        """
        if not warm:
            return None
        opening = self.stream.warm_start()
        return None if opening is None else self._decoded(opening)

    @torch.inference_mode()
    def fill_video(self, video: Tensor, strength: float) -> FrameChunk | None:
        """Video-to-video: ``video [T, 3, H, W]`` (or ``[b, T, 3, H, W]``) in 0..1 at the model's
        size becomes the buffer and the queued source; frame i comes out as frame i.

        Frames beyond the buffer are queued; the clip is padded with its last frame so every
        source frame leaves the stream (take ``T`` frames out).
        """
        if video.dim() == 4:
            video = video[None]
        H, W = self.frame_size
        if video.dim() != 5 or video.shape[2] != 3 or tuple(video.shape[-2:]) != (H, W):
            raise ValueError(f"video must be frames [T, 3, H={H}, W={W}] in 0..1, got {list(video.shape)}")
        P, tf = self.partition, self.pipe.frames_per_latent
        need = max(P.B * tf, -(-video.shape[1] // tf) * tf) + P.N * P.c * tf  # whole latents, then a flush
        pad = video[:, -1:].expand(-1, need - video.shape[1], -1, -1, -1)
        clip = torch.cat([video, pad], 1).to(self.pipe.device)  # [b, T', 3, H, W]
        latents = self.pipe.codec.encode(clip.transpose(1, 2).float())  # [b, C, F, h, w]
        opening = self.stream.fill_video(latents, strength)
        return None if opening is None else self._decoded(opening)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the video frames this stream makes."""
        f = getattr(self.pipe.codec, "space_factor", 1)
        return self.stream.latent_shape[1] * f, self.stream.latent_shape[2] * f

    def _latent_size(self, size: tuple[int, int] | None) -> tuple[int, int]:
        cfg = self.pipe.geometry
        if size is None:
            return tuple(cfg.latent_size)
        step = getattr(self.pipe.codec, "space_factor", 1) * cfg.patch_size
        H, W = (int(n) for n in size)
        if H < step or W < step or H % step or W % step:
            native = tuple(n * step // cfg.patch_size for n in cfg.latent_size)
            raise ValueError(f"frame size {H}x{W} must be positive multiples of {step} for this model "
                             f"(its own size is {native[0]}x{native[1]})")
        return H * cfg.patch_size // step, W * cfg.patch_size // step

    # ------------------------------------------------------------------------------ prompts

    def set_prompt(self, prompt: str | Sequence[str]) -> None:
        """A new prompt (one per stream), taking effect as :attr:`switch` says."""
        prompts = [prompt] * self.batch if isinstance(prompt, str) else list(prompt)
        if len(prompts) != self.batch or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"need {self.batch} non-empty prompt(s), got {prompt!r}")
        if prompts == self.prompts:
            return
        mode = self.switch.mode
        self.stream.set_text(self.pipe.encode(prompts), entering_only=mode == "chunk",
                             blend_calls=self.switch.blend_calls if mode == "blend" else 0)
        self.prompts = prompts

    def follow(self, schedule: PromptSchedule | Sequence[PromptSchedule]) -> None:
        """Switches to the prompt ``schedule`` (one per stream, or one for all) says is due.

        Immediate and blended switches are due when the next frame to leave the buffer reaches
        the switch time; a per-chunk switch when the next frame to enter does, so the frames from
        the switch time on are the ones conditioned on the new prompt.
        """
        schedules = [schedule] * self.batch if isinstance(schedule, PromptSchedule) else list(schedule)
        seconds = self.seconds_in if self.switch.mode == "chunk" else self.seconds_out
        wanted = [s.at(seconds) for s in schedules]
        if wanted != self.prompts:
            self.set_prompt(wanted)

    # ---------------------------------------------------------------------------- streaming

    def step(self) -> FrameChunk | None:
        """One model call; the decoded frames that left the buffer, if any."""
        chunk = self.step_latents()
        return None if chunk is None else self.decode(chunk)

    @torch.inference_mode()
    def step_latents(self) -> EmittedChunk | None:
        """One model call; the latents that left the buffer, if any (decode them in order with
        :meth:`decode`, possibly on another thread: see :mod:`streamdit_core.runtime`)."""
        return self.stream.step()

    @torch.inference_mode()
    def decode(self, chunk: EmittedChunk) -> FrameChunk:
        """Decodes emitted latents seam-free (chunks must come in the order they left)."""
        return self._decoded(chunk)

    def next_chunk(self) -> FrameChunk:
        """Model calls until frames leave (``s`` calls, fewer mid-cycle)."""
        while True:
            chunk = self.step()
            if chunk is not None:
                return chunk

    def snapshot(self) -> StreamSnapshot:
        """A copy of where the stream stands, for a later :class:`Session` to continue."""
        tail = self.decoder.tail
        return StreamSnapshot(self.stream.state.clone(), tuple(self.prompts), self.guidance, self.overlap,
                              self.switch, None if tail is None else tail.clone())

    def _decoded(self, chunk) -> FrameChunk:
        video = self.decoder.decode(chunk.latents)  # [b, 3, T, H, W]
        frames = to_host(video.permute(0, 2, 1, 3, 4))  # [b, T, 3, H, W]
        tf = self.pipe.frames_per_latent
        return FrameChunk(frames[0] if self.batch == 1 else frames, chunk.index * tf, chunk.calls)


def to_host(t: Tensor) -> Tensor:
    """``t`` as float32 on the CPU. From a GPU it goes through pinned (page-locked) memory in one
    asynchronous copy, and only the current stream is waited for, not the whole device."""
    if t.device.type != "cuda":
        return t.float().cpu()
    src = t.float().contiguous()
    host = torch.empty(src.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(src, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host


class _Hooked(ModelWrapper):
    """A velocity model that runs ``hook()`` before each call."""

    def __init__(self, model, hook: Callable[[], None]):
        super().__init__(model)
        self.hook = hook

    def forward(self, x: Tensor, sigma: Tensor, text: Any) -> Tensor:
        self.hook()
        return self.inner(x, sigma, text)
