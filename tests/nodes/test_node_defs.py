"""Every node as ComfyUI's V3 schema reads it: declarations, tooltips, types, execute signatures."""

import inspect

import pytest

from nodes import NODES, node_classes

BUILTIN_TYPES = {"MODEL", "CLIP", "VAE", "IMAGE", "FLOAT", "INT", "STRING", "BOOLEAN", "VIDEO", "MASK", "LATENT", "COMBO"}
SCHEMAS = sorted(((n.define_schema(), n) for n in NODES), key=lambda item: item[0].node_id)


def test_names_are_prefixed_displayed_and_unique():
    ids = [schema.node_id for schema, _ in SCHEMAS]
    assert len(ids) >= 8 and len(set(ids)) == len(ids) and set(node_classes()) == set(ids)
    for schema, _ in SCHEMAS:
        assert schema.node_id.startswith("StreamDiT") and schema.display_name.startswith("StreamDiT ")


@pytest.mark.parametrize("schema,node", SCHEMAS, ids=[s.node_id for s, _ in SCHEMAS])
def test_declarations_are_well_formed(schema, node):
    assert schema.category == "StreamDiT" and schema.description
    names = [i.id for i in schema.inputs]
    assert len(set(names)) == len(names) and schema.inputs
    for i in schema.inputs:
        assert i.tooltip, f"{schema.node_id}.{i.id} has no tooltip"
        kind = i.io_type
        assert kind == kind.upper() and (kind in BUILTIN_TYPES or kind.startswith("STREAMDIT_")), kind
        if kind == "COMBO":
            assert i.options and (i.default is None or i.default in i.options)
        if kind in ("INT", "FLOAT"):
            assert i.min <= i.default <= i.max, i.id
    for o in schema.outputs:
        assert o.tooltip and o.io_type == o.io_type.upper() and (o.io_type in BUILTIN_TYPES
                                                               or o.io_type.startswith("STREAMDIT_"))
    # ComfyUI calls execute with every input by name; optional ones may be absent
    params = inspect.signature(node.execute).parameters
    assert set(names) <= set(params), f"{schema.node_id}.execute lacks {set(names) - set(params)}"
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    assert required <= {i.id for i in schema.inputs if not i.optional}, schema.node_id


def test_nodes_keep_the_inputs_old_workflows_saved():
    """Workflows store widget values by input order: the V3 declarations keep the order the
    nodes had, so graphs saved before still load and run unchanged."""
    order = {s.node_id: [i.id for i in s.inputs] for s, _ in SCHEMAS}
    stream = ["seed", "guidance", "switch_mode", "blend_calls", "reference_frames", "chunks", "chunk_frames",
              "steps_per_chunk"]
    assert order["StreamDiTSampler"] == ["model", "prompts", "seconds", *stream, "warm_start"]
    assert order["StreamDiTBufferInit"] == ["model", "prompts", *stream, "width", "height", "warm_start", "images",
                                            "strength"]
    assert order["StreamDiTChunkDenoise"] == ["stream", "model", "prompts", "chunks"]
    assert order["StreamDiTVideoToVideo"] == ["model", "images", "prompts", "strength", *stream]
    assert order["StreamDiTLive"] == ["model", "prompts", "max_seconds", *stream, "filename_prefix", "format"]


def test_only_the_live_node_is_never_cached():
    nodes = node_classes()
    live = nodes["StreamDiTLive"]
    assert live.fingerprint_inputs(seed=1) != live.fingerprint_inputs(seed=1)
    assert not any("fingerprint_inputs" in vars(n) for name, n in nodes.items() if name != "StreamDiTLive")


def test_prompt_schedule_validation_names_the_bad_line():
    cls = node_classes()["StreamDiTPromptSchedule"]
    assert cls.validate_inputs("0s: a\n4s: b") is True
    assert cls.validate_inputs(None) is True  # linked: checked when run
    message = cls.validate_inputs("0s: a red circle\nfour seconds: a blue circle")
    assert "line 2" in message and "four seconds" in message and "'<seconds>s: <prompt>'" in message


@pytest.mark.parametrize("schema,node", SCHEMAS, ids=[s.node_id for s, _ in SCHEMAS])
def test_every_node_has_a_help_page_that_names_its_inputs(schema, node):
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "web" / "docs" / f"{schema.node_id}.md"
    assert page.is_file(), f"web/docs/{schema.node_id}.md is missing"
    text = page.read_text()
    assert text.startswith(f"# {schema.display_name}\n")
    widgets = [i.id for i in schema.inputs if i.io_type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
    named = [w for w in widgets if w in text]
    assert len(named) >= min(3, len(widgets)), f"{page.name} names none of {widgets}"
