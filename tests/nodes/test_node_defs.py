"""Every node as ComfyUI reads it: declarations, tooltips, types, callable signatures."""

import inspect

import pytest

from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

BUILTIN_TYPES = {"MODEL", "CLIP", "VAE", "IMAGE", "FLOAT", "INT", "STRING", "BOOLEAN", "VIDEO", "MASK", "LATENT"}
CLASSES = sorted(NODE_CLASS_MAPPINGS.items())


def test_names_are_prefixed_and_displayed():
    assert len(NODE_CLASS_MAPPINGS) >= 7
    for name in NODE_CLASS_MAPPINGS:
        assert name.startswith("StreamDiT") and NODE_DISPLAY_NAME_MAPPINGS[name].startswith("StreamDiT ")


@pytest.mark.parametrize("name,cls", CLASSES, ids=[n for n, _ in CLASSES])
def test_declarations_are_well_formed(name, cls):
    assert cls.CATEGORY == "StreamDiT" and isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and spec["required"]
    for section in ("required", "optional"):
        for input_name, decl in spec.get(section, {}).items():
            assert isinstance(decl, tuple) and 1 <= len(decl) <= 2, input_name
            kind, options = decl[0], (decl[1] if len(decl) > 1 else {})
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
            if isinstance(kind, list):  # a combo
                assert kind and options.get("default", kind[0]) in kind
                continue
            assert kind == kind.upper(), f"{name}.{input_name}: type {kind} must be upper case"
            assert kind in BUILTIN_TYPES or kind.startswith("STREAMDIT_")
            if kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], input_name
    assert isinstance(cls.RETURN_TYPES, tuple) and len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert all(t == t.upper() for t in cls.RETURN_TYPES)
    # ComfyUI calls FUNCTION with every declared input by name
    params = inspect.signature(getattr(cls(), cls.FUNCTION)).parameters
    declared = [n for s in ("required", "optional", "hidden") for n in spec.get(s, {})]
    assert set(declared) <= set(params), f"{name}.{cls.FUNCTION} lacks {set(declared) - set(params)}"
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    assert required <= set(spec["required"]), f"{name}: {required - set(spec['required'])} have no default"


def test_prompt_schedule_validation_names_the_bad_line():
    cls = NODE_CLASS_MAPPINGS["StreamDiTPromptSchedule"]
    assert cls.VALIDATE_INPUTS("0s: a\n4s: b") is True
    assert cls.VALIDATE_INPUTS(None) is True  # linked: checked when run
    message = cls.VALIDATE_INPUTS("0s: a red circle\nfour seconds: a blue circle")
    assert "line 2" in message and "four seconds" in message and "'<seconds>s: <prompt>'" in message
