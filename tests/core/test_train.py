"""The trainer: loss goes down, checkpoints resume, DDP equals one process on the joint batch."""

import dataclasses
import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from helpers import Interrupted, Patterns, encode_patterns, fsdp_resume_worker, gradient_worker
from streamdit_core import StreamDiT, StreamDiTConfig, TextEmbedding, load_checkpoint
from streamdit_core.checkpoint import read_metadata
from streamdit_core.train import TrainConfig, batch_text, flow_matching_loss, train

MICRO = StreamDiTConfig(in_channels=4, hidden_size=32, depth=2, num_heads=2, text_dim=8, window=(2, 4, 4),
                        buffer_frames=4, latent_size=(4, 4))


def _held_out_loss(model, data, seed=123):
    gen = torch.Generator().manual_seed(seed)
    batch = data.sample(64, gen)
    sigma = torch.rand(64, 4, generator=gen)
    eps = torch.randn(batch.latents.shape, generator=gen)
    with torch.no_grad():
        return float(flow_matching_loss(model, batch.latents, sigma, eps, encode_patterns(batch.prompts)))


def test_a_micro_model_lowers_its_loss_in_a_few_dozen_steps(tmp_path):
    torch.manual_seed(0)
    model = StreamDiT(MICRO)
    data = Patterns()
    before = _held_out_loss(model, data)
    result = train(model, data, encode_patterns, TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup=5, ema_decay=0.9,
                                                    checkpoint_every=30), out=tmp_path, progress=False)
    after = _held_out_loss(load_checkpoint(result.checkpoint), data)  # the shipped (EMA) weights
    assert after < 0.8 * before, (before, after)
    meta = read_metadata(result.checkpoint)
    assert meta["step"] == "60" and "train_config" in meta


def test_resume_continues_where_the_run_stopped(tmp_path):
    cfg = TrainConfig(steps=12, batch_size=4, warmup=2, checkpoint_every=6)
    torch.manual_seed(0)
    straight = StreamDiT(MICRO)
    train(straight, Patterns(), encode_patterns, cfg, out=tmp_path / "a", progress=False)
    torch.manual_seed(0)
    first = StreamDiT(MICRO)
    with pytest.raises(KeyboardInterrupt):  # stopped during step 9, after the step-6 checkpoint
        train(first, Interrupted(stop=9), encode_patterns, cfg, out=tmp_path / "b", progress=False)
    torch.manual_seed(99)  # a different init: resume must replace it
    resumed = StreamDiT(MICRO)
    result = train(resumed, Patterns(), encode_patterns, cfg, out=tmp_path / "b", resume=True, progress=False)
    assert result.step == 12
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert read_metadata(tmp_path / "b" / "model.safetensors")["step"] == "12"


