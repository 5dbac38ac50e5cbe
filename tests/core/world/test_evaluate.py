"""Evaluation protocols run end to end on a micro pipeline and count model calls exactly."""

import pytest
import torch

from helpers import randomized
from streamdit_core import StreamDiTConfig, TextEmbedding
from streamdit_core import PromptSwitch
from streamdit_core.codec import PixelCodec
from streamdit_core.world import held_out_scenes
from streamdit_core.schedule import Partition
from streamdit_core.world.evaluate import (codec_round_trip, compare_schemes, drift, fair_partition, prompt_switch,
                                           scheme_partition, seams)
from streamdit_core.pipeline import Pipeline

CONFIG = StreamDiTConfig(in_channels=3, patch_size=8, hidden_size=32, depth=1, num_heads=2, text_dim=4,
                         window=None, buffer_frames=4, latent_size=(64, 64))


class Words:
    def encode(self, prompts):
        return TextEmbedding(torch.tensor([[[float(len(p))] * 4] for p in prompts]))


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(randomized(CONFIG), PixelCodec(), Words(), 16)


def test_scheme_table_counts_calls_per_frame(pipe):
    scenes = held_out_scenes()[:2]
    results = compare_schemes(pipe, ["uniform", "diagonal", "streamdit-c2"], scenes, seconds=2.0, steps=8,
                              progress=False)
    by = {r.name: r for r in results}
    # 32 frames. uniform (K=2, c=2, s=8): 8 warm-start calls give the 2 references, then 8 calls per 2 frames.
    assert by["uniform"].calls_per_frame == pytest.approx((8 + 15 * 8) / 32)
    # diagonal (c=1, N=4, s=2): a warm start of 4N = 16 steps, less the last band's 4: 12 calls,
    # then 2 calls per frame.
    assert by["diagonal"].calls_per_frame == pytest.approx((12 + 32 * 2) / 32)
    # c=2 (N=2, s=4): warm start 8 - 4 = 4 calls, then 4 calls per 2 frames.
    assert by["streamdit-c2"].calls_per_frame == pytest.approx((4 + 16 * 4) / 32)
    for r in results:
        assert len(r.scores) == 2 and 0 <= r.summary["color"] <= 1 and 0 <= r.summary["subject_consistency"] <= 1


def test_several_seeds_give_each_seeds_table_and_their_mean(pipe):
    scenes = held_out_scenes()[:2]
    both = compare_schemes(pipe, ["streamdit-c2"], scenes, seconds=0.5, steps=4, seed=3, seeds=2, progress=False)[0]
    alone = [compare_schemes(pipe, ["streamdit-c2"], scenes, seconds=0.5, steps=4, seed=s, progress=False)[0]
             for s in (3, 4)]
    assert [s["seed"] for s in both.per_seed] == [3, 4] and len(both.scores) == 4
    for got, want in zip(both.per_seed, alone):  # each seed streams exactly as that seed alone
        for key in ("temporal_flickering", "brightness"):
            assert got[key] == want.summary[key]
    flicker = [a.summary["temporal_flickering"] for a in alone]
    assert flicker[0] != flicker[1]  # the noise changes the video
    assert both.summary["temporal_flickering"] == pytest.approx(sum(flicker) / 2)
    assert both.spread("temporal_flickering") == pytest.approx(abs(flicker[0] - flicker[1]))
    assert alone[0].spread("shape") == 0.0
    with pytest.raises(ValueError, match="seeds"):
        compare_schemes(pipe, ["streamdit-c2"], scenes, seconds=0.5, steps=4, seeds=0, progress=False)


def test_schemes_follow_the_models_own_steps_by_default(pipe):
    import dataclasses

    scenes = held_out_scenes()[:1]
    plain = compare_schemes(pipe, ["uniform", "diagonal"], scenes, seconds=0.5, progress=False)
    # not distilled: T = 16 at c = 2 (N = 2, s = 8), 4 calls per frame, and so for every scheme
    assert [(r.partition.c, r.partition.s) for r in plain] == [(2, 8), (1, 4)]
    student = dataclasses.replace(pipe, steps_per_chunk=1)
    one = compare_schemes(student, ["uniform", "diagonal", "streamdit-c2"], scenes, seconds=0.5, progress=False)
    assert [(r.partition.N, r.partition.s) for r in one] == [(1, 1), (4, 1), (2, 1)]  # one call per chunk
    # 8 frames: a warm start of at least four steps per chunk band (4N, less the last band's: 4N - 4
    # calls), then one call per emitted chunk (8 chunks at c=1, 4 at c=2)
    assert one[1].calls_per_frame == pytest.approx((12 + 8) / 8) and one[2].calls_per_frame == pytest.approx((4 + 4) / 8)


def test_each_scheme_gets_the_calls_per_frame_of_the_models_own_partition():
    # the distilled student: one call per chunk of 2 at B = 8, so 0.5 calls per frame
    assert fair_partition("uniform", 8, 0.5) == Partition(K=2, N=1, c=6, s=3)  # not 6 frames in one call
    assert fair_partition("streamdit-c4", 8, 0.5) == Partition(K=0, N=2, c=4, s=2)
    assert fair_partition("diagonal", 8, 0.5) == Partition(K=0, N=8, c=1, s=1)  # at least one step a chunk
    assert fair_partition("streamdit-c2", 8, 2.0) == Partition(K=0, N=4, c=2, s=4)  # the teacher's T = 16


