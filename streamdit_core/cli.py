"""``python -m streamdit_core generate|train|distill|evaluate|bench ...``: each subcommand has ``--help``."""

from __future__ import annotations

import argparse
import gc
import math
import signal
import sys
import time
from fractions import Fraction
from pathlib import Path

__all__ = ["main"]


class Stopped(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, a container or a service manager sends), raised where the
    program is, as Ctrl-C raises KeyboardInterrupt: what was made so far is kept."""


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text}")
        return value
    return parse


def _count(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def _share(text: str) -> float:
    """A share in 0..1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text}")
    return value


def _switch_kinds(text: str) -> tuple[str, ...]:
    from .world import SWITCH_KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds or set(kinds) - set(SWITCH_KINDS):
        raise argparse.ArgumentTypeError(f"must be some of {','.join(SWITCH_KINDS)} separated by commas, got {text!r}")
    return kinds


def _device(text: str) -> str:
    """``--device``: checked to be usable here before any model loads."""
    from .pipeline import resolve_device

    try:
        resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _seconds(text: str) -> float:
    """A time in seconds of video: ``4``, ``4.5`` or ``4s`` (the Prompt Schedule's notation)."""
    value = text.strip()
    value = value[:-1] if value.endswith("s") else value
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a time; write seconds of video, e.g. 4 or 4.5s") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a finite time")
    return seconds


def _chunk_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"chunk sizes are comma-separated integers like 1,2,4,8, got {text!r}") from None


def _add_run_options(p) -> None:
    """The options every training run on the synthetic world takes (train, distill)."""
    p.add_argument("--clips", type=_positive(int), default=4096, help="training clips rendered and encoded up front")
    p.add_argument("--switch-share", type=_share, default=0.0, metavar="P",
                   help="share (0..1) of the synthetic world's training clips in which one attribute changes "
                        "mid-clip, captioned as the prompt in force at each window's newest frame: teaches the "
                        "model to follow a switched prompt over its reference frames (default 0)")
    p.add_argument("--switch-kinds", type=_switch_kinds, default=None,
                   metavar="K,K", help="what changes in those clips, taking turns: color, shape, direction, "
                                       "background, appear (the subject appears in frames that showed only the "
                                       "background: teaches the model to draw a subject its references lost) and "
                                       "recover (only the first two latent frames lack the subject); "
                                       "default the four attributes")
    p.add_argument("--frame-captions", type=_share, default=0.0, metavar="P",
                   help="share (0..1) of the windows that show a switch captioned frame by frame, each latent "
                        "frame by the prompt in force at it, as a per-chunk switch (--switch-mode chunk) "
                        "conditions the buffer; the rest keep the newest frame's caption, as an immediate "
                        "switch does (needs --switch-share; default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--threads", type=_positive(int), default=None, help="CPU threads for torch")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network for the training steps: faster steps after a compile of a "
                        "minute or more (see BENCHMARKS.md)")


def _check_frame_captions(args) -> None:
    """``--frame-captions`` acts on the windows of switch clips: refuse it without ``--switch-share``."""
    if args.frame_captions and not args.switch_share:
        raise SystemExit("--frame-captions captions the windows of switch clips frame by frame, and there are "
                         "none: give --switch-share P (e.g. 0.2) with it")


def _given(**values) -> dict:
    """The options the user gave (not None), as config overrides."""
    return {k: v for k, v in values.items() if v is not None}


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------

