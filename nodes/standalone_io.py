"""The part of ComfyUI's V3 node schema (``comfy_api.latest``) the nodes use, for running them
without ComfyUI (tests, scripts).

Inside ComfyUI, :mod:`nodes.host` hands out ComfyUI's own ``io`` and ``ComfyExtension``; outside
it, these stand-ins with the same names, arguments and attributes: inputs and outputs that keep
what they were declared with (``id``, ``io_type``, ``optional``, ``tooltip``, and the widget's
``default``, ``min``, ``max``, ``options`` ...), a :class:`Schema`, :class:`NodeOutput` and a
:class:`ComfyNode` whose ``hidden`` holds the node's ``unique_id``. Nothing here draws, caches or
validates a graph: that is ComfyUI's, and the opt-in tests in ``tests/host`` run the nodes there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from types import SimpleNamespace
from typing import Any

__all__ = ["ComfyExtension", "io"]


class _Input:
    """A declared input: its id, type and every option given, as attributes."""

    io_type = "*"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 **options: Any):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.declared = options  # every other keyword, also as an attribute (default, min, max, options, ...)
        self.default = None
        for name, value in options.items():
            setattr(self, name, value)


class _Output:
    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name or id, tooltip, is_output_list


def _comfytype(io_type: str) -> type:
    """A type with ``Input`` and ``Output`` classes of ``io_type`` (as ComfyUI's ``io.Int``...)."""
    return type(io_type, (), {"io_type": io_type,
                              "Input": type("Input", (_Input,), {"io_type": io_type}),
                              "Output": type("Output", (_Output,), {"io_type": io_type})})


class _Combo(_comfytype("COMBO")):
    class Input(_Input):
        io_type = "COMBO"

        def __init__(self, id: str, options: list | None = None, **kwargs: Any):
            super().__init__(id, options=list(options or []), **kwargs)


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_output_node: bool = False
    not_idempotent: bool = False


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None):
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyNode:
    """A V3 node: ``define_schema()`` and ``execute(**inputs)`` are classmethods; ``hidden`` holds
    the hidden inputs (ComfyUI sets it per execution; here ``unique_id`` is None unless a caller
    sets it on a subclass)."""

    hidden = SimpleNamespace(unique_id=None, prompt=None, extra_pnginfo=None)

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError


class ComfyExtension:
    async def get_node_list(self) -> list[type[ComfyNode]]:
        raise NotImplementedError


io = SimpleNamespace(
    ComfyNode=ComfyNode, Schema=Schema, NodeOutput=NodeOutput, Hidden=Hidden, Combo=_Combo,
    Custom=_comfytype,
    **{name: _comfytype(kind) for name, kind in (
        ("Int", "INT"), ("Float", "FLOAT"), ("String", "STRING"), ("Boolean", "BOOLEAN"), ("Image", "IMAGE"),
        ("Video", "VIDEO"), ("Model", "MODEL"), ("Clip", "CLIP"), ("Vae", "VAE"))},
)
