"""Per-segment multistep distillation: a guided teacher with ``s`` micro steps per chunk becomes a
student with one unguided step per chunk.

A stream with partition ``(K, N, c, s)`` moves every chunk down its own noise band in ``s`` micro
steps per cycle; the band of chunk ``j`` is one *segment*. The student is trained so that its one
call at the start of a cycle lands every chunk where the teacher's ``s`` guided micro steps land
it (step distillation per segment and guidance distillation at once): with buffer frame sigmas
``sigma_0`` at the cycle's start and ``sigma_s`` at its end,

    x      = (1 - sigma_0) x0 + sigma_0 eps                   (a buffer at the cycle's start)
    y      = teacher's s Euler steps from x, guided            (no gradient)
    target = (x - y) / (sigma_0 - sigma_s)                     (the one-step velocity that reaches y)
    loss   = | student(x, sigma_0, text) - target |^2          (frames that move; references carry none)

so the student streams the same partition with ``s = 1``: ``N`` calls over a frame's whole life
and one call per emitted chunk, against ``2 s`` branch evaluations per chunk for the teacher. The
student starts from the teacher's weights and trains with the trainer's loop (AdamW, EMA,
checkpoints, resume, progress, DDP): :func:`streamdit_core.train.train` with this objective.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .guidance import Guided
from .conditioning import TextEmbedding
from .schedule import Partition, SigmaWarp, add_noise, euler_step, frame_sigma_table
from .stream import shift_buffer
from .train import TrainConfig, TrainResult, _device, train

TEACHER_FILE = "teacher.safetensors"  # a teacher copied beside its student to draw the student's opening

__all__ = ["DistillConfig", "SegmentDistillation", "distill", "distill_checkpoint", "distill_wan", "teacher_target"]


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings; each default says why."""

    steps: int = 2000  # the student starts at the teacher, so it needs far fewer steps than training
    batch_size: int = 16  # per process; each sample also costs the teacher's s guided calls
    lr: float = 1e-4  # small steps away from the teacher's weights
    warmup: int = 50
    ema_decay: float = 0.995  # about 200 steps of memory: the run is short
    teacher_steps: int = 16  # T of the teacher: s = T / N micro steps per chunk
    guidance: float = 2.0  # the teacher's guidance scale (1: none); 5 made the embedded teacher's subjects twice too fast
    chunk_sizes: tuple[int, ...] = (2,)  # partitions the student learns (c = 2 is the shipped default)
    reference_frames: int = 0  # K
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    seed: int = 0
    compile: bool = False  # torch.compile the student for the training steps (TrainConfig.compile)
    # On-policy inputs: each step first streams the student itself (one call per cycle, no
    # gradient) 0..rollout_cycles cycles from the noised clip, drawn uniformly, shifting its own
    # emitted frames into the references and fresh noise in at the top, and the teacher's target
    # starts from that buffer: the student learns from the buffers it meets when it streams, not
    # only from noised training clips. 0: noised clips only (the shipped students).
    rollout_cycles: int = 0
    # How the student's streams open (the file's ``opening`` record, read by Pipeline): the warm
    # start's guidance (None: the teacher's ``guidance``) and its Euler steps per chunk band. A
    # stream that opens without its subject never finds it; the embedded student opened so in 8
    # of 768 held-out streams at guidance 2 and 4 steps per band, in 1 at 3 and 8 (model card).
    opening_guidance: float | None = None
    opening_steps: int = 4
    # Who draws the opening: the student itself (False), or its teacher (True: the teacher's file
    # is copied beside the student as teacher.safetensors and the ``opening`` record names it). A
    # student distilled from a teacher trained at a high rate drew lumpy circles from its own
    # guided opening, which its reference frames kept; opened by its teacher it did not (model card).
    opening_from_teacher: bool = False
    # Share of the switched windows captioned frame by frame, as a per-chunk switch conditions the
    # buffer (TrainConfig.frame_captions); the teacher's target then follows the same captions.
    frame_captions: float = 0.0

    def __post_init__(self) -> None:
        if self.teacher_steps < 1 or self.guidance < 0 or not self.chunk_sizes:
            raise ValueError(f"teacher_steps must be >= 1, guidance >= 0 and chunk_sizes non-empty, got {self}")
        if not 0 <= self.frame_captions <= 1:
            raise ValueError(f"frame_captions must be a share in [0, 1], got {self.frame_captions}")
        if self.rollout_cycles < 0:
            raise ValueError(f"rollout_cycles must be >= 0 (0: no rollouts), got {self.rollout_cycles}")
        if self.opening_steps < 1 or (self.opening_guidance is not None and self.opening_guidance < 0):
            raise ValueError(f"opening_steps must be >= 1 and opening_guidance >= 0, got {self.opening_steps} "
                             f"and {self.opening_guidance}")

    def opening(self) -> dict[str, float | int | str]:
        """The student's ``opening`` record: ``{"guidance": G, "steps_per_chunk": S}``, and
        ``"model": "teacher.safetensors"`` when its teacher draws it."""
        guidance = self.guidance if self.opening_guidance is None else self.opening_guidance
        record = {"guidance": float(guidance), "steps_per_chunk": self.opening_steps}
        return {**record, "model": TEACHER_FILE} if self.opening_from_teacher else record

    def train_config(self) -> TrainConfig:
        """The trainer settings: no text dropout (the student is always conditioned)."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
                           grad_clip=self.grad_clip, ema_decay=self.ema_decay, chunk_sizes=self.chunk_sizes,
                           uniform_ratio=0.0, reference_frames=self.reference_frames, text_dropout=0.0,
                           checkpoint_every=self.checkpoint_every, seed=self.seed, compile=self.compile,
                           frame_captions=self.frame_captions)


def teacher_target(teacher: Callable, x: Tensor, table: Tensor, text) -> Tensor:
    """The teacher's micro steps over one cycle.

    Args:
        teacher: a velocity model (guided or not).
        x: the buffer at the cycle's start ``[b, C, B, H, W]``.
        table: frame sigmas before each micro step ``[s + 1, B]`` (:func:`frame_sigma_table`).
    Returns:
        the buffer after ``s`` Euler steps ``[b, C, B, H, W]``.
    """
    b = x.shape[0]
    y = x
    with torch.no_grad():
        for m in range(table.shape[0] - 1):
            v = teacher(y, table[m].expand(b, -1), text)
            y = euler_step(y, v.to(y), table[m].expand(b, -1).to(y), table[m + 1].expand(b, -1).to(y))
    return y


class SegmentDistillation(nn.Module):
    """The distillation objective for :func:`streamdit_core.train.train` (see the module docstring).

    Args:
        teacher: the teacher: a StreamDiT or a Wan model (frozen here).
        guidance: the teacher's guidance scale.
        buffer_frames: B.
        chunk_sizes: one partition per chunk size, drawn uniformly per step.
        teacher_steps: the teacher's T; ``T / N`` micro steps per chunk.
        warp: the sigma warp both models stream with.
        reference_frames: K.
        rollout_cycles: the most cycles the student streams itself before the teacher's target
            (:meth:`rollout`; 0: none).
    """

    def __init__(self, teacher: nn.Module, guidance: float, buffer_frames: int, chunk_sizes: Sequence[int],
                 teacher_steps: int, warp: SigmaWarp, reference_frames: int = 0, rollout_cycles: int = 0,
                 switch_teacher: nn.Module | None = None):
        super().__init__()
        self.rollout_cycles = int(rollout_cycles)
        def frozen(net: nn.Module) -> nn.Module:
            net.eval().requires_grad_(False)
            return net if guidance == 1 else Guided(net, guidance)

        self.teacher = frozen(teacher)
        self.switch_teacher = None if switch_teacher is None else frozen(switch_teacher)
        self.partitions = [Partition.streamdit(buffer_frames, c, T=teacher_steps, K=reference_frames)
                           for c in chunk_sizes]
        self.tables = [frame_sigma_table(P, warp).float() for P in self.partitions]  # [s+1, B] each

    def rollout(self, net: nn.Module, x: Tensor, table: Tensor, text, partition: Partition, cycles: int,
                gen: torch.Generator) -> Tensor:
        """The buffer after ``net`` streams ``cycles`` cycles from ``x`` as a distilled student does.

        Each cycle is one call from the cycle's start sigmas ``table[0]`` to its end sigmas
        ``table[-1]`` (no gradient), then the stream's shift: the ``c`` frames at sigma 0 leave,
        the last ``K`` frames emitted become the reference frames, and ``c`` frames of fresh noise
        (from ``gen``) enter at the input end. Returns ``[b, C, B, H, W]`` at ``table[0]`` again.
        """
        K, c, b = partition.K, partition.c, x.shape[0]
        s0, s1 = table[0].expand(b, -1), table[-1].expand(b, -1)
        with torch.no_grad():
            for _ in range(cycles):
                y = euler_step(x, net(x, s0, text).to(x), s0.to(x), s1.to(x))
                x = shift_buffer(y, K, c, torch.randn((b, x.shape[1], c, *x.shape[3:]), generator=gen).to(x))
        return x

    def target(self, x: Tensor, table: Tensor, text: TextEmbedding, switched: Tensor | None = None) -> Tensor:
        """The teachers' micro steps over one cycle from ``x``: the switch teacher's for the samples
        ``switched`` marks (bool ``[b]``, a window that shows a prompt switch or a missing subject),
        the teacher's for the others."""
        if self.switch_teacher is None or switched is None or not bool(switched.any()):
            return teacher_target(self.teacher, x, table, text)
        sw = switched.to(x.device)
        if bool(sw.all()):
            return teacher_target(self.switch_teacher, x, table, text)
        y = torch.empty_like(x)
        y[~sw] = teacher_target(self.teacher, x[~sw], table, text.select(~sw))
        y[sw] = teacher_target(self.switch_teacher, x[sw], table, text.select(sw))
        return y

    def forward(self, net: nn.Module, x0: Tensor, text, batch, gen: torch.Generator) -> Tensor:
        i = int(torch.randint(len(self.partitions), (1,), generator=gen))
        table = self.tables[i].to(x0.device)  # [s+1, B]
        b = x0.shape[0]
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        x = add_noise(x0, eps, table[0].expand(b, -1))  # [b, C, B, H, W]
        if self.rollout_cycles:
            cycles = int(torch.randint(self.rollout_cycles + 1, (1,), generator=gen))
            x = self.rollout(net, x, table, text, self.partitions[i], cycles, gen)
        y = self.target(x, table, text, getattr(batch, "switched", None))
        drop = table[0] - table[-1]  # [B]: how far each frame moves in the cycle
        moves = drop > 0
        target = (x - y) / torch.where(moves, drop, torch.ones_like(drop)).view(1, 1, -1, 1, 1)
        pred = net(x, table[0].expand(b, -1), text)
        err = (pred.float() - target.float()).square().mean(dim=(1, 3, 4))  # [b, B]
        weight = moves.float()  # reference frames do not move: no loss
        return (err * weight).sum() / (weight.sum() * b).clamp_min(1)


