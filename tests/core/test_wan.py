"""A tiny random Wan-architecture transformer (diffusers) as a velocity model: per-frame sigma,
per-frame prompts, training through our trainer. No downloads."""

import json
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from streamdit_core import FrameText, Partition, Streamer, TextEmbedding  # noqa: E402
from streamdit_core.train import TrainConfig, flow_matching_loss, train  # noqa: E402
from streamdit_core.wan import load_wan, tiny_wan_config  # noqa: E402

B_FRAMES, SIZE = 4, (8, 8)


def _wan(seed=0):
    torch.manual_seed(seed)
    return load_wan(tiny_wan_config(), buffer_frames=B_FRAMES, latent_size=SIZE, shift=3.0)


def _text(batch=1, seed=0):
    return TextEmbedding(torch.randn(batch, 5, 32, generator=torch.Generator().manual_seed(seed)))


def test_one_sigma_for_every_frame_is_wan_called_the_usual_way():
    wan = _wan().eval()
    x = torch.randn(2, 16, B_FRAMES, *SIZE, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 0.8])
    text = _text(2)
    with torch.no_grad():
        ours = wan(x, sigma[:, None].expand(2, B_FRAMES), text)
        plain = wan.transformer(x, sigma * 1000, encoder_hidden_states=text.tokens, return_dict=False)[0]
    assert torch.allclose(ours, plain, atol=1e-5)
    assert wan.geometry.warp.kind == "shift" and wan.geometry.warp.value == 3.0


def test_each_frame_is_modulated_by_its_own_sigma():
    """The time embedding each token gets is the one of its frame's sigma."""
    wan = _wan().eval()
    seen = {}
    hook = wan.transformer.condition_embedder.register_forward_hook(lambda m, a, out: seen.update(proj=out[1]))
    x = torch.randn(1, 16, B_FRAMES, *SIZE)
    sigma = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    with torch.no_grad():
        wan(x, sigma, _text())
        per_token = seen["proj"].reshape(1, B_FRAMES, 16, -1)  # [1, F, tokens per frame, 6 D]
        for f in range(B_FRAMES):
            wan(x, sigma[:, f:f + 1].expand(1, B_FRAMES), _text())
            alone = seen["proj"].reshape(1, B_FRAMES, 16, -1)
            assert torch.allclose(per_token[0, f], alone[0, f], atol=1e-6)
    hook.remove()
    assert not torch.allclose(per_token[0, 0], per_token[0, 3])


def test_frames_follow_their_own_prompt_with_frame_text():
    wan = _wan().eval()
    x = torch.randn(1, 16, B_FRAMES, *SIZE)
    sigma = torch.full((1, B_FRAMES), 0.5)
    a, b = _text(seed=1), _text(seed=2)
    with torch.no_grad():
        mixed = wan(x, sigma, FrameText((a, b), torch.tensor([0, 0, 1, 1])))
        only_a, only_b = wan(x, sigma, a), wan(x, sigma, b)
    assert torch.allclose(mixed[:, :, :2], only_a[:, :, :2]) and torch.allclose(mixed[:, :, 2:], only_b[:, :, 2:])


def test_our_trainer_lowers_a_wan_models_buffered_flow_matching_loss():
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(2, 16, B_FRAMES, *SIZE, generator=gen).sign() * 0.8  # two fixed clips
    prompts = {"one": _text(seed=1).tokens[0], "two": _text(seed=2).tokens[0]}

    class Two:
        def sample(self, batch, g):
            which = torch.randint(2, (batch,), generator=g)
            names = ["one" if w == 0 else "two" for w in which.tolist()]
            return type("Batch", (), {"latents": clips[which], "prompts": names})

    def encode(names):
        return TextEmbedding(torch.stack([prompts.get(n, torch.zeros(5, 32)) for n in names]))

    def loss(model):
        g = torch.Generator().manual_seed(5)
        batch = Two().sample(16, g)
        sigma = torch.rand(16, B_FRAMES, generator=g)
        eps = torch.randn(batch.latents.shape, generator=g)
        with torch.no_grad():
            return float(flow_matching_loss(model, batch.latents, sigma, eps, encode(batch.prompts)))

    wan = _wan()
    before = loss(wan)
    result = train(wan, Two(), encode, TrainConfig(steps=120, batch_size=8, lr=3e-3, warmup=5, ema_decay=0.9),
                   progress=False)
    assert result.step == 120 and loss(wan) < 0.8 * before, (before, loss(wan))


