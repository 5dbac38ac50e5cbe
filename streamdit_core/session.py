"""One running stream: a :class:`Session` on a :class:`~streamdit_core.pipeline.Pipeline`.

A session is a :class:`~streamdit_core.stream.Streamer` plus what a video needs around it: the
prompts as strings (encoded by the pipeline's text encoder) that change while it runs, as a
:class:`~streamdit_core.prompts.PromptSwitch` says (immediate, blended, or per chunk);
classifier-free guidance; seam-free chunk decoding into frames :class:`FrameChunk`
``[T, 3, H, W]`` in 0..1; warm start and video-to-video fill; and :meth:`Session.snapshot`, a
:class:`StreamSnapshot` that :meth:`Session.resume` continues exactly (the chained segments of a
storyboard). :class:`~streamdit_core.runtime.Runtime` runs a session on threads for real time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from .codec import ChunkDecoder
from .guidance import Guided
from .prompts import PromptSchedule, PromptSwitch
from .schedule import Partition
from .stream import EmittedChunk, StreamState, Streamer
from .velocity import ModelWrapper, placement

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["FrameChunk", "Session", "StreamSnapshot", "to_host"]


@dataclass(frozen=True)
class FrameChunk:
    """Decoded frames leaving the stream: ``frames [T, 3, H, W]`` in 0..1, the index of the
    first one, and the model calls made so far."""

    frames: Tensor
    index: int
    calls: int



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
        size: ``(H, W)`` of the video frames (default: the model's own size); multiples of the
            codec's spatial factor times the patch size.
        before_call: called with no arguments before every model call, warm start included
            (a host's progress and interrupt check: an exception it raises stops the stream
            before the call, leaving it where it was).

    Frames come out as :class:`FrameChunk` (``frames [T, 3, H, W]``, ``[b, T, 3, H, W]`` when
    ``batch > 1``); a model error or an interrupt leaves the stream where it was. To continue a
    :meth:`snapshot`, use :meth:`resume`.
    """

    def __init__(self, pipe: Pipeline, prompt: str | Sequence[str], partition: Partition | None = None, *,
                 seed: int = 0, guidance: float | None = None, batch: int = 1, overlap: bool = True,
                 switch: PromptSwitch | None = None, size: tuple[int, int] | None = None,
                 before_call: Callable[[], None] | None = None):
        prompts = _prompt_list(prompt, batch)
        self._setup(pipe, batch, guidance, overlap, switch, before_call)
        self.prompts = prompts
        self._labels: list[tuple[int, list[str]]] = [(0, prompts)]  # (first latent frame, prompts)
        partition = partition or pipe.default_partition()
        device, dtype = placement(pipe.model)
        self.stream = Streamer(self.model, partition, (pipe.geometry.in_channels, *self._latent_size(size)),
                               text=pipe.encode(prompts), batch=batch, seed=seed, device=device, dtype=dtype,
                               switch_model=self.switch_model)
        self.decoder = ChunkDecoder(pipe.codec, overlap=self.overlap)

    @classmethod
    def resume(cls, pipe: Pipeline, snapshot: StreamSnapshot, prompt: str | Sequence[str] | None = None, *,
               guidance: float | None = None, overlap: bool | None = None, switch: PromptSwitch | None = None,
               before_call: Callable[[], None] | None = None) -> "Session":
        """A session that continues ``snapshot`` exactly: its buffer, noise, decoder context and
        conditioning, a prompt switch in progress included (the snapshot itself is not changed).

        Args:
            prompt: the prompt from now on (one per stream); a different prompt from the
                snapshot's switches as ``switch`` says. Default: the snapshot's prompts.
            guidance, overlap, switch: default: the snapshot's.
            before_call: as for :class:`Session`.
        """
        batch = snapshot.state.x.shape[0]
        prompts = list(snapshot.prompts) if prompt is None else _prompt_list(prompt, batch)
        self = cls.__new__(cls)
        self._setup(pipe, batch, snapshot.guidance if guidance is None else guidance,
                    snapshot.overlap if overlap is None else overlap, switch or snapshot.switch, before_call)
        self.prompts = list(snapshot.prompts)
        self._labels = [(0, list(snapshot.prompts))]
        self.stream = Streamer.resume(self.model, snapshot.state.clone(), self.switch_model)  # its prompt state included
        tail = snapshot.decoder_tail
        self.decoder = ChunkDecoder(pipe.codec, overlap=self.overlap, tail=None if tail is None else tail.clone())
        self.set_prompt(prompts)  # a new prompt switches as asked; the same one changes nothing
        return self

    def _setup(self, pipe: Pipeline, batch: int, guidance: float | None, overlap: bool, switch: PromptSwitch | None,
               before_call: Callable[[], None] | None) -> None:
        """What a new and a resumed session share: settings and the velocity model streams call."""
        self.pipe, self.batch = pipe, batch
        self.switch = switch or PromptSwitch()
        guidance = pipe.guidance if guidance is None else float(guidance)
        if guidance < 0:
            raise ValueError(f"guidance must be at least 0, got {guidance}")
        self.guidance = guidance
        self.overlap = bool(overlap)
        plain = pipe.velocity if guidance == 1.0 else Guided(pipe.velocity, guidance)

        def at_least(scale: float | None, base=None):  # the session's model, guided more where a pipeline asks
            if base is None and (scale is None or scale <= guidance):
                model = plain
            else:  # at the larger scale; base: another model (a student's opening by its teacher)
                scale = guidance if scale is None else max(scale, guidance)
                base = pipe.velocity if base is None else base
                model = base if scale == 1.0 else Guided(base, scale)
            return model if before_call is None else _Hooked(model, before_call)

        self.model = at_least(None)
        self.opening_model = at_least(pipe.opening_guidance, pipe.opening_model)
        # A switch can lose a student its subject (a blend runs through texts between two prompts;
        # an immediate switch meets frames drawn for the old one): it makes a switch's calls at its
        # teacher's guidance, which keeps the subject (Pipeline.switch_guidance).
        self.switch_model = at_least(pipe.switch_guidance)

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

        The warm start runs the pipeline's ``opening_model`` when it has one (a student's teacher),
        at the pipeline's ``opening_guidance`` when that is above the session's (a distilled
        student opens guided), with the pipeline's
        ``opening_steps_per_chunk`` Euler steps per chunk band when it sets them (at least T).
        Returns the opening reference frames when ``K > 0``.
        """
        if not warm:
            return None
        per_band, P = self.pipe.opening_steps_per_chunk, self.partition
        steps = None if per_band is None else max(P.T, per_band * P.N)
        opening = self.stream.warm_start(steps=steps, model=self.opening_model)
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
        prompts = _prompt_list(prompt, self.batch)
        if prompts == self.prompts:
            return
        mode = self.switch.mode
        at = self.stream.set_text(self.pipe.encode(prompts), entering_only=mode == "chunk",
                                  blend_calls=self.switch.blend_calls if mode == "blend" else 0,
                                  settle=0.0 if mode == "chunk" else self.switch.settle,
                                  guided_calls=self.switch.guided_calls,
                                  redraw=mode == "immediate" and self.switch.redraw)
        st = self.stream.state
        if mode == "chunk" or at >= self.partition.B:
            first = st.next_index
        else:
            first = int(st.frame_index[max(at, self.partition.K)])
        self._labels = [(f, p) for f, p in self._labels if f < first] + [(first, prompts)]
        gone = int(st.frame_index[self.partition.K]) - 2 * self.partition.B  # frames long decoded
        while len(self._labels) > 1 and self._labels[1][0] <= gone:
            self._labels.pop(0)
        self.prompts = prompts

    def prompt_at(self, frame: int) -> list[str]:
        """The prompts (one per stream) of video frame ``frame``: the prompt in force when it left
        the buffer, or, after a per-chunk switch, the one it entered with. A player labels a frame
        with it, so the label changes with the picture."""
        latent = frame // self.pipe.frames_per_latent
        found = self._labels[0][1]
        for first, prompts in self._labels:
            if first <= latent:
                found = prompts
        return list(found)

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



def _prompt_list(prompt: str | Sequence[str], batch: int) -> list[str]:
    """One non-empty prompt per stream, or a ValueError that says what was given."""
    prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
    if len(prompts) != batch or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"need {batch} non-empty prompt(s), one per stream, got {prompt!r}")
    return prompts
