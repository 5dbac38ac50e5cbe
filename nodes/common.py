"""What the stream nodes share: input declarations, partition checks, the per-call loop with
progress, interrupt and live preview, and IMAGE conversion."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from io import BytesIO
from typing import Iterator

import torch
from torch import Tensor

from streamdit_core import (SWITCH_MODES, FrameChunk, Partition, Pipeline, PromptSchedule, PromptSwitch, Runtime,
                            Session)

from . import host
from .routes import LiveSession

CATEGORY = "StreamDiT"
io = host.io
MODEL = io.Custom("STREAMDIT_MODEL")  # a Pipeline
PROMPTS = io.Custom("STREAMDIT_PROMPTS")  # a PromptSchedule
STREAM = io.Custom("STREAMDIT_STREAM")  # a paused stream (sampler.StreamHandle)
FRAME_EVENT = "streamdit.frames"  # JSON: one emitted chunk's frames as JPEG, for the canvas player
PREVIEW_JPEG_QUALITY = 85


def model_input(tooltip: str = "From StreamDiT Model Loader (or StreamDiT Wan Model).", name: str = "model"):
    return MODEL.Input(name, tooltip=tooltip)


def partition_inputs() -> list:
    """K, N, c, s widgets; the defaults fit the embedded model's 8-frame buffer (B = K + N c)."""
    return [
        io.Int.Input("reference_frames", default=2, min=0, max=64, tooltip=
                     "K: the last frames emitted, kept clean at the output end of the buffer as context "
                     "(the embedded models move smoothest with 2; 0 for a model trained without them)."),
        io.Int.Input("chunks", default=3, min=1, max=64, tooltip=
                     "N: chunks in the buffer, each at its own noise band. K + N x c must equal the "
                     "model's buffer (8 latent frames for the embedded model)."),
        io.Int.Input("chunk_frames", default=2, min=1, max=64, tooltip=
                     "c: latent frames per chunk; c frames leave the buffer at a time."),
        io.Int.Input("steps_per_chunk", default=0, min=0, max=64, tooltip=
                     "s: model calls per chunk shift (total steps T = s x N). 0 uses the model's own: "
                     "1 for a distilled model (the embedded default), 16 / N otherwise."),
    ]


