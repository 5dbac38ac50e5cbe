"""The repository as ComfyUI, the Comfy registry, CI and a reader of the README see it."""

import ast
import importlib.util
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_pack_root_is_a_comfyui_entry_point():
    # As ComfyUI loads a custom node folder: a package under its folder name, put in sys.modules
    # before it runs (so its relative imports resolve).
    spec = importlib.util.spec_from_file_location("ComfyUI-StreamDiT", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    try:
        spec.loader.exec_module(pack)
        import asyncio

        extension = asyncio.run(pack.comfy_entrypoint())
        nodes = asyncio.run(extension.get_node_list())
    finally:
        del sys.modules[spec.name]
    ids = {node.define_schema().node_id for node in nodes}
    assert {"StreamDiTSampler", "StreamDiTLive", "StreamDiTVideoToVideo", "StreamDiTWanModel"} <= ids
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # V3 only: ComfyUI would take a V1 mapping first
    assert (ROOT / pack.WEB_DIRECTORY).is_dir() and list((ROOT / pack.WEB_DIRECTORY).rglob("*.js"))


def test_pyproject_has_the_registry_section():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {"PublisherId", "DisplayName", "Icon"} <= set(data["tool"]["comfy"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", data["project"]["version"])
    assert "Repository" in data["project"]["urls"]


def test_the_core_imports_nothing_from_comfyui():
    comfy = {"comfy", "comfy_extras", "comfy_execution", "comfy_api", "folder_paths", "server", "nodes", "execution"}
    offenders = []
    for path in (ROOT / "streamdit_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in comfy]
    assert not offenders


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^TEST_COMMAND='(.+)'$", ci, re.M).group(1)
    assert command in readme.splitlines()
    assert "$TEST_COMMAND" in ci.splitlines()[-1]


def test_the_readme_library_example_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    for code in blocks:
        code = textwrap.dedent(code)  # a block inside a list item is indented
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr


def test_the_readme_run_command_runs():
    result = subprocess.run([sys.executable, "-m", "streamdit_core.demo", "--frames", "200"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "law of 32 Euler steps" in result.stdout and "ms per call" in result.stdout
    assert "python -m streamdit_core.demo" in (ROOT / "README.md").read_text()


def test_the_nodes_use_only_names_the_core_exports():
    """The nodes import from ``streamdit_core`` itself, never from its modules, and every name
    they take is in its ``__all__``."""
    import streamdit_core

    for path in sorted((ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamdit_core"):
                assert node.module == "streamdit_core", f"{path.name} imports from {node.module}"
                missing = [a.name for a in node.names if a.name not in streamdit_core.__all__]
                assert not missing, f"{path.name} imports {missing}, which streamdit_core does not export"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("streamdit_core.") for a in node.names), path.name


def test_architecture_names_every_core_module():
    """docs/ARCHITECTURE.md lists every module of the core, so the room list stays true."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    core = ROOT / "streamdit_core"
    for path in sorted(core.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        assert re.search(rf"\b{re.escape(path.stem)}\.py\b", text), f"docs/ARCHITECTURE.md does not name {path.relative_to(ROOT)}"
