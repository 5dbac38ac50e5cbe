"""Video-to-video: input frames noised into the moving buffer and streamed back out, 1:1."""

from __future__ import annotations

import torch

from streamdit_core import Pipeline, PromptSchedule

from .common import (CATEGORY, PROMPTS, NodeRun, from_image, io, make_partition, model_input, new_session,
                     partition_inputs, run_stream, stream_inputs, to_image)


class StreamDiTVideoToVideo(io.ComfyNode):
    """Restyles a clip through the stream: frame i out is frame i in, changed as the prompts say."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamDiTVideoToVideo", display_name="StreamDiT Video to Video", category=CATEGORY,
            description="Video-to-video with the StreamDiT buffer: each input frame enters noised to 'strength' "
                        "and leaves denoised under the prompts. Output frames match the input frames one to one.",
            inputs=[
                model_input(),
                io.Image.Input("images", tooltip="The input clip; processed at the model's frame size and resized "
                                                 "back."),
                PROMPTS.Input("prompts", tooltip="What the clip should become; times are seconds of the clip at "
                                                 "the model's frame rate."),
                io.Float.Input("strength", default=0.6, min=0.05, max=1.0, step=0.05, tooltip=
                               "How much of each frame is replaced: low keeps the input, 1 ignores it."),
                *stream_inputs(),
                *partition_inputs(),
            ],
            outputs=[io.Image.Output("frames", tooltip="The changed frames, as many as the input and at its size."),
                     io.Float.Output("fps", tooltip="The model's frame rate.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model: Pipeline, images, prompts: PromptSchedule, strength, seed, guidance, switch_mode,
                blend_calls, reference_frames, chunks, chunk_frames, steps_per_chunk) -> io.NodeOutput:
        partition = make_partition(model, reference_frames, chunks, chunk_frames, steps_per_chunk)
        run = NodeRun(cls.hidden.unique_id, images.shape[0], model.fps)
        session = new_session(model, prompts, partition, run, seed, guidance, switch_mode, blend_calls)
        clip = from_image(images, session.frame_size)  # [T, 3, h, w]
        opening = session.fill_video(clip, strength)
        frames = torch.cat(list(run_stream(session, prompts, run, images.shape[0], opening)))  # [T, 3, h, w]
        out = to_image(from_image(to_image(frames), tuple(images.shape[1:3])))  # back to the input size
        return io.NodeOutput(out, float(model.fps))