def distill(teacher: nn.Module, data, encode_text: Callable[[list[str]], TextEmbedding], config: DistillConfig,
            out: str | os.PathLike | None = None, resume: bool = False, metadata: dict[str, str] | None = None,
            progress: bool = True, switch_teacher: nn.Module | None = None) -> tuple[nn.Module, TrainResult]:
    """Distils ``teacher`` into a one-step-per-chunk student (a copy of it, trained in place).

    Args:
        data, encode_text: as for :func:`streamdit_core.train.train` (the teacher's world).
        out: folder for the student's checkpoints (``model.safetensors`` ships the EMA weights;
            ``resume`` continues from ``train_state.pt``).
        switch_teacher: a second teacher of the same geometry, on the same latents, whose targets
            the student learns on the windows that show a prompt switch or a missing subject
            (``LatentBatch.switched``); ``teacher`` gives every other target and the student's
            starting weights. None: ``teacher`` for all.
    Returns:
        the student (raw weights) and the run's :class:`TrainResult`.
    """
    if config.opening_from_teacher and out is not None and not (Path(out) / TEACHER_FILE).exists():
        raise ValueError(f"the student's opening names its teacher, which is not in {out}: copy the teacher's file "
                         f"there as {TEACHER_FILE} first (distill_checkpoint does)")
    if switch_teacher is not None and switch_teacher.geometry != teacher.geometry:
        raise ValueError(f"the switch teacher's geometry {switch_teacher.geometry} differs from the teacher's "
                         f"{teacher.geometry}: give a teacher of the same size and buffer")
    device = _device()
    teacher = teacher.to(device)
    adapters = {n for n, _ in teacher.named_parameters() if ".lora_" in n}
    if adapters:
        # a LoRA-adapted teacher distils as LoRA: the student trains its own copy of the adapters
        # and shares the frozen base weights with the teacher
        base = {id(q): q for n, q in teacher.named_parameters() if n not in adapters}
        student = copy.deepcopy(teacher, base).train()
        for n, q in student.named_parameters():
            q.requires_grad_(n in adapters)
    else:
        student = copy.deepcopy(teacher).train().requires_grad_(True)
    objective = SegmentDistillation(teacher, config.guidance, teacher.geometry.buffer_frames, config.chunk_sizes,
                                    config.teacher_steps, teacher.geometry.warp, config.reference_frames,
                                    config.rollout_cycles,
                                    None if switch_teacher is None else switch_teacher.to(device))
    P = objective.partitions[0]
    record = {
        "distilled": json.dumps(asdict(config)),
        "guidance": "1",  # the student is never guided: guidance is distilled into it
        "steps_per_chunk": "1",
        "recommended_partition": json.dumps({"K": P.K, "N": P.N, "c": P.c, "s": 1}),
        "opening": json.dumps(config.opening()),
        **(metadata or {}),
    }
    result = train(student, data, encode_text, config.train_config(), out, resume, record, progress,
                   objective=objective, desc="distilling")
    return student, result


