"""Training on a folder of captioned videos: scanning, captions, bad files, resampling, the split,
and the trainer and the ``train --data`` command on such a folder."""

import json
import warnings

import pytest
import torch

from streamdit_core import StreamDiT, StreamDiTConfig, TextEmbedding, load_checkpoint
from streamdit_core.checkpoint import read_metadata
from streamdit_core.data import ClipFolder, DataError
from streamdit_core.train import TrainConfig, flow_matching_loss, train
from streamdit_core.video import open_writer
from streamdit_core.world import LatentPool, World


def _write(path, frames, fps=16):
    """``frames [T, 3, H, W]`` in 0..1 -> a video file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_writer(path, fps) as writer:
        writer.write(frames)


def _world_clip(seed, frames=16):
    video, captions = World().batch(1, frames, torch.Generator().manual_seed(seed))
    return video[0], captions[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three usable videos captioned three ways, and one of each kind of bad file."""
    root = tmp_path_factory.mktemp("clips")
    captions = {}
    for i, name in enumerate(["a.mp4", "b.mp4", "sub/c.mp4"]):
        video, caption = _world_clip(i)
        _write(root / name, video)
        captions[name] = caption
    (root / "a.txt").write_text(captions["a.mp4"] + "\n")
    (root / "captions.jsonl").write_text(json.dumps({"file": "b.mp4", "caption": captions["b.mp4"]}) + "\n")
    (root / "sub" / "captions.csv").write_text("file,caption\nc.mp4," + captions["sub/c.mp4"] + "\n")
    (root / "broken.mp4").write_bytes(b"\x00\x01 not a video at all" * 50)
    (root / "broken.txt").write_text("a red circle")
    _write(root / "uncaptioned.mp4", _world_clip(5)[0])
    _write(root / "short.mp4", _world_clip(6, frames=4)[0])
    (root / "short.txt").write_text("a blue square")
    return root, captions


def test_a_folder_reads_its_captions_three_ways_and_skips_each_bad_file_with_its_reason(folder):
    root, captions = folder
    with pytest.warns(UserWarning, match="skipping"):
        clips = ClipFolder(root, frames=12, split="all")
    assert sorted(v.path.relative_to(root).as_posix() for v in clips.videos) == sorted(captions)
    assert {v.path.relative_to(root).as_posix(): v.caption for v in clips.videos} == captions
    assert all(v.frames == 16 for v in clips.videos)
    report = clips.report
    assert (report.used, report.count("unreadable"), report.count("no caption"), report.count("too short")) == (3, 1, 1, 1)
    assert dict(report.skipped)["short.mp4"].startswith("too short: 0.25 s is 4 frames")
    assert "3 videos used, skipped 1 no caption, 1 too short, 1 unreadable" == report.summary()


def test_clips_come_out_at_the_asked_length_and_size_with_their_captions(folder):
    root, captions = folder
    clips = ClipFolder(root, frames=12, split="all", warn=False)
    video, caps = clips.batch(5, 12, torch.Generator().manual_seed(0))
    assert video.shape == (5, 12, 3, 64, 64) and video.dtype == torch.float32
    assert 0 <= float(video.min()) and float(video.max()) <= 1
    assert set(caps) <= set(captions.values())
    # a clip is a window of its video: its first frame is one of the video's frames
    first = clips.videos.index(next(v for v in clips.videos if v.caption == caps[0]))
    whole = clips.read(first).float() / 255
    assert min(float((whole[t] - video[0, 0]).abs().max()) for t in range(whole.shape[0])) < 1e-6
    with pytest.raises(ValueError, match="clips of 13 frames"):
        clips.batch(1, 13, torch.Generator())


