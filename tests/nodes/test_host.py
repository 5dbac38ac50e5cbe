"""host.py against stand-ins of ComfyUI's modules: folder registration and the loader's list."""

import sys
import types
from pathlib import Path

import pytest

from nodes import host
from nodes.models import StreamDiTModelLoader
from nodes.models import EMBEDDED, EMBEDDED_TEACHER


@pytest.fixture
def folder_paths(tmp_path, monkeypatch):
    """A minimal folder_paths: a registry dict, and file listing by registered folder."""
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path / "models")
    user_dir = tmp_path / "elsewhere"
    fake.folder_names_and_paths = {"streamdit": ([str(user_dir)], set())}  # from a user's extra_model_paths.yaml

    def get_filename_list(name):
        paths, exts = fake.folder_names_and_paths[name]
        return sorted(p.name for d in paths for p in Path(d).glob("*") if p.suffix in exts)

    def get_full_path(name, filename):
        for d in fake.folder_names_and_paths[name][0]:
            path = Path(d) / filename
            if path.is_file():
                return str(path)
        return None

    fake.get_filename_list, fake.get_full_path = get_filename_list, get_full_path
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    return fake, tmp_path / "models" / "streamdit", user_dir


def test_model_folder_is_merged_into_the_registry_and_listed(folder_paths):
    fake, default, user_dir = folder_paths
    host.register_model_folder()
    host.register_model_folder()  # twice: still one entry per folder
    paths, exts = fake.folder_names_and_paths["streamdit"]
    assert paths == [str(user_dir), str(default)] and exts == {".safetensors"}
    for d in (default, user_dir):
        d.mkdir(parents=True)
    (default / "mine.safetensors").write_bytes(b"x")
    (user_dir / "theirs.safetensors").write_bytes(b"x")
    (user_dir / "notes.txt").write_text("not a model")
    (model_name,) = StreamDiTModelLoader.define_schema().inputs
    choices = model_name.options
    assert choices == [EMBEDDED, EMBEDDED_TEACHER, "mine.safetensors", "theirs.safetensors"]
    assert host.model_path("theirs.safetensors") == user_dir / "theirs.safetensors"


def test_a_missing_checkpoint_is_explained(folder_paths):
    host.register_model_folder()
    with pytest.raises(FileNotFoundError, match="'gone.safetensors' is not in models/streamdit/"):
        StreamDiTModelLoader.execute("gone.safetensors")
