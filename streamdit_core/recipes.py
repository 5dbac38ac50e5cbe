"""The training recipes, as ``python -m streamdit_core train`` runs them.

- :func:`train_world`: the embedded model's recipe (the codec, the StreamDiT, then the decoder
  refined on the frozen latent space), on the synthetic world or a folder of captioned videos,
  from a preset or continuing one of our checkpoints (the paper's two stages).
- :func:`train_wan`: a Wan 2.1 text-to-video model adapted to streaming (full or LoRA), from its
  diffusers folder or continuing an adapted one, written in ComfyUI's formats; or a new
  Wan-architecture model trained from scratch on your clips (:func:`new_wan_base` makes its
  base folder: a Wan 2.1-architecture VAE trained on the clips and a random transformer).
- :func:`clip_source` and :func:`wan_text_encoder`: the clips and the text encoder a run (and the
  distillation of its result) takes.

The loop itself is :func:`streamdit_core.train.train`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .checkpoint import record_of, save_checkpoint
from .train import CodecTrainConfig, TrainConfig, TrainResult, train, train_codec

__all__ = ["NEW_WAN_TRANSFORMER", "WorldRun", "clip_source", "new_wan_base", "refine_codec", "train_wan", "train_world",
           "wan_text_encoder"]


class _HeldOutScenes:
    """The world's held-out combinations as a clip source (for the validation loss)."""

    def __init__(self, world):
        self.world, self.size = world, world.size

    def batch(self, n: int, frames: int, gen: torch.Generator):
        return self.world.batch(n, frames, gen, split="held_out")


def _validation_pool(source, codec, frames: int, clip_frames: int, data, size: int, log: Callable[[str], None]):
    """64 encoded clips of held-out data: the world's held-out scenes, or the folder's validation
    split; None (with a line in the log) when the folder has no validation video."""
    from .world import FPS, LatentPool

    if data is None:
        held_out = _HeldOutScenes(source)
    else:
        from .data import ClipFolder, DataError

        try:
            held_out = ClipFolder(data, frames=clip_frames * codec.time_factor, fps=FPS, size=size, split="val",
                                  warn=False)
        except DataError:
            log(f"data: no validation video in {data}; training without a validation loss")
            return None
    return LatentPool(held_out, codec, clips=64, frames=frames, clip_frames=clip_frames, seed=999, progress=False)


def clip_source(data: str | os.PathLike | None, frames: int, size: int, log: Callable[[str], None]):
    """(the clip source, its record for the checkpoint): the synthetic world, or the train split
    of a folder of captioned videos scanned for clips of ``frames`` frames."""
    from .world import FPS, World

    if data is None:
        return World(), {"world": "shapes-64", "fps": str(FPS)}
    from .data import ClipFolder

    folder = ClipFolder(data, frames=frames, fps=FPS, size=size)
    log(f"data: {data}: {folder.report.summary()}")
    return folder, {"data": str(Path(data).resolve()), "data_videos": str(len(folder)),
                    "data_skipped": str(len(folder.report.skipped)), "fps": str(FPS)}


@dataclass
class WorldRun:
    """What :func:`train_world` wrote: the model and codec files, and what each stage did."""

    model: Path | None  # None for a codec-only run
    codec: Path
    result: TrainResult | None  # None when the model already had its steps (a resumed, finished run) or none trained
    codec_mse: float | None  # reconstruction MSE of a codec trained (or refined) by this run