def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a StreamDiT (codec, then StreamDiT) on the world or your clips",
                       description="Train a StreamDiT on the synthetic world, or on a folder of captioned "
                                   "videos (--data): the latent codec first (unless --codec is given or "
                                   "OUT/codec.safetensors exists), then the buffered flow-matching model. Run "
                                   "under torchrun for data-parallel training.")
    p.add_argument("--data", type=Path, default=None,
                   help="a folder of videos with captions (NAME.txt beside each, or captions.jsonl / captions.csv "
                        "with 'file' and 'caption'); default: the synthetic world")
    p.add_argument("--size", type=_positive(int), default=64,
                   help="frame size clips from --data are scaled and centre-cropped to (default 64)")
    p.add_argument("--out", type=Path, default=Path("runs/embedded"), help="output folder (default runs/embedded)")
    p.add_argument("--preset", default="embedded", help="StreamDiT preset (default embedded)")
    p.add_argument("--init", default=None,
                   help="continue one of our checkpoints instead of starting from the preset (e.g. a text-to-video "
                        "run with --chunk-sizes 8, then streaming adaptation over mixed partitions), or "
                        "wan:FOLDER to adapt a Wan 2.1 text-to-video model (diffusers layout: transformer/, vae/, "
                        "text_encoder/, tokenizer/; or wan:RUN/model.safetensors to continue an adapted one; or "
                        "wan:new for a small Wan-architecture model from scratch: a Wan 2.1-architecture VAE "
                        "trained on the clips for --codec-steps, then a random transformer); the result loads in "
                        "ComfyUI's Load Diffusion Model")
    p.add_argument("--lora", type=_positive(int), default=None, metavar="RANK",
                   help="with --init wan:...: train LoRA adapters of this rank only (saved for ComfyUI's Load LoRA)")
    p.add_argument("--text-encoder", type=Path, default=None,
                   help="with --init wan:...: a text encoder folder (default: the Wan folder's text_encoder/)")
    p.add_argument("--steps", type=_positive(int), default=None, help="StreamDiT training steps")
    p.add_argument("--batch-size", type=_positive(int), default=None, help="samples per step and process")
    p.add_argument("--lr", type=_positive(float), default=None)
    p.add_argument("--chunk-sizes", type=_chunk_sizes, default=None, help="partition chunk sizes to mix, e.g. 1,2,4,8")
    p.add_argument("--reference-frames", type=_chunk_sizes, default=None, metavar="K[,K...]",
                   help="clean reference frames (the last frames emitted) kept in the buffer in the chunked schemes; "
                        "several counts are mixed, e.g. 0,2 (default 0)")
    p.add_argument("--uniform-ratio", type=float, default=None, help="extra share of plain text-to-video samples")
    p.add_argument("--subject-weight", type=float, default=None,
                   help="extra loss weight on latent pixels the subject covers (default 0: plain MSE)")
    p.add_argument("--skip-empty-frames", action="store_true",
                   help="frames that show no subject (the blank frames of appear and recover switch clips) carry "
                        "no loss: those clips then teach drawing a subject that older frames lack, not leaving a "
                        "noisy frame empty under a caption that names one")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale to record as the model's recommendation (default 1: none)")
    p.add_argument("--steps-per-chunk", type=_positive(int), default=None, metavar="S",
                   help="micro steps per chunk to record as the model's recommendation, which generate, evaluate "
                        "and bench then stream with (default: T = 16 over the buffer)")
    p.add_argument("--codec", type=Path, default=None, help="a trained codec checkpoint to use instead of training one")
    p.add_argument("--codec-steps", type=_positive(int), default=None, help="codec training steps")
    p.add_argument("--model-option", type=_option, action="append", default=[], metavar="FIELD=VALUE",
                   help="a StreamDiTConfig field over the preset, e.g. wrap=true, prediction=clean, "
                        "pooled_text=true, depth=8 (repeatable)")
    p.add_argument("--codec-option", type=_option, action="append", default=[], metavar="FIELD=VALUE",
                   help="a CodecConfig field for a codec trained by this run, e.g. wrap=true, space_factor=4, "
                        "latent_channels=4 (repeatable); the model's channels and latent size follow the codec")
    p.add_argument("--decoder-steps", type=int, default=3000,
                   help="decoder refinement steps after the StreamDiT is trained (encoder frozen); 0 skips")
    p.add_argument("--codec-only", action="store_true",
                   help="train the codec (and its decoder refinement) in OUT and stop; StreamDiT runs then share it "
                        "with --codec OUT/codec.safetensors")
    p.add_argument("--shard", action="store_true",
                   help="under torchrun: shard weights, gradients and optimizer state over the processes (FSDP2) "
                        "instead of replicating them (DDP)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass (less memory, more compute)")
    _add_run_options(p)
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    import torch

    from .recipes import train_world
    from .train import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.guidance < 0:
        raise SystemExit(f"--guidance must be at least 0, got {args.guidance}")
    torch.manual_seed(args.seed)
    refs = args.reference_frames
    overrides = _given(steps=args.steps, batch_size=args.batch_size, lr=args.lr, chunk_sizes=args.chunk_sizes,
                       uniform_ratio=args.uniform_ratio, subject_weight=args.subject_weight,
                       reference_frames=refs[0] if refs is not None and len(refs) == 1 else refs)
    overrides.update(shard=args.shard, activation_checkpointing=args.activation_checkpointing, compile=args.compile,
                     empty_frame_loss=not args.skip_empty_frames, frame_captions=args.frame_captions)
    try:
        config = TrainConfig(seed=args.seed, **overrides)
    except ValueError as err:
        raise SystemExit(f"bad training settings: {err}") from None
    if args.codec_only and (args.codec is not None or args.init is not None):
        raise SystemExit("--codec-only trains a new codec: leave out --codec and --init")
    if args.switch_share and args.data is not None:
        raise SystemExit("--switch-share renders prompt-switch clips from the synthetic world; a --data folder "
                         "has no switches to draw on: leave --switch-share out")
    _check_frame_captions(args)
    if args.init is not None and args.init.startswith("wan:"):
        if args.steps_per_chunk is not None:
            raise SystemExit("--steps-per-chunk is recorded in the synthetic world's checkpoints; a Wan adapter "
                             "streams with --steps at generate time: leave it out")
        return _run_train_wan(args, config)  # a Wan VAE's options are its own (width, batch)
    from .codec import CodecConfig

    try:
        codec_config = CodecConfig(**dict(args.codec_option)) if args.codec_option else None
    except (TypeError, ValueError) as err:
        raise SystemExit(f"bad --codec-option: {err}") from None
    from .data import DataError

    if args.lora is not None or args.text_encoder is not None:
        raise SystemExit("--lora and --text-encoder adapt a Wan model: use them with --init wan:FOLDER")
    init = Path(args.init) if args.init is not None else None
    if args.codec is not None and not args.codec.is_file():
        raise SystemExit(f"--codec {args.codec}: no such codec file; leave --codec out to train one in {args.out}")
    try:
        train_world(args.out, config, preset=args.preset, codec=args.codec, codec_steps=args.codec_steps,
                    decoder_steps=args.decoder_steps, clips=args.clips, guidance=args.guidance, resume=args.resume,
                    model_options=dict(args.model_option), codec_config=codec_config, data=args.data,
                    size=args.size, init=init, codec_only=args.codec_only, switch_share=args.switch_share,
                    switch_kinds=args.switch_kinds, steps_per_chunk=args.steps_per_chunk)
    except DataError as err:
        raise SystemExit(f"--data: {err}") from None
    except (TypeError, ValueError) as err:
        if args.init is not None and str(args.init) in str(err):
            raise SystemExit(f"--init: {err}") from None
        if "StreamDiTConfig" not in str(err) and "model option" not in str(err):
            raise
        raise SystemExit(f"bad --model-option: {err}") from None
    return 0


