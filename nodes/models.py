"""Loading a StreamDiT model and writing a prompt schedule."""

from __future__ import annotations

from streamdit_core import DEFAULT_MODEL, EMBEDDED_MODELS, Pipeline, PromptSchedule

from . import host
from .common import CATEGORY, MODEL, PROMPTS, io

EMBEDDED = "embedded (built in)"  # the distilled student: one unguided model call per chunk
EMBEDDED_TEACHER = "embedded teacher (built in)"  # the guided multi-step model it was distilled from
BUILT_IN = {EMBEDDED: DEFAULT_MODEL, EMBEDDED_TEACHER: EMBEDDED_MODELS["embedded-teacher"]}


class StreamDiTModelLoader(io.ComfyNode):
    """A StreamDiT checkpoint with its codec and text encoder, on ComfyUI's device."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamDiTModelLoader", display_name="StreamDiT Model Loader", category=CATEGORY,
            description="Loads a StreamDiT model: a built-in embedded model (the distilled default, or its "
                        "teacher) or a .safetensors file from models/streamdit/.",
            inputs=[io.Combo.Input("model_name", options=list(BUILT_IN) + host.model_files(), default=EMBEDDED,
                                   tooltip="Built in (both run on a CPU, 64x64 video): 'embedded', distilled to one "
                                           "model call per chunk without guidance (real time); 'embedded teacher', "
                                           "the guided model it was distilled from (8 network passes per chunk). Or "
                                           "a checkpoint in models/streamdit/, whose codec file must sit beside it.")],
            outputs=[MODEL.Output("model", tooltip="The model, its codec and its text encoder.")],
        )

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        if model_name in BUILT_IN:
            path = BUILT_IN[model_name]
        else:
            path = host.model_path(model_name)
            if path is None:
                raise FileNotFoundError(f"{model_name!r} is not in models/streamdit/; put the .safetensors file "
                                        "there (and its codec file beside it) and refresh the page")
        return io.NodeOutput(Pipeline.load(path, device=host.device()))


class StreamDiTPromptSchedule(io.ComfyNode):
    """Prompts over video time, one per line: ``0s: a calm lake`` / ``4s: the lake at night``."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamDiTPromptSchedule", display_name="StreamDiT Prompt Schedule", category=CATEGORY,
            description="Prompts over video time, one per line as '<seconds>s: <prompt>' (the first at 0s). "
                        "A single line without a time is one prompt for the whole video.",
            inputs=[io.String.Input("schedule", multiline=True,
                                    default="0s: a red circle moving right on a black background",
                                    tooltip="One prompt per line: '<seconds>s: <prompt>', times increasing from "
                                            "0s. Lines starting with # are ignored.")],
            outputs=[PROMPTS.Output("prompts", tooltip="The schedule, for the stream nodes.")],
        )

    @classmethod
    def validate_inputs(cls, schedule=None):
        if schedule is None:  # linked from another node: checked when it runs
            return True
        try:
            PromptSchedule.parse(schedule)
        except ValueError as err:
            return f"prompt schedule: {err}"
        return True

    @classmethod
    def execute(cls, schedule: str) -> io.NodeOutput:
        return io.NodeOutput(PromptSchedule.parse(schedule))