def test_a_video_is_resampled_to_the_model_fps_and_scaled_and_cropped_to_the_training_size(tmp_path):
    """32 fps in, 16 fps out: every other frame (each frame's grey level is its index); a 96 x 128
    video is scaled to 64 x 85 and centre-cropped, so the left and right edges are cut."""
    T = 32
    levels = torch.arange(T, dtype=torch.float32) * 7 / 255
    frames = levels[:, None, None, None].expand(T, 3, 96, 128).clone()
    frames[:, :, :, :8] = 1.0  # a white band at the far left: cropped away
    _write(tmp_path / "ramp.mp4", frames, fps=32)
    (tmp_path / "ramp.txt").write_text("a grey ramp")
    clips = ClipFolder(tmp_path, frames=8, split="all")
    video = clips.read(0)
    assert video.shape == (16, 3, 64, 85)
    middle = video[:, :, 20:44, 30:55].float().mean(dim=(1, 2, 3)) / 255
    assert torch.allclose(middle, levels[::2], atol=3 / 255), (middle * 255 / 7, levels[::2] * 255 / 7)
    crop, _ = clips.batch(1, 8, torch.Generator())
    assert crop.shape == (1, 8, 3, 64, 64)
    assert float(crop[0, :, :, :, :2].mean()) < 0.9  # the white band is outside the centre crop


def test_the_split_is_deterministic_disjoint_and_covers_the_folder(tmp_path):
    video = _world_clip(0)[0]
    for i in range(12):
        _write(tmp_path / f"v{i}.mp4", video)
        (tmp_path / f"v{i}.txt").write_text(f"clip {i}")
    train_ = {v.caption for v in ClipFolder(tmp_path, frames=8, val_share=0.3).videos}
    val = {v.caption for v in ClipFolder(tmp_path, frames=8, split="val", val_share=0.3).videos}
    assert train_ and val and not train_ & val and len(train_ | val) == 12
    assert train_ == {v.caption for v in ClipFolder(tmp_path, frames=8, val_share=0.3).videos}


def test_a_folder_without_a_usable_video_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no usable video.*no video files"):
        ClipFolder(tmp_path, frames=8)
    _write(tmp_path / "x.mp4", _world_clip(0)[0])
    with pytest.raises(DataError, match=r"1 video files, 1 in the split; skipped 1 no caption\). Each video needs a caption"):
        ClipFolder(tmp_path, frames=8, split="all", warn=False)
    with pytest.raises(DataError, match="not a folder"):
        ClipFolder(tmp_path / "x.mp4", frames=8)
    (tmp_path / "captions.jsonl").write_text("{not json}\n")
    with pytest.raises(DataError, match="captions.jsonl line 1"):
        ClipFolder(tmp_path, frames=8)


def _text(prompts):
    """One 8-wide token per prompt, from its words (a stand-in encoder, no downloads)."""
    rows = [torch.tensor([float(hash(w) % 7 - 3) for w in (p.split() + ["."] * 8)[:8]]) for p in prompts]
    return TextEmbedding(torch.stack(rows)[:, None] / 3)


def test_the_trainer_lowers_its_loss_on_latents_of_a_clip_folder(folder):
    from streamdit_core.pipeline import DEFAULT_MODEL
    from streamdit_core.checkpoint import load_codec

    root, _ = folder
    codec = load_codec(DEFAULT_MODEL.parent / "codec.safetensors")  # 64x64 -> 8 x 8 x 8
    clips = ClipFolder(root, frames=8, split="all", warn=False)
    pool = LatentPool(clips, codec, clips=24, frames=4, clip_frames=8, progress=False)
    assert pool.latents.shape == (24, 8, 8, 8, 8)
    config = StreamDiTConfig(in_channels=8, hidden_size=32, depth=2, num_heads=2, text_dim=8, window=(2, 4, 4),
                             buffer_frames=4, latent_size=(8, 8), patch_size=2)

    def loss(model):
        gen = torch.Generator().manual_seed(7)
        batch = pool.sample(32, gen)
        sigma, eps = torch.rand(32, 4, generator=gen), torch.randn(batch.latents.shape, generator=gen)
        with torch.no_grad():
            return float(flow_matching_loss(model, batch.latents, sigma, eps, _text(batch.prompts)))

    torch.manual_seed(0)
    model = StreamDiT(config)
    before = loss(model)
    result = train(model, pool, _text, TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup=4, ema_decay=0.9),
                   progress=False)
    assert result.step == 40 and loss(model) < 0.8 * before, (before, loss(model))


