"""A ready-to-stream model: StreamDiT + latent codec + text encoder, loaded from one checkpoint.

A StreamDiT checkpoint names its codec (``codec`` metadata: a file beside it) and its text
encoder (``text_encoder``); :meth:`Pipeline.load` resolves both, so ``Pipeline.load()`` gives
the embedded default model, offline, on the best available device. Two models are embedded: the
default, a distilled student that makes one unguided call per chunk (``"embedded"``), and the
guided multi-step teacher it was distilled from (``"embedded-teacher"``).

A :class:`Pipeline` starts streams: :meth:`Pipeline.session` (a
:class:`~streamdit_core.session.Session`, which the ComfyUI nodes drive), or
:meth:`Pipeline.frames`, a session that follows a :class:`~streamdit_core.prompts.PromptSchedule`
and yields decoded frames as they are produced.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from .accel import Accelerated, FastPath, accelerate
from .checkpoint import CheckpointError, file_metadata, load_checkpoint, load_codec, read_metadata
from .codec import PixelCodec
from .model import StreamDiT
from .prompts import PromptSchedule, PromptSwitch
from .schedule import Partition
from .text import TextEncoder
from .velocity import Geometry, placement

if TYPE_CHECKING:
    from .session import FrameChunk, Session

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "EMBEDDED_TEACHER", "Pipeline", "model_path", "resolve_device"]

_EMBEDDED_DIR = Path(__file__).resolve().parent / "weights" / "embedded"
DEFAULT_MODEL = _EMBEDDED_DIR / "model.safetensors"  # the distilled student: 1 unguided call per chunk
EMBEDDED_TEACHER = _EMBEDDED_DIR / "teacher.safetensors"  # its teacher: guidance 2, 16 steps per frame
EMBEDDED_MODELS = {"embedded": DEFAULT_MODEL, "embedded-teacher": EMBEDDED_TEACHER}
UNDISTILLED_STEPS = 16  # default denoising steps per frame T for a model that is not distilled


def model_path(model: str | os.PathLike | None = None) -> Path:
    """A checkpoint path from a path, an embedded model's name (``"embedded"``,
    ``"embedded-teacher"``) or None (the default model). Does not check that the file exists."""
    if model is None:
        return DEFAULT_MODEL
    name = os.fspath(model)
    if name in EMBEDDED_MODELS and not Path(name).exists():
        return EMBEDDED_MODELS[name]
    return Path(name)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto": CUDA when present, else CPU; otherwise the device named, checked to be
    usable here (a ValueError that says why not and what to use instead)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this torch build ({torch.__version__}) has no CUDA support; "
                             "use --device cpu (or auto), or install the torch build for your CUDA")
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible to torch; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu (or auto)")
    return dev


@dataclass
class Pipeline:
    """What a stream needs, on one device."""

    model: StreamDiT  # or any velocity model that states its Geometry (velocity.VelocityModel)
    codec: object  # a velocity.Codec
    text: TextEncoder
    fps: int
    path: Path | None = None
    guidance: float = 1.0  # the checkpoint's recommended classifier-free guidance scale
    accelerated: Accelerated | None = None  # the model on a fast path (see accelerate), or None
    # micro steps per chunk the checkpoint recommends: 1 for a distilled student, more for a teacher
    # that needs them (None: T = 16 over the buffer)
    steps_per_chunk: int | None = None
    # K the checkpoint recommends (its recommended_partition, or the reference_frames it was trained with)
    reference_frames: int = 0
    vocabulary: frozenset[str] | None = None  # every word the model was trained on, when it is known
    # The guidance a stream's warm start runs at when the stream's own is lower: a distilled
    # student's (its file's ``opening`` record, else its teacher's guidance from ``distilled``),
    # so the opening that every later frame continues keeps the subject (see
    # Streamer.warm_start). None: the stream's own.
    opening_guidance: float | None = None
    # Euler steps per chunk band of the warm start (the file's ``opening`` record); None: the
    # stream's default (T, and at least four per band).
    opening_steps_per_chunk: int | None = None
    # The model the warm start runs, when not this pipeline's own: a student's teacher, named by its
    # file's ``opening`` record (``"model"``, a file beside it) and loaded with it. A student
    # distilled for one call per chunk is a poor many-step sampler: streamed from its own guided
    # opening, one student drew lumpy circles that its reference frames then kept (model card).
    opening_model: object | None = None
    # The guidance of the calls that belong to a prompt switch (a blend's, and the first
    # PromptSwitch.guided_calls after any switch), when above the stream's own: a distilled
    # student's teacher guidance (its ``distilled`` record). Unguided, the texts between two
    # prompts lost the embedded student its subject in 7 of 24 held-out color blends (the
    # references it then left kept it lost); guided at 2, in 3, with fewer noisy frames after
    # background blends; an immediate color switch lost it in 2 of 24, guided in none (model
    # card). None: switches run at the stream's own guidance.
    switch_guidance: float | None = None

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of ``prompt`` the model never saw in training, in order (empty when its
        vocabulary is not known)."""
        if self.vocabulary is None:
            return []
        words = re.findall(r"[a-z]+(?:-[a-z]+)*", prompt.lower())
        return list(dict.fromkeys(w for w in words if w not in self.vocabulary))

    @property
    def velocity(self):
        """What streams call: the model on its fast path, or the model itself."""
        return self.model if self.accelerated is None else self.accelerated

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, fast: FastPath | str | None = "auto") -> "Pipeline":
        """Loads a StreamDiT checkpoint with its codec and text encoder (default: the embedded model).

        ``path``: a checkpoint file, or an embedded model's name (see :func:`model_path`).
        ``fast``: the :class:`~streamdit_core.accel.FastPath` streams run the model on;
        ``"auto"`` is :meth:`FastPath.auto` on CUDA (bf16 with CUDA graphs) and the plain model
        on a CPU; None is always the plain model.
        """
        path = model_path(path)
        if not path.exists():
            hint = (" (the embedded models ship with the package; reinstall it)" if path in EMBEDDED_MODELS.values()
                    else "; give the path of a .safetensors StreamDiT checkpoint, or "
                         + " / ".join(repr(n) for n in EMBEDDED_MODELS))
            raise CheckpointError(f"{path}: no such model file{hint}")
        dev = resolve_device(device)
        if file_metadata(path).get("format") == "comfyui-wan":  # a Wan model adapted by train --init wan:...
            return cls._load_wan(path, dev, dtype)
        meta = read_metadata(path)
        model = load_checkpoint(path, device=dev, dtype=dtype)
        codec_name = meta.get("codec", "pixel")
        if codec_name == "pixel":
            codec = PixelCodec()
        else:
            codec_path = Path(codec_name) if Path(codec_name).is_absolute() else path.parent / codec_name
            codec = load_codec(codec_path, device=dev)
        text = TextEncoder()  # the only encoder shipped; other folders can be passed to TextEncoder
        pipe = cls._from_metadata(model, codec, text, path, meta)
        opener = json.loads(meta.get("opening", "{}")).get("model")
        if opener is not None:
            pipe.opening_model = _opening_model(path, opener, meta, model, dev, dtype)
        if fast == "auto":
            fast = FastPath.auto(dev) if dev.type == "cuda" else None
        return pipe.accelerate(fast) if fast is not None else pipe

    @classmethod
    def _load_wan(cls, path: Path, dev: torch.device, dtype: torch.dtype | None) -> "Pipeline":
        """A Wan model adapted here (its file and the base folder it records): the base folder's
        VAE and text encoder (its ``text_encoder/``, else MiniLM), Wan's 16 fps."""
        from .recipes import wan_text_encoder
        from .wan import load_adapted_wan
        from .wan_vae import load_wan_vae

        model, meta = load_adapted_wan(path)
        base = Path(meta["init"][len("wan:"):])
        model = model.to(dev, dtype) if dtype is not None else model.to(dev)
        codec = load_wan_vae(base)
        codec.vae.to(dev)
        text = wan_text_encoder(base, None, model.config.text_dim)
        return cls._from_metadata(model.eval(), codec, text, path, meta)

    @classmethod
    def _from_metadata(cls, model, codec, text, path: Path, meta: dict[str, str]) -> "Pipeline":
        """The pipeline of a loaded model: fps, guidance, steps per chunk and vocabulary from its file."""
        recommended = json.loads(meta.get("recommended_partition", "{}"))
        distilled = json.loads(meta.get("distilled", "{}"))
        opening = {**({"guidance": distilled["guidance"]} if "guidance" in distilled else {}),
                   **json.loads(meta.get("opening", "{}"))}
        return cls(model, codec, text, int(meta.get("fps", "16")), path, float(meta.get("guidance", "1")),
                   steps_per_chunk=int(meta["steps_per_chunk"]) if "steps_per_chunk" in meta else None,
                   reference_frames=int(recommended.get("K", meta.get("reference_frames", 0))),
                   vocabulary=_vocabulary(meta),
                   opening_guidance=float(opening["guidance"]) if "guidance" in opening else None,
                   opening_steps_per_chunk=int(opening["steps_per_chunk"]) if "steps_per_chunk" in opening else None,
                   switch_guidance=float(distilled["guidance"]) if "guidance" in distilled else None)

    def accelerate(self, path: FastPath | None = None) -> "Pipeline":
        """Streams from now on run the model on ``path`` (default: the best for its device);
        the model is converted in place (dtype, fp8 layers). Returns self."""
        self.accelerated = accelerate(self.model, path)
        return self

    @property
    def device(self) -> torch.device:
        """Where streams run (:func:`~streamdit_core.velocity.placement` of the model)."""
        return placement(self.model)[0]

    @property
    def geometry(self) -> Geometry:
        """The model's :class:`~streamdit_core.velocity.Geometry` (buffer, channels, sizes, warp)."""
        return self.model.geometry

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(H, W)`` of the video frames at the model's own size."""
        f = getattr(self.codec, "space_factor", 1)
        return tuple(n * f for n in self.geometry.latent_size)

    @property
    def frames_per_latent(self) -> int:
        return self.codec.time_factor

    def default_steps(self, chunks: int) -> int:
        """Denoising steps per frame ``T`` this model expects with ``chunks`` chunks in its buffer:
        ``N x steps_per_chunk`` where the checkpoint says ``steps_per_chunk`` (1 for a distilled
        student's one call per chunk), 16 otherwise."""
        return chunks * self.steps_per_chunk if self.steps_per_chunk else UNDISTILLED_STEPS

    def default_steps_per_chunk(self, chunks: int) -> int:
        """Micro steps per chunk ``s`` for :meth:`default_steps` (at least 1)."""
        return max(1, round(self.default_steps(chunks) / chunks))

    def default_partition(self, chunk: int = 2, steps: int | None = None) -> Partition:
        """StreamDiT partition of this model's buffer: ``c = chunk``, ``T = steps`` (default:
        :meth:`default_steps_per_chunk` micro steps per chunk), with the checkpoint's recommended
        :attr:`reference_frames` K when ``chunk`` divides the rest of the buffer (and ``steps``
        splits evenly over its chunks), else K = 0."""
        B = self.geometry.buffer_frames
        K = self.reference_frames
        if not (0 < K < B and (B - K) % chunk == 0 and (steps is None or steps % ((B - K) // chunk) == 0)):
            K = 0
        if steps is None:
            return Partition.streamdit(B, chunk, s=self.default_steps_per_chunk(max(1, (B - K) // chunk)), K=K)
        return Partition.streamdit(B, chunk, T=steps, K=K)

    def encode(self, prompts: str | Sequence[str]):
        return self.text.encode(prompts).to(self.device)

    def session(self, prompt: str | Sequence[str], partition: Partition | None = None, **kwargs) -> "Session":
        """A :class:`~streamdit_core.session.Session` on this model (see there for the arguments)."""
        from .session import Session  # sessions sit above the loader; this is a shortcut down to them

        return Session(self, prompt, partition, **kwargs)

    def frames(self, schedule: PromptSchedule | str, partition: Partition | None = None, seed: int = 0,
               warm_start: bool = True, batch: int = 1, overlap: bool = True,
               schedules: Sequence[PromptSchedule] | None = None, guidance: float = 1.0,
               switch: PromptSwitch | None = None, frames: int | None = None) -> Iterator[FrameChunk]:
        """Streams decoded frames: ``frames`` video frames, or for ever (stop iterating to stop).

        Args:
            schedule: the prompt schedule (or one prompt).
            partition: default :meth:`default_partition`.
            warm_start: start with the uniform trajectory (paper Fig. 13), so the first frames
                are fully denoised; otherwise start from a noise-filled buffer.
            batch: streams run side by side (all with the same schedule unless ``schedules``
                gives one per stream). Frames of stream i are ``frames[i]`` when batch > 1.
            overlap: seam-free chunk decoding (False: each chunk decoded alone, for comparison).
            guidance: classifier-free guidance scale (1: none; each call then runs both
                branches in one batched call, see :class:`~streamdit_core.guidance.Guided`).
            switch: how scheduled prompt changes apply (default: immediately, as in the paper).
                Immediate and blended switches start when the next frame to leave the buffer
                reaches the switch time; a per-chunk switch conditions the frames from the
                switch time on, from the moment they enter.
            frames: video frames to make (the last chunk is cut to fit); None: endless.
        """
        from .runtime import Runtime
        from .session import Session

        if isinstance(schedule, str):
            schedule = PromptSchedule.single(schedule)
        schedules = list(schedules) if schedules is not None else [schedule] * batch
        if len(schedules) != batch:
            raise ValueError(f"need {batch} prompt schedules, got {len(schedules)}")
        session = Session(self, [s.at(0) for s in schedules], partition, seed=seed, guidance=guidance,
                          batch=batch, overlap=overlap, switch=switch)
        opening = session.start(warm_start)  # K > 0: the reference frames open the video
        yield from Runtime(session, schedules, threaded=False).video(frames, opening)




def _vocabulary(meta: dict[str, str]) -> frozenset[str] | None:
    """The words a checkpoint was trained on: its ``vocabulary`` metadata (words separated by
    spaces), or the synthetic world's words for a model of that world; None when unknown."""
    if "vocabulary" in meta:
        return frozenset(meta["vocabulary"].split())
    if meta.get("world") == "shapes-64":
        from .world import VOCABULARY

        return VOCABULARY
    return None


def _opening_model(path: Path, name: str, meta: dict[str, str], model, dev, dtype):
    """The model a student's opening names (a checkpoint beside it), checked to stream its buffers."""
    opener = path.parent / name
    if not opener.exists():
        raise CheckpointError(f"{path} opens its streams with {name}, which is not beside it in {path.parent}: "
                              f"copy the teacher there (distill --opening-model teacher writes it)")
    def codec_of(file: Path, entry: str | None):  # the codec file a checkpoint names, or "pixel"
        return "pixel" if entry in (None, "pixel") else (file.parent / entry).resolve()

    if codec_of(opener, read_metadata(opener).get("codec")) != codec_of(path, meta.get("codec")):
        raise CheckpointError(f"{opener} works on another codec than {path}: an opening model must share its latents")
    loaded = load_checkpoint(opener, device=dev, dtype=dtype)
    g, h = loaded.geometry, model.geometry
    if (g.buffer_frames, g.in_channels, tuple(g.latent_size)) != (h.buffer_frames, h.in_channels, tuple(h.latent_size)):
        raise CheckpointError(f"{opener} streams another buffer than {path}: an opening model must match it")
    return loaded.eval()
