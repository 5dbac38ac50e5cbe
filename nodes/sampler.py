"""Streaming text-to-video: the all-in-one sampler and the pieces it is made of (a buffer-init
node and a chunk-denoise node that chain stream segments into a storyboard)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from streamdit_core import FrameChunk, Pipeline, PromptSchedule, Session, StreamSnapshot

from .common import (CATEGORY, MODEL, MODEL_INPUT, PROMPTS, STREAM, NodeRun, from_image, make_partition,
                     new_session, partition_inputs, run_stream, stream_inputs, to_image)

FRAMES_OUT = ("IMAGE", "FLOAT")
FRAMES_TIPS = ("The video frames [frames, height, width, 3] in 0..1 (feed Create Video).",
               "The frame rate of the video (frames per second).")


@dataclass(frozen=True)
class StreamHandle:
    """The STREAMDIT_STREAM value: a paused stream, and frames it owes the video.

    Attributes:
        snapshot: where the stream stands.
        opening: ``[K, 3, H, W]`` reference frames that open the video (K > 0), still to be
            output by the next segment, or None.
    """

    snapshot: StreamSnapshot
    opening: Tensor | None = None


def _frames(seconds: float, fps: int) -> int:
    return max(1, round(seconds * fps))


def _collect(session: Session, schedule: PromptSchedule, run: NodeRun, total: int, opening=None) -> Tensor:
    parts = list(run_stream(session, schedule, run, total, opening))
    return torch.cat(parts) if parts else torch.zeros(0, 3, *session.frame_size)


class StreamDiTSampler:
    """Streams a video from a prompt schedule: warm start, then chunk after chunk."""

    DESCRIPTION = ("Streams text-to-video with the StreamDiT moving buffer: each model call denoises every chunk "
                   "one step; every s calls c frames leave. Frames play live in the node while it runs.")
    CATEGORY = CATEGORY
    RETURN_TYPES = FRAMES_OUT
    RETURN_NAMES = ("frames", "fps")
    OUTPUT_TOOLTIPS = FRAMES_TIPS
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": MODEL_INPUT,
                "prompts": (PROMPTS, {"tooltip": "From StreamDiT Prompt Schedule; times are video seconds."}),
                "seconds": ("FLOAT", {"default": 4.0, "min": 0.1, "max": 3600.0, "step": 0.5,
                                      "tooltip": "Length of the video to make, in seconds."}),
                **stream_inputs(),
                **partition_inputs(),
                "warm_start": ("BOOLEAN", {"default": True, "tooltip":
                               "Start from ordinary sampling of the whole buffer, so the first frames are "
                               "clean; off: start from a noise buffer (the first chunks are rough)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, model: Pipeline, prompts: PromptSchedule, seconds, seed, guidance, switch_mode, blend_calls,
               reference_frames, chunks, chunk_frames, steps_per_chunk, warm_start, unique_id=None):
        partition = make_partition(model, reference_frames, chunks, chunk_frames, steps_per_chunk)
        total = _frames(seconds, model.fps)
        run = NodeRun(unique_id, total, model.fps)
        session = new_session(model, prompts, partition, run, seed, guidance, switch_mode, blend_calls)
        opening = session.start(warm_start)
        return to_image(_collect(session, prompts, run, total, opening)), float(model.fps)


class StreamDiTBufferInit:
    """Starts a stream (the STREAMDIT_STREAM state) without producing frames yet."""

    DESCRIPTION = ("Fills a new stream buffer: a warm start from the prompt, a cold noise buffer, or a "
                   "video-to-video fill from frames. Chain StreamDiT Chunk Denoise nodes after it.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (STREAM,)
    RETURN_NAMES = ("stream",)
    FUNCTION = "start"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": MODEL_INPUT,
                "prompts": (PROMPTS, {"tooltip": "The first prompt starts the stream (later lines are ignored here)."}),
                **stream_inputs(),
                **partition_inputs(),
                "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip":
                          "Frame width in pixels; 0 = the model's own size (64 for the embedded model)."}),
                "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip":
                           "Frame height in pixels; 0 = the model's own size."}),
                "warm_start": ("BOOLEAN", {"default": True, "tooltip":
                               "Warm start (clean first frames); off: a cold noise buffer."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Video-to-video: frames to fill the buffer with (resized to the "
                                                "frame size); the stream then follows them."}),
                "strength": ("FLOAT", {"default": 0.6, "min": 0.05, "max": 1.0, "step": 0.05, "tooltip":
                             "Video-to-video only: how much of the input is replaced (1 = all of it)."}),
            },
        }

    def start(self, model: Pipeline, prompts: PromptSchedule, seed, guidance, switch_mode, blend_calls,
              reference_frames, chunks, chunk_frames, steps_per_chunk, width, height, warm_start,
              images=None, strength=0.6):
        partition = make_partition(model, reference_frames, chunks, chunk_frames, steps_per_chunk)
        size = None if width == 0 and height == 0 else (height, width)
        run = NodeRun(None, 1, model.fps)
        session = new_session(model, prompts, partition, run, seed, guidance, switch_mode, blend_calls, size=size)
        if images is not None:
            opening = session.fill_video(from_image(images, session.frame_size), strength)
        else:
            opening = session.start(warm_start)
        return (StreamHandle(session.snapshot(), None if opening is None else opening.frames),)


class StreamDiTChunkDenoise:
    """Continues a stream by a number of chunks: frames out, and the stream to continue from."""

    DESCRIPTION = ("Continues a StreamDiT stream for a number of chunks with its own prompts (times count from "
                   "this segment's start), returning the frames and the stream for the next segment.")
    CATEGORY = CATEGORY
    RETURN_TYPES = FRAMES_OUT + (STREAM,)
    RETURN_NAMES = ("frames", "fps", "stream")
    OUTPUT_TOOLTIPS = FRAMES_TIPS + ("The stream after these chunks: chain another Chunk Denoise.",)
    FUNCTION = "denoise"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "stream": (STREAM, {"tooltip": "From StreamDiT Buffer Init or another Chunk Denoise."}),
                "model": (MODEL, {"tooltip": "The model the stream was started with."}),
                "prompts": (PROMPTS, {"tooltip": "Prompts for this segment; 0s is the segment's first frame."}),
                "chunks": ("INT", {"default": 8, "min": 1, "max": 100000, "tooltip":
                           "Chunks to emit (each is chunk_frames latent frames of video)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def denoise(self, stream: StreamHandle, model: Pipeline, prompts: PromptSchedule, chunks, unique_id=None):
        if not isinstance(stream, StreamHandle):
            raise TypeError("stream must come from StreamDiT Buffer Init or StreamDiT Chunk Denoise")
        snap = stream.snapshot
        tf = model.frames_per_latent
        opening = stream.opening
        total = chunks * snap.partition.c * tf + (0 if opening is None else opening.shape[0])
        run = NodeRun(unique_id, total, model.fps)
        start = snap.frames_out * tf / model.fps  # this segment's first frame, in stream time
        session = Session.resume(model, snap, prompts.at(0), before_call=run.before_call)
        first = None if opening is None else FrameChunk(opening, 0, 0)
        frames = _collect(session, prompts.starting_at(start), run, total, first)
        return to_image(frames), float(model.fps), StreamHandle(session.snapshot())

