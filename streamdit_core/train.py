"""Buffered flow-matching training (paper Eq. 5) with mixed partitions, and the codec's training.

One step, top to bottom: draw a batch of clean latents and captions; draw a partition and a
per-frame sigma for every sample (:class:`~streamdit_core.schedule.MixedPartitions`, Eq. 8);
noise each frame at its own level; regress the velocity ``eps - x0`` on every noised frame
(clean reference frames carry no loss); AdamW with warm-up, gradient clipping; an EMA of the
weights, which is what the checkpoints ship.

Data-parallel: run under ``torchrun --nproc_per_node=P``; each process draws its own batch from
its own seed, DDP averages the gradients (gloo on CPU, NCCL on CUDA), rank 0 writes checkpoints
and shows the progress bar (loss, samples/s, tokens/s and model FLOPs utilisation). On CUDA the
forward runs under bf16 autocast. With ``TrainConfig.shard`` the processes shard the model
instead (FSDP2, :mod:`streamdit_core.shard`), for models that do not fit one device.

Files in the output folder: ``model.safetensors`` (EMA weights, with the training record in the
metadata), ``train_state.pt`` (raw weights, EMA, optimizer, step, generator: what ``resume``
needs; sharded runs write a ``train_state/`` folder of shards instead). Both are written
atomically, so an interrupted run resumes from its last checkpoint.

The whole recipes (the embedded model's, a clip folder's, a Wan model's adaptation) are in
:mod:`streamdit_core.recipes`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .conditioning import FrameText, TextEmbedding
from .model import StreamDiT
from .schedule import MixedPartitions, add_noise, velocity_target

__all__ = ["TrainConfig", "CodecTrainConfig", "FlowMatching", "Objective", "batch_text", "flow_matching_loss",
           "train", "train_codec", "TrainResult"]


@dataclass(frozen=True)
class TrainConfig:
    """Trainer settings; each default says why."""

    steps: int = 4000  # enough for the embedded world on a 2-core CPU in about 40 minutes
    batch_size: int = 32  # per process
    lr: float = 4e-4  # small DiTs tolerate a high rate with warm-up and clipping
    weight_decay: float = 0.01
    warmup: int = 200  # linear warm-up steps, then cosine decay to lr/10
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # about 1000 steps of memory
    chunk_sizes: tuple[int, ...] | None = None  # None: powers of two dividing B - K, and B - K
    uniform_ratio: float = 0.1  # extra share of plain text-to-video (one sigma for the buffer)
    reference_frames: int | tuple[int, ...] = 0  # K clean frames at the output end in the chunked schemes (a tuple mixes counts)
    text_dropout: float = 0.1  # share of samples trained without text (classifier-free guidance)
    # Share of the windows that show a prompt switch (``LatentBatch.switched``, from switch clips)
    # captioned frame by frame, each latent frame by the prompt in force at it: what a per-chunk
    # switch conditions the buffer with (old prompt on the frames that entered before it). The
    # others keep the newest frame's caption over the whole window, as an immediate switch does.
    # 0: every window captioned by its newest frame.
    frame_captions: float = 0.0
    subject_weight: float = 0.0  # extra loss weight on latent pixels the subject covers (0: plain MSE)
    # False: frames that show no subject (the blank frames of "appear"/"recover" switch clips) carry
    # no loss, so those clips teach drawing a subject the older frames lack without teaching that a
    # noisy frame may stay empty under a caption that names a subject. Needs a LatentPool.
    empty_frame_loss: bool = True
    checkpoint_every: int = 500
    seed: int = 0
    # Under torchrun: shard parameters, gradients and optimizer state over the processes (FSDP2,
    # :mod:`streamdit_core.shard`) instead of replicating them (DDP). For models that do not fit
    # one device; small models train faster with DDP.
    shard: bool = False
    activation_checkpointing: bool = False  # recompute block activations in the backward pass
    # torch.compile the network for the training steps: the embedded model's step takes 0.33 s
    # instead of 0.42 on a 2-core CPU, after about 75 s of compiling (BENCHMARKS.md). The EMA, the
    # validation loss and the files written stay the plain module's.
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.subject_weight < 0:
            raise ValueError(f"subject_weight must be at least 0, got {self.subject_weight}")
        if not 0 <= self.text_dropout <= 1 or not 0 < self.ema_decay < 1:
            raise ValueError("text_dropout must be in [0, 1] and ema_decay in (0, 1)")
        if not 0 <= self.frame_captions <= 1:
            raise ValueError(f"frame_captions must be a share in [0, 1], got {self.frame_captions}")


class BatchSource(Protocol):
    def sample(self, batch: int, gen: torch.Generator): ...  # -> .latents [b, C, F, h, w], .prompts


class Objective(Protocol):
    """One step's loss: ``objective(net, x0, text, batch, gen) -> scalar``; draws its randomness
    (noise levels, noise) from ``gen`` so a resumed run continues the same sequence."""

    def __call__(self, net: nn.Module, x0: Tensor, text, batch, gen: torch.Generator) -> Tensor: ...


@dataclass
class FlowMatching:
    """The training objective: per-frame noise from mixed partitions, the velocity regressed
    (:func:`flow_matching_loss`), optionally weighted towards the subject's latent pixels."""

    mix: MixedPartitions
    warp: object
    subject_weight: float = 0.0
    empty_frame_loss: bool = True  # False: frames the subject covers nowhere carry no loss

    def __call__(self, net: nn.Module, x0: Tensor, text, batch, gen: torch.Generator) -> Tensor:
        noise = self.mix.sample(x0.shape[0], gen, self.warp)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        weight = frames = None
        cover = getattr(batch, "subject", None)
        if (self.subject_weight > 0 or not self.empty_frame_loss) and cover is None:
            raise ValueError("subject_weight and empty_frame_loss=False need batches that carry subject cover "
                             "(a LatentPool); leave them at their defaults for other data")
        if self.subject_weight > 0:
            weight = 1 + self.subject_weight * cover.to(x0.device)
        if not self.empty_frame_loss:
            frames = (cover.flatten(3).amax(dim=(1, 3)) > 0).float()  # [b, F]: 1 where the subject shows
        return flow_matching_loss(net, x0, noise.sigma.to(x0.device), eps, text, weight, frames)


