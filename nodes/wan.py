"""Streaming ComfyUI's own Wan video models: MODEL + CLIP + VAE -> STREAMDIT_MODEL.

ComfyUI's ``WanModel`` takes one timestep per frame (``[B, F]``); its samplers give one sigma per
sample. :class:`ComfyVelocity` fits a ComfyUI MODEL to the velocity protocol
(``x [B, C, F, H, W], sigma [B, F], text -> v``):

- ComfyUI's flow sigma is ours: ``x = (1 - sigma) x0 + sigma eps`` and a flow model's output is
  ``v = eps - x0`` (ComfyUI's ``denoised = x - sigma * output``), so sigmas and outputs pass
  through unchanged; each frame's timestep is ``model_sampling.timestep(sigma)`` (x 1000).
- The schedule's sigma warp is the model's shift (ComfyUI's ``time_snr_shift``, what
  ModelSamplingSD3 sets), unless one is given.
- Text comes from the CLIP input (token states ``[1, L, D]``, cached per prompt); classifier-free
  guidance runs the negative prompt as the second half of one batched call. With no CLIP, the
  pack's own text encoder (all-MiniLM-L6-v2) zero-padded to the model's text width: what a small
  Wan model made here from scratch (``train --init wan:new``) was trained on.
- ComfyUI's model management loads the model to its device before calls (and may offload it
  between runs).

:class:`WanVideoCodec` decodes chunks through ComfyUI's VAE. Wan's VAE compresses time 4x and
decodes its first latent to one frame (the first-frame rule): here every latent stands for 4
frames, the stream's first latent is decoded behind a copy of itself, and later chunks are
decoded behind the last ``context`` latents of the chunk before, which hides the seams of the
causal decoder. Encoding for video-to-video mirrors it.

Nothing here imports ComfyUI: the objects it is given are ComfyUI's, and model management goes
through :mod:`nodes.host`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from streamdit_core import FrameText, Geometry, Pipeline, SigmaWarp, TextEmbedding, WanFrameRule, per_prompt

from . import host
from .common import CATEGORY, MODEL, io

__all__ = ["ComfyText", "ComfyVelocity", "WanVideoCodec", "comfy_pipeline", "StreamDiTWanModel"]

WAN_FPS = 16  # Wan 2.1 is trained on 16 fps video


class ComfyVelocity(nn.Module):
    """A ComfyUI flow MODEL (a ModelPatcher around a WAN21 model) as a velocity model.

    ``forward(x [B, C, F, h, w], sigma [B, F], text) -> v [B, C, F, h, w]`` (float32). ``text``
    is a :class:`TextEmbedding` of context tokens ``[B or 1, L, D]`` (the mask is not used: Wan's
    cross-attention has none and padding is zero), or a :class:`FrameText`: the model then runs
    once per distinct prompt and each frame takes the output of its own prompt.

    Attributes:
        geometry: the buffer it streams (the velocity contract's Geometry: buffer frames,
            channels, latent size, patch, and the model's shift as the sigma warp).
        negative: the negative prompt's tokens, the unconditional branch of guidance.
        calls: model evaluations made (a :class:`FrameText` call counts one per prompt).
    """

    def __init__(self, patcher, geometry: Geometry, negative: TextEmbedding | None = None):
        super().__init__()
        self.patcher = patcher
        self.geometry = geometry
        self.negative = negative
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return host.device()

    def forward(self, x: Tensor, sigma: Tensor, text: TextEmbedding | FrameText) -> Tensor:
        if x.dim() != 5 or sigma.shape != x.shape[:1] + x.shape[2:3]:
            raise ValueError(f"need x [B, C, F, h, w] and sigma [B, F], got {list(x.shape)} and {list(sigma.shape)}")
        return per_prompt(self._call, x, sigma, text)

    def _call(self, x: Tensor, sigma: Tensor, text: TextEmbedding) -> Tensor:
        host.load_models([self.patcher])
        base = self.patcher.model
        dtype = base.manual_cast_dtype or base.get_dtype()
        device = x.device
        tokens = text.tokens
        if tokens.shape[0] == 1 and x.shape[0] > 1:
            tokens = tokens.expand(x.shape[0], -1, -1)  # [B, L, D]
        context = tokens.to(device=device, dtype=dtype)  # [B, L, D]
        t = base.model_sampling.timestep(sigma.to(device)).float()  # [B, F]: a timestep per frame
        options = dict(self.patcher.model_options.get("transformer_options", {}))
        out = base.diffusion_model(x.to(dtype), t, context=context, transformer_options=options)  # [B, C, F, h, w]
        self.calls += 1
        return out.float()


class ComfyText:
    """Prompts through a ComfyUI CLIP input -> :class:`TextEmbedding` ``[b, L, D]``, cached per
    prompt (a new prompt costs one encode; a prompt seen before costs nothing)."""

    def __init__(self, clip):
        self.clip = clip
        self._cache: dict[str, Tensor] = {}

    def _encode_one(self, prompt: str) -> Tensor:
        if prompt not in self._cache:
            cond = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))[0][0]  # [1, L, D]
            self._cache[prompt] = cond.detach().float().cpu()
        return self._cache[prompt]

    def encode(self, prompts: str | Sequence[str]) -> TextEmbedding:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        states = [self._encode_one(p) for p in prompts]
        length = max(s.shape[1] for s in states)
        tokens = torch.cat([nn.functional.pad(s, (0, 0, 0, length - s.shape[1])) for s in states])  # [b, L, D]
        mask = torch.zeros(tokens.shape[:2], dtype=torch.bool)  # [b, L]
        for i, s in enumerate(states):
            mask[i, : s.shape[1]] = True
        return TextEmbedding(tokens, mask)


class WanVideoCodec(WanFrameRule):
    """ComfyUI's Wan 2.1 VAE as a streaming codec: latents ``[b, C, F, h, w]`` in the model's
    space <-> video ``[b, 3, 4F, 8h, 8w]`` in 0..1, on Wan's frame rule
    (:class:`streamdit_core.wan.WanFrameRule`: every latent stands for 4 frames)."""

    def __init__(self, vae, latent_format, context: int = 2):
        self.vae = vae
        self.latent_format = latent_format
        self.context = context
        self.latent_channels = int(getattr(vae, "latent_channels", self.latent_channels))
        self.space_factor = int(vae.spacial_compression_decode())

    def _decode_clip(self, z: Tensor) -> Tensor:
        images = self.vae.decode(self.latent_format.process_out(z.float()))  # [b, 1 + 4 (f - 1), H, W, 3]
        if images.dim() == 4:
            images = images[None]
        return images.permute(0, 4, 1, 2, 3).float().clamp(0, 1).to(z.device)  # [b, 3, T, H, W]

    def _encode_clip(self, video: Tensor) -> Tensor:
        out = []
        for clip in video:  # [3, 1 + T, H, W]
            z = self.vae.encode(clip.permute(1, 2, 3, 0).cpu())  # [1, C, 1 + T / 4, h, w]
            out.append(self.latent_format.process_in(z.float()))
        return torch.cat(out).to(video.device)


def text_width(model) -> int:
    """The width of the text token states a ComfyUI Wan MODEL takes (4096 for Wan 2.1's umT5)."""
    embedding = model.model.diffusion_model.text_embedding[0]  # Linear(text width, model width)
    return int(embedding.weight.shape[1])


def comfy_pipeline(model, clip, vae, *, width: int = 832, height: int = 480, buffer_frames: int = 8,
                   guidance: float = 5.0, negative_prompt: str = "", shift: float = 0.0, fps: int = WAN_FPS,
                   context: int = 2) -> Pipeline:
    """A :class:`Pipeline` streaming a ComfyUI Wan MODEL with its CLIP and VAE.

    Args:
        model, clip, vae: ComfyUI's MODEL (a text-to-video Wan 2.1-format model), CLIP and VAE.
            ``clip`` None: the pack's MiniLM text encoder, zero-padded to the model's text width
            (for Wan-architecture models trained here with ``train --init wan:new``).
        width, height: default frame size in pixels (multiples of 16).
        buffer_frames: latent frames in the moving buffer (B = K + N c; 4 video frames each).
        guidance: the recommended classifier-free guidance scale (1 = none, for distilled models).
        negative_prompt: the unconditional branch of guidance.
        shift: the sigma shift of the schedule; 0 = the model's own (ModelSamplingSD3 sets it).
        fps: frame rate of the video.
        context: latents decoded again in front of each chunk (seams of the causal VAE).
    """
    problem = host.wan_text_to_video_problem(model)
    if problem is not None:
        raise ValueError(problem)
    base = model.model
    dm = base.diffusion_model
    if getattr(getattr(base, "model_type", None), "name", "") != "FLOW":
        raise ValueError(f"the MODEL is a {getattr(base.model_type, 'name', '?')} model; StreamDiT streams flow "
                         "(rectified-flow) models such as Wan 2.1")
    channels = int(base.latent_format.latent_channels)
    if getattr(vae, "latent_channels", None) != channels or getattr(vae, "upscale_index_formula", (0,))[0] != 4:
        raise ValueError(f"the VAE is not a Wan 2.1 video VAE ({channels} latent channels, 4x time); load "
                         "wan_2.1_vae.safetensors with Load VAE")
    space = int(vae.spacial_compression_decode())
    patch = int(dm.patch_size[-1])
    step = space * patch
    if width < step or height < step or width % step or height % step:
        raise ValueError(f"width and height must be positive multiples of {step}, got {width}x{height}")
    if buffer_frames < 1:
        raise ValueError(f"buffer_frames must be at least 1, got {buffer_frames}")
    shift = float(shift) if shift > 0 else float(getattr(base.model_sampling, "shift", 1.0))
    geometry = Geometry(buffer_frames, channels, (height // space, width // space), patch, SigmaWarp.shift(shift))
    if clip is not None:
        text = ComfyText(clip)
    else:
        from streamdit_core import TextEncoder

        width = text_width(model)
        text = TextEncoder(width=width)
        if width < text.native_dim:
            raise ValueError(f"with no CLIP input the pack's {text.name} text encoder gives {text.native_dim}-wide "
                             f"text and this model takes {width}-wide text; connect the model's own text encoder "
                             "(Load CLIP)")
    negative = text.encode([negative_prompt]) if guidance != 1.0 else None
    velocity = ComfyVelocity(model, geometry, negative)
    return Pipeline(velocity, WanVideoCodec(vae, base.latent_format, context), text, int(fps), None, float(guidance))


class StreamDiTWanModel(io.ComfyNode):
    """A ComfyUI Wan MODEL with its CLIP and VAE, for the StreamDiT stream nodes."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StreamDiTWanModel", display_name="StreamDiT Wan Model (MODEL + CLIP + VAE)", category=CATEGORY,
            description="Streams a video model loaded by ComfyUI's own loaders (Wan 2.1 T2V 1.3B / 14B and "
                        "Wan-format derivatives) with the StreamDiT moving buffer: each frame gets its own noise "
                        "level. Feed the result to the Stream Sampler, Live Stream or Video to Video nodes.",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1 text-to-video model (Load Diffusion Model, from "
                                                "models/diffusion_models/)."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (Load VAE, from models/vae/)."),
                io.Int.Input("width", default=832, min=16, max=4096, step=16, tooltip=
                             "Frame width in pixels (a multiple of 16)."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16, tooltip=
                             "Frame height in pixels (a multiple of 16)."),
                io.Int.Input("buffer_frames", default=8, min=1, max=64, tooltip=
                             "Latent frames in the moving buffer (4 video frames each): the stream nodes' "
                             "K + N x c must equal it."),
                io.Float.Input("guidance", default=5.0, min=1.0, max=20.0, step=0.5, tooltip=
                               "Recommended guidance scale (the stream nodes' guidance 0 uses it): about 5 for "
                               "base Wan models, 1 (none, half the work) for step-distilled ones."),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip=
                                "What guidance steers away from (unused at guidance 1)."),
                io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.5, tooltip=
                               "Sigma shift of the schedule; 0 uses the model's own (8 for Wan 2.1 in ComfyUI, or "
                               "what ModelSamplingSD3 set)."),
                io.Int.Input("fps", default=WAN_FPS, min=1, max=120, tooltip="Frame rate (16 for Wan 2.1)."),
                io.Int.Input("decode_context", default=2, min=0, max=16, tooltip=
                             "Latents of the previous chunk decoded again in front of each chunk: more hides the "
                             "seams of Wan's causal VAE better and costs more decoding (0 = chunks alone)."),
                io.Clip.Input("clip", optional=True, tooltip=
                              "Its text encoder, umt5_xxl (Load CLIP, type wan, from models/text_encoders/). Leave "
                              "it unconnected for a small Wan model trained by this pack from scratch (train "
                              "--init wan:new): the pack's own MiniLM text encoder then reads the prompts."),
            ],
            outputs=[MODEL.Output("model", tooltip="The Wan model as a StreamDiT model, for every stream node.")],
        )

    @classmethod
    def execute(cls, model, vae, width, height, buffer_frames, guidance, negative_prompt, shift, fps,
                decode_context=2, clip=None) -> io.NodeOutput:
        return io.NodeOutput(comfy_pipeline(model, clip, vae, width=width, height=height, buffer_frames=buffer_frames,
                                            guidance=guidance, negative_prompt=negative_prompt, shift=shift, fps=fps,
                                            context=decode_context))