def test_a_wan_model_streams_through_the_moving_buffer():
    wan = _wan().eval()
    streamer = Streamer(wan, Partition(K=0, N=2, c=2, s=2), (16, *SIZE), text=_text(), seed=0)
    with torch.no_grad():
        chunks = [streamer.step() for _ in range(12)]
    out = [c for c in chunks if c is not None]
    assert out and all(c.latents.shape == (1, 16, 2, *SIZE) and torch.isfinite(c.latents).all() for c in out)


def test_a_wan_folder_that_is_not_one_is_named():
    with pytest.raises(FileNotFoundError, match="not a diffusers Wan transformer folder"):
        load_wan("/nonexistent/wan", 4, SIZE)
    with pytest.raises(ValueError, match="patch"):
        load_wan(tiny_wan_config(patch_size=(2, 2, 2)), 4, SIZE)


def test_the_comfyui_export_names_every_weight_as_the_original_wan_does():
    from streamdit_core.wan import comfy_state_dict

    wan = _wan()
    state = comfy_state_dict(wan)
    assert len(state) == len(wan.transformer.state_dict())
    expected = {"head.modulation", "head.head.weight", "patch_embedding.weight", "time_embedding.0.weight",
                "time_embedding.2.bias", "time_projection.1.weight", "text_embedding.0.weight", "text_embedding.2.weight",
                "blocks.1.modulation", "blocks.1.self_attn.q.weight", "blocks.1.self_attn.o.bias",
                "blocks.1.self_attn.norm_q.weight", "blocks.1.cross_attn.k.weight", "blocks.1.cross_attn.norm_k.weight",
                "blocks.1.norm3.weight", "blocks.1.ffn.0.weight", "blocks.1.ffn.2.bias"}
    assert expected <= set(state), sorted(expected - set(state))
    assert torch.equal(state["blocks.0.self_attn.q.weight"], wan.transformer.blocks[0].attn1.to_q.weight)
    assert torch.equal(state["head.modulation"], wan.transformer.scale_shift_table)