def _run_train_wan(args, config) -> int:
    from .data import DataError
    from .recipes import train_wan

    options, source = dict(args.model_option), args.init[len("wan:"):]
    new = None
    if source == "new":  # a Wan-architecture model from scratch: its VAE trained here, a random transformer
        codec = dict(args.codec_option)
        if set(codec) - {"width", "batch", "frames"} or args.codec is not None:
            raise SystemExit("--init wan:new trains its own Wan VAE: it takes --codec-option width=W, batch=N and "
                             "frames=F (frames per training clip, default 4 x the buffer) only")
        transformer = {k: options.pop(k) for k in _WAN_NEW if k in options}
        new = dict(transformer=transformer, vae_steps=args.codec_steps or 1500, vae_width=int(codec.get("width", 16)),
                   vae_batch=int(codec.get("batch", 8)), **({"vae_frames": int(codec["frames"])} if "frames" in codec else {}))
    unknown = sorted(set(options) - {"buffer_frames", "shift"})
    if unknown or (new is None and (args.codec is not None or args.codec_option)):
        raise SystemExit(f"--init wan: the Wan model brings its own VAE and config; it takes --model-option "
                         f"buffer_frames=N and shift=S only (and, with wan:new, {', '.join(_WAN_NEW)}; "
                         f"got {unknown or 'a codec option'})")
    try:
        train_wan(args.out, config, source, data=args.data, size=args.size, lora_rank=args.lora or 0,
                  buffer_frames=int(options["buffer_frames"]) if "buffer_frames" in options else None,
                  shift=float(options["shift"]) if "shift" in options else None,
                  clips=args.clips, text_encoder=args.text_encoder, resume=args.resume, new=new,
                  switch_share=args.switch_share, switch_kinds=args.switch_kinds)
    except DataError as err:
        raise SystemExit(f"--data: {err}") from None
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"--init {args.init}: {err}") from None
    return 0


_WAN_NEW = ("num_layers", "num_attention_heads", "attention_head_dim", "ffn_dim")  # a new Wan transformer's size


def _option(text: str) -> tuple[str, object]:
    """``FIELD=VALUE`` with VALUE read as JSON where it parses (true, 8, 0.5, [4, 4, 4]), else a string."""
    import json

    field, sep, value = text.partition("=")
    if not sep or not field.strip():
        raise argparse.ArgumentTypeError(f"an option is FIELD=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return field.strip().replace("-", "_"), parsed


_MODEL_HELP = ("StreamDiT checkpoint, or embedded (the default: the distilled student, one call per chunk) "
               "or embedded-teacher (guided, 16 steps per frame)")


# --------------------------------------------------------------------------------------------
# distill
# --------------------------------------------------------------------------------------------

def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="distil a guided multi-step teacher into a one-step-per-chunk student",
                       description="Per-segment step and guidance distillation: the student (a copy of the "
                                   "teacher) learns to cover each chunk's noise band in one unguided call what the "
                                   "teacher covers in T/N guided micro steps, on the teacher's world.")
    p.add_argument("--teacher", type=Path, default=Path("embedded-teacher"),
                   help="teacher checkpoint (default: embedded-teacher, the embedded guided model)")
    p.add_argument("--out", type=Path, default=Path("runs/student"), help="output folder (default runs/student)")
    p.add_argument("--steps", type=_positive(int), default=None, help="distillation steps")
    p.add_argument("--batch-size", type=_positive(int), default=None, help="samples per step and process")
    p.add_argument("--lr", type=_positive(float), default=None)
    p.add_argument("--teacher-steps", type=_positive(int), default=None, help="the teacher's T (default 16; with reference frames from the teacher, 4 per chunk)")
    p.add_argument("--guidance", type=float, default=None,
                   help="the teacher's guidance scale (default: the teacher checkpoint's recommendation)")
    p.add_argument("--chunk-sizes", type=_chunk_sizes, default=None, help="partitions to distil, e.g. 2 or 1,2,4")
    p.add_argument("--reference-frames", type=int, default=None, metavar="K",
                   help="clean reference frames in the student's partitions (default: the teacher's recommendation, "
                        "2 for the embedded teacher, with --teacher-steps 4 per chunk); the student's file recommends "
                        "its partition, which generate, evaluate and bench then stream by default")
    p.add_argument("--opening-guidance", type=float, default=None, metavar="G",
                   help="guidance of the student's opening (the guided warm start every stream begins with; "
                        "default: the teacher's guidance); recorded in the student's file")
    p.add_argument("--opening-steps", type=_positive(int), default=None, metavar="S",
                   help="Euler steps per chunk band of the student's opening (default 4); recorded in its file")
    p.add_argument("--opening-model", choices=("student", "teacher"), default="student",
                   help="who draws the student's opening: the student itself (default), or its teacher, copied "
                        "beside the student as teacher.safetensors and loaded with it")
    p.add_argument("--rollout-cycles", type=int, default=None, metavar="R",
                   help="on-policy inputs: each step the student first streams itself 0..R cycles (drawn uniformly, "
                        "no gradient) from the noised clip, and the teacher's target starts from that buffer "
                        "(default 0: noised clips only)")
    p.add_argument("--switch-teacher", type=Path, default=None, metavar="CHECKPOINT",
                   help="a second teacher on the same codec's latents that answers the windows showing a prompt "
                        "switch or a missing subject (needs --switch-share); --teacher answers the others and "
                        "gives the student's starting weights")
    p.add_argument("--data", type=Path, default=None,
                   help="a folder of captioned videos to distil on (default: what the teacher was trained on)")
    p.add_argument("--size", type=_positive(int), default=None,
                   help="frame size for --data (default: the teacher's training size)")
    p.add_argument("--text-encoder", type=Path, default=None,
                   help="for a Wan teacher: its text encoder folder (default: text_encoder/ of its base Wan folder)")
    _add_run_options(p)
    p.set_defaults(run=_run_distill)