def flow_matching_loss(model: nn.Module, x0: Tensor, sigma: Tensor, eps: Tensor, text,
                       pixel_weight: Tensor | None = None, frame_weight: Tensor | None = None) -> Tensor:
    """Mean squared velocity error over every noised frame.

    Args:
        x0: clean latents ``[b, C, F, h, w]``; eps: noise like x0; sigma: ``[b, F]``.
        text: the conditioning handed to ``model``.
        pixel_weight: optional ``[b, 1, F, h, w]`` weight per latent pixel; each frame's error is
            its weighted mean, so frames keep equal say.
        frame_weight: optional ``[b, F]`` weight per frame (0 leaves a frame out of the loss).
    """
    x = add_noise(x0, eps, sigma)
    target = velocity_target(x0, eps)
    pred = model(x, sigma, text)
    sq = (pred.float() - target.float()).square()  # [b, C, F, h, w]
    if pixel_weight is None:
        err = sq.mean(dim=(1, 3, 4))  # [b, F]
    else:
        w = pixel_weight.float()
        err = (sq * w).mean(dim=(1, 3, 4)) / w.mean(dim=(1, 3, 4)).clamp_min(1e-8)
    weight = (sigma > 0).float()  # clean reference frames have no velocity to learn
    if frame_weight is not None:
        weight = weight * frame_weight.to(weight)
    return (err * weight).sum() / weight.sum().clamp_min(1)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def batch_text(batch, drop: Tensor, encode_text: Callable[[list[str]], TextEmbedding], frame_captions: float,
               gen: torch.Generator) -> TextEmbedding | FrameText:
    """The text a training step conditions ``batch`` on.

    Each sample's caption (``batch.prompts``), or the empty prompt where ``drop`` (bool ``[b]``)
    is set. With ``frame_captions`` > 0 and a batch that carries ``frame_prompts``, each window
    that shows a prompt switch is, with that probability (drawn from ``gen``), captioned frame by
    frame instead, and the batch's text is then a :class:`FrameText` with one prompt per latent
    frame (each a ``[b, Lt, Dt]`` embedding; windows captioned whole repeat their caption). No
    number is drawn when ``frame_captions`` is 0, so runs without it draw the same sequence.
    """
    prompts = ["" if d else p for p, d in zip(batch.prompts, drop.tolist())]
    rows = getattr(batch, "frame_prompts", None)
    switched = getattr(batch, "switched", None)
    if frame_captions <= 0 or rows is None or switched is None:
        return encode_text(prompts)
    pick = (torch.rand(len(prompts), generator=gen) < frame_captions) & switched.cpu()
    if not bool(pick.any()):
        return encode_text(prompts)
    frames = len(rows[0])
    per_frame = [row if k and p else [p] * frames for row, p, k in zip(rows, prompts, pick.tolist())]
    texts = [encode_text([row[f] for row in per_frame]) for f in range(frames)]
    # one token count for every frame: a compiled step then sees one shape, not one per frame
    length = max(t.tokens.shape[1] for t in texts)
    return FrameText(tuple(t.padded(length) for t in texts), torch.arange(frames))


