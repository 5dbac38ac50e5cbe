"""Streaming text-to-video: the all-in-one sampler and the pieces it is made of (a buffer-init
node and a chunk-denoise node that chain stream segments into a storyboard)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from streamdit_core import FrameChunk, Pipeline, PromptSchedule, Session, StreamSnapshot

from .common import (CATEGORY, FRAMES_OUT, PROMPTS, STREAM, NodeRun, from_image, io, make_partition, model_input,
                     new_session, partition_inputs, run_stream, stream_inputs, to_image)


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


class StreamDiTSampler(io.ComfyNode):
    """Streams a video from a prompt schedule: warm start, then chunk after chunk."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamDiTSampler", display_name="StreamDiT Stream Sampler", category=CATEGORY,
            description="Streams text-to-video with the StreamDiT moving buffer: each model call denoises every "
                        "chunk one step; every s calls c frames leave. Frames play live in the node while it runs.",
            inputs=[
                model_input(),
                PROMPTS.Input("prompts", tooltip="From StreamDiT Prompt Schedule; times are video seconds."),
                io.Float.Input("seconds", default=4.0, min=0.1, max=3600.0, step=0.5,
                               tooltip="Length of the video to make, in seconds."),
                *stream_inputs(),
                *partition_inputs(),
                io.Boolean.Input("warm_start", default=True, tooltip=
                                 "Start from ordinary sampling of the whole buffer, so the first frames are "
                                 "clean; off: start from a noise buffer (the first chunks are rough)."),
            ],
            outputs=list(FRAMES_OUT),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model: Pipeline, prompts: PromptSchedule, seconds, seed, guidance, switch_mode, blend_calls,
                reference_frames, chunks, chunk_frames, steps_per_chunk, warm_start) -> io.NodeOutput:
        partition = make_partition(model, reference_frames, chunks, chunk_frames, steps_per_chunk)
        total = _frames(seconds, model.fps)
        run = NodeRun(cls.hidden.unique_id, total, model.fps)
        session = new_session(model, prompts, partition, run, seed, guidance, switch_mode, blend_calls)
        opening = session.start(warm_start)
        return io.NodeOutput(to_image(_collect(session, prompts, run, total, opening)), float(model.fps))


class StreamDiTBufferInit(io.ComfyNode):
    """Starts a stream (the STREAMDIT_STREAM state) without producing frames yet."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamDiTBufferInit", display_name="StreamDiT Buffer Init", category=CATEGORY,
            description="Fills a new stream buffer: a warm start from the prompt, a cold noise buffer, or a "
                        "video-to-video fill from frames. Chain StreamDiT Chunk Denoise nodes after it.",
            inputs=[
                model_input(),
                PROMPTS.Input("prompts", tooltip="The first prompt starts the stream (later lines are ignored here)."),
                *stream_inputs(),
                *partition_inputs(),
                io.Int.Input("width", default=0, min=0, max=4096, step=8, tooltip=
                             "Frame width in pixels; 0 = the model's own size (64 for the embedded model)."),
                io.Int.Input("height", default=0, min=0, max=4096, step=8, tooltip=
                             "Frame height in pixels; 0 = the model's own size."),
                io.Boolean.Input("warm_start", default=True, tooltip=
                                 "Warm start (clean first frames); off: a cold noise buffer."),
                io.Image.Input("images", optional=True, tooltip=
                               "Video-to-video: frames to fill the buffer with (resized to the frame size); the "
                               "stream then follows them."),
                io.Float.Input("strength", default=0.6, min=0.05, max=1.0, step=0.05, optional=True, tooltip=
                               "Video-to-video only: how much of the input is replaced (1 = all of it)."),
            ],
            outputs=[STREAM.Output("stream", tooltip="The started stream: feed StreamDiT Chunk Denoise.")],
        )

    @classmethod
    def execute(cls, model: Pipeline, prompts: PromptSchedule, seed, guidance, switch_mode, blend_calls,
                reference_frames, chunks, chunk_frames, steps_per_chunk, width, height, warm_start,
                images=None, strength=0.6) -> io.NodeOutput:
        partition = make_partition(model, reference_frames, chunks, chunk_frames, steps_per_chunk)
        size = None if width == 0 and height == 0 else (height, width)
        run = NodeRun(None, 1, model.fps)
        session = new_session(model, prompts, partition, run, seed, guidance, switch_mode, blend_calls, size=size)
        if images is not None:
            opening = session.fill_video(from_image(images, session.frame_size), strength)
        else:
            opening = session.start(warm_start)
        return io.NodeOutput(StreamHandle(session.snapshot(), None if opening is None else opening.frames))


class StreamDiTChunkDenoise(io.ComfyNode):
    """Continues a stream by a number of chunks: frames out, and the stream to continue from."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamDiTChunkDenoise", display_name="StreamDiT Chunk Denoise", category=CATEGORY,
            description="Continues a StreamDiT stream for a number of chunks with its own prompts (times count "
                        "from this segment's start), returning the frames and the stream for the next segment.",
            inputs=[
                STREAM.Input("stream", tooltip="From StreamDiT Buffer Init or another Chunk Denoise."),
                model_input("The model the stream was started with."),
                PROMPTS.Input("prompts", tooltip="Prompts for this segment; 0s is the segment's first frame."),
                io.Int.Input("chunks", default=8, min=1, max=100000, tooltip=
                             "Chunks to emit (each is chunk_frames latent frames of video)."),
            ],
            outputs=[*FRAMES_OUT, STREAM.Output("stream", tooltip=
                                                "The stream after these chunks: chain another Chunk Denoise.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, stream: StreamHandle, model: Pipeline, prompts: PromptSchedule, chunks) -> io.NodeOutput:
        if not isinstance(stream, StreamHandle):
            raise TypeError("stream must come from StreamDiT Buffer Init or StreamDiT Chunk Denoise")
        snap = stream.snapshot
        tf = model.frames_per_latent
        opening = stream.opening
        total = chunks * snap.partition.c * tf + (0 if opening is None else opening.shape[0])
        run = NodeRun(cls.hidden.unique_id, total, model.fps)
        start = snap.frames_out * tf / model.fps  # this segment's first frame, in stream time
        session = Session.resume(model, snap, prompts.at(0), before_call=run.before_call)
        first = None if opening is None else FrameChunk(opening, 0, 0)
        frames = _collect(session, prompts.starting_at(start), run, total, first)
        return io.NodeOutput(to_image(frames), float(model.fps), StreamHandle(session.snapshot()))