def _run_distill(args) -> int:
    import torch

    from .checkpoint import read_metadata
    from .data import DataError
    from .distill import DistillConfig, distill_checkpoint, distill_wan
    from .pipeline import model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher = model_path(args.teacher)
    from .checkpoint import file_metadata

    meta = file_metadata(teacher)
    wan = meta.get("format") == "comfyui-wan"  # a Wan model adapted by train --init wan:FOLDER
    if not wan:
        meta = read_metadata(teacher)  # checks it is a StreamDiT checkpoint
    guidance = float(meta.get("guidance", "1")) if args.guidance is None else args.guidance
    refs, teacher_steps = args.reference_frames, args.teacher_steps
    if refs is None and not wan:  # the reference frames the teacher streams with, and 4 of its steps per chunk
        refs = int(meta.get("reference_frames", "0"))
        if refs and teacher_steps is None:
            from .checkpoint import read_config

            B = read_config(teacher).buffer_frames
            teacher_steps = 4 * ((B - refs) // min(args.chunk_sizes or (2,)))
    overrides = _given(steps=args.steps, batch_size=args.batch_size, lr=args.lr, teacher_steps=teacher_steps,
                       chunk_sizes=args.chunk_sizes, reference_frames=refs, opening_guidance=args.opening_guidance,
                       opening_steps=args.opening_steps, rollout_cycles=args.rollout_cycles,
                       opening_from_teacher=True if args.opening_model == "teacher" else None,
                       frame_captions=args.frame_captions or None)
    if args.text_encoder is not None and not wan:
        raise SystemExit("--text-encoder is for a Wan teacher (one adapted by train --init wan:FOLDER)")
    if args.switch_share and (args.data is not None or "data" in meta):
        raise SystemExit("--switch-share renders prompt-switch clips from the synthetic world; this teacher "
                         "distils on a folder of videos, which has none: leave --switch-share out")
    if args.switch_teacher is not None and wan:
        raise SystemExit("--switch-teacher is for StreamDiT teachers; leave it out for a Wan teacher")
    _check_frame_captions(args)
    if args.switch_teacher is not None and not args.switch_share:
        raise SystemExit("--switch-teacher answers the windows of switch clips, and there are none: give "
                         "--switch-share P (e.g. 0.4) with it")
    t0 = time.perf_counter()
    try:
        config = DistillConfig(guidance=guidance, seed=args.seed, compile=args.compile, **overrides)
        if wan:
            result = distill_wan(teacher, args.out, config, clips=args.clips, resume=args.resume, data=args.data,
                                 size=args.size, text_encoder=args.text_encoder, switch_share=args.switch_share,
                                 switch_kinds=args.switch_kinds)
        else:
            result = distill_checkpoint(teacher, args.out, config, clips=args.clips, resume=args.resume,
                                        data=args.data, size=args.size, switch_share=args.switch_share,
                                        switch_kinds=args.switch_kinds,
                                        switch_teacher=None if args.switch_teacher is None
                                        else model_path(args.switch_teacher))
    except DataError as err:
        raise SystemExit(f"--data: {err}") from None
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"bad distillation settings: {err}") from None
    print(f"student: {result.step} steps in {time.perf_counter() - t0:.0f} s, loss {result.loss:.5f} -> {result.checkpoint}")
    return 0


# --------------------------------------------------------------------------------------------
# refine-codec
# --------------------------------------------------------------------------------------------

def _add_refine_codec(sub) -> None:
    p = sub.add_parser("refine-codec", help="train a codec's decoder further, its latent space kept",
                       description="Trains the decoder of a codec file further on the world (or --data) with "
                                   "the encoder frozen, so every model trained on the codec's latents streams "
                                   "with the new file unchanged; only the decoded frames change.")
    p.add_argument("codec", type=Path, help="the codec file (e.g. streamdit_core/weights/embedded/codec.safetensors)")
    p.add_argument("--out", type=Path, required=True,
                   help="where to write the refined codec (may be the input: it is replaced when the run is done)")
    p.add_argument("--steps", type=_positive(int), default=2000)
    p.add_argument("--lr", type=_positive(float), default=1e-3)
    p.add_argument("--outline-weight", type=float, default=0.0,
                   help="extra loss weight on the pixels within 2 of the subject's outline, where corners and "
                        "tips are (default 0)")
    p.add_argument("--outline-contrast", action="store_true",
                   help="weigh the outline's error by 1 / (the subject's contrast to its background)^2, so the "
                        "least contrasted pairs (purple or green on gray) count as much as the rest")
    p.add_argument("--halo-weight", type=float, default=0.0,
                   help="extra loss weight on the background 3 to 6 pixels from the subject, where a decoder "
                        "rings (coloured fringes around the subject; default 0)")
    p.add_argument("--latent-noise", type=float, default=None,
                   help="noise added to the latents in training, relative to their spread: a larger value "
                        "makes the decoder more forgiving of a model's latent errors (default 0.05)")
    p.add_argument("--batch-size", type=_positive(int), default=None, help="clips per step (default 32)")
    p.add_argument("--data", type=Path, default=None, help="a folder of captioned videos (default: the world)")
    p.add_argument("--size", type=_positive(int), default=64, help="frame size for --data")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=_positive(int), default=None, help="CPU threads for torch")
    p.set_defaults(run=_run_refine_codec)