def test_drift_switch_and_seams_run_and_report_shares(pipe):
    scenes = held_out_scenes()[:2]
    d = drift(pipe, scenes, seconds=2.0, partition=scheme_partition("streamdit-c2", 4, 8), window_seconds=1.0)
    assert set(d.first) == set(d.last) and 0 <= d.last["brightness"] <= 1
    for mode in ("immediate", "blend", "chunk"):
        s = prompt_switch(pipe, scenes, "color", at=1.0, seconds=2.0, partition=scheme_partition("diagonal", 4, 8),
                          switch=PromptSwitch(mode))
        assert 0 <= s.switched <= 1 and 0 <= s.kept <= 1 and s.within_2s <= s.switched and s.mode == mode
        assert 0 <= s.noisy <= 1 and s.noise > 0  # an untrained model's frames are noise
        assert 0 <= s.stray <= 1
    turn = prompt_switch(pipe, scenes, "direction", at=1.0, seconds=2.0, partition=scheme_partition("diagonal", 4, 8))
    assert turn.stray is None  # headings are read over windows, not per frame
    seam = seams(pipe, scenes, partition=scheme_partition("streamdit-c2", 4, 8), seconds=1.0)
    assert seam.chunk_frames == 2 and seam.overlap == pytest.approx(seam.separate)  # a pixel codec has no context


def test_drift_over_several_seeds_keeps_each_seeds_windows_and_their_mean(pipe):
    scenes = held_out_scenes()[:2]
    P = scheme_partition("streamdit-c2", 4, 8)
    both = drift(pipe, scenes, seconds=1.0, partition=P, window_seconds=0.5, seed=5, seeds=2)
    alone = [drift(pipe, scenes, seconds=1.0, partition=P, window_seconds=0.5, seed=s) for s in (5, 6)]
    assert [s["seed"] for s in both.per_seed] == [5, 6]
    for got, want in zip(both.per_seed, alone):
        assert got["first"] == want.first and got["last"] == want.last
    assert alone[0].last["temporal_flickering"] != alone[1].last["temporal_flickering"]
    for key in ("temporal_flickering", "brightness"):
        assert both.last[key] == pytest.approx((alone[0].last[key] + alone[1].last[key]) / 2)
        assert both.change(key) == pytest.approx(both.last[key] - both.first[key])
    with pytest.raises(ValueError, match="seeds"):
        drift(pipe, scenes, seconds=1.0, partition=P, seeds=0)


def test_unknown_scheme_is_named():
    with pytest.raises(ValueError, match="unknown scheme 'zigzag'"):
        scheme_partition("zigzag", 8, 16)


def test_the_embedded_codec_keeps_every_world_shape_in_a_round_trip():
    from streamdit_core.checkpoint import load_codec, read_metadata
    from streamdit_core.pipeline import EMBEDDED_MODELS

    model = EMBEDDED_MODELS["embedded"]
    codec = load_codec(model.parent / read_metadata(model)["codec"])
    # two of each shape, on every background (the strict reading: corners and tips must survive)
    scenes = [held_out_scenes(24)[i] for i in (0, 3, 4, 6, 5, 7)]
    assert {s.shape for s in scenes} == {"circle", "square", "triangle"}
    trip = codec_round_trip(codec, scenes, seconds=1.0)
    assert trip.decoded["shape"] == 1 and trip.decoded["one_subject"] == 1
    assert trip.edge_error < 0.035  # the decoder before its outline-weighted refinement: 0.053


def test_codec_round_trip_reads_the_ceiling_and_where_errors_sit():
    scenes = held_out_scenes(3)
    exact = codec_round_trip(PixelCodec(), scenes, seconds=1.0)
    assert exact.decoded["shape"] == exact.source["shape"] == 1 and exact.edge_error < 1e-6
    assert exact.switch_noise < 1e-6 and exact.steady_noise < 1e-6

    class Blurry(PixelCodec):  # a codec that loses edges: 3x3 box blur, wrapping
        def decode(self, latents):
            video = super().decode(latents)
            return sum(torch.roll(video, (dy, dx), dims=(3, 4)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9

    blurry = codec_round_trip(Blurry(), scenes, seconds=1.0)
    assert blurry.edge_error > 0.02 and blurry.edge_error > 10 * blurry.background_error
    assert blurry.inside_error < blurry.edge_error

    class Patchy(PixelCodec):  # every other 4x4 block of a frame shows the frame before it
        def decode(self, latents):
            video = super().decode(latents)
            H, W = video.shape[-2:]
            checker = ((torch.arange(H)[:, None] // 4 + torch.arange(W)[None] // 4) % 2).bool()
            before = torch.cat([video[:, :, :1], video[:, :, :-1]], dim=2)
            return torch.where(checker, before, video)

    smear = codec_round_trip(Patchy(), scenes, seconds=1.0)
    assert smear.switch_noise > 0.1 and smear.switch_noise > 10 * smear.steady_noise