def train_world(out: str | os.PathLike, config: TrainConfig, *, preset: str = "embedded",
                codec: str | os.PathLike | None = None, codec_steps: int | None = None, decoder_steps: int = 3000,
                clips: int = 4096, guidance: float = 1.0, resume: bool = False,
                log: Callable[[str], None] = print, model_options: dict | None = None,
                codec_config=None, data: str | os.PathLike | None = None, size: int = 64,
                init: str | os.PathLike | None = None, codec_only: bool = False,
                switch_share: float = 0.0, switch_kinds: Sequence[str] | None = None,
                steps_per_chunk: int | None = None) -> WorldRun:
    """Trains a StreamDiT on the synthetic world in ``out``: the codec first (unless ``codec``
    names one, or ``out/codec.safetensors`` exists), then the buffered flow-matching model on
    ``clips`` clips encoded up front, then ``decoder_steps`` of decoder refinement with the encoder
    frozen (0 skips it). Each stage that already finished in ``out`` is kept, so rerunning with
    ``resume`` after an interrupt continues where the run stopped.

    Args:
        guidance: the classifier-free guidance scale the checkpoint recommends (1: none).
        steps_per_chunk: the micro steps per chunk the checkpoint recommends, which ``generate``,
            ``evaluate`` and ``bench`` then stream with by default (None: T = 16 over the buffer).
        model_options: StreamDiTConfig fields over the preset (e.g. ``{"wrap": True}``); the
            latent channels and size always follow the codec.
        codec_config: the :class:`~streamdit_core.codec.CodecConfig` of a codec this run trains.
        data: a folder of captioned videos (:class:`~streamdit_core.data.ClipFolder`, its train
            split) to train on instead of the synthetic world; scanned before any training, so a
            folder with no usable clip fails at once.
        size: the square frame size clips from ``data`` are scaled and cropped to.
        init: one of our checkpoints to continue instead of a new model from ``preset``: the
            paper's two stages are a text-to-video run (``chunk_sizes`` = the buffer length),
            then a run from it over mixed partitions.
        codec_only: train the codec (and refine its decoder) and stop: no StreamDiT. Several
            StreamDiT runs can then share the codec (``codec``), which is how the embedded
            models' chain starts.
        switch_share, switch_kinds: the share of training clips that change once mid-clip and
            what changes in them (synthetic world only; see
            :class:`~streamdit_core.world.LatentPool`), recorded in the checkpoint's metadata.
    """
    from .checkpoint import load_codec, read_metadata
    from .codec import CodecConfig, VideoAutoencoder
    from .model import StreamDiT, StreamDiTConfig
    from .text import TextEncoder
    from .world import LatentPool

    if guidance < 0:
        raise ValueError(f"guidance must be at least 0, got {guidance}")
    if steps_per_chunk is not None and steps_per_chunk < 1:
        raise ValueError(f"steps_per_chunk must be at least 1, got {steps_per_chunk}")
    options = dict(model_options or {})
    known = set(StreamDiTConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; StreamDiTConfig fields: {', '.join(sorted(known))}")
    buffer = options.get("buffer_frames", StreamDiTConfig.preset(preset).buffer_frames)
    if codec_only and (codec is not None or init is not None):
        raise ValueError("a codec-only run trains a new codec: leave out the codec file and the model to continue")
    if codec is not None and not Path(codec).is_file():
        raise FileNotFoundError(f"{codec}: no such codec file; leave the codec out to train one in {out}")
    existing = Path(codec) if codec is not None else Path(out) / "codec.safetensors"
    time_factor = load_codec(existing).time_factor if existing.exists() else (codec_config or CodecConfig()).time_factor
    world, record = clip_source(data, (buffer + 4) * time_factor, size, log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codec_file = Path(codec) if codec is not None else out / "codec.safetensors"
    t0 = time.perf_counter()
    codec_mse = None
    if codec_file.exists():
        autoencoder = load_codec(codec_file)
        log(f"codec: {codec_file}")
    else:
        codec_cfg = CodecTrainConfig(seed=config.seed, **({"steps": codec_steps} if codec_steps else {}))
        autoencoder = VideoAutoencoder(codec_config)
        codec_mse = train_codec(autoencoder, world, codec_cfg)
        save_checkpoint(autoencoder, codec_file, {"train_config": str(asdict(codec_cfg)),
                                                  "reconstruction_mse": f"{codec_mse:.6f}",
                                                  "train_seconds": f"{time.perf_counter() - t0:.1f}"})
        log(f"codec: reconstruction MSE {codec_mse:.5f} on fresh clips -> {codec_file}")
    if codec_only:
        refined = _refine_decoder(autoencoder, codec_file, world, record, decoder_steps, config.seed, log)
        return WorldRun(None, codec_file, None, codec_mse if refined is None else refined)
    side = world.size // autoencoder.space_factor
    if init is not None:
        from .checkpoint import load_checkpoint

        if options:
            raise ValueError(f"model options {sorted(options)} cannot change a model continued from {init}; "
                             "its config comes with its checkpoint")
        model = load_checkpoint(init)
        wanted = (autoencoder.latent_channels, (side, side))
        have = (model.config.in_channels, tuple(model.config.latent_size))
        if have != wanted:
            raise ValueError(f"{init} works on {have[0]}-channel {have[1][0]}x{have[1][1]} latents, the codec "
                             f"makes {wanted[0]}-channel {side}x{side} ones: continue it with the codec it was "
                             f"trained with (--codec)")
        record["init"] = str(init)
    else:
        options.update(in_channels=autoencoder.latent_channels, latent_size=(side, side))
        model = StreamDiT.from_preset(preset, **options)
    B = model.geometry.buffer_frames
    shipped = out / "model.safetensors"
    result = None
    if resume and shipped.exists() and read_metadata(shipped).get("step") == str(config.steps):
        log(f"StreamDiT: {shipped} already has its {config.steps} steps")
    else:
        stamp = codec_file.stat()
        pool = LatentPool(world, autoencoder, clips=clips, frames=B, clip_frames=B + 4, seed=config.seed + 1,
                          cache=out / "latents", cache_key=json.dumps([record, str(codec_file.resolve()),
                                                                       stamp.st_size, stamp.st_mtime_ns]),
                          switch_share=switch_share, switch_kinds=switch_kinds)
        encoder = TextEncoder()
        # the model names its codec relative to its own folder, which is where loaders look
        codec_name = Path(os.path.relpath(codec_file.resolve(), out.resolve())).as_posix()
        val = _validation_pool(world, autoencoder, B, B + 4, data, size, log)
        refs = config.reference_frames if isinstance(config.reference_frames, tuple) else (config.reference_frames,)
        # a model trained with reference frames streams with them by default (the most it learned)
        recommended = {"reference_frames": str(max(refs))} if max(refs) > 0 else {}
        if steps_per_chunk is not None:
            recommended["steps_per_chunk"] = str(steps_per_chunk)
        result = train(model, pool, encoder.encode, config, out=out, resume=resume, val_data=val,
                       metadata={"codec": codec_name, "text_encoder": encoder.name, **record,
                                 **pool.switch_metadata(), "guidance": f"{guidance:g}", **recommended})
        log(f"StreamDiT: {result.step} steps in {result.seconds:.0f} s, loss {result.loss:.4f} -> {shipped}")
    refined = _refine_decoder(autoencoder, codec_file, world, record, decoder_steps, config.seed, log)
    return WorldRun(shipped, codec_file, result, codec_mse if refined is None else refined)


def _refine_decoder(autoencoder, codec_file: Path, world, record: dict, steps: int, seed: int,
                    log: Callable[[str], None]) -> float | None:
    """The last stage of :func:`train_world`: ``steps`` of decoder refinement with the encoder
    frozen, written over ``codec_file`` (once: a file already refined is kept). Returns the
    reconstruction MSE, or None when nothing was refined."""
    from .checkpoint import read_metadata

    meta = read_metadata(codec_file)
    if steps <= 0 or "decoder_refined_steps" in meta:
        return None
    t1 = time.perf_counter()
    mse = train_codec(autoencoder, world, CodecTrainConfig(steps=steps, lr=1e-3, seed=seed), decoder_only=True)
    save_checkpoint(autoencoder, codec_file, {**record_of(meta), "decoder_refined_steps": str(steps),
                                              "decoder_refined_seconds": f"{time.perf_counter() - t1:.1f}",
                                              "refined_reconstruction_mse": f"{mse:.6f}"})
    log(f"codec: decoder refined for {steps} steps, reconstruction MSE {mse:.5f} -> {codec_file}")
    return mse


def refine_codec(codec: str | os.PathLike, out: str | os.PathLike, config: CodecTrainConfig, *,
                 data: str | os.PathLike | None = None, size: int = 64, progress: bool = True,
                 log: Callable[[str], None] = print) -> Path:
    """Trains the decoder of the codec file ``codec`` further and writes it to ``out``.

    The encoder and the latent normalisation stay as they are, so every StreamDiT trained on the
    codec's latents streams with the new file unchanged; only the decoding improves. The file's
    metadata keeps the codec's record and adds up the refinement steps. ``out`` may be ``codec``
    itself: it is replaced only once the refinement is done (an interrupted run leaves it as it was),
    and only if the reconstruction error on fixed check clips did not grow (a short run at a high
    rate can make it worse: Adam's first steps are large); otherwise the result is written beside
    it as ``NAME-refined.safetensors``.
    """
    from .checkpoint import file_metadata, load_codec

    codec, out = Path(codec), Path(out)
    autoencoder = load_codec(codec)
    meta = file_metadata(codec)
    world, record = clip_source(data, 8 * autoencoder.time_factor, size, log)
    check, _ = world.batch(config.check_clips, 8 * autoencoder.time_factor, torch.Generator().manual_seed(12345))
    check = check.transpose(1, 2)  # [n, 3, T, H, W]

    @torch.no_grad()
    def error() -> float:
        return float((autoencoder.decode(autoencoder.encode(check)) - check).square().mean())

    def latent_space() -> dict[str, torch.Tensor]:  # what the models trained on the codec know
        return {k: v.clone() for k, v in autoencoder.state_dict().items() if k.startswith("encoder.") or k in ("shift", "scale")}

    frozen = latent_space()
    was = error()
    started = time.perf_counter()
    train_codec(autoencoder, world, config, progress=progress, decoder_only=True)
    seconds = time.perf_counter() - started
    mse = error()
    moved = [k for k, v in latent_space().items() if not torch.equal(v, frozen[k])]
    if moved:
        raise RuntimeError(f"refining the decoder changed the encoder's {moved}")
    steps = int(meta.get("decoder_refined_steps", 0)) + config.steps
    extra = record_of(meta)
    total = float(meta.get("decoder_refined_seconds", 0)) + seconds
    extra.update(decoder_refined_steps=str(steps), decoder_refined_seconds=f"{total:.1f}",
                 refined_reconstruction_mse=f"{mse:.6f}",
                 last_refinement=json.dumps({"steps": config.steps, "lr": config.lr, "outline_weight":
                                             config.outline_weight, "outline_contrast": config.outline_contrast,
                                             **({"halo_weight": config.halo_weight} if config.halo_weight else {}),
                                             "latent_noise": config.latent_noise,
                                             "seed": config.seed, "seconds": round(seconds, 1),
                                             **({"data": record["data"]} if "data" in record else {})}))
    if mse > was:
        log(f"codec: the refinement made the reconstruction worse (MSE {was:.5f} -> {mse:.5f} on "
            f"{config.check_clips} check clips); train longer or at a lower --lr")
        if out.resolve() == codec.resolve():  # keep the better file the user has
            out = codec.with_name(f"{codec.stem}-refined{codec.suffix}")
            log(f"codec: {codec} is kept as it was; the refined decoder goes to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(autoencoder, out, extra)
    log(f"codec: decoder refined {config.steps} more steps ({steps} in all) in {seconds:.0f} s, "
        f"reconstruction MSE {was:.5f} -> {mse:.5f} -> {out}")
    return out


NEW_WAN_TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=128, text_dim=4096, freq_dim=256, ffn_dim=512,
                           num_layers=4)  # a new Wan base: small, with the widths ComfyUI's loader takes for Wan
BASE_RECORD = "streamdit_base.json"  # what a base folder made here says of itself (its text encoder)


def new_wan_base(folder: str | os.PathLike, *, data: str | os.PathLike | None = None, size: int = 64,
                 vae_steps: int = 1500, vae_width: int = 16, vae_batch: int = 8, vae_frames: int = 32,
                 transformer: dict | None = None, seed: int = 0, check_clips: int = 64,
                 log: Callable[[str], None] = print) -> Path:
    """A Wan-architecture base folder made from scratch for ``data`` (default the synthetic world),
    in the layout :func:`train_wan` adapts: ``vae/`` (a Wan 2.1-architecture VAE of base width
    ``vae_width`` trained on the clips for ``vae_steps`` steps, calibrated to Wan's latent
    normalisation) on clips of ``vae_frames`` frames (the VAE decodes well only as far into a clip as
    it was trained; 32 covers the default 8-latent buffer), ``vae_comfyui.safetensors`` beside it for ComfyUI's Load VAE, and
    ``transformer/``: random weights, :func:`~streamdit_core.wan.tiny_wan_config` with
    :data:`NEW_WAN_TRANSFORMER` and ``transformer`` over it (e.g. ``num_layers``). The default
    keeps what ComfyUI's Load Diffusion Model assumes of a Wan model (128-wide attention heads,
    4096-wide text, a 256-wide time embedding), so the result loads there too; its text is the
    default MiniLM's, zero-padded to the text width (recorded in ``streamdit_base.json``, which
    :func:`wan_text_encoder` reads). A finished ``vae/`` is kept (an interrupted run does not
    train it again), and a folder that has both is kept as it is. Returns the folder."""
    from .text import TextEncoder
    from .wan import load_wan, tiny_wan_config
    from .wan_vae import COMFY_VAE_FILE, load_wan_vae, new_wan_vae, save_wan_vae

    folder = Path(folder)
    if (folder / "vae" / "config.json").is_file() and (folder / "transformer" / "config.json").is_file():
        log(f"Wan base: {folder} has its VAE and transformer")
        return folder
    config = tiny_wan_config(**{**NEW_WAN_TRANSFORMER, **(transformer or {})})
    encoder = TextEncoder()
    if config["text_dim"] < encoder.native_dim:
        raise ValueError(f"a new Wan base reads {encoder.name}'s {encoder.native_dim}-wide text: its text_dim "
                         f"must be at least that, got {config['text_dim']}")
    torch.manual_seed(seed)
    if (folder / "vae" / "config.json").is_file() and (folder / COMFY_VAE_FILE).is_file():  # saved last
        vae = load_wan_vae(folder)
        log(f"Wan VAE: {folder / 'vae'} is trained; making the transformer")
    else:
        vae = new_wan_vae(vae_width)
        world, record = clip_source(data, 8 * vae.time_factor, size, log)  # what train_codec measures on
        started = time.perf_counter()
        mse = train_codec(vae, world, CodecTrainConfig(steps=vae_steps, batch_size=vae_batch, pool=256, seed=seed,
                                                       check_clips=check_clips, clip_frames=vae_frames))
        log(f"Wan VAE: {vae_steps} steps in {time.perf_counter() - started:.0f} s, reconstruction MSE {mse:.5f}")
        save_wan_vae(vae, folder, {"steps": str(vae_steps), "clip_frames": str(vae_frames), "mse": f"{mse:.6f}",
                                   **record})
    side = size // vae.space_factor
    (folder / BASE_RECORD).write_text(json.dumps({"text_encoder": encoder.name, "text_width": config["text_dim"]},
                                                 indent=1) + "\n", encoding="utf-8")
    torch.manual_seed(seed + 1)  # the same transformer whether the VAE was trained now or before
    load_wan(config, buffer_frames=1, latent_size=(side, side)).transformer.save_pretrained(folder / "transformer")
    return folder


def train_wan(out: str | os.PathLike, config: TrainConfig, wan: str | os.PathLike, *,
              data: str | os.PathLike | None = None, size: int = 64, lora_rank: int = 0,
              buffer_frames: int | None = None, shift: float | None = None, clips: int = 1024,
              text_encoder: str | os.PathLike | None = None, resume: bool = False,
              new: dict | None = None, log: Callable[[str], None] = print, switch_share: float = 0.0,
              switch_kinds: Sequence[str] | None = None) -> Path:
    """Adapts a pretrained Wan 2.1 text-to-video model to streaming: buffered flow matching over
    mixed partitions on ``data`` (a folder of captioned videos; default the synthetic world), the
    whole transformer or, with ``lora_rank``, LoRA adapters only.

    ``wan`` is a diffusers folder (``transformer/``, ``vae/`` and, optionally, ``text_encoder/`` +
    ``tokenizer/``), or the ``model.safetensors`` of an earlier run, which continues (the paper's
    two stages: a text-to-video run with ``chunk_sizes`` = the buffer, then streaming); such a run
    keeps its buffer, shift and LoRA adapters, and its base folder gives the VAE and text encoder.
    ``buffer_frames`` (default 8) and ``shift`` (default 3) set a new model's. ``wan="new"`` trains
    a Wan-architecture model from scratch: :func:`new_wan_base` (with the ``new`` options) makes
    ``out/base/`` first, and the run then adapts it as any Wan folder.

    Writes ``out/model.safetensors`` in the format ComfyUI's Load Diffusion Model reads (and, with
    LoRA, ``out/model_lora.safetensors`` for its Load LoRA on the base); the StreamDiT Wan Model
    node streams the result. Returns the model file.
    """
    from safetensors import safe_open

    from .wan import add_lora, has_lora, load_adapted_wan, load_wan
    from .wan_vae import load_wan_vae
    from .world import LatentPool

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if str(wan) == "new":
        # the VAE trains on clips of the buffer (at least the 3 latents its causal context needs)
        new = {"vae_frames": 4 * max(buffer_frames or 8, 3), **(new or {})}
        wan = new_wan_base(out / "base", data=data, size=size, seed=config.seed, log=log, **new)
    elif new:
        raise ValueError("the options of a new Wan base go with wan='new'")
    wan = Path(wan)
    shipped = out / "model.safetensors"
    if resume and shipped.exists():
        with safe_open(str(shipped), framework="pt") as f:
            if (f.metadata() or {}).get("step") == str(config.steps):
                log(f"Wan: {shipped} already has its {config.steps} steps")
                return shipped
    record: dict[str, str] = {}
    if wan.is_file():
        if buffer_frames is not None or shift is not None:
            raise ValueError(f"{wan} continues with its own buffer and shift; drop buffer_frames and shift")
        model, meta = load_adapted_wan(wan)
        base = Path(meta["init"][len("wan:"):])
        record["continued"] = str(wan.resolve())
        lora_rank = lora_rank or int(meta.get("lora_rank", "0") or 0)
    else:
        base = wan
        model = None
    vae = load_wan_vae(base)
    B = model.geometry.buffer_frames if model is not None else buffer_frames or 8
    world, source = clip_source(data, (B + 4) * vae.time_factor, size, log)
    record.update(source)
    side = size // vae.space_factor
    if model is None:
        model = load_wan(base, buffer_frames=B, latent_size=(side, side), shift=3.0 if shift is None else shift)
    elif tuple(model.geometry.latent_size) != (side, side):
        h, w = model.geometry.latent_size
        raise ValueError(f"{wan} works on {h}x{w} latents and size {size} makes {side}x{side}: continue it at "
                         f"size {h * vae.space_factor}")
    if lora_rank and not has_lora(model):
        add_lora(model, lora_rank)
    encoder = wan_text_encoder(base, text_encoder, model.config.text_dim)
    pool = LatentPool(world, vae, clips=clips, frames=B, clip_frames=B + 4, seed=config.seed + 1,
                      cache=out / "latents", cache_key=json.dumps([record, f"wan:{wan.resolve()}", size]),
                      switch_share=switch_share, switch_kinds=switch_kinds)
    val = _validation_pool(world, vae, B, B + 4, data, size, log)
    result = train(model, pool, encoder.encode, config, out=out, resume=resume, desc="adapting Wan", val_data=val,
                   metadata={"init": f"wan:{base.resolve()}", "lora_rank": str(lora_rank), **pool.switch_metadata(),
                             "text_encoder": encoder.name, "size": str(size), **record})
    log(f"Wan: {result.step} steps in {result.seconds:.0f} s, loss {result.loss:.4f} -> {shipped}")
    return shipped


def wan_text_encoder(wan: str | os.PathLike, text_encoder: str | os.PathLike | None, text_dim: int):
    """The text encoder of a Wan folder: ``text_encoder`` if given, else the folder's own
    ``text_encoder/`` (with its ``tokenizer/``), else the default MiniLM (zero-padded to the
    width a base made by :func:`new_wan_base` records); its width must be the transformer's
    ``text_dim``."""
    from .text import TextEncoder

    wan = Path(wan)
    width = None
    if text_encoder is None and (wan / "text_encoder").is_dir():
        text_encoder = wan / "text_encoder"
    elif text_encoder is None and (wan / BASE_RECORD).is_file():
        width = int(json.loads((wan / BASE_RECORD).read_text(encoding="utf-8"))["text_width"])
    tokenizer = wan / "tokenizer" if text_encoder is not None and (wan / "tokenizer").is_dir() else None
    encoder = TextEncoder(text_encoder, max_length=512 if text_encoder is not None else 32, tokenizer=tokenizer,
                          width=width)
    if encoder.dim != text_dim:
        raise ValueError(f"the text encoder {encoder.path} gives {encoder.dim}-wide token states, the Wan model "
                         f"takes {text_dim}: give its own text encoder (text_encoder/ in {wan})")
    return encoder