def _run_refine_codec(args) -> int:
    import torch

    from .data import DataError
    from .recipes import refine_codec
    from .train import CodecTrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.outline_weight < 0:
        raise SystemExit(f"--outline-weight must be 0 or more, got {args.outline_weight}")
    if args.outline_contrast and not args.outline_weight:
        raise SystemExit("--outline-contrast weighs the outline's error: give --outline-weight too (e.g. 20)")
    if args.halo_weight < 0:
        raise SystemExit(f"--halo-weight must be 0 or more, got {args.halo_weight}")
    if args.latent_noise is not None and not 0 <= args.latent_noise <= 1:
        raise SystemExit(f"--latent-noise must be between 0 and 1 (a share of the latents' spread), got {args.latent_noise}")
    try:
        config = CodecTrainConfig(steps=args.steps, lr=args.lr, outline_weight=args.outline_weight,
                                  outline_contrast=args.outline_contrast, halo_weight=args.halo_weight, seed=args.seed,
                                  **_given(batch_size=args.batch_size, latent_noise=args.latent_noise))
        refine_codec(args.codec, args.out, config, data=args.data, size=args.size)
    except DataError as err:
        raise SystemExit(f"--data: {err}") from None
    return 0


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------

def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="stream a video from a prompt (and prompt switches) to a file",
                       description="Stream text-to-video with the moving buffer and write frames to FILE as "
                                   "they are produced. FILE ends in .mp4, .webm or .gif, or in / for a folder "
                                   "of numbered PNGs.")
    p.add_argument("--prompt", required=True, help='e.g. "a red circle moving left on a black background"')
    p.add_argument("--switch", nargs=2, action="append", default=[], metavar=("SECONDS", "PROMPT"),
                   help="switch to PROMPT at SECONDS of video, e.g. 4 or 4.5s (repeatable)")
    p.add_argument("--switch-mode", choices=("immediate", "blend", "chunk"), default="immediate",
                   help="immediate: every buffered frame sees the new prompt at once (the paper); blend: over "
                        "--blend-calls model calls; chunk: only frames from SECONDS on (a sharp cut)")
    p.add_argument("--blend-calls", type=_positive(int), default=4, help="model calls a blended switch takes")
    p.add_argument("--guided-calls", type=_count, default=6,
                   help="model calls after each switch that a distilled model makes at its teacher's guidance, "
                        "which keeps its subject (default 6; 0: only a blend's)")
    p.add_argument("--no-redraw", action="store_true",
                   help="immediate switches: let the partly formed frames finish from where they were instead of "
                        "redrawing them from noise under the new prompt (which keeps their background clean)")
    p.add_argument("--seconds", type=_positive(float), default=10.0, help="video length (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output file (.mp4 .webm .gif) or folder ending in /")
    p.add_argument("--model", type=Path, default=None, help=_MODEL_HELP)
    p.add_argument("--chunk", type=_positive(int), default=2,
                   help="latent frames per chunk c (default 2); the model's recommended reference frames K "
                        "(2 for the embedded models) stay in the buffer when c divides the rest of it")
    p.add_argument("--steps", type=_positive(int), default=None,
                   help="denoising steps per frame T = s*N (default: N, one per chunk, for a distilled student "
                        "such as the embedded default; 16 otherwise)")
    p.add_argument("--cold-start", action="store_true", help="start from a noise buffer instead of a warm start")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's recommendation; 1 = none)")
    p.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--fast", choices=("auto", "compile", "off"), default="auto",
                   help="auto: bf16 with CUDA graphs on a GPU, the plain model on a CPU; compile: auto plus "
                        "torch.compile (slower start, see BENCHMARKS.md); off: the plain fp32 model")
    p.set_defaults(run=_run_generate)


def _fast_path(choice: str, device: str):
    """``--fast`` -> the ``fast`` argument of :meth:`Pipeline.load`."""
    if choice != "compile":
        return None if choice == "off" else "auto"
    import dataclasses

    from .accel import FastPath
    from .pipeline import resolve_device

    return dataclasses.replace(FastPath.auto(resolve_device(device)), compile=True)


