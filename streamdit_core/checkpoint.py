"""Checkpoints: safetensors weights with the model config as JSON metadata.

A checkpoint alone rebuilds its model: ``load_checkpoint(path)`` reads the config from the
metadata, builds the module it names (a :class:`StreamDiT`, or a
:class:`~streamdit_core.codec.VideoAutoencoder` for ``load_codec``) and loads the weights.
Metadata keys:

    format          "streamdit"
    format_version  "1"
    class           "StreamDiT" (the default when absent) or "VideoAutoencoder"
    config          the module's config as JSON
    ...             anything the caller adds (training step, data, notes), as strings

Every failure names the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .codec import CodecConfig, VideoAutoencoder
from .model import StreamDiT, StreamDiTConfig

__all__ = ["CheckpointError", "file_metadata", "save_checkpoint", "load_checkpoint", "load_codec", "read_config",
           "read_metadata", "record_of", "write_safetensors"]

FORMAT = "streamdit"
FORMAT_VERSION = "1"
_RESERVED = ("format", "format_version", "config", "class")
_CLASSES = {"StreamDiT": (StreamDiT, StreamDiTConfig), "VideoAutoencoder": (VideoAutoencoder, CodecConfig)}


def record_of(metadata: Mapping[str, str]) -> dict[str, str]:
    """A checkpoint's metadata without the format's own keys: what a rewrite of the file carries
    over into :func:`save_checkpoint`."""
    return {k: v for k, v in metadata.items() if k not in _RESERVED}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def save_checkpoint(model: StreamDiT | VideoAutoencoder, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Writes ``model`` with its config to ``path`` (``.safetensors``).

    The file is written beside its target and renamed into place, so an interrupted save never
    leaves a half-written checkpoint under the final name.

    Args:
        metadata: extra string entries; the reserved keys ``format``, ``format_version``,
            ``class`` and ``config`` are refused.
    """
    path = Path(path)
    extra = dict(metadata or {})
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved for the checkpoint format")
    if any(not isinstance(v, str) for v in extra.values()):
        raise ValueError("checkpoint metadata values must be strings (json.dumps anything else)")
    cls = type(model).__name__
    if cls not in _CLASSES:
        raise TypeError(f"cannot checkpoint a {cls}; expected one of {', '.join(_CLASSES)}")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "class": cls,
            "config": model.config.to_json(), **extra}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return write_safetensors(tensors, path, meta)


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Writes a safetensors file atomically: under ``name.partial`` beside the target, then
    renamed into place, so an interrupted write never leaves a half-written file under the final
    name. The file gets the permissions any new file gets here (the umask's), not the owner-only
    mode the safetensors writer gives its files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb"):  # an ordinary new file: its mode is the one to keep
        pass
    mode = os.stat(tmp).st_mode & 0o777
    save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata is not None else None)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def file_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A safetensors file's metadata as written, whatever wrote it (empty when there is no
    readable file: :func:`read_metadata` says which problem it is)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:  # not there, or not safetensors
        return {}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The checkpoint's metadata, after checking it is a StreamDiT checkpoint of a known version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for every malformed header
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated or corrupted, "
            "so copy or save it again"
        ) from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(
            f"{path}: a safetensors file without StreamDiT metadata (format={meta.get('format')!r}); "
            "StreamDiT checkpoints are written by streamdit_core.save_checkpoint"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {meta.get('format_version')!r}; this library reads "
            f"version {FORMAT_VERSION}. Update ComfyUI-StreamDiT"
        )
    return meta


def _class_of(path: Path, meta: Mapping[str, str]) -> str:
    cls = meta.get("class", "StreamDiT")
    if cls not in _CLASSES:
        raise CheckpointError(f"{path}: holds a {cls!r}, which this library cannot build")
    return cls


def read_config(path: str | os.PathLike) -> StreamDiTConfig | CodecConfig:
    """The config stored in a checkpoint, without loading its weights."""
    meta = read_metadata(path)
    config_cls = _CLASSES[_class_of(Path(path), meta)][1]
    try:
        return config_cls.from_json(meta["config"])
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: its stored config is not valid: {err}") from None


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> StreamDiT:
    """Rebuilds the StreamDiT a checkpoint holds, in eval mode.

    Args:
        device: where to put it (default CPU).
        dtype: floating dtype to cast to (default: as stored).
    """
    return _load(path, "StreamDiT", device, dtype)


def load_codec(path: str | os.PathLike, device: torch.device | str | None = None) -> VideoAutoencoder:
    """Rebuilds the learned codec a checkpoint holds, in eval mode."""
    return _load(path, "VideoAutoencoder", device, None)


def _load(path, want: str, device, dtype):
    config = read_config(path)
    cls = _class_of(Path(path), read_metadata(path))
    if cls != want:
        raise CheckpointError(f"{path}: holds a {cls}, not a {want}")
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = _CLASSES[cls][0](config)
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            missing = sorted(set(expected) - keys)
            unexpected = sorted(keys - set(expected))
            if missing or unexpected:
                raise CheckpointError(
                    f"{path}: its weights do not match its config: missing {_few(missing)}, "
                    f"unexpected {_few(unexpected)}"
                )
            tensors = {k: f.get_tensor(k) for k in expected}
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path}: could not read its tensors ({err}); the file may be truncated or corrupted") from None
    wrong = [f"{k} {list(v.shape)} (config needs {list(expected[k].shape)})"
             for k, v in tensors.items() if v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes do not match its config: {_few(wrong)}")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values (NaN or inf) in {_few(bad)}")
    model.load_state_dict(tensors, assign=True)
    return model.to(device=device or "cpu", dtype=dtype).eval()


def _few(items: list[str], limit: int = 5) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