def stream_inputs() -> list:
    """Seed, guidance and prompt-switch widgets."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip=
                     "Seeds all of the stream's noise: the same seed gives the same video."),
        io.Float.Input("guidance", default=0.0, min=0.0, max=20.0, step=0.5, tooltip=
                       "Classifier-free guidance scale. 0 uses the model's recommended scale "
                       "(none for the embedded default, 2 for its teacher); 1 turns guidance off."),
        io.Combo.Input("switch_mode", options=list(SWITCH_MODES), default="immediate", tooltip=
                       "How a new prompt takes over: immediate (every buffered frame still below "
                       "half formed at once, as in the paper; nearly finished frames end as they "
                       "began, so none comes out mottled), blend (the text moves over 'blend_calls' model calls; "
                       "frames at most 0.8 noisy end as they began, so the blend conditions the frames entering from noise; a distilled model makes "
                       "those calls at its teacher's guidance, which keeps the subject), "
                       "chunk (only frames entering after the switch: a sharp cut). In every mode a "
                       "distilled model makes the first 6 calls after a switch at its teacher's guidance."),
        io.Int.Input("blend_calls", default=4, min=1, max=256, tooltip=
                     "Model calls a blended prompt switch takes (switch_mode = blend). Every chunk that enters "
                     "during a blend is finished under texts between the two prompts: the embedded model took every "
                     "one of 24 test color blends within 2 s with the default 4, and 19 of them with 6."),
    ]


FRAMES_OUT = [io.Image.Output("frames", tooltip="The video frames [frames, height, width, 3] in 0..1 (feed Create Video)."),
              io.Float.Output("fps", tooltip="The frame rate of the video (frames per second).")]


def make_partition(pipe: Pipeline, reference_frames: int, chunks: int, chunk_frames: int,
                   steps_per_chunk: int) -> Partition:
    """The partition, checked against the model's buffer, with a fix in the message
    (``steps_per_chunk`` 0: the model's default for ``chunks``)."""
    if steps_per_chunk == 0:
        steps_per_chunk = pipe.default_steps_per_chunk(chunks)
    P = Partition(K=reference_frames, N=chunks, c=chunk_frames, s=steps_per_chunk)
    B = pipe.geometry.buffer_frames
    if P.B != B:
        K = P.K if P.K < B else 0
        fits = [f"N={(B - K) // c}, c={c}" for c in range(1, B - K + 1) if (B - K) % c == 0]
        raise ValueError(f"reference_frames + chunks x chunk_frames = {P.K} + {P.N} x {P.c} = {P.B} latent frames, "
                         f"but this model's buffer holds {B}; with K={K} choose one of: {'; '.join(fits)}")
    return P


def new_session(model: Pipeline, prompts: PromptSchedule, partition: Partition, run: "NodeRun", seed: int,
                guidance: float, switch_mode: str, blend_calls: int, **kwargs) -> Session:
    if not isinstance(model, Pipeline):
        raise TypeError(f"model must come from StreamDiT Model Loader or StreamDiT Wan Model, got {type(model).__name__}")
    """A session from the stream widgets (guidance 0 = the model's recommended scale), reporting
    every model call to ``run``."""
    return model.session(prompts.at(0), partition, seed=seed,
                         guidance=model.guidance if guidance == 0 else float(guidance),
                         switch=PromptSwitch(switch_mode, int(blend_calls)), before_call=run.before_call, **kwargs)


def to_image(frames: Tensor) -> Tensor:
    """``[T, 3, H, W]`` -> ComfyUI IMAGE ``[T, H, W, 3]`` float32 on the CPU."""
    return frames.permute(0, 2, 3, 1).float().cpu().contiguous()


def from_image(images: Tensor, size: tuple[int, int]) -> Tensor:
    """ComfyUI IMAGE ``[T, H, W, 3]`` -> ``[T, 3, h, w]`` resized to ``size``."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[-1] != 3:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be an IMAGE batch [frames, height, width, 3], got {got}")
    frames = images.permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    if tuple(frames.shape[-2:]) != tuple(size):
        frames = torch.nn.functional.interpolate(frames, size=size, mode="bilinear", antialias=True,
                                                 align_corners=False)
    return frames.clamp(0, 1)


def _jpeg(frame: Tensor):
    from PIL import Image

    rgb = (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # [H, W, 3]
    return Image.fromarray(rgb)


@dataclass
class NodeRun:
    """Progress, interrupt checks and live preview for one node execution.

    ``before_call`` goes to :class:`Session` (called before every model call): it checks for an
    interrupt and moves the progress bar. ``emitted`` sends each chunk's frames to the canvas.
    """

    node_id: str | None
    total_frames: int
    fps: int
    kind: str = "sampler"
    live: LiveSession | None = None
    frames: int = 0

    def __post_init__(self) -> None:
        self.progress = host.Progress(self.total_frames, self.node_id)

    def before_call(self) -> None:
        host.check_interrupt()
        self.progress.update(self.frames)

    def emitted(self, frames: Tensor, calls: int, prompt: str) -> None:
        """``frames [t, 3, H, W]`` left the stream."""
        self.frames += frames.shape[0]
        self.progress.update(self.frames)
        if not host.has_server():
            return
        payload = []
        for image in (_jpeg(f) for f in frames):
            buf = BytesIO()
            image.save(buf, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
            payload.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        host.send_event(FRAME_EVENT, {
            "node": self.node_id, "kind": self.kind, "session": self.live.id if self.live else None,
            "fps": self.fps, "index": self.frames - frames.shape[0], "frames": payload,
            "width": int(frames.shape[-1]), "height": int(frames.shape[-2]), "calls": calls, "prompt": prompt,
        })


def run_stream(session: Session, schedule: PromptSchedule, run: NodeRun, total: int,
               opening: FrameChunk | None = None) -> Iterator[Tensor]:
    """Yields ``[t, 3, H, W]`` frames until ``total`` frames came out (or a live stop), through
    the real-time :class:`~streamdit_core.runtime.Runtime`.

    ``schedule`` is in the stream's own time; a prompt posted to a live session replaces it from
    then on. A live stream is paced to its frame rate (see :meth:`Runtime.video`), so what it
    shows is what it computes now.
    """
    live = run.live
    runtime = Runtime(session, schedule, prompt_source=None if live is None else live.take_prompt)
    stop = None if live is None else (lambda: live.stopping)
    for chunk in runtime.video(total, opening, should_stop=stop, realtime=live is not None):  # live: paced to play
        run.emitted(chunk.frames, session.calls, session.prompt_at(chunk.index)[0])
        yield chunk.frames