def _validation_loss(ema: nn.Module, batch, encode_text, objective, device: torch.device, autocast) -> float:
    """The objective on one fixed held-out batch, with its own fixed noise (the same every time)."""
    x0 = batch.latents.to(device)
    text = encode_text(list(batch.prompts)).to(device)
    with torch.no_grad(), autocast:
        return float(objective(ema, x0, text, batch, torch.Generator().manual_seed(54321)))


def _ship(ema: nn.Module, state: dict | None, path: Path, record: dict[str, str]) -> Path:
    """Writes the shipped EMA weights (``state``: gathered from shards, else the module's own):
    our checkpoint format, or the model's own ``export`` (a Wan transformer in ComfyUI's format)."""
    if hasattr(ema, "export"):
        return ema.export(path, record, state)
    if state is not None:  # an unsharded model to write the gathered weights from
        plain = type(ema)(ema.config)
        plain.load_state_dict(state)
        ema = plain
    return save_checkpoint(ema, path, record)


def _tokens_per_sample(model: nn.Module) -> int | None:
    geometry = getattr(model, "geometry", None)
    if geometry is None:
        return None
    h, w = geometry.latent_size
    return geometry.buffer_frames * (h // geometry.patch_size) * (w // geometry.patch_size)


def _step_flops(model: nn.Module, data, encode_text, device: torch.device) -> float | None:
    """FLOPs of one training sample (forward and backward, about 3x the forward), counted once on
    one sample by torch's FLOP counter; None where it cannot count."""
    try:
        from .bench.measure import count_flops

        batch = data.sample(1, torch.Generator().manual_seed(0))
        x = batch.latents.to(device)
        sigma = torch.full(x.shape[:1] + x.shape[2:3], 0.5, device=device)
        return 3 * count_flops(model, x, sigma, encode_text(list(batch.prompts)).to(device))
    except Exception:  # noqa: BLE001 - the rate is a courtesy; training goes on without it
        return None


class _Rate:
    """samples/s, tokens/s and model FLOPs utilisation for the progress line, over the last steps."""

    def __init__(self, samples: int, tokens: int | None, flops: float | None, device: torch.device, world: int):
        self.samples, self.tokens, self.flops, self.world = samples, tokens, flops, world
        self.peak = None
        if flops is not None:
            try:
                from .bench.measure import matmul_peak

                self.peak = matmul_peak(device, "bf16" if device.type == "cuda" else "fp32", repeats=2)
            except Exception:  # noqa: BLE001
                self.peak = None
        self.times: list[float] = []

    def tick(self) -> dict[str, str]:
        self.times = (self.times + [time.perf_counter()])[-21:]
        if len(self.times) < 2:
            return {}
        per_s = self.samples * (len(self.times) - 1) / (self.times[-1] - self.times[0])
        shown = {"samples/s": f"{per_s:.1f}"}
        if self.tokens:
            shown["tokens/s"] = f"{per_s * self.tokens:.0f}"
        if self.flops and self.peak:
            shown["mfu"] = f"{100 * per_s * self.flops / (self.peak * self.world):.1f}%"
        return shown


@dataclass
class TrainResult:
    """What a run did: final step, last smoothed loss, wall seconds, the checkpoint written."""

    step: int
    loss: float
    seconds: float
    checkpoint: Path | None
    losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss of the EMA on held-out data)


