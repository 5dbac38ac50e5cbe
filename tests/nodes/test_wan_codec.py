"""The Wan adapter's ComfyUI-free parts, with stand-ins that follow Wan's VAE frame rule
(the real-ComfyUI checks are in tests/host/test_wan_adapter.py)."""

import pytest
import torch
from torch import nn

from nodes.wan import WanVideoCodec
from streamdit_core.guidance import Guided
from streamdit_core.conditioning import TextEmbedding


class RuleVae:
    """Wan's time rule with no learning: latent 0 <-> frame 0, latent i <-> frames 4i-3..4i.
    A decoded frame is its latent's mean (grey); a latent is the mean of its frames."""

    latent_channels = 16
    upscale_index_formula = (4, 8, 8)

    def spacial_compression_decode(self):
        return 8

    def decode(self, z):  # [b, 16, F, h, w] -> [b, 1 + 4 (F - 1), 8h, 8w, 3]
        level = z.mean(dim=(1, 3, 4))  # [b, F]
        frames = torch.cat([level[:, :1], level[:, 1:].repeat_interleave(4, 1)], 1)  # [b, T]
        b, T = frames.shape
        return frames[:, :, None, None, None].expand(b, T, z.shape[3] * 8, z.shape[4] * 8, 3)

    def encode(self, pixels):  # [T, H, W, 3] -> [1, 16, 1 + (T - 1) / 4, H / 8, W / 8]
        level = pixels.mean(dim=(1, 2, 3))  # [T]
        latents = torch.cat([level[:1], level[1:].reshape(-1, 4).mean(1)])  # [F]
        return latents[None, None, :, None, None].expand(1, 16, -1, pixels.shape[1] // 8, pixels.shape[2] // 8)


class Identity:
    def process_in(self, z):
        return z

    def process_out(self, z):
        return z


def test_every_latent_stands_for_four_frames_in_decode_and_encode():
    codec = WanVideoCodec(RuleVae(), Identity(), context=2)
    levels = torch.tensor([0.1, 0.3, 0.5, 0.7])
    z = levels[None, None, :, None, None].expand(1, 16, 4, 2, 2)
    video = codec.decode(z)  # the first latent decoded behind a copy of itself: 4 frames, not 1
    assert video.shape == (1, 3, 16, 16, 16)
    torch.testing.assert_close(video[0, 0, :, 0, 0], levels.repeat_interleave(4))
    # a later chunk behind two latents of context gives exactly its own 4 c frames
    later = codec.decode_with_context(z[:, :, :2], z[:, :, 2:])
    torch.testing.assert_close(later[0, 0, :, 0, 0], levels[2:].repeat_interleave(4))
    # encoding: frames 4i..4i+3 make latent i
    frames = torch.arange(16.0)[None, None, :, None, None].expand(1, 3, 16, 16, 16) / 16
    latents = codec.encode(frames)
    assert latents.shape == (1, 16, 4, 2, 2)
    torch.testing.assert_close(latents[0, 0, :, 0, 0], torch.tensor([1.5, 5.5, 9.5, 13.5]) / 16)
    with pytest.raises(ValueError, match="multiple of 4"):
        codec.encode(frames[:, :, :6])


class Echo(nn.Module):
    """Velocity = the mean of each sample's text tokens, so the branches can be told apart."""

    def __init__(self, negative=None):
        super().__init__()
        self.negative = negative

    def forward(self, x, sigma, text):
        return text.tokens.mean(dim=(1, 2))[:, None, None, None, None].expand_as(x).clone()


def test_guidance_uses_a_models_negative_prompt_when_it_has_one():
    x, sigma = torch.zeros(2, 1, 2, 1, 1), torch.ones(2, 2)
    cond = TextEmbedding(torch.full((1, 3, 4), 2.0))
    # no negative: the unconditional branch sees no text (zeros): v = 0 + 3 (2 - 0) = 6
    torch.testing.assert_close(Guided(Echo(), 3.0)(x, sigma, cond), torch.full_like(x, 6.0))
    # a negative prompt of 5 tokens of 1.0: both padded to 5 tokens, cond mean 2 * 3/5 = 1.2
    negative = TextEmbedding(torch.ones(1, 5, 4))
    v = Guided(Echo(negative), 3.0)(x, sigma, cond)
    torch.testing.assert_close(v, torch.full_like(x, 1.0 + 3.0 * (1.2 - 1.0)))