def _trained_lora(steps=20):
    from streamdit_core.wan import add_lora

    wan = add_lora(_wan(), rank=4, alpha=8)
    opt = torch.optim.AdamW([p for p in wan.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 16, B_FRAMES, *SIZE, generator=g)
    for _ in range(steps):
        loss = flow_matching_loss(wan, x0, torch.rand(2, B_FRAMES, generator=g), torch.randn(x0.shape, generator=g), _text(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return wan


def test_lora_training_changes_only_the_adapters_and_its_comfyui_keys_load_back_onto_the_base():
    from streamdit_core.wan import comfy_state_dict, load_lora, lora_state_dict

    base = {k: v.clone() for k, v in _wan().transformer.state_dict().items()}
    wan = _trained_lora()
    trainable = [n for n, p in wan.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for key, value in wan.transformer.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base[key.replace(".base_layer", "")]), key
    saved = lora_state_dict(wan)
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in saved
    assert "diffusion_model.blocks.1.ffn.2.lora_up.weight" in saved
    assert float(saved["diffusion_model.blocks.0.cross_attn.o.alpha"]) == 8.0
    assert saved["diffusion_model.blocks.0.self_attn.q.lora_down.weight"].shape == (4, 32)

    x, sigma, text = torch.randn(1, 16, B_FRAMES, *SIZE), torch.full((1, B_FRAMES), 0.6), _text()
    fresh = load_lora(_wan(), saved)  # the same base (seed), the adapters from the file
    with torch.no_grad():
        trained, reloaded, plain = wan(x, sigma, text), fresh(x, sigma, text), _wan()(x, sigma, text)
    assert torch.allclose(trained, reloaded, atol=1e-5)
    assert not torch.allclose(trained, plain, atol=1e-3)  # the adapters do something
    merged = _wan()  # full weights with the adapters merged give the adapted model's prediction
    merged_state = comfy_state_dict(wan)
    inverse = {comfy: diffusers for diffusers, comfy in
               ((k, k2) for k, k2 in zip(merged.transformer.state_dict(), comfy_state_dict(merged)))}
    merged.transformer.load_state_dict({inverse[k]: v for k, v in merged_state.items()})
    with torch.no_grad():
        assert torch.allclose(merged(x, sigma, text), trained, atol=1e-5)
    with pytest.raises(ValueError, match="no LoRA weights"):
        load_lora(_wan(), {"x": torch.zeros(1)})


def test_the_trainer_ships_a_wan_model_for_comfyui_and_its_lora_beside_it(tmp_path):
    from safetensors import safe_open

    from streamdit_core.wan import add_lora

    class Clips:
        def sample(self, batch, g):
            return type("Batch", (), {"latents": torch.randn(batch, 16, B_FRAMES, *SIZE, generator=g),
                                      "prompts": ["a"] * batch})

    wan = add_lora(_wan(), rank=2)
    result = train(wan, Clips(), lambda p: _text(len(p)), TrainConfig(steps=2, batch_size=2, warmup=1),
                   out=tmp_path, progress=False)
    assert result.checkpoint == tmp_path / "model.safetensors"
    with safe_open(result.checkpoint, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {"head.modulation", "blocks.0.self_attn.q.weight"} <= keys and not any("lora" in k for k in keys)
    assert meta["format"] == "comfyui-wan" and meta["step"] == "2" and meta["buffer_frames"] == str(B_FRAMES)
    with safe_open(tmp_path / "model_lora.safetensors", "pt") as f:
        assert "diffusion_model.blocks.1.cross_attn.v.lora_up.weight" in set(f.keys())


def test_train_adapts_a_wan_folder_with_lora_and_ships_it_for_comfyui(tmp_path):
    """``train --init wan:FOLDER --lora R`` on a tiny random Wan in diffusers' layout (the
    transformer takes the default MiniLM text encoder's 384-wide states): the adapters train and
    both files come out in ComfyUI's key format."""
    from safetensors import safe_open

    from streamdit_core.cli import main
    from streamdit_core.wan_vae import load_wan_vae, tiny_wan_vae_config

    torch.manual_seed(0)
    folder = tmp_path / "wan"
    load_wan(tiny_wan_config(text_dim=384), 2, (8, 8)).transformer.save_pretrained(folder / "transformer")
    load_wan_vae(tiny_wan_vae_config()).vae.save_pretrained(folder / "vae")
    out = tmp_path / "run"
    assert main(["train", "--init", f"wan:{folder}", "--lora", "2", "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--clips", "2", "--model-option", "buffer_frames=2"]) == 0
    with safe_open(out / "model.safetensors", "pt") as f:
        meta = f.metadata()
        assert "head.modulation" in set(f.keys())
    assert meta["init"] == f"wan:{folder}" and meta["lora_rank"] == "2" and meta["world"] == "shapes-64"
    with safe_open(out / "model_lora.safetensors", "pt") as f:
        assert any(k.endswith(".lora_up.weight") for k in f.keys())
    with pytest.raises(SystemExit, match="buffer_frames=N and shift=S only"):
        main(["train", "--init", f"wan:{folder}", "--out", str(out), "--model-option", "depth=2"])
    with pytest.raises(SystemExit, match="use them with --init wan"):
        main(["train", "--out", str(out), "--lora", "4"])
    with pytest.raises(SystemExit, match="not a diffusers Wan VAE folder"):
        main(["train", "--init", f"wan:{tmp_path / 'nothing'}", "--out", str(out)])


def test_full_weights_in_comfyui_names_load_back_and_predict_the_same():
    from streamdit_core.wan import comfy_state_dict, load_comfy_state_dict

    source, target = _wan(seed=0), _wan(seed=1)
    x = torch.randn(1, 16, B_FRAMES, *SIZE, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    before = target(x, sigma, _text())
    load_comfy_state_dict(target, comfy_state_dict(source))
    after = target(x, sigma, _text())
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, source(x, sigma, _text()))
    partial = comfy_state_dict(source)
    del partial["head.modulation"]
    with pytest.raises(ValueError, match="head.modulation"):
        load_comfy_state_dict(target, partial)


def test_distill_turns_a_lora_adapted_wan_into_a_one_step_lora_student(tmp_path):
    """``distill --teacher RUN/model.safetensors`` on a Wan model adapted with LoRA: the student
    loads its teacher's base and adapters, trains adapters only, and ships in ComfyUI's formats
    with what the next distillation or the loader needs."""
    from safetensors import safe_open

    from streamdit_core.cli import main
    from streamdit_core.wan import load_adapted_wan
    from streamdit_core.wan_vae import load_wan_vae, tiny_wan_vae_config

    torch.manual_seed(0)
    folder = tmp_path / "wan"
    base = load_wan(tiny_wan_config(text_dim=384), 2, (8, 8))
    base.transformer.save_pretrained(folder / "transformer")
    load_wan_vae(tiny_wan_vae_config()).vae.save_pretrained(folder / "vae")
    run, student = tmp_path / "run", tmp_path / "student"
    assert main(["train", "--init", f"wan:{folder}", "--lora", "2", "--out", str(run), "--steps", "2",
                 "--batch-size", "2", "--clips", "2", "--model-option", "buffer_frames=4"]) == 0
    teacher, meta = load_adapted_wan(run / "model.safetensors")
    assert teacher.geometry.buffer_frames == 4 and teacher.geometry.latent_size == (8, 8) and meta["size"] == "64"
    assert main(["distill", "--teacher", str(run / "model.safetensors"), "--out", str(student), "--steps", "3",
                 "--batch-size", "2", "--clips", "2", "--teacher-steps", "4", "--guidance", "2", "--lr", "1e-2"]) == 0
    with safe_open(student / "model.safetensors", "pt") as f:
        smeta = f.metadata()
    assert smeta["steps_per_chunk"] == "1" and smeta["guidance"] == "1" and smeta["init"] == meta["init"]
    assert (student / "model_lora.safetensors").is_file()
    distilled, _ = load_adapted_wan(student / "model.safetensors")
    own = dict(distilled.transformer.named_parameters())
    for name, q in teacher.transformer.named_parameters():
        if ".lora_B." in name:
            changed = not torch.equal(q, own[name])
            break
    assert changed, "the student's adapters did not train"
    for name, q in base.transformer.named_parameters():  # the base stays the one the artist has
        key = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        torch.testing.assert_close(own.get(key, own.get(name)), q, rtol=0, atol=0)
    with pytest.raises(SystemExit, match="for a Wan teacher"):
        main(["distill", "--out", str(tmp_path / "x"), "--text-encoder", str(folder)])


def test_an_adapted_wan_continues_from_its_file_the_papers_two_stages(tmp_path):
    """Text-to-video first (one chunk of the whole buffer), then streaming from that run's
    ``model.safetensors``: the second run starts at the first one's weights, keeps its buffer
    and records the base folder, so ComfyUI and ``distill`` still find the base."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from streamdit_core.cli import main
    from streamdit_core.wan_vae import load_wan_vae, tiny_wan_vae_config

    torch.manual_seed(0)
    folder = tmp_path / "wan"
    load_wan(tiny_wan_config(text_dim=384), 2, (8, 8)).transformer.save_pretrained(folder / "transformer")
    load_wan_vae(tiny_wan_vae_config()).vae.save_pretrained(folder / "vae")
    t2v, stream = tmp_path / "t2v", tmp_path / "stream"
    common = ["--batch-size", "2", "--clips", "2"]
    assert main(["train", "--init", f"wan:{folder}", "--out", str(t2v), "--steps", "3", "--lr", "1", "--chunk-sizes", "4",
                 "--model-option", "buffer_frames=4", *common]) == 0
    first = load_file(str(t2v / "model.safetensors"))
    assert main(["train", "--init", f"wan:{t2v / 'model.safetensors'}", "--out", str(stream), "--steps", "1",
                 "--lr", "1e-12", *common]) == 0
    second = load_file(str(stream / "model.safetensors"))
    with safe_open(stream / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["buffer_frames"] == "4" and meta["init"] == f"wan:{folder.resolve()}"
    assert meta["continued"] == str((t2v / "model.safetensors").resolve())
    key = "blocks.0.self_attn.q.weight"
    torch.testing.assert_close(second[key], first[key], atol=1e-6, rtol=0)
    base = load_wan(folder, 4, (8, 8))
    assert not torch.allclose(base.transformer.blocks[0].attn1.to_q.weight, first[key], atol=1e-3)
    with pytest.raises(SystemExit, match="its own buffer and shift"):
        main(["train", "--init", f"wan:{t2v / 'model.safetensors'}", "--out", str(stream),
              "--model-option", "buffer_frames=2"])


def test_train_makes_a_new_wan_architecture_model_from_scratch_with_a_vae_for_comfyui(tmp_path):
    from safetensors import safe_open

    from streamdit_core.cli import main
    from streamdit_core.data import render_world_folder
    from streamdit_core.recipes import train_wan
    from streamdit_core.wan_vae import COMFY_VAE_FILE

    clips = render_world_folder(tmp_path / "clips", videos=3, seconds=2.5)
    new = dict(vae_steps=2, vae_width=8, vae_batch=1, check_clips=2, transformer=dict(num_layers=1))
    shipped = train_wan(tmp_path / "run", TrainConfig(steps=2, batch_size=2, warmup=1), "new",
                        data=clips, size=32, buffer_frames=2, clips=4, new=new, log=lambda _: None)
    base = tmp_path / "run" / "base"
    assert (base / "vae" / "config.json").is_file() and (base / "transformer" / "config.json").is_file()
    with safe_open(str(base / COMFY_VAE_FILE), framework="pt") as f:
        assert f.metadata()["format"] == "comfyui-wan-vae" and f.metadata()["steps"] == "2"
        assert f.metadata()["data"] == str(clips.resolve())
        assert f.metadata()["clip_frames"] == "12"  # a 2-frame buffer: the 3 latents the causal context needs
    with safe_open(str(shipped), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "comfyui-wan" and meta["init"] == f"wan:{base.resolve()}" and meta["latent_size"] == "4,4"
    # generate and evaluate load it as any model: its base folder's VAE, the MiniLM text encoder
    from streamdit_core import Pipeline

    pipe = Pipeline.load(shipped)
    assert pipe.frame_size == (32, 32) and pipe.fps == 16 and pipe.codec.time_factor == 4
    video = torch.cat([c.frames for c in pipe.frames("a red circle moving left on a black background", frames=8)])
    assert video.shape == (8, 3, 32, 32) and torch.isfinite(video).all()
    # the widths ComfyUI's Wan loader assumes (128-wide heads, 4096-wide text), the MiniLM padded to it
    config = json.loads((base / "transformer" / "config.json").read_text())
    assert (config["attention_head_dim"], config["text_dim"], config["freq_dim"], config["num_layers"]) == (128, 4096, 256, 1)
    assert pipe.text.dim == 4096 and pipe.text.native_dim == 384
    assert json.loads((base / "streamdit_base.json").read_text())["text_width"] == 4096
    with pytest.raises(SystemExit, match="width=W, batch=N and frames=F"):
        main(["train", "--init", "wan:new", "--out", str(tmp_path / "bad"), "--codec-option", "space_factor=4"])


def test_a_new_wan_base_keeps_a_trained_vae_and_makes_the_same_transformer(tmp_path):
    from safetensors.torch import load_file

    from streamdit_core.data import render_world_folder
    from streamdit_core.recipes import new_wan_base
    from streamdit_core.wan_vae import COMFY_VAE_FILE

    clips = render_world_folder(tmp_path / "clips", videos=2, seconds=2.5)
    options = dict(data=clips, size=32, vae_steps=1, vae_width=8, vae_batch=1, check_clips=1,
                   transformer=dict(num_layers=1, num_attention_heads=1, ffn_dim=32))
    base = new_wan_base(tmp_path / "base", **options, log=lambda _: None)
    vae_bytes = (base / COMFY_VAE_FILE).read_bytes()
    first = load_file(str(base / "transformer" / "diffusion_pytorch_model.safetensors"))
    shutil.rmtree(base / "transformer")  # interrupted after the VAE
    lines = []
    new_wan_base(base, **options, log=lines.append)
    assert any("is trained" in line for line in lines) and not any("steps in" in line for line in lines)
    assert (base / COMFY_VAE_FILE).read_bytes() == vae_bytes
    again = load_file(str(base / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    with pytest.raises(ValueError, match="at least that"):
        new_wan_base(tmp_path / "narrow", **{**options, "transformer": dict(text_dim=64)}, log=lambda _: None)


def test_train_cli_hands_a_new_wan_base_its_vae_and_transformer_options(tmp_path, monkeypatch):
    import streamdit_core.recipes as recipes
    from streamdit_core.cli import main

    seen = {}
    monkeypatch.setattr(recipes, "train_wan", lambda out, config, source, **kw: seen.update(kw, source=source))
    main(["train", "--init", "wan:new", "--out", str(tmp_path / "run"), "--codec-option", "width=8",
          "--codec-option", "batch=2", "--codec-steps", "300", "--model-option", "num_layers=1",
          "--model-option", "buffer_frames=4", "--codec-option", "frames=16"])
    assert seen["source"] == "new" and seen["buffer_frames"] == 4
    assert seen["new"] == dict(transformer={"num_layers": 1}, vae_steps=300, vae_width=8, vae_batch=2, vae_frames=16)


def test_a_new_wan_models_vae_trains_on_clips_as_long_as_its_buffer(tmp_path, monkeypatch):
    import streamdit_core.recipes as recipes
    from streamdit_core.train import TrainConfig

    seen = []

    class Stop(Exception):
        pass

    def record(folder, **kw):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(recipes, "new_wan_base", record)
    for buffer, new, frames in ((None, None, 32), (6, None, 24), (2, None, 12), (6, {"vae_frames": 16}, 16)):
        with pytest.raises(Stop):
            recipes.train_wan(tmp_path / "run", TrainConfig(steps=1), "new", buffer_frames=buffer, new=new)
        assert seen[-1]["vae_frames"] == frames