def train(model: StreamDiT, data: BatchSource, encode_text: Callable[[list[str]], TextEmbedding],
          config: TrainConfig, out: str | os.PathLike | None = None, resume: bool = False,
          metadata: dict[str, str] | None = None, progress: bool = True, objective: Objective | None = None,
          desc: str = "training", val_data: BatchSource | None = None, val_batch: int = 64) -> TrainResult:
    """Trains ``model`` in place on ``data``; returns when ``config.steps`` steps are done.

    Args:
        data: ``sample(batch, generator)`` -> object with ``latents [b, C, F, h, w]`` and
            ``prompts`` (a list of b strings).
        encode_text: prompts -> TextEmbedding (the empty prompt must mean "no text").
        out: folder for checkpoints (None: keep nothing on disk).
        resume: continue from ``out/train_state.pt`` if it exists.
        metadata: extra string entries for the shipped checkpoint (codec file, text encoder...).
        val_data: held-out batches (a validation split, the world's held-out scenes): at every
            checkpoint the EMA's loss on one fixed batch of ``val_batch`` samples, drawn with a
            fixed seed, is printed and recorded (``val_loss`` in the checkpoint's metadata).
        objective: the loss (default :class:`FlowMatching` over the config's mixed partitions;
            :mod:`streamdit_core.distill` passes its teacher-matching loss).
        desc: the progress bar's label.
    """
    rank, world = _distributed()
    device = _device()
    cfg = config
    B = model.geometry.buffer_frames
    own_objective = objective is None  # the FLOP count below knows only the plain flow-matching step
    if objective is None:
        mix = MixedPartitions(B=B, chunk_sizes=cfg.chunk_sizes, uniform_ratio=cfg.uniform_ratio, K=cfg.reference_frames)
        objective = FlowMatching(mix, model.geometry.warp, cfg.subject_weight, cfg.empty_frame_loss)
    model.to(device).train()
    sharded = world > 1 and cfg.shard
    # The EMA copies what trains; frozen weights (a LoRA's base model) never move, so it shares them.
    shared = {id(q): q for q in model.parameters() if not q.requires_grad}
    ema = copy.deepcopy(model, shared).eval().requires_grad_(False)
    step_flops = _step_flops(model, data, encode_text, device) if progress and rank == 0 and own_objective else None
    if cfg.activation_checkpointing:
        from .shard import checkpoint_blocks

        checkpoint_blocks(model)
    if sharded:
        from .shard import shard_model

        shard_model(model, device)
        shard_model(ema, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # each process its own batches
    step, losses, seconds_before, val_losses = 0, [], 0.0, []
    out_dir = Path(out) if out is not None else None
    state_file = (out_dir / ("train_state" if sharded else "train_state.pt")) if out_dir else None
    if resume and state_file is not None and state_file.exists():
        if sharded:
            from .shard import load_sharded

            state = load_sharded(state_file, model, ema, opt)
        else:
            state = torch.load(state_file, map_location="cpu", weights_only=False)
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"][rank] if rank < len(state["generator"]) else state["generator"][0])
        step, losses, seconds_before = state["step"], state["losses"], float(state["seconds"])
        val_losses = [tuple(v) for v in state.get("val_losses", [])]
    net = nn.parallel.DistributedDataParallel(model) if world > 1 and not sharded else model
    if cfg.compile:
        net = torch.compile(net)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and not sharded \
        else torch.autocast(device.type, enabled=False)  # FSDP's policy casts the sharded model itself
    val = val_data.sample(val_batch, torch.Generator().manual_seed(12345)) if val_data is not None else None
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not progress or rank != 0, dynamic_ncols=True)
    smooth = losses[-1] if losses else None
    checkpoint = None
    rate = _Rate(cfg.batch_size * world, _tokens_per_sample(model), step_flops, device, world) if progress else None

    def save() -> Path | None:
        if out_dir is None:
            return None
        gens = [gen.get_state()]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, gen.get_state())
            gens = gathered
        elapsed = seconds_before + time.perf_counter() - start
        extra = {"generator": gens, "step": step, "losses": losses, "seconds": elapsed, "val_losses": val_losses}
        if sharded:
            from .shard import full_state, save_sharded

            save_sharded(state_file, model, ema, opt, extra)
            shipped = full_state(ema)  # collective: every process takes part
        if rank != 0:
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        record = {"step": str(step), "train_config": json.dumps(asdict(cfg)), "train_seconds": f"{elapsed:.1f}",
                  "train_processes": str(world), "train_device": device.type, **(metadata or {})}
        if val_losses:
            record["val_loss"] = json.dumps(val_losses)
        path = _ship(ema, shipped if sharded else None, out_dir / "model.safetensors", record)
        if not sharded:
            _atomic_save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                          **extra}, state_file)
        return path

    while step < cfg.steps:
        batch = data.sample(cfg.batch_size, gen)
        x0 = batch.latents.to(device)
        drop = torch.rand(len(batch.prompts), generator=gen) < cfg.text_dropout
        text = batch_text(batch, drop, encode_text, cfg.frame_captions, gen).to(device)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        with autocast:
            loss = objective(net, x0, text, batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():  # EMA, with a short memory early so it is useful from the start
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), model.parameters()):
                if p.requires_grad:
                    e.lerp_(p.detach(), 1 - decay)
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}; lower --lr or check the data")
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        if step % 50 == 0 or step == cfg.steps:
            losses.append(round(smooth, 5))
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{_lr_at(step - 1, cfg):.2e}", **(rate.tick() if rate else {}))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if val is not None:  # every process takes part: a sharded EMA gathers its weights
                value = _validation_loss(ema, val, encode_text, objective, device, autocast)
                val_losses.append((step, round(value, 5)))
                if rank == 0:
                    bar.write(f"step {step}: validation loss {value:.4f} (training {smooth:.4f})")
            checkpoint = save() or checkpoint
    bar.close()
    model.eval()
    return TrainResult(step, smooth if smooth is not None else float("nan"),
                       seconds_before + time.perf_counter() - start, checkpoint, losses, val_losses)


