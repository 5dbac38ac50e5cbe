"""The live node: streams until stopped or a time limit, takes prompts typed while it plays,
and records the stream to a video file as it goes."""

from __future__ import annotations

import uuid
from pathlib import Path

from streamdit_core import Pipeline, PromptSchedule, open_writer

from . import host
from .common import (CATEGORY, PROMPTS, NodeRun, io, make_partition, model_input, new_session, partition_inputs,
                     run_stream, stream_inputs)
from .routes import close_session, open_session

LIVE_EVENT = "streamdit.live"  # JSON {node, session, state: "running" | "ended", recording (when ended)}
FORMATS = ("mp4", "webm", "gif")


def recording_path(prefix: str, extension: str, width: int = 0, height: int = 0) -> tuple[Path, str, str]:
    """A new recording in the output folder named as Save Video names its files
    (``<prefix>_<NNNNN>_.<ext>``) -> (path, subfolder, filename); see :func:`host.save_path`."""
    return host.save_path(prefix, extension, width, height)


class StreamDiTLive(io.ComfyNode):
    """An endless stream that plays in the node; type a prompt and press Send while it runs."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamDiTLive", display_name="StreamDiT Live Stream", category=CATEGORY,
            description="Streams until you press Stop (or the time limit), playing in the node; type a new prompt "
                        "and press Send to steer it live. What was streamed is recorded to a video file in the "
                        "output folder.",
            inputs=[
                model_input(),
                PROMPTS.Input("prompts", tooltip="The starting prompts (a schedule works too, until a prompt is "
                                                 "sent from the node)."),
                io.Float.Input("max_seconds", default=60.0, min=1.0, max=3600.0, step=1.0, tooltip=
                               "Stop after this many seconds of video if Stop was not pressed."),
                *stream_inputs(),
                *partition_inputs(),
                io.String.Input("filename_prefix", default="streamdit/live", tooltip=
                                "Recording name inside the output folder, as Save Video takes it; a number is "
                                "appended."),
                io.Combo.Input("format", options=list(FORMATS), default="mp4", tooltip="Container of the recording."),
            ],
            outputs=[io.Video.Output("video", tooltip="The recording, for Save Video or Get Video Components."),
                     io.String.Output("path", tooltip="The recording's path on the server."),
                     io.Float.Output("fps", tooltip="The frame rate.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **inputs):
        """A live stream is never the same twice: a new fingerprint every time, so Run always
        streams anew instead of reusing a cached result."""
        return uuid.uuid4().hex

    @classmethod
    def execute(cls, model: Pipeline, prompts: PromptSchedule, max_seconds, seed, guidance, switch_mode,
                blend_calls, reference_frames, chunks, chunk_frames, steps_per_chunk, filename_prefix,
                format) -> io.NodeOutput:
        unique_id = cls.hidden.unique_id
        partition = make_partition(model, reference_frames, chunks, chunk_frames, steps_per_chunk)
        if format not in FORMATS:
            raise ValueError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
        height, width = model.frame_size
        path, subfolder, filename = recording_path(filename_prefix, format, width, height)
        saved = {"filename": filename, "subfolder": subfolder, "type": "output", "format": format}
        live = open_session(unique_id)
        total = max(1, round(max_seconds * model.fps))
        run = NodeRun(unique_id, total, model.fps, kind="live", live=live)
        host.send_event(LIVE_EVENT, {"node": unique_id, "session": live.id, "state": "running"})
        try:
            with open_writer(path, model.fps) as writer:  # on any exit the file keeps what was streamed
                session = new_session(model, prompts, partition, run, seed, guidance, switch_mode, blend_calls)
                for frames in run_stream(session, prompts, run, total, session.start(True)):
                    writer.write(frames)  # chunk by chunk: memory stays flat however long it runs
        finally:  # stop, time limit, error or interrupt: the node shows what was recorded
            close_session(live)
            kept = path.exists()
            host.send_event(LIVE_EVENT, {"node": unique_id, "session": live.id, "state": "ended",
                                         "recording": saved if kept else None, "frames": run.frames})
        if run.frames == 0:
            raise RuntimeError("the live stream was stopped before its first frame; nothing was recorded")
        return io.NodeOutput(host.video_output(path), str(path), float(model.fps),
                             ui={"images": [saved], "animated": (True,)})