def _run_generate(args) -> int:
    from tqdm.auto import tqdm

    from . import Pipeline, PromptSchedule, PromptSwitch, Runtime, open_writer

    entries = [(0.0, args.prompt)]
    for seconds, prompt in args.switch:
        try:
            t = _seconds(seconds)
        except ValueError as err:
            raise SystemExit(f"--switch {seconds} {prompt!r}: {err}") from None
        if not 0 < t < args.seconds:
            raise SystemExit(f"--switch {seconds} {prompt!r}: the time must be inside the video (0, {args.seconds:g}) s")
        entries.append((t, prompt))
    try:
        schedule = PromptSchedule(tuple(sorted(entries)))
    except ValueError as err:
        raise SystemExit(f"bad prompts: {err}") from None
    try:
        writer = open_writer(args.out, 16)  # checks the path before any work; fps is set below
    except ValueError as err:
        raise SystemExit(f"--out: {err}") from None
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise SystemExit(f"--guidance must be a finite number >= 0, got {args.guidance}")
    pipe = Pipeline.load(args.model, device=args.device, fast=_fast_path(args.fast, args.device))
    guidance = pipe.guidance if args.guidance is None else args.guidance
    for _, prompt in schedule.entries:
        unknown = pipe.unknown_words(prompt)
        if unknown:
            print(f"warning: this model never saw the words {', '.join(repr(w) for w in unknown)} (in {prompt!r}); "
                  "the embedded model knows one small world: 'a <color> <shape> moving <direction> on a "
                  "<background> background' (see its model card)", file=sys.stderr)
    writer.fps = Fraction(pipe.fps)  # the container opens on the first frame
    try:
        partition = pipe.default_partition(args.chunk, args.steps)
    except ValueError as err:
        raise SystemExit(f"bad partition: {err}") from None
    total = max(1, round(args.seconds * pipe.fps))
    t0 = time.perf_counter()
    first = None
    written = 0
    session = pipe.session(schedule.at(0), partition, seed=args.seed, guidance=guidance,
                           switch=PromptSwitch(args.switch_mode, args.blend_calls, guided_calls=args.guided_calls,
                                              redraw=not args.no_redraw))
    runtime = Runtime(session, schedule)  # denoising and decoding on their own threads
    try:
        with writer, tqdm(total=total, desc="generating", unit="frame") as bar:
            opening = session.start(not args.cold_start)
            for chunk in runtime.video(total, opening):
                writer.write(chunk.frames)
                written = writer.frames_written
                if first is None:
                    first = time.perf_counter() - t0
                bar.update(chunk.frames.shape[0])
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the writer has finished the file
        how = "SIGTERM" if isinstance(stop, Stopped) else "Ctrl-C"
        written = writer.frames_written  # a stop between two frames of a chunk: the frames the file holds
        if written == 0:
            print(f"generate: stopped by {how} before the first frame; nothing was written", file=sys.stderr)
        else:
            print(f"generate: stopped by {how}; wrote {written} frames ({written / pipe.fps:.2f} s at {pipe.fps} fps) "
                  f"to {writer.path}", file=sys.stderr)
        return 143 if isinstance(stop, Stopped) else 130
    wall = time.perf_counter() - t0
    path = writer.close()
    stats = runtime.stats
    print(f"wrote {written} frames ({written / pipe.fps:.2f} s at {pipe.fps} fps) to {path}")
    print(f"{written / wall:.1f} frames/s ({wall:.2f} s wall, device {pipe.device}), "
          f"time to first frame {first:.3f} s, {session.calls} model calls")
    print(f"median {stats.median_call_ms:.1f} ms per model call, {stats.median_decode_ms:.1f} ms per chunk decode; "
          f"stalls: denoise {stats.denoise_stalls}, decode {stats.decode_stalls}, waiting for frames {stats.consumer_waits}")
    return 0

# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------

_TABLE_KEYS = [("color", "color"), ("shape", "shape"), ("direction", "direction"), ("background", "backgr."),
               ("subject_consistency", "subject cons."), ("background_consistency", "backgr. cons."),
               ("temporal_flickering", "temp. flicker"), ("motion_smoothness", "motion smooth."),
               ("dynamic_degree", "dynamic deg."), ("speed", "speed"), ("mean_speed", "px/frame"),
               ("outline_error", "outline err."),
               ("one_subject", "one subject"), ("teleports", "teleports"), ("noisy_frames", "noisy frames")]

_SEED_KEYS = ("color", "shape", "direction", "background", "motion_smoothness", "one_subject")


