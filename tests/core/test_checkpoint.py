"""Checkpoints: the config travels with the weights; bad files fail with the file's name."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import random_text, randomized
from streamdit_core import CheckpointError, StreamDiT, StreamDiTConfig, load_checkpoint, read_config, save_checkpoint
from streamdit_core.checkpoint import read_metadata

CONFIG = StreamDiTConfig(window=(2, 4, 4), sigma_warp="shift:3")


@pytest.fixture
def saved(tmp_path):
    model = randomized(CONFIG, seed=3)
    path = save_checkpoint(model, tmp_path / "models" / "m.safetensors", {"step": "1200"})
    return model, path


def test_a_checkpoint_alone_rebuilds_its_model_bit_exactly(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    assert loaded.config == CONFIG and read_config(path) == CONFIG
    assert not loaded.training
    x, sigma, text = torch.randn(2, 4, 16, 8, 8), torch.rand(2, 16), random_text(2, real=4)
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, text), model(x, sigma, text))
    meta = read_metadata(path)
    assert meta["step"] == "1200" and json.loads(meta["config"])["sigma_warp"] == "shift:3"
    assert not list(path.parent.glob("*.partial"))


def test_dtype_is_kept_or_cast_on_request(saved, tmp_path):
    model, _ = saved
    path = save_checkpoint(model.to(torch.bfloat16), tmp_path / "half.safetensors")
    assert next(load_checkpoint(path).parameters()).dtype == torch.bfloat16
    assert next(load_checkpoint(path, dtype=torch.float32).parameters()).dtype == torch.float32


def test_truncated_and_foreign_files_name_the_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "header-only.safetensors": data[:200],
        "garbage.safetensors": b"not a checkpoint at all" * 8,
        "empty.safetensors": b"",
    }
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="missing.safetensors: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_a_safetensors_file_without_our_metadata_is_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="plain.safetensors: a safetensors file without StreamDiT metadata"):
        load_checkpoint(plain)


def _write(path, tensors, config_json, version="1"):
    save_file(tensors, str(path), metadata={"format": "streamdit", "format_version": version, "config": config_json})


def test_weights_that_do_not_match_the_config_are_named(saved, tmp_path):
    model, _ = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items()}

    wider = dataclasses.replace(CONFIG, hidden_size=64)
    _write(tmp_path / "shape.safetensors", state, wider.to_json())
    with pytest.raises(CheckpointError, match=r"shape.safetensors: tensor shapes do not match.*x_embedder.weight \[32, 16\]"):
        load_checkpoint(tmp_path / "shape.safetensors")

    deeper = dataclasses.replace(CONFIG, depth=3)
    _write(tmp_path / "keys.safetensors", state, deeper.to_json())
    with pytest.raises(CheckpointError, match=r"keys.safetensors: its weights do not match its config: missing blocks.2"):
        load_checkpoint(tmp_path / "keys.safetensors")

    broken = dict(state)
    broken["final_layer.linear.weight"] = torch.full_like(state["final_layer.linear.weight"], float("nan"))
    _write(tmp_path / "nan.safetensors", broken, CONFIG.to_json())
    with pytest.raises(CheckpointError, match="nan.safetensors: non-finite values.*final_layer.linear.weight"):
        load_checkpoint(tmp_path / "nan.safetensors")

    _write(tmp_path / "future.safetensors", state, CONFIG.to_json(), version="9")
    with pytest.raises(CheckpointError, match="future.safetensors: checkpoint format version '9'"):
        load_checkpoint(tmp_path / "future.safetensors")

    config = json.loads(CONFIG.to_json()) | {"experts": 8}
    _write(tmp_path / "field.safetensors", state, json.dumps(config))
    with pytest.raises(CheckpointError, match=r"field.safetensors: its stored config is not valid: unknown StreamDiTConfig fields \['experts'\]"):
        load_checkpoint(tmp_path / "field.safetensors")


def test_reserved_metadata_is_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(StreamDiT(CONFIG), tmp_path / "x.safetensors", {"config": "{}"})
    with pytest.raises(ValueError, match="strings"):
        save_checkpoint(StreamDiT(CONFIG), tmp_path / "x.safetensors", {"step": 3})


def test_a_checkpoint_gets_the_umasks_mode_like_any_new_file(tmp_path):
    # the safetensors writer alone makes owner-only files (0600); a model meant for a shared
    # ComfyUI models folder must be readable as every other file written there
    import os

    old = os.umask(0o022)
    try:
        path = save_checkpoint(StreamDiT(CONFIG), tmp_path / "shared.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
