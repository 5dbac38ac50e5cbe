"""The real-time pipeline: denoising and decoding on their own threads, bounded queues between.

A :class:`Runtime` runs a :class:`~streamdit_core.pipeline.Session` the way a live stream needs:

    denoise thread: prompt callback -> schedule -> model call -> latents out ─┐ queue (bounded)
    decode thread:  latents -> seam-free decode -> frames ────────────────────┘─> queue -> caller

so decoding a chunk overlaps the model calls for the next one, and a slow consumer (a file
writer, a websocket) holds the denoiser back by at most the queue sizes instead of letting
memory grow. The frames are bit-identical to stepping the session on one thread: the same
calls run in the same order; only the waiting moves.

:class:`RuntimeStats` reports per-call latency, decode time per chunk, video frames per second,
time to first frame and queue stalls (a put that found its queue full, a get that found it empty).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from .prompts import PromptSchedule
from .session import FrameChunk, Session
from .velocity import geometry_of

__all__ = ["Runtime", "RuntimeStats", "SMALL_MODEL_FLOPS", "auto_cpu_threads", "call_flops"]

_END = object()


def _count(chunk: FrameChunk) -> int:
    """Video frames in a chunk (``[T, 3, H, W]``, or ``[b, T, 3, H, W]`` for a batch)."""
    return chunk.frames.shape[-4]
_DECODE_STREAMS: dict[str, Any] = {}


def _ready_event(chunk):
    """On CUDA, an event marking when the chunk's latents are computed (None elsewhere)."""
    latents = chunk.latents
    if latents.device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(latents.device))
    return event


def _decode_context(ready, chunk):
    """The context to decode ``chunk`` in: on CUDA, a stream of its own that waits for
    ``ready``, so decoding overlaps the next model calls on the GPU too; elsewhere, nothing."""
    if ready is None:
        return contextlib.nullcontext()
    device = chunk.latents.device
    stream = _DECODE_STREAMS.get(str(device))
    if stream is None:
        stream = _DECODE_STREAMS[str(device)] = torch.cuda.Stream(device)
    stream.wait_event(ready)
    chunk.latents.record_stream(stream)  # the allocator must not reuse it before the decode ran
    return torch.cuda.stream(stream)


SMALL_MODEL_FLOPS = 2e9  # per call: below this one CPU thread streams as fast as two, and far better when shared