def _add_evaluate(sub) -> None:
    from .world.evaluate import SCHEMES

    p = sub.add_parser("evaluate", help="score a model on the held-out combinations of the synthetic world",
                       description="Stream every held-out scene with each inference scheme and print adherence "
                                   "(color, shape, direction, background read from pixels) and VBench-style "
                                   "scores; then a long-stream drift check and prompt-switch checks.")
    p.add_argument("--model", type=Path, default=None, help=_MODEL_HELP)
    p.add_argument("--schemes", default=",".join(SCHEMES),
                   help=f"comma-separated, from {', '.join(SCHEMES)}, or any streamdit-cC or streamdit-cC-kK "
                        "(c = C frames per chunk, K clean reference frames)")
    p.add_argument("--seconds", type=_positive(float), default=4.0, help="video per scene and scheme (default 4)")
    p.add_argument("--steps", type=_positive(int), default=None,
                   help="denoising steps per frame T for every scheme (default: each scheme gets the model calls "
                        "per frame of the model's own partition: one call per chunk of 2 for a distilled student, "
                        "T = 16 at c = 2 otherwise)")
    p.add_argument("--scenes", type=_positive(int), default=None,
                   help="use N held-out scenes, stratified over the attributes (default all 96)")
    p.add_argument("--drift-seconds", type=float, default=120.0, help="long-stream length; 0 skips the drift check")
    p.add_argument("--drift-scenes", type=int, default=8, help="scenes in the drift check")
    p.add_argument("--switch-scenes", type=int, default=24, help="scenes per switched attribute; 0 skips")
    p.add_argument("--switch-modes", default="immediate,blend,chunk",
                   help="prompt switch modes to check (comma-separated, from immediate, blend, chunk)")
    p.add_argument("--codec-scenes", type=int, default=24,
                   help="scenes in the codec round trip (source clips encoded and decoded); 0 skips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=_positive(int), default=1,
                   help="stream the scheme table and the drift check with N seeds (--seed, --seed+1, ...; each "
                        "as that --seed alone would) and report the means beside each seed's figures; the seams, "
                        "switch and codec checks use --seed (default 1)")
    p.add_argument("--batch", type=_positive(int), default=32, help="streams run side by side")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's recommendation; 1 = none)")
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    import dataclasses
    import json

    from .pipeline import Pipeline
    from .world import held_out_scenes
    from .prompts import SWITCH_MODES, PromptSwitch
    from .world.evaluate import codec_round_trip, compare_schemes, drift, prompt_switch, scheme_partition, seams

    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    pipe = Pipeline.load(args.model, device=args.device)
    try:
        for name in schemes:  # names it does not know, and chunk sizes that do not fit the buffer
            scheme_partition(name, pipe.geometry.buffer_frames, 16)
    except ValueError as err:
        raise SystemExit(f"--schemes: {err}") from None
    g = pipe.guidance if args.guidance is None else args.guidance
    modes = [m.strip() for m in args.switch_modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in SWITCH_MODES]
    if bad:
        raise SystemExit(f"unknown switch modes {bad}; choose from {', '.join(SWITCH_MODES)}")
    scenes = held_out_scenes(args.scenes)
    report: dict = {"model": str(pipe.path), "scenes": len(scenes), "seconds": args.seconds, "steps": args.steps,
                    "guidance": g, "seeds": list(range(args.seed, args.seed + args.seeds))}
    steps = "the model's" if args.steps is None else args.steps
    seeds = f"seed {args.seed}" if args.seeds == 1 else f"seeds {args.seed}..{args.seed + args.seeds - 1} (means)"
    print(f"model {pipe.path}: {len(scenes)} held-out scenes, {args.seconds:g} s each, T={steps}, guidance {g:g}, "
          f"{seeds}")
    results = compare_schemes(pipe, schemes, scenes, args.seconds, args.steps, args.seed, args.batch, guidance=g,
                              seeds=args.seeds)
    head = "| scheme | K,N,c,s | model calls/frame | " + " | ".join(h for _, h in _TABLE_KEYS) + " |"
    print(head)
    print("|" + "---|" * (3 + len(_TABLE_KEYS)))
    for r in results:
        P = r.partition
        cells = " | ".join(f"{r.summary[k]:.3f}" for k, _ in _TABLE_KEYS)
        print(f"| {r.name} | {P.K},{P.N},{P.c},{P.s} | {r.calls_per_frame:.2f} | {cells} |")
    if args.seeds > 1:
        print("each seed (spread = largest - smallest):")
        for r in results:
            print(f"  {r.name}: " + "; ".join(
                f"{k} " + " ".join(f"{s[k]:.3f}" for s in r.per_seed) + f" (spread {r.spread(k):.3f})"
                for k in _SEED_KEYS))
    report["schemes"] = [{"name": r.name, "partition": dataclasses.asdict(r.partition),
                          "calls_per_frame": r.calls_per_frame, "seconds": r.seconds, **r.summary,
                          "per_seed": [{"seed": s["seed"], **{k: s[k] for k in _SEED_KEYS}} for s in r.per_seed]}
                         for r in results]
    seam = seams(pipe, held_out_scenes(min(16, len(scenes))), seed=args.seed, guidance=g)
    print(f"seams (c=2, {seam.chunk_frames} frames per chunk; boundary change / inside change, 1 = none): "
          f"overlap decoding {seam.overlap:.3f}, chunks decoded alone {seam.separate:.3f}")
    report["seams"] = dataclasses.asdict(seam)
    if args.drift_seconds > 0 and args.drift_scenes > 0:
        d = drift(pipe, held_out_scenes(args.drift_scenes), args.drift_seconds, seed=args.seed, guidance=g,
                  seeds=args.seeds)
        over = f", {seeds}" if args.seeds > 1 else ""
        print(f"drift over {args.drift_seconds:g} s ({args.drift_scenes} scenes, c=2{over}): first 10 s vs last 10 s")
        for k in ("color", "shape", "direction", "background", "speed", "one_subject", "subject_present", "brightness"):
            each = "" if args.seeds == 1 else "   (" + ", ".join(
                f"{s['first'][k]:.3f} -> {s['last'][k]:.3f}" for s in d.per_seed) + ")"
            print(f"  {k:16s} {d.first[k]:.3f} -> {d.last[k]:.3f}{each}")
        report["drift"] = dataclasses.asdict(d)
    if args.switch_scenes > 0 and modes:
        print(f"prompt switch at 3 s ({args.switch_scenes} scenes per attribute, c=2):")
        report["switch"] = []
        for mode in modes:
            for attribute in ("color", "shape", "direction", "background"):
                r = prompt_switch(pipe, held_out_scenes(args.switch_scenes), attribute, seed=args.seed, guidance=g,
                                  switch=PromptSwitch(mode))
                print(f"  {mode:9s} {attribute:10s} switched {r.switched:.3f}, within 2 s {r.within_2s:.3f}, "
                      f"mean latency {r.latency:.2f} s, other attributes kept {r.kept:.3f}, "
                      f"noisy frames after {r.noisy:.3f} (noisiest {r.noise:.3f})"
                      + ("" if r.stray is None else f", a third {attribute} on the way {r.stray:.3f}"))
                report["switch"].append(dataclasses.asdict(r))
    if args.codec_scenes > 0:
        c = codec_round_trip(pipe.codec, held_out_scenes(args.codec_scenes), seed=args.seed)
        keys = ("color", "shape", "direction", "background", "speed", "one_subject", "motion_smoothness")
        print(f"codec round trip ({c.clips} clips of 2 s): "
              + ", ".join(f"{k} {c.source[k]:.3f} -> {c.decoded[k]:.3f}" for k in keys))
        print(f"  mean absolute error: within 3 px of the outline {c.edge_error:.4f}, inside {c.inside_error:.4f}, "
              f"background {c.background_error:.4f}; background noise {c.steady_noise:.4f}, "
              f"{c.switch_noise:.4f} on the first frame after a background change")
        report["codec"] = dataclasses.asdict(c)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0

# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------

def _partition(text: str) -> tuple[int, int, int, int]:
    try:
        K, N, c, s = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a partition is K,N,c,s (four integers, e.g. 0,8,2,1), got {text!r}") from None
    return K, N, c, s


