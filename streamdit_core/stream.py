"""The moving buffer: StreamDiT inference over any velocity model.

A :class:`Streamer` holds ``B`` latent frames ``[b, C, B, H, W]`` whose noise levels rise from
the output end (frame 0) to the input end. Each :meth:`Streamer.step` is one model call that
moves every chunk one micro step down its band. After ``s`` calls the oldest chunk is clean: its
``c`` frames leave as an :class:`EmittedChunk`, the other chunks move one band down, and ``c``
fresh frames enter at the top. ``K`` clean reference frames (the last frames emitted) sit at the
output end as context and are never changed by a step.

The velocity protocol is ``model(x [b, C, B, H, W], sigma [b, B], text) -> v`` like x; ``text``
is handed to the model untouched, and may be replaced between any two calls (prompt switch).
A switch can also be per chunk (``set_text(text, entering_only=True)``): the new text then
conditions only the chunks that enter after it, and each call gets a
:class:`~streamdit_core.conditioning.FrameText` (one prompt per buffer frame) until the frames from
before the switch have left; or blended (``set_text(text, blend_calls=n)``): the embedding moves
to the new text over ``n`` calls. The conditioning, a switch in progress included, is a
:class:`~streamdit_core.prompts.PromptState` inside the :class:`StreamState`, so a snapshot
continues a switch exactly.

Noise is drawn on the CPU from the stream's own generator, in this order: one
``randn([b, C, B, H, W])`` per buffer fill (the constructor's cold fill, then any later
``reset``, ``warm_start`` or ``fill_video``), then one ``randn([b, C, c, H, W])`` per admitted
chunk, and, at the first call after an immediate switch that redraws (``set_text(text,
redraw=True)``), one ``randn([b, C, n, H, W])`` for the ``n`` partly formed frames it noises back
up to the level chunks enter at. So a seed gives the same stream on every device, and a plain
Euler sampler can reproduce it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from .prompts import PromptState
from .schedule import IDENTITY, Partition, SigmaWarp, add_noise, euler_step, frame_sigma_table
from .velocity import geometry_of, placement

__all__ = ["Streamer", "StreamState", "EmittedChunk", "StreamError", "shift_buffer"]

VelocityFn = Callable[[Tensor, Tensor, Any], Tensor]  # model(x, sigma, text) -> v (see velocity.py)


class StreamError(RuntimeError):
    """A stream asked to do something its state cannot (nothing already emitted is lost)."""


@dataclass(frozen=True)
class EmittedChunk:
    """Clean frames leaving the buffer.

    Attributes:
        latents: ``[b, C, c, H, W]``.
        index: absolute index of the first frame in the stream (frames count from 0 in order).
        calls: model calls made by the stream when these frames left.
    """

    latents: Tensor
    index: int
    calls: int

    @property
    def frames(self) -> int:
        return self.latents.shape[2]


@dataclass
class StreamState:
    """Everything a stream needs to continue: inspect it, clone it, resume from it.

    Attributes:
        partition: the buffer layout (K, N, c, s).
        warp: the sigma warp of the schedule.
        scale: grid scale in (0, 1]: 1 for text-to-video, the strength for video-to-video.
        x: the buffer ``[b, C, B, H, W]``; frame 0 is the output end.
        step: micro step within the current cycle, ``0..s-1``.
        calls: model calls so far.
        frame_index: int64 ``[B]``, the absolute stream index of the frame in each slot
            (-1 for a reference slot that holds no emitted frame yet).
        next_index: the index the next admitted frame will get.
        source: clean latents ``[b, C, n, H, W]`` queued for video-to-video admission, or None.
        generator: the CPU generator all noise is drawn from.
        prompt: the conditioning, a prompt switch in progress included.
    """

    partition: Partition
    warp: SigmaWarp
    scale: float
    x: Tensor
    step: int
    calls: int
    frame_index: Tensor
    next_index: int
    source: Tensor | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)
    prompt: PromptState = field(default_factory=PromptState)

    def clone(self) -> "StreamState":
        """A deep copy, generator included: continuing it never touches the original."""
        gen = torch.Generator()
        gen.set_state(self.generator.get_state())
        return StreamState(
            partition=self.partition,
            warp=self.warp,
            scale=self.scale,
            x=self.x.clone(),
            step=self.step,
            calls=self.calls,
            frame_index=self.frame_index.clone(),
            next_index=self.next_index,
            source=None if self.source is None else self.source.clone(),
            generator=gen,
            prompt=self.prompt.clone(),
        )

    @property
    def sigma(self) -> Tensor:
        """Per-frame noise level ``[B]`` (float64) the next call will see."""
        return frame_sigma_table(self.partition, self.warp, self.scale)[self.step]

    def tensors(self) -> list[Tensor]:
        """The tensors the state holds (a stream's whole memory besides the model)."""
        held = [self.x, self.frame_index, self.generator.get_state(), *self.prompt.tensors()]
        return held + ([] if self.source is None else [self.source])


def shift_buffer(x: Tensor, K: int, c: int, entering: Tensor) -> Tensor:
    """A buffer ``[b, C, B, H, W]`` after its cycle's shift: the ``c`` frames at sigma 0 (after the
    ``K`` references) leave, the last ``K`` of references and leaving frames become the references,
    the rest move down and ``entering`` ``[b, C, c, H, W]`` comes in at the input end."""
    return torch.cat([x[:, :, c:K + c], x[:, :, K + c:], entering], dim=2)  # refs [c, K + c): K frames


class Streamer:
    """StreamDiT inference over a velocity model.

    Args:
        model: ``model(x [b, C, B, H, W], sigma [b, B], text) -> v``.
        partition: the buffer layout.
        latent_shape: ``(C, H, W)`` of one latent frame.
        text: conditioning handed to the model (replace it with :meth:`set_text`).
        batch: streams sampled side by side.
        warp: the sigma warp; default: the model's geometry's, else identity.
        seed: seeds the stream's CPU generator.
        device, dtype: of the buffer; default: :func:`~streamdit_core.velocity.placement` (the
            model's device, CPU float32 for a bare field; a low-precision model still gets a
            float32 buffer unless dtype says otherwise).
        switch_model: what the calls that belong to a prompt switch run (every call of a blend,
            and the ``guided_calls`` after any switch, :meth:`set_text`; default: ``model``); a
            distilled student's sessions give it the student guided at its teacher's scale
            (:attr:`~streamdit_core.pipeline.Pipeline.switch_guidance`).

    The buffer starts as pure noise at each chunk's level (a cold start: frames that begin in a
    lower band were never denoised from sigma 1, so the first ``N - 1`` chunks out are rough).
    Call :meth:`warm_start` for a clean start, or :meth:`fill_video` for video-to-video.
    """

    def __init__(
        self,
        model: VelocityFn,
        partition: Partition,
        latent_shape: tuple[int, int, int],
        *,
        text: Any = None,
        batch: int = 1,
        warp: SigmaWarp | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        switch_model: VelocityFn | None = None,
    ):
        if not isinstance(partition, Partition):
            raise TypeError(f"partition must be a Partition, got {type(partition).__name__}")
        if len(latent_shape) != 3 or any(int(n) < 1 for n in latent_shape):
            raise ValueError(f"latent_shape must be (C, H, W) of positive sizes, got {tuple(latent_shape)}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if warp is None:
            geometry = geometry_of(model)
            warp = IDENTITY if geometry is None else geometry.warp
        self.model = model
        self.switch_model = switch_model
        self.device, self.dtype = placement(model, device, dtype)
        self.latent_shape = tuple(int(n) for n in latent_shape)
        self.batch = batch
        empty = torch.empty(0)
        self.state = StreamState(
            partition=partition, warp=warp, scale=1.0, x=empty, step=0, calls=0,
            frame_index=empty, next_index=0, generator=torch.Generator().manual_seed(seed),
            prompt=PromptState(text),
        )
        self.reset()

    # ---------------------------------------------------------------------------------- setup

    @classmethod
    def resume(cls, model: VelocityFn, state: StreamState, switch_model: VelocityFn | None = None) -> "Streamer":
        """A streamer that continues ``state`` (which it then owns; clone it to keep a copy),
        its conditioning and any prompt switch in progress included."""
        C, H, W = state.x.shape[1], state.x.shape[3], state.x.shape[4]
        self = cls.__new__(cls)
        self.model = model
        self.switch_model = switch_model
        self.device = state.x.device
        self.dtype = state.x.dtype
        self.latent_shape = (C, H, W)
        self.batch = state.x.shape[0]
        self.state = state
        self._build_table()
        return self

    @property
    def partition(self) -> Partition:
        return self.state.partition

    @property
    def text(self) -> Any:
        """The prompt in force (what entering chunks get; see :meth:`set_text`)."""
        return self.state.prompt.text

    def _noise(self, gen: torch.Generator, frames: int) -> Tensor:
        C, H, W = self.latent_shape
        eps = torch.randn((self.batch, C, frames, H, W), generator=gen)  # [b, C, frames, H, W]
        return eps.to(device=self.device, dtype=self.dtype)

    def _build_table(self) -> None:
        """Caches the cycle's ``[s+1, B]`` levels in the buffer's device and dtype."""
        st = self.state
        self._table = frame_sigma_table(st.partition, st.warp, st.scale).to(device=self.device, dtype=self.dtype)

    def _restart(self, x: Tensor, scale: float, refs_are_frames: bool) -> EmittedChunk | None:
        """Installs a new buffer at step 0 and numbers its frames.

        With ``refs_are_frames`` the ``K`` reference slots hold the video's first frames
        (indices ``0..K-1``, returned as a chunk) and the chunks count on from ``K``; otherwise
        reference slots hold no frame (-1) and the chunks count from 0.
        """
        st, K, B = self.state, self.partition.K, self.partition.B
        st.x, st.step, st.source, st.scale = x, 0, None, float(scale)
        st.prompt.refilled()
        self._build_table()
        first = K if refs_are_frames else 0
        refs = torch.arange(K) if refs_are_frames else torch.full((K,), -1)
        st.frame_index = torch.cat([refs, torch.arange(first, first + B - K)])
        st.next_index = first + B - K
        if refs_are_frames and K:
            return EmittedChunk(latents=x[:, :, :K].clone(), index=0, calls=st.calls)
        return None

    def set_text(self, text: Any, entering_only: bool = False, blend_calls: int = 0, settle: float = 0.0,
                 guided_calls: int = 0, redraw: bool = False) -> int:
        """Replaces the conditioning from the next call on (a prompt switch).

        Args:
            text: the new conditioning.
            entering_only: a per-chunk switch: frames already in the buffer keep the text they
                entered with, and only chunks admitted from now on get ``text`` (both must be
                :class:`~streamdit_core.conditioning.TextEmbedding`, and the model must accept
                :class:`~streamdit_core.conditioning.FrameText`).
            blend_calls: a blended switch: the embedding moves from the current text to ``text``
                over this many model calls (both :class:`~streamdit_core.conditioning.TextEmbedding`);
                0 switches at once.
            settle: an immediate or blended switch leaves the frames whose noise level is already
                at or below this on the text they had (see :class:`~streamdit_core.prompts.PromptSwitch`).
            guided_calls: the next calls, whatever the mode, run ``switch_model`` (a blend's calls
                always do; see :attr:`~streamdit_core.prompts.PromptSwitch.guided_calls`).
            redraw: an immediate switch: the next call first noises the frames that switch
                while partly formed (noise level above 0 and below the level chunks enter at) back
                up to that level, from the stream's generator, and steps them from there (see
                :attr:`~streamdit_core.prompts.PromptSwitch.redraw`).

        Returns the buffer position of the first frame that sees ``text`` (0: the whole buffer).
        """
        keep = 0
        if settle > 0 and not entering_only:
            # at or below: a chunk whose band starts exactly at ``settle`` (the output chunk of the
            # embedded default, K = 2, N = 3 under the shift-2 warp, sits at 0.5 when a switch comes)
            # has as little left to do as one below it
            keep = int((self.state.sigma <= settle + 1e-6).sum())  # noise rises from the output end
        try:
            self.state.prompt.switch(text, self.partition.B, entering_only, blend_calls, keep=keep,
                                     guided_calls=guided_calls, redraw=redraw)
        except ValueError as err:
            raise StreamError(f"{err}. The stream is unchanged.") from None
        if entering_only:
            return self.partition.B
        return keep if self.state.prompt.slots is not None else 0

    def conditioning(self) -> Any:
        """What the next call hands the model: the text; during a blend, its next step; a
        FrameText while frames from before a per-chunk switch are still in the buffer."""
        return self.state.prompt.for_call()

    def reset(self, text: Any = None) -> None:
        """Cold start: a new noise buffer at each chunk's level, zero reference frames.

        See the class note: the first ``N - 1`` chunks out were never denoised from sigma 1.
        """
        if text is not None:
            self.set_text(text)
        x = self._noise(self.state.generator, self.partition.B)
        x[:, :, :self.partition.K] = 0
        self._restart(x, 1.0, refs_are_frames=False)

    @torch.no_grad()
    def warm_start(self, text: Any = None, steps: int | None = None, model: VelocityFn | None = None) -> EmittedChunk | None:
        """Starts the stream from uniform sampling of the whole buffer (the paper's Fig. 13).

        Runs ``steps`` Euler steps of ordinary text-to-video over all ``B`` frames (default
        ``T``, and at least four per chunk band; must be a multiple of ``N``) and caches, for
        chunk ``j``, its frames at the moment the shared level reaches that chunk's starting
        level; reference frames take the clean result. Uses ``steps - steps / N`` calls (all
        ``steps`` when ``K > 0``) of ``model`` (default: the stream's own; e.g. a guided one for
        a distilled student, see :attr:`~streamdit_core.pipeline.Pipeline.opening_guidance`).
        The stream is unchanged until the last call returns; a video-to-video stream becomes
        text-to-video.

        A stream that opens without its subject stays without it: the reference frames and every
        chunk after them agree on the empty background. The fourth-generation embedded student
        (K = 2, N = 3) opened so in 15 of 384 held-out streams with two steps per band, in 8 with
        four, and in none with four guided steps at its teacher's guidance; the sixth generation
        in 8 of 768 at that opening and in 1 with eight steps per band at guidance 3; the seventh,
        opened by its teacher with eight steps per band, in 2 at guidance 2 and in none at guidance
        3 (its file's ``opening``, :attr:`~streamdit_core.pipeline.Pipeline.opening_steps_per_chunk`).

        Returns:
            the ``K`` clean reference frames, which open the video, or None when ``K = 0``.
        """
        if text is not None:
            self.set_text(text)
        P, st = self.partition, self.state
        steps = max(P.T, 4 * P.N) if steps is None else steps
        if steps < P.N or steps % P.N:
            raise ValueError(f"warm-start steps={steps} must be a multiple of N={P.N} so each chunk's level is on the grid")
        gen = torch.Generator()
        gen.set_state(st.generator.get_state())
        x = self._noise(gen, P.B)  # [b, C, B, H, W]
        u = torch.arange(steps, -1, -1, dtype=torch.float64) / steps  # [steps+1], 1 -> 0
        grid = st.warp(u).to(device=self.device, dtype=self.dtype)  # [steps+1]
        per_band = steps // P.N
        # Chunk j starts at u = (j+1)/N, which the shared level reaches after steps - (j+1) * per_band steps.
        start = {steps - (j + 1) * per_band: j for j in range(P.N)}
        last = steps if P.K else steps - per_band
        filled = x.clone()
        text = st.prompt.current()  # the whole buffer: one text
        for k in range(last + 1):
            if k in start:
                lo = P.K + start[k] * P.c
                filled[:, :, lo:lo + P.c] = x[:, :, lo:lo + P.c]
            if k < last:
                v = self._call(x, grid[k].expand(self.batch, P.B), text, model)
                x = euler_step(x, v, grid[k], grid[k + 1])
        filled[:, :, :P.K] = x[:, :, :P.K]
        st.generator = gen
        return self._restart(filled, 1.0, refs_are_frames=True)

    def fill_video(self, latents: Tensor, strength: float = 1.0, text: Any = None) -> EmittedChunk | None:
        """Video-to-video fill: noises clean latents to each chunk's level.

        With ``strength < 1`` the whole schedule shrinks to ``[0, strength]`` (before the warp):
        chunks keep that much of the source, and every later chunk must also come from source
        frames, queued with :meth:`feed`. The ``K`` reference slots take the first frames as
        they are; frame ``i`` of the source comes out as stream frame ``i``.

        Args:
            latents: clean latents ``[b, C, n, H, W]`` with ``n >= B`` (``b`` may be 1 to
                broadcast); frames beyond ``B`` are queued as if fed.
            strength: in (0, 1]; 1 keeps only what survives pure noise, that is nothing.
        Returns:
            the reference frames (the source's first ``K``), or None when ``K = 0``.
        """
        P = self.partition
        latents = self._check_source(latents)
        if latents.shape[2] < P.B:
            raise ValueError(
                f"video-to-video fill needs at least B={P.B} latent frames, got {latents.shape[2]}; "
                "pad the clip (repeat its last frame) or use a shorter buffer"
            )
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if text is not None:
            self.set_text(text)
        sigma = frame_sigma_table(P, self.state.warp, strength)[0].to(device=self.device, dtype=self.dtype)  # [B]
        eps = self._noise(self.state.generator, P.B)
        x = add_noise(latents[:, :, :P.B], eps, sigma.expand(self.batch, P.B))
        refs = self._restart(x, strength, refs_are_frames=True)
        rest = latents[:, :, P.B:]
        self.state.source = rest if rest.shape[2] else None
        return refs

    def feed(self, latents: Tensor) -> None:
        """Queues clean source latents ``[b, C, n, H, W]`` for the next admitted chunks."""
        latents = self._check_source(latents)
        st = self.state
        st.source = latents if st.source is None else torch.cat([st.source, latents], dim=2)

    def _check_source(self, latents: Tensor) -> Tensor:
        C, H, W = self.latent_shape
        if latents.dim() != 5 or latents.shape[0] not in (1, self.batch) or tuple(latents.shape[i] for i in (1, 3, 4)) != (C, H, W):
            raise ValueError(
                f"source latents must be [b={self.batch} or 1, C={C}, frames, H={H}, W={W}], got {list(latents.shape)}"
            )
        return latents.to(device=self.device, dtype=self.dtype).expand(self.batch, -1, -1, -1, -1)

    # ------------------------------------------------------------------------------ streaming

    def _call(self, x: Tensor, sigma: Tensor, text: Any, model: VelocityFn | None = None) -> Tensor:
        v = (self.model if model is None else model)(x, sigma, text)
        if not isinstance(v, Tensor) or v.shape != x.shape:
            got = list(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise StreamError(f"the velocity model returned {got} for latents {list(x.shape)}; it must return v like x")
        self.state.calls += 1
        return v.to(self.dtype)

    @torch.no_grad()
    def step(self) -> EmittedChunk | None:
        """One model call: every chunk moves one micro step down; returns the frames that left.

        The state changes only after the call returns, so an error or an interrupt in the model
        leaves the stream where it was.
        """
        st, P = self.state, self.partition
        m = st.step
        if m == P.s - 1:
            self._check_admission()  # before the call: a stream that cannot shift stays as it is
        sigma_now, sigma_next = self._table[m], self._table[m + 1]  # [B], [B]
        x, gen = st.x, None
        if st.prompt.redraw >= 0:
            x, sigma_now, gen = self._redrawn(st.prompt.redraw, sigma_now)
        model = self.switch_model if st.prompt.switching else None
        v = self._call(x, sigma_now.expand(self.batch, P.B), self.conditioning(), model)
        # Euler on the chunks; reference frames are copied, not stepped.
        now, after = (t[P.K:].expand(self.batch, -1) for t in (sigma_now, sigma_next))  # [b, B-K] each
        stepped = euler_step(x[:, :, P.K:], v[:, :, P.K:], now, after)  # [b, C, B-K, H, W]
        st.x = torch.cat([x[:, :, :P.K], stepped], dim=2)  # [b, C, B, H, W]
        if gen is not None:
            st.generator.set_state(gen.get_state())
        st.step = m + 1
        st.prompt.called()
        if st.step < P.s:
            return None
        return self._shift()

    def _redrawn(self, first: int, sigma: Tensor) -> tuple[Tensor, Tensor, torch.Generator | None]:
        """The buffer and its levels ``[B]`` with the partly formed frames from position ``first``
        on noised back up to the level chunks enter at (``x' = a x + b eps``, so a frame at level
        ``s`` holds ``(1 - top)`` of its clean content and noise of scale ``top``), and the
        generator after the draw (None when no frame needs it). Changes nothing in the state."""
        st, P = self.state, self.partition
        top = float(self._table[0, -1])
        pos = torch.arange(P.B, device=sigma.device)
        chosen = (pos >= max(first, P.K)) & (sigma > 0) & (sigma < top - 1e-6)  # [B]
        if not bool(chosen.any()):
            return st.x, sigma, None
        gen = torch.Generator()
        gen.set_state(st.generator.get_state())
        idx = chosen.nonzero().flatten()  # [n]
        now = sigma[idx].double()  # [n]
        a = (1 - top) / (1 - now)
        b = torch.sqrt(torch.clamp(top ** 2 - (a * now) ** 2, min=0))
        eps = self._noise(gen, len(idx))  # [b, C, n, H, W]
        view = (1, 1, -1, 1, 1)
        x = st.x.clone()
        x[:, :, idx] = a.to(x).view(view) * x[:, :, idx] + b.to(x).view(view) * eps
        sigma = sigma.clone()
        sigma[idx] = top
        return x, sigma, gen

    def _queued(self) -> int:
        return 0 if self.state.source is None else self.state.source.shape[2]

    def _check_admission(self) -> None:
        st, c = self.state, self.partition.c
        if st.scale < 1 and self._queued() < c:
            raise StreamError(
                f"this video-to-video stream (strength {st.scale:g}) needs {c} more source frames "
                f"to admit its next chunk but has {self._queued()}; feed() more latents (to flush a clip's "
                f"last frames, feed its last frame {self.partition.N * c} times). The stream is unchanged."
            )

    def _admit(self) -> Tensor:
        """The ``c`` frames entering at the top level: fresh noise, or noised source frames."""
        st, P = self.state, self.partition
        eps = self._noise(st.generator, P.c)  # [b, C, c, H, W]
        if self._queued() < P.c:
            return eps
        clean, rest = st.source[:, :, :P.c], st.source[:, :, P.c:]
        st.source = rest if rest.shape[2] else None
        top = self._table[0, -1].expand(self.batch, P.c)  # [b, c]
        return add_noise(clean, eps, top)

    def _shift(self) -> EmittedChunk:
        st, P = self.state, self.partition
        K, c = P.K, P.c
        entering = self._admit()
        out = st.x[:, :, K:K + c].clone()  # [b, C, c, H, W]
        index = int(st.frame_index[K])
        st.x = shift_buffer(st.x, K, c, entering)  # [b, C, B, H, W]
        ids = torch.arange(st.next_index, st.next_index + c)
        ref_ids = torch.cat([st.frame_index[:K], st.frame_index[K:K + c]])[-K:] if K else st.frame_index[:0]
        st.frame_index = torch.cat([ref_ids, st.frame_index[K + c:], ids])
        st.prompt.shifted(K, c)  # texts move with their frames; the entering chunk gets the newest
        st.next_index += c
        st.step = 0
        return EmittedChunk(latents=out, index=index, calls=st.calls)

    def next_chunk(self) -> EmittedChunk:
        """Calls the model until a chunk leaves (``s`` calls, fewer mid-cycle)."""
        while True:
            chunk = self.step()
            if chunk is not None:
                return chunk

    def chunks(self, count: int | None = None) -> Iterator[EmittedChunk]:
        """Yields ``count`` emitted chunks (endless when None)."""
        emitted = 0
        while count is None or emitted < count:
            yield self.next_chunk()
            emitted += 1