def test_the_train_command_trains_on_a_folder_and_records_it(folder, tmp_path):
    from streamdit_core.cli import main
    from streamdit_core.pipeline import DEFAULT_MODEL

    root, _ = folder
    codec = DEFAULT_MODEL.parent / "codec.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--codec", str(codec),
                     "--steps", "2", "--batch-size", "2", "--clips", "4", "--decoder-steps", "0",
                     "--model-option", "depth=1"]) == 0
    meta = read_metadata(tmp_path / "run" / "model.safetensors")
    split = ClipFolder(root, frames=12, warn=False)  # the train split, at the 8 + 4 frames the pool cuts
    assert meta["data"] == str(root.resolve()) and "world" not in meta
    assert (meta["data_videos"], meta["data_skipped"]) == (str(len(split)), str(len(split.report.skipped)))
    assert load_checkpoint(tmp_path / "run" / "model.safetensors").config.depth == 1
    with pytest.raises(SystemExit, match="--data: .*no usable video"):
        main(["train", "--data", str(tmp_path / "run"), "--out", str(tmp_path / "b"), "--codec", str(codec)])
    with pytest.raises(SystemExit, match="--switch-share renders prompt-switch clips from the synthetic world"):
        main(["train", "--data", str(root), "--out", str(tmp_path / "c"), "--codec", str(codec), "--switch-share", "0.2"])
    assert not (tmp_path / "c").exists()


def test_the_world_written_as_a_folder_reads_back_as_its_clips(tmp_path):
    """Through mp4 and back, each clip still shows its caption's colour, background and heading."""
    from streamdit_core.data import render_world_folder
    from streamdit_core.world import parse_caption, score_video

    render_world_folder(tmp_path, videos=3, seconds=1.0, seed=0)
    clips = ClipFolder(tmp_path, frames=16, split="all")
    assert len(clips) == 3 and all(v.frames == 16 for v in clips.videos)
    for index, video in enumerate(clips.videos):
        scores = score_video(clips.read(index).float() / 255, parse_caption(video.caption))
        assert (scores.color, scores.background, scores.direction) == (1.0, 1.0, 1.0), (video.caption, scores)


def test_an_encoded_pool_is_cached_and_read_back_instead_of_encoded_again(folder, tmp_path):
    from streamdit_core.pipeline import DEFAULT_MODEL
    from streamdit_core.checkpoint import load_codec

    class Counting:
        """The shipped codec, counting its encodes."""

        def __init__(self):
            self.inner, self.calls = load_codec(DEFAULT_MODEL.parent / "codec.safetensors"), 0
            self.time_factor, self.space_factor = self.inner.time_factor, self.inner.space_factor

        def encode(self, video):
            self.calls += 1
            return self.inner.encode(video)

    root, _ = folder
    clips = ClipFolder(root, frames=8, split="all", warn=False)
    codec = Counting()
    first = LatentPool(clips, codec, clips=6, frames=4, clip_frames=8, progress=False, encode_batch=4,
                       cache=tmp_path / "latents", cache_key="folder+codec")
    assert codec.calls == 2 and len(list((tmp_path / "latents").glob("latents-*.safetensors"))) == 2
    again = LatentPool(clips, codec, clips=6, frames=4, clip_frames=8, progress=False, encode_batch=4,
                       cache=tmp_path / "latents", cache_key="folder+codec")
    assert codec.calls == 2  # read back, not encoded
    assert torch.equal(again.latents, first.latents) and again.prompts == first.prompts
    assert torch.equal(again.subject, first.subject)
    LatentPool(clips, codec, clips=6, frames=4, clip_frames=8, progress=False, encode_batch=4,
               cache=tmp_path / "latents", cache_key="another codec")
    assert codec.calls == 4  # a different source or codec encodes anew
