"""Codecs: shapes, causality, and overlap chunk decoding equal to a whole decode."""

import pytest
import torch

from streamdit_core.codec import ChunkDecoder, CodecConfig, PixelCodec, VideoAutoencoder, seam_ratio


def _codec(seed=0, time_factor=2):
    torch.manual_seed(seed)
    return VideoAutoencoder(CodecConfig(width=16, time_factor=time_factor, latent_channels=8, space_factor=8)).eval()


def test_shapes_and_compression():
    codec = _codec()
    video = torch.rand(2, 3, 8, 64, 64)
    z = codec.encode(video)
    assert z.shape == (2, 8, 4, 8, 8)
    out = codec.decode(z)
    assert out.shape == video.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match=r"multiple of 2"):
        codec.encode(torch.rand(1, 3, 7, 64, 64))
    with pytest.raises(ValueError, match=r"\[b, 3, T, H, W\]"):
        codec.encode(torch.rand(3, 8, 64, 64))


@pytest.mark.parametrize("space_factor,channels", [(4, 4), (8, 8)])
def test_space_factors(space_factor, channels):
    torch.manual_seed(0)
    codec = VideoAutoencoder(CodecConfig(width=16, latent_channels=channels, space_factor=space_factor)).eval()
    z = codec.encode(torch.rand(1, 3, 3, 64, 64))
    assert z.shape == (1, channels, 3, 64 // space_factor, 64 // space_factor)
    assert codec.decode(z).shape == (1, 3, 3, 64, 64)
    with pytest.raises(ValueError, match="space_factor must be 4 or 8"):
        VideoAutoencoder(CodecConfig(space_factor=2))


def test_decoder_is_causal_in_time():
    codec = _codec()
    z = torch.randn(1, 8, 6, 8, 8)
    later = z.clone()
    later[:, :, 4:] = torch.randn(1, 8, 2, 8, 8)  # change only the future
    a, b = codec.decode(z), codec.decode(later)
    assert torch.equal(a[:, :, :8], b[:, :, :8])
    assert not torch.equal(a[:, :, 8:], b[:, :, 8:])


@pytest.mark.parametrize("chunk,time_factor", [(1, 2), (2, 2), (3, 2), (2, 1)])
def test_overlap_chunk_decoding_equals_decoding_the_whole_stream(chunk, time_factor):
    codec = _codec(1, time_factor)
    z = torch.randn(2, 8, 9, 8, 8)
    whole = codec.decode(z)
    dec = ChunkDecoder(codec)
    parts = torch.cat([dec.decode(z[:, :, i:i + chunk]) for i in range(0, 9, chunk)], dim=2)
    assert torch.allclose(parts, whole, atol=1e-5)
    naive = ChunkDecoder(codec, overlap=False)
    cold = torch.cat([naive.decode(z[:, :, i:i + chunk]) for i in range(0, 9, chunk)], dim=2)
    assert not torch.allclose(cold, whole, atol=1e-3)  # the cold restarts really differ


def test_seam_ratio_sees_a_jump_at_chunk_boundaries():
    t = torch.arange(16, dtype=torch.float32)
    smooth = (t / 16).view(1, 1, 16, 1, 1).expand(1, 3, 16, 4, 4)
    assert seam_ratio(smooth, 4) == pytest.approx(1.0)
    seamed = smooth.clone()
    seamed[:, :, 4:] += 0.2 * (torch.arange(4, 16) // 4).view(1, 1, 12, 1, 1)
    assert seam_ratio(seamed, 4) > 3


def test_pixel_codec_round_trip():
    video = torch.rand(1, 3, 4, 16, 16)
    codec = PixelCodec()
    assert torch.allclose(codec.decode(codec.encode(video)), video, atol=1e-6)


def test_calibrate_normalises_latents():
    codec = _codec()
    video = torch.rand(4, 3, 8, 64, 64)
    codec.calibrate(video)
    z = codec.encode(video)
    assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-4
    assert torch.allclose(z.std(dim=(0, 2, 3, 4)), torch.ones(8), atol=1e-3)


@pytest.mark.parametrize("space_factor", [4, 8])
def test_a_wrapping_codec_treats_the_frame_as_a_torus(space_factor):
    video = torch.rand(1, 3, 2, 64, 64)
    shift = 3 * space_factor  # whole latent cells, across the border
    for wrap in (True, False):
        torch.manual_seed(0)
        codec = VideoAutoencoder(CodecConfig(width=16, space_factor=space_factor, latent_channels=4, wrap=wrap)).eval()
        with torch.no_grad():
            z, z_rolled = codec.encode(video), codec.encode(torch.roll(video, shift, dims=4))
            out, out_rolled = codec.decode(z), codec.decode(torch.roll(z, 3, dims=4))
        same = torch.allclose(torch.roll(z, 3, dims=4), z_rolled, atol=1e-5) and \
            torch.allclose(torch.roll(out, shift, dims=4), out_rolled, atol=1e-5)
        assert same == wrap  # zero padding makes the borders special
