"""A Wan 2.1 text-to-video transformer (diffusers' ``WanTransformer3DModel``) as a velocity model.

The StreamDiT method needs a noise level per frame. Wan's transformer takes a timestep per token
(``timestep [B, L]``, what Wan 2.2's image-to-video path uses), so each frame's sigma is spread
over that frame's tokens: frames at different noise levels get different adaLN modulation, as
in our own DiT. Wan is a flow model on our convention (``x = (1 - sigma) x0 + sigma eps``, output
``v = eps - x0``, timestep ``1000 sigma``), so sigmas and outputs pass through unchanged; the
schedule's warp is Wan's shift.

With it, the trainer (:func:`~streamdit_core.train.train`), distillation and the streams treat
a Wan model as they treat a :class:`~streamdit_core.model.StreamDiT`. diffusers is an optional
training extra (``requirements-train.txt``); nothing here is needed to stream the embedded model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .conditioning import FrameText, TextEmbedding, per_prompt
from .schedule import SigmaWarp
from .velocity import Geometry

__all__ = ["LORA_TARGETS", "WAN_TIMESTEPS", "WanVelocity", "add_lora", "comfy_name", "comfy_state_dict", "has_lora",
           "load_adapted_wan", "load_comfy_state_dict", "load_lora", "load_wan", "lora_state_dict", "tiny_wan_config"]

WAN_TIMESTEPS = 1000  # Wan's timestep is 1000 sigma


def _diffusers():
    try:
        from diffusers import WanTransformer3DModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Wan models need diffusers: pip install -r requirements-train.txt "
                          f"(or `pip install diffusers`); {err}") from None
    return WanTransformer3DModel


class WanVelocity(nn.Module):
    """``forward(x [B, C, F, h, w], sigma [B, F], text) -> v [B, C, F, h, w]`` (float32) over a
    diffusers ``WanTransformer3DModel``.

    ``text`` is a :class:`TextEmbedding` of the text encoder's token states ``[B or 1, L, D]``
    (D = the transformer's ``text_dim``; Wan's own is umT5's 4096), or a :class:`FrameText`, which
    runs the transformer once per prompt.

    Args:
        transformer: the diffusers model (its temporal patch must be 1: one latent frame, one sigma).
        buffer_frames: latent frames of the moving buffer.
        latent_size: ``(h, w)`` of a latent frame.
        shift: Wan's sigma shift (3 for 480p in Wan 2.1's recipe, 5 for 720p).
    """

    def __init__(self, transformer: nn.Module, buffer_frames: int, latent_size: tuple[int, int], shift: float = 3.0):
        super().__init__()
        config = transformer.config
        pt, ph, pw = config.patch_size
        if pt != 1 or ph != pw:
            raise ValueError(f"need a Wan patch (1, p, p) (one sigma per latent frame), got {tuple(config.patch_size)}")
        if latent_size[0] % ph or latent_size[1] % pw:
            raise ValueError(f"latent size {tuple(latent_size)} is not a multiple of the patch {ph}")
        self.transformer = transformer
        self.geometry = Geometry(buffer_frames, config.in_channels, tuple(latent_size), ph,
                                 SigmaWarp.shift(shift) if shift != 1 else SigmaWarp.identity())

    @property
    def config(self) -> Any:
        return self.transformer.config

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def forward(self, x: Tensor, sigma: Tensor, text: TextEmbedding | FrameText) -> Tensor:
        if x.dim() != 5 or sigma.shape != x.shape[:1] + x.shape[2:3]:
            raise ValueError(f"need x [B, C, F, h, w] and sigma [B, F], got {list(x.shape)} and {list(sigma.shape)}")
        return per_prompt(self._call, x, sigma, text)

    def export(self, path: str | os.PathLike, metadata: dict[str, str] | None = None,
               state: dict[str, Tensor] | None = None) -> Path:
        """Writes the weights for ComfyUI: ``path`` holds the whole transformer (LoRA merged) in
        the format its Load Diffusion Model reads; with LoRA adapters, ``<stem>_lora.safetensors``
        beside it holds just the adapters, for its Load LoRA on the base model. Atomic. ``state``
        replaces the module's own weights (a state dict gathered from shards)."""
        from .checkpoint import write_safetensors

        path = Path(path)
        h, w = self.geometry.latent_size
        meta = {"format": "comfyui-wan", "buffer_frames": str(self.geometry.buffer_frames),
                "latent_size": f"{h},{w}", "shift": f"{self.geometry.warp.value:g}", **(metadata or {})}
        files = {path: comfy_state_dict(self, state=state)}
        if any(_is_lora(m) for m in self.transformer.modules()):
            files[path.with_name(path.stem + "_lora.safetensors")] = lora_state_dict(self, state)
        for target, tensors in files.items():
            write_safetensors(tensors, target, meta)
        return path

    def _call(self, x: Tensor, sigma: Tensor, text: TextEmbedding) -> Tensor:
        B, _, F, h, w = x.shape
        p = self.geometry.patch_size
        dtype = next(self.transformer.parameters()).dtype
        tokens = (h // p) * (w // p)
        timestep = (sigma.to(x.device, torch.float32) * WAN_TIMESTEPS)[:, :, None].expand(B, F, tokens)  # [B, F, hw]
        context = text.tokens.to(x.device, dtype)  # [B or 1, L, D]
        if context.shape[0] == 1 and B > 1:
            context = context.expand(B, -1, -1)  # [B, L, D]
        out = self.transformer(x.to(dtype), timestep.reshape(B, F * tokens), encoder_hidden_states=context,
                               return_dict=False)[0]  # [B, C, F, h, w]
        return out.float()


def tiny_wan_config(**overrides) -> dict:
    """A Wan-architecture config of a few layers and a small width (random weights, for tests and
    CPU experiments): 16 latent channels as Wan 2.1's VAE, patch (1, 2, 2), text width 32."""
    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
                  text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
    config.update(overrides)
    return config


def load_wan(source: str | os.PathLike | dict, buffer_frames: int, latent_size: tuple[int, int],
             shift: float = 3.0, dtype: torch.dtype = torch.float32) -> WanVelocity:
    """A Wan transformer from a diffusers folder (``transformer/`` of a Wan 2.1 repository, or
    that folder itself), loaded from disk only, or built with random weights from a config dict
    (:func:`tiny_wan_config`)."""
    WanTransformer3DModel = _diffusers()
    if isinstance(source, dict):
        transformer = WanTransformer3DModel(**source)
        transformer = transformer if dtype == torch.float32 else transformer.to(dtype)
    else:
        folder = os.fspath(source)
        if os.path.isdir(os.path.join(folder, "transformer")):
            folder = os.path.join(folder, "transformer")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"{source}: not a diffusers Wan transformer folder (no config.json in it "
                                    "or in its transformer/ folder)")
        transformer = WanTransformer3DModel.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    return WanVelocity(transformer, buffer_frames, latent_size, shift)