# --------------------------------------------------------------------------------------------
# The codec
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CodecTrainConfig:
    """Autoencoder training on world clips."""

    steps: int = 2000
    batch_size: int = 32  # clips of context + 1 latent frames
    lr: float = 2e-3
    latent_noise: float = 0.05  # relative noise on latents in training: a decoder robust to small errors
    pool: int = 2048  # clips rendered up front; a quarter is re-rendered every 100 steps
    seed: int = 0
    # Share of clips whose caption changes between their frames (one attribute, as a prompt
    # switch changes it). The causal decoder reads the previous frame, so a codec that never saw a
    # change decodes the first frame after a background switch mottled (mean background
    # deviation 0.025 against 0.009).
    switch_share: float = 0.25
    check_clips: int = 64  # fresh clips the final reconstruction MSE (and the calibration) is measured on
    # Frames per training clip; 0 takes the shortest clip that exercises the causal context. A
    # codec with causal caches through its depth (Wan's VAE) decodes well only as far into a clip
    # as it was trained: one trained on 12-frame clips had an error of 0.04-0.06 up to frame 12
    # and 0.13-0.27 from frame 14 on, so train it on clips as long as it will encode.
    clip_frames: int = 0
    # Extra weight on the pixels within 2 of the subject's outline (on top of the subject's 10x):
    # the corners and tips that tell a square and a triangle from a circle live there.
    outline_weight: float = 0.0
    # Weigh each frame's outline error by 1 / contrast^2 (the subject's color distance from its
    # background; the mean weight over the batch stays the same). The shape is read from the
    # error divided by that contrast, so without this purple or green on gray, the least
    # contrasted pairs, keep blurred corners where the squared error is already small.
    outline_contrast: bool = False
    # Extra weight on the background pixels 3 to 6 away from the subject (the halo): a decoder
    # trained with the background's weight of 1 there rings around the subject (coloured fringes
    # on a gray background), which the subject's and the outline's weights do not see.
    halo_weight: float = 0.0


HALO = (3, 6)  # the halo's distance from the subject in pixels, first and last ring