def _add_bench(sub) -> None:
    from .bench import BENCH_PRESETS

    p = sub.add_parser("bench", help="measure model calls, FLOPs, variants, decoding and streaming FPS",
                       description="Time a StreamDiT's model calls on this device for each fast-path variant "
                                   "(window/full attention, eager/compile, CUDA graphs, fp32/bf16/fp8), count "
                                   "FLOPs against the measured matmul peak, time the codec per chunk, then "
                                   "stream through the runtime with the fastest variant (FPS with decoding, "
                                   "time to first frame, peak memory).")
    p.add_argument("--preset", default="paper-mini", choices=sorted(BENCH_PRESETS),
                   help="a shape with random weights (default paper-mini; paper-4b is the paper's 512x512 model)")
    p.add_argument("--model", action="append", default=None,
                   help="a StreamDiT checkpoint (or embedded / embedded-teacher) to bench instead of a preset, with its "
                        "own codec and text encoder; repeat it to compare models in one run (e.g. "
                        "--model embedded-teacher --model embedded)")
    p.add_argument("--partition", type=_partition, default=None, metavar="K,N,c,s",
                   help="buffer partition (default: the preset's, or the checkpoint's: c=2 with one step per chunk "
                        "for a distilled student, T=16 otherwise)")
    p.add_argument("--variants", default=None,
                   help="comma-separated ATTENTION/RUN/PRECISION rows, e.g. window/eager/fp32,window/compile/fp32 "
                        "(default: the full table for the device)")
    p.add_argument("--calls", type=_positive(int), default=20, help="timed calls per variant (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls after the first (default 3)")
    p.add_argument("--stream-frames", type=int, default=64, help="video frames to stream end to end (0 skips; default 64)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: none for presets, the checkpoint's otherwise)")
    p.add_argument("--threaded", action=argparse.BooleanOptionalAction, default=None,
                   help="run the stream's decoder on its own thread (default: on CUDA only)")
    p.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=_positive(int), default=None, help="CPU threads for torch")
    p.add_argument("--decoder-only", action="store_true",
                   help="time only the codec, --calls chunks in a row (the decoder-cost line; no model is built)")
    p.add_argument("--contention", action="store_true",
                   help="measure the stream's CPU thread policies (auto, 1, 2 threads) on quiet cores and beside a "
                        "competing 2-thread job started for the purpose, --stream-frames each, three times")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    import torch

    from .accel import FastPath, accelerate
    from .bench import (checkpoint_subject, default_variants, format_comparison, format_contention, format_decoder,
                        format_report, measure_contention, measure_decoder, parse_variant, preset_subject, run_bench)
    from .pipeline import resolve_device
    from .schedule import Partition

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        variants = [parse_variant(v) for v in args.variants.split(",")] if args.variants else default_variants(device)
        partition = Partition(*args.partition) if args.partition else None
        if args.model:
            subjects = [checkpoint_subject(m, device, partition, args.guidance) for m in args.model]
        else:
            subjects = [preset_subject(args.preset, device, partition)]
            if args.guidance is not None:
                subjects[0].guidance = args.guidance
        reports = []
        for subject in subjects:
            if args.decoder_only:
                print(format_decoder(subject.name, device, measure_decoder(subject, device, args.calls)))
                continue
            if args.contention:
                if device.type != "cpu":
                    raise ValueError("--contention measures CPU thread policies; run it with --device cpu")
                velocity = accelerate(subject.build_model(subject.config, device), FastPath())
                rows = measure_contention(subject, velocity, device, max(16, args.stream_frames),
                                          log=lambda line: print(line, file=sys.stderr, flush=True))
                print(f"{subject.name}: {max(16, args.stream_frames)} frames per stream, {torch.get_num_threads()} "
                      f"torch threads by default\n" + format_contention(rows))
                continue
            reports.append(run_bench(subject, device, variants, calls=args.calls, warmup=args.warmup,
                                     stream_frames=args.stream_frames, threaded=args.threaded,
                                     log=lambda line: print(line, file=sys.stderr, flush=True)))
    except ValueError as err:
        raise SystemExit(f"bench: {err}") from None
    print("\n\n".join(format_report(r) for r in reports))
    if len(reports) > 1:
        print("\n" + format_comparison(reports))
    if args.json and reports:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(reports[0].to_json() if len(reports) == 1 else
                             "[" + ",\n".join(r.to_json() for r in reports) + "]")
    return 0

# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streamdit_core",
                                     description="StreamDiT: streaming text-to-video with a moving-buffer DiT.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,train,distill,refine-codec,evaluate,bench}")
    _add_generate(sub)
    _add_train(sub)
    _add_distill(sub)
    _add_refine_codec(sub)
    _add_evaluate(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    previous = _on_sigterm()
    try:
        return args.run(args)
    except CheckpointError as err:  # a missing or foreign model file: say which and how to fix it
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt as stop:  # what a command keeps is on disk (train: --resume continues)
        how = "SIGTERM" if isinstance(stop, Stopped) else "Ctrl-C"
        print(f"{args.command}: stopped by {how}", file=sys.stderr)
        return 143 if isinstance(stop, Stopped) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun: frees what still holds the process group (a data-parallel wrapper's reducer
    freed after it aborts the interpreter's exit), then leaves the group."""
    dist = sys.modules.get("torch.distributed")  # a command that never imported it never joined a group
    if dist is not None and dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _on_sigterm():
    """SIGTERM raises :class:`Stopped` in the main thread; returns the handler it replaced
    (None when this is not the main thread, where handlers cannot be set)."""
    def stop(signum, frame):
        raise Stopped()

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