def call_flops(model: Any, batch: int = 1) -> float | None:
    """About the FLOPs of one call of a model with parameters and a geometry: two per parameter
    per token of the buffer (the matmuls), or None when that cannot be known (a host's adapter)."""
    geometry = geometry_of(model)
    params = getattr(model, "parameters", None)
    if geometry is None or not callable(params):
        return None
    count = sum(p.numel() for p in params())
    if count == 0:
        return None
    H, W = geometry.latent_size
    tokens = geometry.buffer_frames * (H // geometry.patch_size) * (W // geometry.patch_size)
    return 2.0 * count * tokens * batch


def auto_cpu_threads(model: Any, batch: int = 1) -> int | None:
    """The CPU thread count a stream over ``model`` runs with by default: one for a model too
    small to gain from more (under :data:`SMALL_MODEL_FLOPS` per call): for the embedded models two
    threads gained at most 10% on quiet cores and lost 6.6x to 7.5x beside another job, against
    1.1x to 1.3x for one thread (BENCHMARKS.md); None (torch's own setting) otherwise."""
    flops = call_flops(model, batch)
    return 1 if flops is not None and flops < SMALL_MODEL_FLOPS else None


@dataclass
class RuntimeStats:
    """What a run measured (times in seconds unless the name says ms)."""

    calls: int = 0
    frames: int = 0
    wall: float = 0.0
    first_frame: float | None = None  # from the start of :meth:`Runtime.run` to the first frame out
    call_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    denoise_stalls: int = 0  # latents ready but the decode queue full (decoding is the bottleneck)
    decode_stalls: int = 0  # frames ready but the output queue full (the consumer is the bottleneck)
    consumer_waits: int = 0  # the consumer found no frames ready (generation is the bottleneck)
    threads: int | None = None  # CPU threads the run used (inline on a CPU)

    @property
    def fps(self) -> float:
        """Video frames out per second of wall time."""
        return self.frames / self.wall if self.wall > 0 else 0.0

    @property
    def median_call_ms(self) -> float:
        return statistics.median(self.call_ms) if self.call_ms else 0.0

    @property
    def median_decode_ms(self) -> float:
        return statistics.median(self.decode_ms) if self.decode_ms else 0.0


class Runtime:
    """Runs a session on a denoise thread and a decode thread.

    Args:
        session: a started session (warm-started or filled; its opening frames, if any, are the
            caller's to output first).
        schedule: prompts over stream time, followed by the denoiser (one per stream, or one for
            all; None: keep the prompt).
        prompt_source: polled before every model call; a string it returns becomes the prompt
            from then on (a live prompt box), replacing the schedule.
        queue_chunks: chunks each queue holds before its producer waits.
        threaded: run the two threads (True), or call and decode in turn on the caller's thread
            (False; same frames, same stats). Default: threaded on CUDA, where decoding on the
            CPU side overlaps the GPU's model calls; inline on a CPU, where both threads would
            compete for the same cores (2-core CPU, embedded model: 18.4 frames/s threaded
            against 28.9 inline, BENCHMARKS.md). On CUDA the decoder runs on a CUDA stream of
            its own and frames reach the CPU through pinned memory.
        cpu_threads: for a stream on the CPU run inline: ``"auto"`` (default) is
            :func:`auto_cpu_threads` (one thread for a small model, torch's count otherwise); an
            integer fixes the count for the run; None leaves torch's setting alone. torch's own
            count is restored when the run ends.
    """

    def __init__(self, session: Session, schedule: PromptSchedule | Sequence[PromptSchedule] | None = None,
                 prompt_source: Callable[[], str | None] | None = None, queue_chunks: int = 4,
                 threaded: bool | None = None, cpu_threads: int | str | None = "auto"):
        if queue_chunks < 1:
            raise ValueError(f"queue_chunks must be at least 1, got {queue_chunks}")
        self.threaded = session.pipe.device.type == "cuda" if threaded is None else bool(threaded)
        self.session = session
        self.schedule = schedule
        self.prompt_source = prompt_source
        self.queue_chunks = queue_chunks
        if not (cpu_threads is None or cpu_threads == "auto" or (isinstance(cpu_threads, int) and cpu_threads >= 1)):
            raise ValueError(f"cpu_threads must be 'auto', a count >= 1 or None, got {cpu_threads!r}")
        self.cpu_threads = cpu_threads
        self.stats = RuntimeStats()

    def video(self, frames: int | None = None, opening: FrameChunk | None = None,
              should_stop: Callable[[], bool] | None = None, realtime: bool = False,
              lead: float = 0.5) -> Iterator[FrameChunk]:
        """The stream's video in order: ``opening`` first (the reference frames a start
        returned, if any), then the chunks :meth:`run` makes, the last one cut so that exactly
        ``frames`` video frames come out (endless when None). Every way of streaming a video to
        its end (the CLI, the nodes, evaluation, the benchmark) goes through here.

        With ``realtime`` the video is paced to its frame rate: a chunk is handed over no more
        than ``lead`` seconds of video ahead of the wall clock, so a live stream that computes
        faster than it plays neither piles up frames nor answers a new prompt late."""
        head = [] if opening is None else [opening]
        rest = self.run(None if frames is None else max(0, frames - sum(_count(c) for c in head)), should_stop)
        made = 0
        fps = self.session.pipe.fps
        start = time.perf_counter()
        try:
            for chunk in itertools.chain(head, rest):
                if frames is not None and _count(chunk) > frames - made:
                    chunk = dataclasses.replace(chunk, frames=chunk.frames.narrow(-4, 0, frames - made))
                ahead = made / fps - lead - (time.perf_counter() - start)
                if realtime and ahead > 0:
                    time.sleep(ahead)
                made += _count(chunk)
                yield chunk
                if frames is not None and made >= frames:
                    return
        finally:
            rest.close()  # stops and joins the threads however the video ends

    def run(self, frames: int | None = None, should_stop: Callable[[], bool] | None = None) -> Iterator[FrameChunk]:
        """Yields decoded chunks in order until ``frames`` video frames came out (endless when
        None), ``should_stop()`` is true, or the caller stops iterating.

        An exception on either thread (a model error, a host interrupt) is raised here, in the
        caller's thread; the threads are stopped and joined however the run ends.
        """
        if not self.threaded:
            yield from self._inline(frames, should_stop)
            return
        stop = threading.Event()
        latents: queue.Queue = queue.Queue(self.queue_chunks)
        decoded: queue.Queue = queue.Queue(self.queue_chunks)
        stats = self.stats
        start = time.perf_counter()
        tf = self.session.pipe.frames_per_latent

        def put(q: queue.Queue, item, stall: str) -> bool:
            if q.full():
                setattr(stats, stall, getattr(stats, stall) + 1)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def denoise() -> None:
            made = 0
            try:
                with torch.inference_mode():
                    while not stop.is_set() and (frames is None or made < frames):
                        if should_stop is not None and should_stop():
                            break
                        chunk = self._call()
                        if chunk is not None:
                            made += chunk.frames * tf
                            if not put(latents, (chunk, _ready_event(chunk)), "denoise_stalls"):
                                return
                put(latents, _END, "denoise_stalls")
            except BaseException as error:  # handed to the caller's thread
                put(latents, error, "denoise_stalls")

        def decode() -> None:
            try:
                with torch.inference_mode():
                    while not stop.is_set():
                        try:
                            item = latents.get(timeout=0.05)
                        except queue.Empty:
                            continue
                        if item is _END or isinstance(item, BaseException):
                            put(decoded, item, "decode_stalls")
                            return
                        chunk, ready = item
                        with _decode_context(ready, chunk):
                            out = self._decode(chunk)
                        if not put(decoded, out, "decode_stalls"):
                            return
            except BaseException as error:
                put(decoded, error, "decode_stalls")

        # Threads run in a copy of the caller's context, so a host's per-execution context
        # (ComfyUI's executing node, for progress) is seen from the denoise thread too.
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(fn,), daemon=True,
                                    name=f"streamdit-{fn.__name__}") for fn in (denoise, decode)]
        for t in threads:
            t.start()
        try:
            while True:
                if decoded.empty():
                    stats.consumer_waits += 1
                item = decoded.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._out(item, start)
                yield item
        finally:
            stop.set()  # both threads see it within one queue timeout or one model call
            for t in threads:
                t.join()
            stats.wall = time.perf_counter() - start

    # -- the steps both modes share ----------------------------------------------------------

    def _call(self):
        """Prompt callback, schedule, one model call; the latents that left, if any."""
        if self.prompt_source is not None:
            posted = self.prompt_source()
            if posted is not None:
                self.schedule = PromptSchedule.single(posted)
        if self.schedule is not None:
            self.session.follow(self.schedule)
        t0 = time.perf_counter()
        chunk = self.session.step_latents()
        self.stats.call_ms.append(1000 * (time.perf_counter() - t0))
        self.stats.calls += 1
        return chunk

    def _decode(self, chunk) -> FrameChunk:
        t0 = time.perf_counter()
        out = self.session.decode(chunk)
        self.stats.decode_ms.append(1000 * (time.perf_counter() - t0))
        return out

    def _out(self, item: FrameChunk, start: float) -> None:
        stats = self.stats
        if stats.first_frame is None:
            stats.first_frame = time.perf_counter() - start
        stats.frames += _count(item)
        stats.wall = time.perf_counter() - start

    def _inline(self, frames: int | None, should_stop: Callable[[], bool] | None) -> Iterator[FrameChunk]:
        start = time.perf_counter()
        tf = self.session.pipe.frames_per_latent
        made = 0
        before = torch.get_num_threads()
        threads = self.cpu_threads
        if threads == "auto":
            branches = 1 if self.session.guidance == 1 else 2  # guidance evaluates both in one call
            threads = auto_cpu_threads(self.session.pipe.velocity, self.session.batch * branches)
        if threads is not None and self.session.pipe.device.type == "cpu":
            torch.set_num_threads(threads)
        try:
            while frames is None or made < frames:
                if should_stop is not None and should_stop():
                    return
                chunk = self._call()
                if chunk is None:
                    continue
                made += chunk.frames * tf
                item = self._decode(chunk)
                self._out(item, start)
                yield item
        finally:
            self.stats.wall = time.perf_counter() - start
            self.stats.threads = torch.get_num_threads()
            torch.set_num_threads(before)