def test_non_finite_loss_stops_with_a_clear_error():
    model = StreamDiT(MICRO)
    data = Patterns()
    data.clips[0, 0, 0, 0, 0] = float("nan")
    data.clips[1, 0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="lower --lr or check the data"):
        train(model, data, encode_patterns, TrainConfig(steps=3, batch_size=2, warmup=1), progress=False)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, shard: bool):
    """A joint batch of 4, the gradients and losses of 2 gloo processes on its halves, and the
    gradients and loss of one process on all of it."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 4, 4, 4, generator=gen)
    sigma = torch.rand(4, 4, generator=gen)
    eps = torch.randn(4, 4, 4, 4, 4, generator=gen)
    tokens = torch.randn(4, 3, 8, generator=gen)
    out = tmp_path / "grads.pt"
    mp.start_processes(gradient_worker, args=(2, _free_port(), MICRO, x0, sigma, eps, tokens, str(out), shard),
                       nprocs=2, join=True, start_method="spawn")
    torch.manual_seed(0)
    model = StreamDiT(MICRO)
    loss = flow_matching_loss(model, x0, sigma, eps, TextEmbedding(tokens))
    loss.backward()
    return torch.load(out), model, float(loss.detach())


def test_ddp_with_two_gloo_processes_gives_the_gradients_of_one_process_on_the_joint_batch(tmp_path):
    ddp, model, _ = _two_processes(tmp_path, shard=False)
    for name, p in model.named_parameters():
        assert torch.allclose(ddp["grads"][name], p.grad, atol=1e-6, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in ddp["grads"].values())


def test_fsdp_with_two_gloo_processes_gives_the_loss_and_gradients_of_one_process_on_the_joint_batch(tmp_path):
    fsdp, model, loss = _two_processes(tmp_path, shard=True)
    assert fsdp["sharded"] == "DTensor"  # the parameters really were sharded
    assert abs(sum(fsdp["losses"]) / 2 - loss) < 1e-5
    for name, p in model.named_parameters():
        assert torch.allclose(fsdp["grads"][name], p.grad, atol=1e-6, rtol=1e-4), name


def test_a_sharded_checkpoint_resumed_gives_the_bit_identical_next_step(tmp_path):
    from safetensors.torch import load_file

    mp.start_processes(fsdp_resume_worker, args=(2, _free_port(), MICRO, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    assert (tmp_path / "stopped" / "train_state" / "extra.pt").exists()  # a folder of shards
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "stopped" / "model.safetensors")
    assert read_metadata(tmp_path / "stopped" / "model.safetensors")["step"] == "3"
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert load_checkpoint(tmp_path / "stopped" / "model.safetensors").config == MICRO


def test_activation_checkpointing_keeps_the_gradients_and_the_parameter_names():
    from streamdit_core.shard import checkpoint_blocks

    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 4, 4, 4, generator=gen), torch.randn(2, 4, 4, 4, 4, generator=gen)
    sigma, text = torch.rand(2, 4, generator=gen), TextEmbedding(torch.randn(2, 3, 8, generator=gen))
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = StreamDiT(MICRO)
        if recompute:
            checkpoint_blocks(model)
        flow_matching_loss(model, x0, sigma, eps, text).backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k


@pytest.mark.slow
def test_a_compiled_run_trains_the_compiled_graph_to_the_eager_runs_weights(tmp_path):
    import torch._dynamo

    cfg = TrainConfig(steps=3, batch_size=4, warmup=1, checkpoint_every=3)
    weights = []
    for compiled in (False, True):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        torch.manual_seed(0)
        model = StreamDiT(MICRO)
        train(model, Patterns(), encode_patterns, dataclasses.replace(cfg, compile=compiled), out=tmp_path / str(compiled),
              progress=False)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) == compiled, graphs  # the flag decides whether the steps run a compiled graph
        weights.append(load_checkpoint(tmp_path / str(compiled) / "model.safetensors").state_dict())
    for k in weights[0]:
        assert torch.allclose(weights[0][k], weights[1][k], atol=1e-4), k


class _Constant(torch.nn.Module):
    """A "model" that predicts a fixed velocity, so the loss is a known function of the target."""

    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, x, sigma, text):
        return self.v.expand_as(x)


def test_pixel_weight_moves_the_loss_towards_the_weighted_pixels():
    x0 = torch.zeros(1, 1, 2, 2, 2)
    eps = torch.zeros(1, 1, 2, 2, 2)
    eps[..., 0, 0] = 1.0  # the target velocity is 1 on one pixel per frame, 0 elsewhere
    sigma = torch.full((1, 2), 0.5)
    model = _Constant(torch.zeros(1))
    plain = float(flow_matching_loss(model, x0, sigma, eps, None))
    assert plain == pytest.approx(0.25)  # one pixel in four has error 1
    weight = torch.ones(1, 1, 2, 2, 2)
    weight[..., 0, 0] = 4.0
    weighted = float(flow_matching_loss(model, x0, sigma, eps, None, weight))
    assert weighted == pytest.approx(4 / 7)  # (4 * 1) / (4 + 1 + 1 + 1)
    uniform = float(flow_matching_loss(model, x0, sigma, eps, None, 3 * torch.ones_like(weight)))
    assert uniform == pytest.approx(plain)  # a constant weight changes nothing


def test_frames_without_subject_can_be_left_out_of_the_loss():
    from streamdit_core.schedule import MixedPartitions
    from streamdit_core.train import FlowMatching
    from streamdit_core.world.pool import LatentBatch

    model = StreamDiT(MICRO)
    x0 = torch.zeros(2, 4, 4, 4, 4)
    cover = torch.ones(2, 1, 4, 4, 4)
    cover[0, :, :2] = 0  # the first clip's two oldest frames show no subject (an appearing subject)
    const = _Constant(torch.zeros(1))
    mix = MixedPartitions(B=4, chunk_sizes=(1,), uniform_ratio=0.0, K=0)

    def loss(empty_frame_loss, latents):
        objective = FlowMatching(mix, model.geometry.warp, 0.0, empty_frame_loss)
        return float(objective(const, latents, None, LatentBatch(latents, ["", ""], cover),
                               torch.Generator().manual_seed(0)))

    moved = x0.clone()
    moved[0, :, :2] = 3.0  # what the empty frames hold
    assert loss(True, moved) != pytest.approx(loss(True, x0))
    assert loss(False, moved) == pytest.approx(loss(False, x0))  # they carry no loss
    moved[0, :, 2:] = 3.0
    assert loss(False, moved) != pytest.approx(loss(False, x0))  # the frames with the subject do
    cover.fill_(1.0)
    assert loss(False, x0) == pytest.approx(loss(True, x0))  # nothing to leave out: the plain loss
    with pytest.raises(ValueError, match="empty_frame_loss=False need batches that carry subject cover"):
        FlowMatching(mix, model.geometry.warp, 0.0, False)(const, x0, None, LatentBatch(x0, ["", ""]),
                                                          torch.Generator())


def test_switched_windows_can_be_captioned_frame_by_frame():
    """``frame_captions``: the chosen switched windows condition each frame on its own caption (a
    FrameText), the others repeat their window's caption, a dropped sample has no text at all, and
    with the share at 0 nothing is drawn from the generator."""
    from streamdit_core.conditioning import FrameText
    from streamdit_core.world import LatentBatch

    words = {"": 0.0, "red": 1.0, "blue": 2.0, "green": 3.0}

    def encode(prompts):  # one token whose value names the prompt
        return TextEmbedding(torch.tensor([[[words[p]] * 4] for p in prompts]))

    rows = [["red", "red", "blue"], ["green"] * 3, ["red", "blue", "blue"], ["red", "red", "blue"]]
    batch = LatentBatch(torch.zeros(4, 2, 3, 2, 2), [r[-1] for r in rows], None,
                        torch.tensor([True, False, True, True]), rows)
    drop = torch.tensor([False, False, False, True])
    gen = torch.Generator().manual_seed(0)
    text = batch_text(batch, drop, encode, 1.0, gen)
    assert isinstance(text, FrameText) and text.index.tolist() == [0, 1, 2]
    said = torch.stack([t.tokens[:, 0, 0] for t in text.texts], dim=1)  # [b, F]
    assert said.tolist() == [[1, 1, 2], [3, 3, 3], [1, 2, 2], [0, 0, 0]]
    # share 0: the newest frame's caption over the window, and the generator untouched
    state = gen.get_state()
    whole = batch_text(batch, drop, encode, 0.0, gen)
    assert isinstance(whole, TextEmbedding) and whole.tokens[:, 0, 0].tolist() == [2, 3, 2, 0]
    assert torch.equal(gen.get_state(), state)
    # about half of the switched windows at 0.5, drawn per sample
    many = LatentBatch(torch.zeros(400, 2, 3, 2, 2), ["blue"] * 400, None, torch.ones(400, dtype=torch.bool),
                       [["red", "red", "blue"]] * 400)
    mixed = batch_text(many, torch.zeros(400, dtype=torch.bool), encode, 0.5, gen)
    share = float((mixed.texts[0].tokens[:, 0, 0] == 1).float().mean())
    assert 0.4 < share < 0.6
    with pytest.raises(ValueError, match="frame_captions must be a share"):
        TrainConfig(frame_captions=1.5)


def test_subject_weight_needs_batches_with_subject_cover():
    with pytest.raises(ValueError, match="subject_weight"):
        train(StreamDiT(MICRO), Patterns(), encode_patterns, TrainConfig(steps=1, batch_size=2, subject_weight=4.0),
              progress=False)
    with pytest.raises(ValueError, match="subject_weight must be at least 0"):
        TrainConfig(subject_weight=-1.0)


def test_the_train_command_runs_the_world_recipe_and_a_rerun_keeps_what_is_done(tmp_path, capsys, monkeypatch):
    """``train`` with a given codec (a path relative to the working folder, outside the run): the
    StreamDiT is trained on world clips and ships naming that codec so that it loads from anywhere,
    with the recommended guidance; a resumed rerun of a finished run trains nothing."""
    import shutil

    from streamdit_core.cli import main
    from streamdit_core.pipeline import DEFAULT_MODEL, Pipeline

    (tmp_path / "shared").mkdir()
    shutil.copy(DEFAULT_MODEL.parent / "codec.safetensors", tmp_path / "shared" / "codec.safetensors")
    monkeypatch.chdir(tmp_path)
    args = ["train", "--out", "run", "--codec", "shared/codec.safetensors", "--steps", "2", "--batch-size", "2",
            "--clips", "4", "--decoder-steps", "0", "--switch-kinds", "color,appear", "--steps-per-chunk", "7",
            "--frame-captions", "1", "--guidance", "3", "--switch-share", "0.5"]
    assert main(args) == 0
    meta = read_metadata(tmp_path / "run" / "model.safetensors")
    assert json.loads(meta["train_config"])["frame_captions"] == 1.0
    assert meta["step"] == "2" and meta["codec"] == "../shared/codec.safetensors" and meta["guidance"] == "3"
    assert (meta["switch_share"], meta["switch_kinds"]) == ("0.5", "color,appear")
    assert meta["world"] == "shapes-64" and load_checkpoint(tmp_path / "run" / "model.safetensors").config.buffer_frames == 8
    monkeypatch.chdir(tmp_path / "shared")  # elsewhere: the model still finds its codec
    pipe = Pipeline.load(tmp_path / "run" / "model.safetensors")
    assert pipe.frame_size == (64, 64)
    assert meta["steps_per_chunk"] == "7" and pipe.default_partition().s == 7  # streams at its recommendation
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "already has its 2 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="guidance must be at least 0"):
        main(args[:-3] + ["-1"])
    with pytest.raises(SystemExit):
        main(args[:-1] + ["1.5"])
    assert "must be a share between 0 and 1, got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--frame-captions captions the windows of switch clips"):
        main(args[:-2])
    with pytest.raises(SystemExit):
        main(args + ["--switch-kinds", "colour"])
    assert "must be some of color,shape,direction,background,appear,recover" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no such codec file"):
        main(["train", "--out", "run2", "--codec", "shared/typo.safetensors"])
    assert not (tmp_path / "shared" / "typo.safetensors").exists() and not (tmp_path / "run2").exists()


def test_train_takes_model_and_codec_options_and_names_bad_ones(tmp_path):
    """``--codec-option`` shapes the codec the run trains and the model follows its latents;
    ``--model-option`` sets StreamDiTConfig fields; unknown fields are refused by name."""
    from streamdit_core.checkpoint import load_codec
    from streamdit_core.cli import main

    args = ["train", "--out", str(tmp_path), "--steps", "1", "--batch-size", "2", "--clips", "4", "--decoder-steps", "0",
            "--codec-steps", "1", "--codec-option", "space_factor=4", "--codec-option", "latent_channels=4",
            "--codec-option", "wrap=true", "--codec-option", "width=16",
            "--model-option", "wrap=true", "--model-option", "prediction=clean", "--model-option", "depth=1"]
    assert main(args) == 0
    config = load_checkpoint(tmp_path / "model.safetensors").config
    assert (config.wrap, config.prediction, config.depth) == (True, "clean", 1)
    assert config.in_channels == 4 and config.latent_size == (16, 16)  # from the 4x codec
    assert load_codec(tmp_path / "codec.safetensors").config.wrap is True
    with pytest.raises(SystemExit, match="bad --model-option.*unknown model option.*'warp'"):
        main(["train", "--out", str(tmp_path / "b"), "--codec", str(tmp_path / "codec.safetensors"), "--steps", "1",
              "--clips", "4", "--model-option", "warp=true"])
    with pytest.raises(SystemExit, match="bad --codec-option"):
        main(["train", "--out", str(tmp_path / "c"), "--codec-option", "colour=red"])


def test_a_codec_only_run_trains_the_codec_a_full_run_would_and_stops(tmp_path):
    """``--codec-only`` writes the codec (its decoder refined) and no StreamDiT; at the same seed
    it is the codec the first stage of a full run trains, so StreamDiT runs can share it."""
    from streamdit_core.checkpoint import load_codec
    from streamdit_core.cli import main

    codec = ["--codec-steps", "2", "--codec-option", "width=16", "--codec-option", "wrap=true", "--seed", "5"]
    assert main(["train", "--out", str(tmp_path / "c"), "--codec-only", "--decoder-steps", "1", *codec]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["codec.safetensors"]
    assert read_metadata(tmp_path / "c" / "codec.safetensors")["decoder_refined_steps"] == "1"
    assert main(["train", "--out", str(tmp_path / "full"), "--steps", "1", "--batch-size", "2", "--clips", "4",
                 "--decoder-steps", "0", "--model-option", "depth=1", *codec]) == 0
    assert main(["train", "--out", str(tmp_path / "c0"), "--codec-only", "--decoder-steps", "0", *codec]) == 0
    full, alone = load_codec(tmp_path / "full" / "codec.safetensors"), load_codec(tmp_path / "c0" / "codec.safetensors")
    for (k, a), b in zip(full.state_dict().items(), alone.state_dict().values()):
        assert torch.equal(a, b), k
    refined = load_codec(tmp_path / "c" / "codec.safetensors").state_dict()
    assert not all(torch.equal(a, refined[k]) for k, a in alone.state_dict().items() if k.startswith("decoder."))
    for k, a in alone.state_dict().items():
        if k.startswith("encoder."):
            assert torch.equal(a, refined[k]), k  # the refinement leaves the latent space alone
    with pytest.raises(SystemExit, match="--codec-only trains a new codec"):
        main(["train", "--out", str(tmp_path / "x"), "--codec-only", "--codec", str(tmp_path / "c" / "codec.safetensors")])
    assert not (tmp_path / "x").exists()


def test_train_continues_a_checkpoint_as_the_papers_second_stage(tmp_path):
    """Stage 1 trains plain text-to-video (one chunk of the whole buffer); stage 2 continues it
    over mixed partitions: its model starts from stage 1's weights, and its config comes along."""
    from streamdit_core.cli import main
    from streamdit_core.pipeline import DEFAULT_MODEL

    codec = DEFAULT_MODEL.parent / "codec.safetensors"
    common = ["--codec", str(codec), "--batch-size", "2", "--clips", "4", "--decoder-steps", "0"]
    assert main(["train", "--out", str(tmp_path / "t2v"), "--steps", "2", "--chunk-sizes", "8",
                 "--model-option", "depth=1", *common]) == 0
    stage1 = tmp_path / "t2v" / "model.safetensors"
    assert '"chunk_sizes": [8]' in read_metadata(stage1)["train_config"]
    assert main(["train", "--out", str(tmp_path / "stream"), "--steps", "1", "--lr", "1e-12", "--init", str(stage1),
                 *common]) == 0
    stage2 = tmp_path / "stream" / "model.safetensors"
    assert read_metadata(stage2)["init"] == str(stage1)
    first, second = load_checkpoint(stage1), load_checkpoint(stage2)
    assert second.config == first.config and second.config.depth == 1
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k  # one step at a vanishing rate: the same weights
    with pytest.raises(SystemExit, match="--init: model options \\['depth'\\] cannot change"):
        main(["train", "--out", str(tmp_path / "x"), "--init", str(stage1), "--model-option", "depth=2", *common])
    with pytest.raises(SystemExit, match="--init: .*continue it with the codec it was trained with"):
        main(["train", "--out", str(tmp_path / "y"), "--init", str(stage1), "--codec-steps", "1",
              "--codec-option", "space_factor=4", "--codec-option", "width=16", "--steps", "1", "--clips", "4"])


def test_the_validation_loss_is_recorded_at_every_checkpoint_and_falls_with_training(tmp_path):
    cfg = TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup=5, ema_decay=0.9, checkpoint_every=30)
    torch.manual_seed(0)
    result = train(StreamDiT(MICRO), Patterns(), encode_patterns, cfg, out=tmp_path, progress=False,
                   val_data=Patterns())
    assert [s for s, _ in result.val_losses] == [30, 60]
    assert result.val_losses[1][1] < result.val_losses[0][1]
    import json

    assert json.loads(read_metadata(tmp_path / "model.safetensors")["val_loss"]) == [list(v) for v in result.val_losses]


def test_a_training_command_stopped_by_ctrl_c_says_so_and_exits_130(monkeypatch, capsys):
    import streamdit_core.recipes as recipes
    from streamdit_core.cli import main

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "train_world", stopped)
    assert main(["train", "--out", "unused", "--steps", "1"]) == 130
    assert "train: stopped by Ctrl-C" in capsys.readouterr().err