def distill_checkpoint(teacher: str | os.PathLike, out: str | os.PathLike, config: DistillConfig,
                       clips: int = 4096, resume: bool = False, data: str | os.PathLike | None = None,
                       size: int | None = None, log: Callable[[str], None] = print,
                       switch_share: float = 0.0, switch_kinds: Sequence[str] | None = None,
                       switch_teacher: str | os.PathLike | None = None) -> TrainResult:
    """Distils a teacher checkpoint (a path, or ``"embedded-teacher"``) into
    ``out/model.safetensors`` on the clips it was trained on: its synthetic world, or the folder of
    captioned videos its metadata records (``data``/``size`` override them). The teacher's codec is
    copied beside the student, so the folder stands alone, and the student's metadata names its
    teacher. ``config.guidance`` is the teacher's scale (see
    :meth:`~streamdit_core.pipeline.Pipeline.load` for the checkpoint's recommendation).
    ``switch_share`` of the clips change one attribute mid-clip (synthetic world only, see
    :class:`~streamdit_core.world.LatentPool`), so the student also learns what its teacher does
    after a prompt switch; with ``switch_teacher`` (a checkpoint on the same codec's latents), what
    that teacher does on the windows that show a switch or a missing subject (see :func:`distill`)."""
    from .checkpoint import read_metadata
    from .pipeline import Pipeline
    from .recipes import clip_source
    from .world import LatentPool

    pipe = Pipeline.load(teacher, device="cpu", fast=None)
    out = Path(out)
    meta = read_metadata(pipe.path)
    second = None
    if switch_teacher is not None:
        if not switch_share:
            raise ValueError("a switch teacher answers the switch clips' windows, and there are none: give a "
                             "switch share above 0 (--switch-share)")
        second = Pipeline.load(switch_teacher, device="cpu", fast=None)
        if not _same_latents(pipe, second, int(meta.get("size", "64"))):
            raise ValueError(f"the switch teacher {second.path} was trained on another codec's latents than the "
                             f"teacher {pipe.path}: give a teacher trained on the same codec")
    B = pipe.geometry.buffer_frames
    data, size = _teacher_data(meta, data, size)
    source, record = clip_source(data, (B + 4) * pipe.codec.time_factor, size, log)
    out.mkdir(parents=True, exist_ok=True)
    codec_file = pipe.path.parent / meta["codec"] if "codec" in meta else None
    if codec_file is not None and not (out / codec_file.name).exists():
        shutil.copyfile(codec_file, out / codec_file.name)
    pool = LatentPool(source, pipe.codec, clips=clips, frames=B, clip_frames=B + 4, seed=config.seed + 1,
                      switch_share=switch_share, switch_kinds=switch_kinds)
    keep = {k: meta[k] for k in ("text_encoder",) if k in meta}
    if codec_file is not None:
        keep["codec"] = codec_file.name
    teacher_name = pipe.path.name
    if config.opening_from_teacher:  # the student's opening needs its teacher beside it
        teacher_name = TEACHER_FILE
        if (out / TEACHER_FILE).resolve() != pipe.path.resolve():
            _copy_teacher(pipe.path, out / TEACHER_FILE, keep.get("codec"))
    if second is not None:
        keep["switch_teacher"] = str(second.path)
    _, result = distill(pipe.model, pool, pipe.text.encode, config, out=out, resume=resume,
                        metadata={**keep, **record, "size": str(size), "teacher": teacher_name,
                                  **pool.switch_metadata()},
                        switch_teacher=None if second is None else second.model)
    return result


