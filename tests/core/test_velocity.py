"""The contracts: velocity models state their geometry, codecs decode behind context, wrappers
forward the contract, and one rule places a stream."""

import pytest
import torch

from helpers import PIXEL_CONFIG, randomized
from streamdit_core import Partition, SigmaWarp, StreamDiTConfig, Streamer, TextEmbedding
from streamdit_core.analytic import GaussianVelocity
from streamdit_core.codec import PixelCodec, VideoAutoencoder
from streamdit_core.guidance import Guided
from streamdit_core.velocity import CallCounter, Codec, Geometry, ModelWrapper, VelocityModel, placement


def test_streamdit_states_its_geometry_from_its_config():
    config = StreamDiTConfig(buffer_frames=6, latent_size=(4, 6), in_channels=3, sigma_warp="shift:3")
    model = randomized(config)
    assert isinstance(model, VelocityModel)
    assert model.geometry == Geometry(6, 3, (4, 6), 2, SigmaWarp.shift(3.0))
    assert not isinstance(GaussianVelocity(), VelocityModel)  # a bare field streams, but has no geometry


def test_a_stream_samples_on_the_warp_its_model_states():
    model = randomized(StreamDiTConfig(sigma_warp="shift:3"))
    stream = Streamer(Guided(model, 2.0), Partition.streamdit(16, 2, s=1), (4, 8, 8))
    assert stream.state.warp == SigmaWarp.shift(3.0)  # read through the wrapper
    assert Streamer(GaussianVelocity(), Partition.streamdit(16, 2), (1, 2, 2)).state.warp == SigmaWarp.identity()


def test_geometry_is_checked():
    with pytest.raises(ValueError, match="buffer_frames must be positive"):
        Geometry(0, 4, (8, 8), 2, SigmaWarp.identity())
    with pytest.raises(ValueError, match="latent_size must be"):
        Geometry(8, 4, (8, 8, 8), 2, SigmaWarp.identity())


def test_both_codecs_implement_the_codec_contract_with_context_decoding():
    for codec in (PixelCodec(), VideoAutoencoder().eval()):
        assert isinstance(codec, Codec)
    codec = PixelCodec()
    latents = torch.rand(1, 3, 2, 4, 4) * 2 - 1
    assert torch.equal(codec.decode_with_context(latents[:, :, :1], latents[:, :, 1:]), codec.decode(latents)[:, :, 1:])


def test_wrappers_forward_the_contract_and_the_counter_counts_samples():
    model = randomized(PIXEL_CONFIG)
    counted = CallCounter(Guided(model, 3.0))
    assert counted.geometry == model.geometry and counted.config is model.config
    x, sigma = torch.randn(2, 3, 4, 8, 8), torch.rand(2, 4)
    inner = CallCounter(model)
    with torch.no_grad():
        Guided(inner, 3.0)(x, sigma, TextEmbedding(torch.ones(1, 1, 4)))
    assert (inner.calls, inner.samples) == (1, 4)  # one batched call: 2 streams x 2 branches


class _HostModel(ModelWrapper):
    """A host adapter: no parameters of its own, a device it names."""

    def __init__(self):
        super().__init__(None)

    @property
    def device(self):
        return torch.device("meta")

    def forward(self, x, sigma, text):
        return x


def test_placement_names_the_device_and_keeps_the_buffer_at_float32_or_above():
    assert placement(GaussianVelocity()) == (torch.device("cpu"), torch.float32)
    assert placement(randomized(PIXEL_CONFIG).to(torch.bfloat16)) == (torch.device("cpu"), torch.float32)
    assert placement(randomized(PIXEL_CONFIG).double()) == (torch.device("cpu"), torch.float64)
    assert placement(_HostModel()) == (torch.device("meta"), torch.float32)
    assert placement(_HostModel(), "cpu", torch.float64) == (torch.device("cpu"), torch.float64)
