"""Prompts over a stream's life: schedules, how a new prompt takes over, and where a switch stands.

- :class:`PromptSchedule`: prompts over video time (``0s: a calm lake`` / ``4s: the lake at night``).
- :class:`PromptSwitch`: how a new prompt takes over a running stream: ``immediate`` (the paper),
  ``blend`` over a number of model calls, or ``chunk`` (only frames entering after the switch).
- :class:`PromptState`: the conditioning a stream holds, a switch in progress included (the text
  per buffer frame after a per-chunk switch, the progress of a blend). It lives inside
  :class:`~streamdit_core.stream.StreamState`, so a snapshot taken part-way through a switch
  continues it exactly.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .conditioning import FrameText, TextEmbedding

__all__ = ["PromptSchedule", "PromptSwitch", "PromptState", "SWITCH_MODES"]

_TIMED = re.compile(r"^(\d+(?:\.\d+)?)\s*s\s*:(.*)$")


@dataclass(frozen=True)
class PromptSchedule:
    """Prompts over video time: ``[(seconds, prompt), ...]`` starting at 0, times increasing."""

    entries: tuple[tuple[float, str], ...]

    def __post_init__(self) -> None:
        if not self.entries or self.entries[0][0] != 0:
            raise ValueError("a prompt schedule starts with a prompt at 0 seconds")
        times = [t for t, _ in self.entries]
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError(f"prompt switch times must increase, got {times}")
        for t, p in self.entries:
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"the prompt at {t} s is empty; give it some text")

    @classmethod
    def single(cls, prompt: str) -> "PromptSchedule":
        return cls(((0.0, prompt),))

    @classmethod
    def parse(cls, text: str) -> "PromptSchedule":
        """Reads one prompt per line, each ``<seconds>s: <prompt>``::

            0s: a red circle moving left on a black background
            4.5s: a blue circle moving left on a black background

        Blank lines and lines starting with ``#`` are skipped; a text with no time at all is one
        prompt for the whole video. Raises ValueError naming the bad line.
        """
        lines = [(n, line.strip()) for n, line in enumerate(str(text).splitlines(), 1)]
        lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
        if not lines:
            raise ValueError("the prompt schedule is empty; write a prompt, or lines like '0s: a calm lake'")
        if len(lines) == 1 and not _TIMED.match(lines[0][1]):
            return cls.single(lines[0][1])
        entries = []
        for n, line in lines:
            m = _TIMED.match(line)
            if m is None:
                raise ValueError(f"line {n} {line[:60]!r}: write '<seconds>s: <prompt>', e.g. '4s: the lake at night'")
            seconds, prompt = float(m.group(1)), m.group(2).strip()
            if not prompt:
                raise ValueError(f"line {n} {line[:60]!r}: the prompt after the time is empty")
            if entries and seconds <= entries[-1][0]:
                raise ValueError(f"line {n} {line[:60]!r}: {seconds:g}s is not after the previous line's "
                                 f"{entries[-1][0]:g}s; list the prompts in time order")
            entries.append((seconds, prompt))
        if entries[0][0] != 0:
            raise ValueError(f"line {lines[0][0]} {lines[0][1][:60]!r}: the first prompt must start at 0s")
        return cls(tuple(entries))

    def starting_at(self, seconds: float) -> "PromptSchedule":
        """This schedule for a stream segment that starts at ``seconds`` of stream time: its
        first prompt holds until then, its later times move by ``seconds``."""
        later = tuple((t + seconds, p) for t, p in self.entries[1:])
        return PromptSchedule(((0.0, self.entries[0][1]),) + later)

    def at(self, seconds: float) -> str:
        """The prompt in force at ``seconds`` of video."""
        current = self.entries[0][1]
        for t, p in self.entries:
            if t <= seconds + 1e-9:
                current = p
        return current


SWITCH_MODES = ("immediate", "blend", "chunk")
_BLENDING = object()  # a per-frame slot that follows the blend in progress


@dataclass(frozen=True)
class PromptSwitch:
    """How a new prompt takes over a running stream.

    Attributes:
        mode: ``immediate``: every frame in the buffer sees the new prompt from the next call
            (the paper's switch); ``blend``: the text embedding moves from the old prompt to the
            new one over ``blend_calls`` model calls; ``chunk``: the new prompt conditions only
            the chunks that enter the buffer after the switch, so the change in the video is
            sharp at a chunk boundary (the model sees a prompt per frame meanwhile).
        blend_calls: model calls a blend takes (``blend`` only).
        settle: ``immediate`` and ``blend``: frames already at or below this noise level when
            the switch comes finish with the prompt they had (at the embedded default, K = 2,
            N = 3, the output chunk is at 0.5 when a switch comes: it finishes, the next chunks
            switch or start to blend). A frame that is mostly formed cannot become another
            picture in its last steps: switched at once, its background comes out mottled (the
            first chunk after a background switch read 0.056 mean deviation, against 0.011
            before it), and its color can hold the stream back: on 24 held-out scenes the
            embedded student took a color switch within 2 s in 17 with 0, in 22 with 0.5. 0:
            every frame switches at once, as in the paper. Default (None): 0.5 for
            ``immediate``; 0.8 for ``blend``, which at the embedded default leaves both chunks
            already partly denoised (at 0.5 and 0.8) on the old prompt and blends the frames
            entering from pure noise: blended with 0.5, the frames formed under the texts between
            two prompts lost the embedded student its subject in 3 of 24 held-out color blends
            and left mottled backgrounds after 0.023 of the background blends' frames; with 0.8
            it took every color blend within 2 s, and 0.006 (model card).
        guided_calls: the first model calls after a switch, in any mode, that a session runs
            at its pipeline's :attr:`~streamdit_core.pipeline.Pipeline.switch_guidance` (a
            distilled student's teacher guidance), as it runs every call of a blend; no effect
            on a pipeline without one, or on a session guided at least as much. A student
            switched unguided can lose its subject, and with it the reference frames that would
            bring it back: on 24 held-out scenes the embedded student's immediate color switch
            kept the other attributes in 18 (in 2 the subject was gone for good), with 6 guided
            calls in all 24 (model card). 0: only a blend's calls are guided.
        redraw: ``immediate`` only: the frames that switch while partly formed (above ``settle``,
            below the level chunks enter at) are noised back up to that level at the next call,
            so they form wholly under the new prompt instead of finishing a picture begun under
            the old one. Without it the middle chunk of the embedded default (at 0.8 when a switch
            comes) came out as a blotchy mix of the old and the new background: after immediate
            background switches on 24 held-out scenes, 0.010 of the frames of the 139-minute
            chain's student read noisy and 4 of 24 streams showed a third background on the way;
            redrawn, none (model card). False: those frames finish from where they were.
    """

    mode: str = "immediate"
    blend_calls: int = 4
    settle: float | None = None
    guided_calls: int = 6
    redraw: bool = True

    def __post_init__(self) -> None:
        if self.mode not in SWITCH_MODES:
            raise ValueError(f"unknown prompt switch mode {self.mode!r}; choose one of {', '.join(SWITCH_MODES)}")
        if isinstance(self.blend_calls, bool) or not isinstance(self.blend_calls, int) or self.blend_calls < 1:
            raise ValueError(f"blend_calls must be an integer >= 1, got {self.blend_calls!r}")
        if self.settle is None:
            object.__setattr__(self, "settle", 0.8 if self.mode == "blend" else 0.5)
        if isinstance(self.settle, bool) or not isinstance(self.settle, (int, float)) or not 0 <= self.settle <= 1:
            raise ValueError(f"settle must be a noise level in [0, 1], got {self.settle!r}")
        if isinstance(self.guided_calls, bool) or not isinstance(self.guided_calls, int) or self.guided_calls < 0:
            raise ValueError(f"guided_calls must be an integer >= 0, got {self.guided_calls!r}")
        if not isinstance(self.redraw, bool):
            raise ValueError(f"redraw must be True or False, got {self.redraw!r}")


@dataclass
class PromptState:
    """The conditioning of a running stream, a switch in progress included.

    Attributes:
        text: the prompt in force: what every chunk admitted from now on enters with, and what
            the whole buffer sees when no switch is in progress (any conditioning the model
            takes; None for no text).
        slots: after a per-chunk or settled switch, the text of each buffer frame (frame 0 is
            the output end; during a blend, a frame that follows the blend holds a marker),
            until the frames from before the switch have left; else None.
        blend_from: during a blend, the text it started from (``text`` is where it goes); else None.
        blend_calls: model calls the blend in progress takes.
        blend_done: model calls of the blend already made.
        guided: model calls left, after a switch, that run the switch's model (see
            :attr:`PromptSwitch.guided_calls`).
        redraw: after an immediate switch with :attr:`PromptSwitch.redraw`, the buffer position
            from which the next call redraws the partly formed frames; -1 for none.

    The embeddings are never changed in place, so a copy shares them.
    """

    text: Any = None
    slots: tuple[Any, ...] | None = None
    blend_from: TextEmbedding | None = None
    blend_calls: int = 0
    blend_done: int = 0
    guided: int = 0
    redraw: int = -1

    def clone(self) -> "PromptState":
        return dataclasses.replace(self)

    @property
    def blending(self) -> bool:
        return self.blend_from is not None

    @property
    def switching(self) -> bool:
        """Whether the next call belongs to a switch: a blend's, or one of the guided calls after one."""
        return self.blending or self.guided > 0

    def current(self) -> Any:
        """The whole-buffer text as of the last call: the blend's position, else :attr:`text`."""
        if not self.blending:
            return self.text
        if self.blend_done == 0:
            return self.blend_from
        return self.blend_from.lerp(self.text, self.blend_done / self.blend_calls)

    def for_call(self) -> Any:
        """What the next model call is conditioned on: the blend one call further, a
        :class:`~streamdit_core.conditioning.FrameText` while per-chunk slots remain, else the text."""
        if self.blending:
            done = self.blend_done + 1
            now = self.text if done >= self.blend_calls else self.blend_from.lerp(self.text, done / self.blend_calls)
            if self.slots is None:
                return now
            return FrameText.of_frames([now if t is _BLENDING else t for t in self.slots])
        if self.slots is not None:
            return FrameText.of_frames(self.slots)
        return self.text

    def switch(self, text: Any, frames: int, entering_only: bool = False, blend_calls: int = 0,
               keep: int = 0, guided_calls: int = 0, redraw: bool = False) -> None:
        """A new prompt: at once (default), for entering chunks only (``entering_only``), or
        blended over ``blend_calls`` calls. An immediate or blended switch with ``keep`` leaves
        the first ``keep`` buffer frames (the output end) on the text they had, so frames nearly
        formed finish as they began (TextEmbedding conditioning only; other conditioning switches
        whole). The next ``guided_calls`` calls belong to the switch (:attr:`switching`). An
        immediate switch with ``redraw`` marks the frames that switch (from ``keep``, or all when
        the conditioning cannot keep any) for the next call to redraw (:attr:`redraw`). Raises
        ValueError, changing nothing, when the switch cannot apply."""
        if entering_only and blend_calls:
            raise ValueError("a prompt switch is per chunk or blended, not both")
        if redraw and (entering_only or blend_calls):
            raise ValueError("only an immediate prompt switch redraws the frames it switches")
        if guided_calls < 0:
            raise ValueError(f"guided_calls must be >= 0, got {guided_calls}")
        start = self.current()
        if entering_only:
            slots = tuple(start if t is _BLENDING else t for t in (self.slots or (start,) * frames))
            bad = [type(t).__name__ for t in (text, *slots) if not isinstance(t, TextEmbedding)]
            if bad:
                raise ValueError(f"a per-chunk prompt switch needs TextEmbedding conditioning, got {bad[0]}; "
                                 "switch immediately instead")
            self.slots, self.blend_from = slots, None
        elif blend_calls:
            if not isinstance(start, TextEmbedding):
                start = self.text  # per-frame slots: blend from the prompt in force
            bad = [type(t).__name__ for t in (start, text) if not isinstance(t, TextEmbedding)]
            if bad:
                raise ValueError(f"a blended prompt switch needs TextEmbedding conditioning, got {bad[0]}; "
                                 "switch immediately instead")
            self.slots = self._kept(keep, frames, start, text, _BLENDING)
            self.blend_from, self.blend_calls, self.blend_done = start, int(blend_calls), 0
        else:
            self.slots = self._kept(keep, frames, start, text, text)
            self.blend_from = None
        self.text = text
        self.guided = int(guided_calls)
        self.redraw = (keep if self.slots is not None else 0) if redraw else -1

    def _kept(self, keep: int, frames: int, start: Any, text: Any, rest: Any) -> tuple[Any, ...] | None:
        """Slots that leave the first ``keep`` frames on the text they had and give the others
        ``rest``; None when nothing is kept (or the conditioning cannot be per frame)."""
        old = tuple(start if t is _BLENDING else t for t in (self.slots or (start,) * frames))
        if keep > 0 and all(isinstance(t, TextEmbedding) for t in (text, *old[:keep])):
            return old[:keep] + (rest,) * (frames - min(keep, frames))
        return None

    def called(self) -> None:
        """A model call was made with :meth:`for_call`: a blend, and the guided calls after a
        switch, move one call on; a pending redraw is done."""
        self.guided = max(0, self.guided - 1)
        self.redraw = -1
        if self.blending:
            self.blend_done += 1
            if self.blend_done >= self.blend_calls:
                self.blend_from, self.blend_calls, self.blend_done = None, 0, 0
                if self.slots is not None:  # the frames that followed the blend hold its end
                    slots = tuple(self.text if t is _BLENDING else t for t in self.slots)
                    self.slots = None if all(t is self.text for t in slots) else slots

    def shifted(self, K: int, c: int) -> None:
        """The buffer shifted by ``c`` frames (``K`` reference frames): texts move with their
        frames and the entering chunk gets :attr:`text`; slots end when all hold it."""
        if self.slots is None:
            return
        slots = self.slots
        refs = (slots[:K] + slots[K:K + c])[c:]  # the K reference slots: the last K of refs + leaving chunk
        fill = _BLENDING if self.blending else self.text
        slots = refs + slots[K + c:] + (fill,) * c
        self.slots = None if all(t is fill for t in slots) else slots

    def refilled(self) -> None:
        """A new buffer: every frame is conditioned on :attr:`text` (a blend goes on) and
        nothing is left to redraw."""
        self.slots = None
        self.redraw = -1

    def tensors(self) -> list[Tensor]:
        """The token tensors held (the same embedding counted once)."""
        held, seen = [], set()
        for t in (self.text, self.blend_from, *(self.slots or ())):
            if isinstance(t, TextEmbedding) and id(t) not in seen:
                seen.add(id(t))
                held += [t.tokens] + ([] if t.mask is None else [t.mask])
        return held