def codec_pixel_weight(x: Tensor, outline_weight: float = 0.0, outline_contrast: bool = False,
                       halo_weight: float = 0.0) -> Tensor:
    """The codec loss's weight ``[b, 1, T, H, W]`` on each pixel of world clips ``x [b, 3, T, H, W]``.

    The subject covers a few percent of the pixels but carries the shape, so its pixels (anything
    away from the frame's median color) weigh ten times the background's. ``outline_weight`` adds
    to the pixels within 2 of its outline (on the torus the world draws on), where the corners
    and tips are; with ``outline_contrast`` that extra weight goes as 1 / contrast^2 per frame
    (its mean over the frames that show a subject stays ``outline_weight``). ``halo_weight`` adds
    to the background pixels 3 to 6 away from the subject, where a decoder's ringing sits.
    """
    from .world.metrics import torus_dilate

    bg = x.flatten(3).median(dim=3).values[..., None, None]  # [b, 3, T, 1, 1]
    away = (x - bg).norm(dim=1, keepdim=True)  # [b, 1, T, H, W]
    subject = (away > 0.1).float()
    inside = subject[:, 0].bool()  # [b, T, H, W]
    weight = 1 + 9 * subject
    if outline_weight:
        ring = (torus_dilate(inside, 2) & torus_dilate(~inside, 2))[:, None].float()
        if outline_contrast:
            contrast = away.amax(dim=(3, 4), keepdim=True)  # [b, 1, T, 1, 1]
            shown = (contrast > 0.1).float()  # frames that show a subject
            scale = shown / contrast.clamp_min(0.1).square()
            ring = ring * scale * shown.sum().clamp_min(1) / scale.sum().clamp_min(1e-8)
        weight = weight + outline_weight * ring
    if halo_weight:
        halo = torus_dilate(inside, HALO[1]) & ~torus_dilate(inside, HALO[0] - 1)
        weight = weight + halo_weight * halo[:, None].float()
    return weight


def train_codec(codec, world, config: CodecTrainConfig, progress: bool = True, decoder_only: bool = False) -> float:
    """Trains a :class:`~streamdit_core.codec.VideoAutoencoder` on world clips, then calibrates
    its latent normalisation. Returns the final reconstruction MSE on fresh clips.

    ``world`` is the synthetic :class:`~streamdit_core.world.World` or a
    :class:`~streamdit_core.data.ClipFolder` (anything with ``batch(n, frames, gen)``); prompt
    switch clips (``switch_share``) come only from the world, which can render them.

    With ``decoder_only`` the encoder and the normalisation stay frozen, so the latent space a
    diffusion model was trained on does not move while the decoder keeps improving.
    """
    cfg = config
    gen = torch.Generator().manual_seed(cfg.seed + (1 if decoder_only else 0))
    codec.encoder.requires_grad_(not decoder_only)
    frames = codec.time_factor * (codec.context + 1)  # the shortest clip that exercises the causal context
    if cfg.clip_frames:
        if cfg.clip_frames % codec.time_factor or cfg.clip_frames < frames:
            raise ValueError(f"clip_frames={cfg.clip_frames}: this codec takes clips of a multiple of "
                             f"{codec.time_factor} frames, at least {frames}")
        frames = cfg.clip_frames

    def clips(count: int) -> Tensor:  # [count, 3, T, H, W]
        switched = round(count * cfg.switch_share) if frames > 1 and hasattr(world, "switch_batch") else 0
        video, _ = world.batch(count - switched, frames, gen)
        if switched:
            changed, _ = world.switch_batch(switched, frames, gen, at=frames - codec.time_factor)
            video = torch.cat([video, changed])
        return video.transpose(1, 2).contiguous()

    pool = clips(cfg.pool)
    opt = torch.optim.Adam([p for p in codec.parameters() if p.requires_grad], lr=cfg.lr)
    codec.train()
    bar = tqdm(range(cfg.steps), desc="refining decoder" if decoder_only else "training codec", disable=not progress, dynamic_ncols=True)
    smooth = None
    for step in bar:
        if step and step % 100 == 0:
            pool[torch.randperm(cfg.pool, generator=gen)[: cfg.pool // 4]] = clips(cfg.pool // 4)
        for group in opt.param_groups:  # cosine to lr/20
            group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        x = pool[torch.randint(cfg.pool, (cfg.batch_size,), generator=gen)]
        with torch.set_grad_enabled(not decoder_only):
            z = codec.encode_raw(x)
        z = z + cfg.latent_noise * z.detach().std() * torch.randn(z.shape, generator=gen)
        y = codec.decode_raw(z)
        weight = codec_pixel_weight(x, cfg.outline_weight, cfg.outline_contrast, cfg.halo_weight)
        err = y - x
        loss = (weight * (err.square() + 0.1 * err.abs())).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        value = loss.item()
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        bar.set_postfix(loss=f"{smooth:.4f}")
    codec.eval()
    codec.encoder.requires_grad_(True)
    with torch.no_grad():
        video, _ = world.batch(cfg.check_clips, 8 * codec.time_factor, gen)
        video = video.transpose(1, 2)
        if not decoder_only:
            codec.calibrate(video)
        return float((codec.decode(codec.encode(video)) - video).square().mean())