# --------------------------------------------------------------------------------------------
# Export: ComfyUI's key format (the original Wan 2.1 names its Load Diffusion Model detects)
# --------------------------------------------------------------------------------------------

# diffusers' module names -> the original Wan names (what ComfyUI's WanModel uses), per module
# path prefix; block-level names are matched inside ``blocks.N.``.
_TOP = {
    "scale_shift_table": "head.modulation",
    "proj_out": "head.head",
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
}
_BLOCK = {
    "scale_shift_table": "modulation",
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3",  # the norm before cross-attention
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def comfy_name(module: str) -> str:
    """A diffusers Wan module path (``blocks.3.attn1.to_q``) -> its original Wan / ComfyUI path
    (``blocks.3.self_attn.q``). Raises ``KeyError`` for a module the format has no name for."""
    if module in _TOP:
        return _TOP[module]
    head, _, rest = module.partition(".")
    if head == "blocks":
        index, _, inner = rest.partition(".")
        if index.isdigit() and inner in _BLOCK:
            return f"blocks.{index}.{_BLOCK[inner]}"
    raise KeyError(f"no ComfyUI Wan name for the diffusers module {module!r}")


def _split(key: str) -> tuple[str, str]:
    """``blocks.0.attn1.to_q.weight`` -> (``blocks.0.attn1.to_q``, ``weight``); parameters that are
    modules of their own (``scale_shift_table``) have no suffix."""
    if key.endswith(".weight") or key.endswith(".bias"):
        module, _, leaf = key.rpartition(".")
        return module, leaf
    return key, ""


def comfy_state_dict(wan: WanVelocity | nn.Module, dtype: torch.dtype | None = None,
                     state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The transformer's weights under the original Wan names, as ComfyUI's Load Diffusion Model
    reads them, LoRA adapters merged in. ``dtype`` casts floating tensors; ``state`` (a
    :class:`WanVelocity` state dict, e.g. gathered from shards) replaces the module's own."""
    transformer = wan.transformer if isinstance(wan, WanVelocity) else wan
    if state is not None and isinstance(wan, WanVelocity):
        state = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    out = {}
    for key, value in _merged_state(transformer, state).items():
        module, leaf = _split(key)
        name = comfy_name(module) + (f".{leaf}" if leaf else "")
        value = value.detach().cpu()
        out[name] = value.to(dtype) if dtype is not None and value.is_floating_point() else value.contiguous()
    return out


def load_comfy_state_dict(wan: WanVelocity, state: dict[str, Tensor]) -> WanVelocity:
    """Loads full weights under the original Wan names (:func:`comfy_state_dict`, or a file
    ComfyUI's Load Diffusion Model reads) into a Wan model without LoRA adapters. Every weight
    of the model must be in ``state``; a ``model.diffusion_model.`` prefix is accepted."""
    if any(_is_lora(m) for m in wan.transformer.modules()):
        raise ValueError("load full weights into a Wan model without LoRA adapters (they are merged in the file)")
    prefix = "model.diffusion_model."
    state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    own = {}
    for key in wan.transformer.state_dict():
        module, leaf = _split(key)
        name = comfy_name(module) + (f".{leaf}" if leaf else "")
        if name not in state:
            raise ValueError(f"the weights lack {name!r} (the model's {key}): not a full Wan model of this shape")
        own[key] = state[name]
    wan.transformer.load_state_dict(own)
    return wan


def load_adapted_wan(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[WanVelocity, dict[str, str]]:
    """A Wan model adapted by ``train --init wan:FOLDER`` (its ``model.safetensors``), with the
    file's metadata. The base is read from FOLDER (recorded in the file); a LoRA run's adapters
    (``model_lora.safetensors`` beside it) go onto that base, so a model distilled from it trains
    adapters too, otherwise the full weights are loaded."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Wan checkpoint")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    init = meta.get("init", "")
    if meta.get("format") != "comfyui-wan" or not init.startswith("wan:"):
        raise ValueError(f"{path} is not a Wan model adapted by `train --init wan:FOLDER` (its metadata names no "
                         "base Wan folder)")
    base = Path(init[len("wan:"):])
    if "latent_size" not in meta:
        raise ValueError(f"{path} does not record its latent size (latent_size): export it again with this version")
    h, w = (int(v) for v in meta["latent_size"].split(","))
    try:
        wan = load_wan(base, int(meta["buffer_frames"]), (h, w), float(meta.get("shift", 3.0)), dtype)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path} was adapted from {base}, which is not a Wan folder any more: {err}") from None
    lora = path.with_name(path.stem + "_lora.safetensors")
    if int(meta.get("lora_rank", "0") or 0) and lora.is_file():
        load_lora(wan, load_file(str(lora)))
    else:
        load_comfy_state_dict(wan, load_file(str(path)))
    return wan.to(dtype), meta


def _merged_state(transformer: nn.Module, state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The base weights with LoRA deltas added (``W + B A * alpha / r``), under diffusers' names."""
    state = transformer.state_dict() if state is None else state
    merged = {}
    for name, module in transformer.named_modules():
        if _is_lora(module):
            weight = state[f"{name}.base_layer.weight"]
            for adapter in module.active_adapters:
                A, Bm = state[f"{name}.lora_A.{adapter}.weight"], state[f"{name}.lora_B.{adapter}.weight"]
                weight = weight + (Bm @ A) * module.scaling[adapter]
            merged[f"{name}.weight"] = weight
            if f"{name}.base_layer.bias" in state:
                merged[f"{name}.bias"] = state[f"{name}.base_layer.bias"]
    for key, value in state.items():
        if "lora_" not in key and ".base_layer." not in key:
            merged.setdefault(key, value)
    return merged


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")


def has_lora(wan: WanVelocity) -> bool:
    """Whether the model carries LoRA adapters (:func:`add_lora`)."""
    return any(_is_lora(m) for m in wan.transformer.modules())


# --------------------------------------------------------------------------------------------
# LoRA (peft), saved in a key format ComfyUI's Load LoRA reads
# --------------------------------------------------------------------------------------------

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


def add_lora(wan: WanVelocity, rank: int = 16, alpha: float | None = None,
             targets: tuple[str, ...] = LORA_TARGETS) -> WanVelocity:
    """Freezes the transformer and adds LoRA adapters (peft) of ``rank`` to the attention and
    feed-forward projections of every block; only the adapters train. ``alpha`` defaults to
    ``rank`` (scale 1)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"LoRA needs peft: pip install -r requirements-train.txt; {err}") from None
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    wan.transformer.requires_grad_(False)
    # self- and cross-attention projections and the feed-forward layers of every block
    inner = [f"attn{i}.{t}" for i in (1, 2) for t in targets if t.startswith("to_")] + \
        [t for t in targets if not t.startswith("to_")]
    pattern = r"blocks\.\d+\.(" + "|".join(re.escape(n) for n in inner) + ")"  # peft matches it in full
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), target_modules=pattern)
    inject_adapter_in_model(config, wan.transformer)
    return wan


def lora_state_dict(wan: WanVelocity, state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The adapters as ComfyUI's Load LoRA reads them: ``diffusion_model.<Wan name>.lora_down.weight``
    (A), ``.lora_up.weight`` (B) and ``.alpha`` (ComfyUI scales by alpha / rank, as peft does).
    ``state``: a :class:`WanVelocity` state dict to take the weights from instead of the module."""
    out = {}
    for name, module in wan.transformer.named_modules():
        if not _is_lora(module):
            continue
        adapter = module.active_adapters[0]
        if state is None:
            A, Bm = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        else:
            A = state[f"transformer.{name}.lora_A.{adapter}.weight"]
            Bm = state[f"transformer.{name}.lora_B.{adapter}.weight"]
        key = f"diffusion_model.{comfy_name(name)}"
        out[f"{key}.lora_down.weight"] = A.detach().cpu().contiguous()
        out[f"{key}.lora_up.weight"] = Bm.detach().cpu().contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(module.scaling[adapter] * A.shape[0]))
    if not out:
        raise ValueError("this Wan model has no LoRA adapters (add_lora adds them)")
    return out


def load_lora(wan: WanVelocity, state: dict[str, Tensor]) -> WanVelocity:
    """Loads adapters saved by :func:`lora_state_dict` into a Wan model (adding them, with the
    saved rank and alpha, if it has none). Every saved key must find its module."""
    ranks = {k[:-len(".lora_down.weight")]: v.shape[0] for k, v in state.items() if k.endswith(".lora_down.weight")}
    if not ranks:
        raise ValueError("no LoRA weights in this file (expected keys ending in .lora_down.weight)")
    first, rank = next(iter(ranks.items()))
    alpha = float(state.get(f"{first}.alpha", rank))
    if not any(_is_lora(m) for m in wan.transformer.modules()):
        add_lora(wan, rank, alpha)
    modules = {f"diffusion_model.{comfy_name(n)}": m for n, m in wan.transformer.named_modules() if _is_lora(m)}
    missing = sorted(set(ranks) - set(modules))
    if missing:
        raise ValueError(f"LoRA keys for modules this model lacks: {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    with torch.no_grad():
        for key in ranks:
            module = modules[key]
            adapter = module.active_adapters[0]
            module.lora_A[adapter].weight.copy_(state[f"{key}.lora_down.weight"])
            module.lora_B[adapter].weight.copy_(state[f"{key}.lora_up.weight"])
    return wan