def _same_latents(a, b, size: int) -> bool:
    """Whether two loaded pipelines' codecs encode a fixed random clip to the same latents (a
    refined decoder keeps its encoder, so two teachers on its latents agree)."""
    gen = torch.Generator().manual_seed(0)
    frames = 2 * getattr(a.codec, "time_factor", 1)
    clip = torch.rand((1, 3, frames, size, size), generator=gen) * 2 - 1
    with torch.no_grad():
        za, zb = a.codec.encode(clip), b.codec.encode(clip)
    return za.shape == zb.shape and torch.allclose(za, zb, atol=1e-6)


def _copy_teacher(teacher: Path, to: Path, codec: str | None) -> None:
    """The teacher's file beside its student, naming the codec copied there (the teacher's own
    entry names it relative to the teacher's folder), so the student's folder stands alone."""
    from safetensors.torch import load_file

    from .checkpoint import file_metadata, write_safetensors

    meta = file_metadata(teacher)
    if codec is None or meta.get("codec") == codec:
        shutil.copyfile(teacher, to)
    else:
        write_safetensors(load_file(str(teacher)), to, {**meta, "codec": codec})


def distill_wan(teacher: str | os.PathLike, out: str | os.PathLike, config: DistillConfig, *, clips: int = 1024,
                resume: bool = False, data: str | os.PathLike | None = None, size: int | None = None,
                text_encoder: str | os.PathLike | None = None, log: Callable[[str], None] = print,
                switch_share: float = 0.0, switch_kinds: Sequence[str] | None = None) -> TrainResult:
    """Distils a Wan model adapted by ``train --init wan:FOLDER`` (its ``model.safetensors``) into
    a one-step-per-chunk student, on the clips it was adapted on (or ``data``), with the base
    folder's VAE and text encoder. A LoRA teacher gives a LoRA student. ``out`` gets the student
    in ComfyUI's formats, as ``train`` writes them (``model.safetensors``, ``model_lora.safetensors``
    for a LoRA), and it distils again from there like any adapted Wan model."""
    from .recipes import clip_source, wan_text_encoder
    from .wan import load_adapted_wan
    from .wan_vae import load_wan_vae
    from .world import LatentPool

    if config.opening_from_teacher:
        raise ValueError("the teacher opens a student's streams for StreamDiT teachers only; leave out "
                         "--opening-model teacher for a Wan teacher")
    model, meta = load_adapted_wan(teacher)
    base = Path(meta["init"][len("wan:"):])
    vae = load_wan_vae(base)
    B = model.geometry.buffer_frames
    data, size = _teacher_data(meta, data, size)
    source, record = clip_source(data, (B + 4) * vae.time_factor, size, log)
    encoder = wan_text_encoder(base, text_encoder, model.config.text_dim)
    out = Path(out)
    pool = LatentPool(source, vae, clips=clips, frames=B, clip_frames=B + 4, seed=config.seed + 1,
                      cache=out / "latents", cache_key=json.dumps([record, meta["init"], size]),
                      switch_share=switch_share, switch_kinds=switch_kinds)
    _, result = distill(model, pool, encoder.encode, config, out=out, resume=resume,
                        metadata={"init": meta["init"], "lora_rank": meta.get("lora_rank", "0"),
                                  **pool.switch_metadata(),
                                  "text_encoder": encoder.name, "size": str(size), **record,
                                  "teacher": str(Path(teacher).resolve())})
    return result


def _teacher_data(meta: dict[str, str], data, size: int | None) -> tuple:
    """(clip folder or None for the world, frame size): what the caller gave, else what the
    teacher's metadata records it was trained on."""
    if data is None and "data" in meta:
        data = meta["data"]
        if not Path(data).is_dir():
            raise ValueError(f"the teacher was trained on {data}, which is gone: give the clips with --data")
    return data, size or int(meta.get("size", 64))
