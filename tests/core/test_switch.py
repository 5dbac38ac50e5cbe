"""Prompt switches: per-frame text in the model, per-chunk and blended switches in the stream,
snapshots that continue a stream exactly."""

import dataclasses
import json

import pytest
import torch

from helpers import PIXEL_CONFIG, Words, random_text, randomized
from streamdit_core import FrameText, Partition, Session, StreamDiTConfig, StreamError, Streamer
from streamdit_core.checkpoint import read_metadata
from streamdit_core.codec import PixelCodec
from streamdit_core.guidance import Guided
from streamdit_core.velocity import ModelWrapper
from streamdit_core import Pipeline, PromptSwitch
from streamdit_core.pipeline import DEFAULT_MODEL

SHAPE = (4, 8, 8)


def _x(b=2, F=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, *SHAPE[:1], F, *SHAPE[1:], generator=gen), torch.rand(b, F, generator=gen)


@pytest.mark.parametrize("pooled", [False, True])
def test_one_prompt_for_every_frame_is_the_plain_text(pooled):
    model = randomized(StreamDiTConfig(pooled_text=pooled))
    x, sigma = _x()
    text = random_text(batch=2, real=4)
    per_frame = FrameText.of_frames([text] * 16)
    assert per_frame.texts == (text,) and per_frame.index.tolist() == [0] * 16
    with torch.no_grad():
        assert torch.allclose(model(x, sigma, per_frame), model(x, sigma, text), atol=1e-5)


def test_each_frame_attends_to_its_own_prompt(tiny_model):
    """Without self-attention between frames (window 1 frame deep), a frame's output depends only
    on its own prompt."""
    model = randomized(StreamDiTConfig(window=(1, 4, 4)))
    x, sigma = _x(b=1)
    a, b = random_text(seed=1), random_text(seed=2, length=3)
    mixed = FrameText.of_frames([a] * 8 + [b] * 8)
    with torch.no_grad():
        out, only_a, only_b = model(x, sigma, mixed), model(x, sigma, a), model(x, sigma, b)
    assert torch.allclose(out[:, :, :8], only_a[:, :, :8], atol=1e-5)
    assert torch.allclose(out[:, :, 8:], only_b[:, :, 8:], atol=1e-5)
    assert not torch.allclose(only_a[:, :, 8:], only_b[:, :, 8:], atol=1e-3)


def test_frame_text_is_checked(tiny_model):
    x, sigma = _x()
    with pytest.raises(ValueError, match="per-frame text has 3 frames, the latents 16"):
        tiny_model(x, sigma, FrameText.of_frames([random_text()] * 3))
    with pytest.raises(ValueError, match="index must lie in 0..0"):
        FrameText((random_text(),), torch.tensor([0, 1]))


def test_guidance_with_per_frame_text_matches_plain_guidance(tiny_model):
    x, sigma = _x()
    text = random_text(batch=1, real=3)
    guided = Guided(tiny_model, 4.0)
    with torch.no_grad():
        assert torch.allclose(guided(x, sigma, FrameText.of_frames([text] * 16)), guided(x, sigma, text), atol=1e-5)


def test_text_blend_moves_from_one_prompt_to_the_other():
    a, b = random_text(length=6, real=4, seed=1), random_text(length=5, real=5, seed=2)
    half = a.lerp(b, 0.5)
    assert half.tokens.shape == (1, 6, 32) and half.mask[0].tolist() == [True] * 5 + [False]
    assert torch.allclose(half.tokens[0, :4], (a.tokens[0, :4] + b.tokens[0, :4]) / 2)
    assert torch.allclose(half.tokens[0, 4], b.tokens[0, 4] / 2)  # a's padding counts as zero
    assert torch.equal(a.lerp(b, 1.0).tokens[0, :5], b.tokens[0])


# ---------------------------------------------------------------------------------------------
# The stream

class Recorder:
    def __init__(self, model):
        self.model, self.texts = model, []

    def __call__(self, x, sigma, text):
        self.texts.append(text)
        return self.model(x, sigma, text)


def test_per_chunk_switch_conditions_only_the_chunks_entering_after_it(tiny_model):
    P = Partition(K=2, N=3, c=2, s=2)  # B = 8
    old, new = random_text(seed=1), random_text(seed=2)
    rec = Recorder(tiny_model)
    stream = Streamer(rec, P, SHAPE, text=old, seed=0)
    stream.step()
    stream.set_text(new, entering_only=True)
    stream.step()  # the cycle's last call: every frame still holds the old text; then a shift
    assert rec.texts[-1].texts == (old,) and rec.texts[-1].index.tolist() == [0] * 8
    ids = []
    for _ in range(P.N):  # each shift lets one new chunk in at the top; references keep theirs
        stream.step()
        ids.append(rec.texts[-1].index.tolist())
        stream.step()
    assert ids[0] == [0, 0, 0, 0, 0, 0, 1, 1]
    assert ids[1] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert ids[2] == [0, 0, 1, 1, 1, 1, 1, 1]  # the old text now only on the reference frames
    stream.step()
    assert rec.texts[-1] is new  # every frame entered after the switch: back to one plain text


def test_per_chunk_switch_needs_text_embeddings_and_leaves_the_stream_unchanged(tiny_model):
    stream = Streamer(tiny_model, Partition(K=0, N=2, c=2, s=1), SHAPE, text=None)
    with pytest.raises(StreamError, match="needs TextEmbedding conditioning, got NoneType"):
        stream.set_text(random_text(), entering_only=True)
    assert stream.text is None and stream.conditioning() is None


def test_immediate_switch_drops_a_pending_per_chunk_switch(tiny_model):
    stream = Streamer(tiny_model, Partition(K=0, N=2, c=2, s=1), SHAPE, text=random_text(seed=1))
    stream.set_text(random_text(seed=2), entering_only=True)
    last = random_text(seed=3)
    stream.set_text(last)
    assert stream.conditioning() is last


# ---------------------------------------------------------------------------------------------
# Sessions on a pipeline


class TextLog(ModelWrapper):
    def __init__(self, model):
        super().__init__(model)
        self.seen = []

    def forward(self, x, sigma, text):
        self.seen.append(text)
        return self.inner(x, sigma, text)


def _pipe():
    return Pipeline(TextLog(randomized(PIXEL_CONFIG)), PixelCodec(), Words(), fps=4)


def test_blend_reaches_the_new_prompt_after_the_chosen_calls():
    pipe = _pipe()
    session = pipe.session("ab", Partition(K=0, N=2, c=2, s=2), switch=PromptSwitch("blend", blend_calls=4, settle=0))
    session.start()
    session.set_prompt("abcdef")  # token value 2 -> 6
    for _ in range(5):
        session.step()
    values = [float(t.tokens[0, 0, 0]) for t in pipe.model.seen[-5:]]
    assert values == pytest.approx([3.0, 4.0, 5.0, 6.0, 6.0])


def _texts_seen_in_a_blend(switch: PromptSwitch) -> list:
    """The token values of the 5 calls after a 4-call blend from "ab" (2) to "abcdef" (6), made
    when the chunks sit at 0.25, 0.5, 0.75 and 1 (K = 0, N = 4, c = 2, s = 1)."""
    pipe = _pipe()
    session = pipe.session("ab", Partition(K=0, N=4, c=2, s=1), switch=switch)
    session.start()
    session.next_chunk()
    mark = len(pipe.model.seen)
    session.set_prompt("abcdef")
    for _ in range(5):
        session.step()
    return [_token_values(t) for t in pipe.model.seen[mark:]]


def test_a_settled_blend_lets_nearly_formed_frames_finish_with_their_prompt():
    """With ``settle`` (0.5 here), a blend leaves the frames at or below that noise level on the
    old text until they leave; the others, and every frame entering meanwhile, follow the blend
    to its end."""
    seen = _texts_seen_in_a_blend(PromptSwitch("blend", blend_calls=4, settle=0.5))
    assert seen[0] == [2.0] * 4 + [3.0] * 4  # the two chunks at or below 0.5 keep the old text
    assert seen[1] == [2.0] * 2 + [4.0] * 6  # one of them has left; a chunk entered, blending
    assert seen[2] == 5.0 and seen[3] == 6.0 and seen[4] == 6.0  # the old frames are out: the plain blend


def test_a_blend_by_default_leaves_every_partly_denoised_chunk_on_the_old_prompt():
    """The default settle level is 0.5 for an immediate switch and 0.8 for a blend: the blend
    then conditions only the chunk entering from pure noise, and the chunks entering after it."""
    assert PromptSwitch("immediate").settle == 0.5 and PromptSwitch("chunk").settle == 0.5
    assert PromptSwitch("blend").settle == 0.8 and PromptSwitch("blend", settle=0.3).settle == 0.3
    seen = _texts_seen_in_a_blend(PromptSwitch("blend", blend_calls=4))
    assert seen[0] == [2.0] * 6 + [3.0] * 2  # three chunks at or below 0.8 keep the old text
    assert seen[1] == [2.0] * 4 + [4.0] * 4  # one of them has left; the rest follow the blend
    assert seen[2] == [2.0] * 2 + [5.0] * 6
    assert seen[3] == 6.0 and seen[4] == 6.0  # the old frames are out: the blend's end


def test_a_students_switch_runs_guided_for_its_calls_and_the_stream_then_unguided():
    """A distilled student (a pipeline with a switch guidance) makes the calls of a blend, and
    the ``guided_calls`` after a switch in any mode, at that guidance, two branches each, in a
    session and in one resumed in the middle; other pipelines stay unguided."""
    from streamdit_core.velocity import CallCounter

    def per_call(pipe, counter, mode="blend", resume=False, guided=0):
        switch = PromptSwitch(mode, blend_calls=3, guided_calls=guided)
        session = pipe.session("ab", Partition(K=0, N=2, c=2, s=2), switch=switch)
        session.start()
        session.step()
        session.set_prompt("abcdef")
        got = []
        for i in range(6):
            if resume and i == 1:
                session = Session.resume(pipe, session.snapshot())
            before = counter.samples
            session.step()
            got.append(counter.samples - before)
        return got

    counter = CallCounter(randomized(PIXEL_CONFIG))
    student = Pipeline(counter, PixelCodec(), Words(), 4, switch_guidance=2.0)
    assert per_call(student, counter) == [2, 2, 2, 1, 1, 1]
    assert per_call(student, counter, resume=True) == [2, 2, 2, 1, 1, 1]
    assert per_call(student, counter, mode="immediate") == [1] * 6
    for mode in ("immediate", "chunk"):
        assert per_call(student, counter, mode=mode, guided=4) == [2, 2, 2, 2, 1, 1]
        assert per_call(student, counter, mode=mode, guided=4, resume=True) == [2, 2, 2, 2, 1, 1]
    assert per_call(student, counter, guided=5) == [2] * 5 + [1]  # the blend's 3 calls count among them
    plain = Pipeline(counter, PixelCodec(), Words(), 4)
    assert per_call(plain, counter, guided=4) == [1] * 6
    distilled_at = json.loads(read_metadata(DEFAULT_MODEL)["distilled"])["guidance"]
    assert Pipeline.load("embedded").switch_guidance == distilled_at > 1  # the guidance it was distilled from
    assert Pipeline.load("embedded-teacher").switch_guidance is None


def test_the_guided_calls_after_a_switch_are_checked():
    assert PromptSwitch().guided_calls == 6
    for bad in (-1, 1.5, True, "6"):
        with pytest.raises(ValueError, match="guided_calls must be an integer >= 0"):
            PromptSwitch("immediate", guided_calls=bad)


def test_a_snapshot_continues_the_stream_exactly():
    pipe = _pipe()
    P = Partition(K=1, N=3, c=1, s=2)
    whole = pipe.session("a prompt", P, seed=5)
    whole.start()
    expected = [whole.next_chunk().frames for _ in range(7)]

    first = pipe.session("a prompt", P, seed=5)
    first.start()
    got = [first.next_chunk().frames for _ in range(3)]
    snap = first.snapshot()
    first.next_chunk()  # the first session going on does not disturb the snapshot
    second = Session.resume(pipe, snap, "a prompt")
    got += [second.next_chunk().frames for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert second.calls == whole.calls and snap.frames_out == 3 + P.K


@pytest.mark.parametrize("mode", ["chunk", "blend"])
@pytest.mark.parametrize("calls_after_switch", [1, 2])
def test_a_snapshot_taken_during_a_prompt_switch_continues_it_exactly(mode, calls_after_switch):
    """Per-chunk prompt slots and blend progress travel in the snapshot: a session resumed from
    a snapshot taken part-way through a switch makes the same frames, from the same
    conditioning, as the session that was never cut."""
    pipe = _pipe()
    P = Partition(K=0, N=2, c=2, s=2)
    switch = PromptSwitch(mode, blend_calls=4)

    def opened():
        session = pipe.session("aa", P, seed=3, switch=switch)
        session.start()
        session.next_chunk()
        session.set_prompt("aaaaaa")
        for _ in range(calls_after_switch):
            session.step()
        return session

    whole = opened()
    mark = len(pipe.model.seen)
    expected = [whole.next_chunk().frames for _ in range(3)]
    expected_text = pipe.model.seen[mark:]

    cut = opened()
    second = Session.resume(pipe, cut.snapshot(), "aaaaaa")
    mark = len(pipe.model.seen)
    got = [second.next_chunk().frames for _ in range(3)]
    got_text = pipe.model.seen[mark:]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert [_token_values(t) for t in got_text] == [_token_values(t) for t in expected_text]


def _token_values(text):
    """What a call was conditioned on: the first token value per frame (or for the buffer)."""
    if isinstance(text, FrameText):
        return [float(text.texts[i].tokens[0, 0, 0]) for i in text.index.tolist()]
    return float(text.tokens[0, 0, 0])


def test_a_snapshot_resumed_with_a_new_prompt_switches_per_chunk():
    pipe = _pipe()
    P = Partition(K=0, N=2, c=2, s=1)
    first = pipe.session("aa", P, switch=PromptSwitch("chunk"))
    first.start()
    first.next_chunk()
    second = Session.resume(pipe, first.snapshot(), "aaaa")
    second.step()  # the old prompt's frames fill the buffer; the new prompt's first chunk enters
    second.step()
    seen = pipe.model.seen[-1]
    assert isinstance(seen, FrameText) and seen.index.tolist() == [0, 0, 1, 1]
    assert [float(t.tokens[0, 0, 0]) for t in seen.texts] == [2.0, 4.0]


def test_switch_settings_are_checked():
    with pytest.raises(ValueError, match="unknown prompt switch mode 'sudden'"):
        PromptSwitch("sudden")
    with pytest.raises(ValueError, match="blend_calls must be an integer >= 1"):
        PromptSwitch("blend", 0)
    session = _pipe().session("x", Partition(K=0, N=2, c=2, s=1))
    with pytest.raises(ValueError, match="non-empty prompt"):
        session.set_prompt("  ")
    assert dataclasses.is_dataclass(session.snapshot())


@pytest.mark.slow
def test_embedded_model_per_chunk_switch_changes_only_frames_entering_after_it():
    """On the embedded model, a color switch made when frame 16 enters the buffer: per chunk,
    every frame before 16 keeps the old color and every frame from 16 on has the new one; an
    immediate switch at the same moment also recolors frames already in the buffer. (Streamed
    without reference frames: with its default K = 2 the student turns frames 14-15, the chunk
    just before the switch, blue too, though their text is red.)"""
    from streamdit_core.world import detect

    pipe = Pipeline.load()
    colors = {}
    for mode in ("chunk", "immediate"):
        session = pipe.session("a red circle moving right on a black background", Partition(K=0, N=4, c=2, s=1),
                               seed=0, switch=PromptSwitch(mode))
        session.start()
        frames = []
        while sum(f.shape[0] for f in frames) < 24:
            if session.seconds_in >= 1.0:  # frame 16 is next to enter
                session.set_prompt("a blue circle moving right on a black background")
            chunk = session.step()
            if chunk is not None:
                frames.append(chunk.frames)
        colors[mode] = detect(torch.cat(frames)[:24]).color
    assert colors["chunk"] == ["red"] * 16 + ["blue"] * 8
    assert colors["immediate"][16:] == ["blue"] * 8 and colors["immediate"][8:16].count("blue") >= 4


def test_schedules_for_segments_and_frame_sizes():
    from streamdit_core import PromptSchedule

    story = PromptSchedule(((0.0, "a"), (2.0, "b")))
    later = story.starting_at(3.0)  # a segment starting at 3 s of stream time
    assert [later.at(t) for t in (0.0, 4.9, 5.0)] == ["a", "a", "b"]
    pipe = _pipe()  # pixel codec, patch 2: sizes in steps of 2
    assert pipe.session("x", Partition(K=0, N=2, c=2, s=1), size=(6, 10)).frame_size == (6, 10)
    with pytest.raises(ValueError, match=r"frame size 7x10 must be positive multiples of 2 .*own size is 8x8"):
        pipe.session("x", Partition(K=0, N=2, c=2, s=1), size=(7, 10))


@pytest.mark.parametrize("mode, settle, first_new", [("chunk", 0.5, 6), ("immediate", 0.5, 4), ("immediate", 0.0, 2)])
def test_each_frame_is_labelled_with_the_prompt_that_made_it(mode, settle, first_new):
    """A player labels frames with ``Session.prompt_at``: after a per-chunk switch, the frames
    already in the buffer keep the old prompt's label; after an immediate one, the output chunk
    (at noise 0.5, the default settle level) finishes with the old prompt and every later frame
    has the new one; with settle 0 (the paper's switch) every frame that leaves has the new one."""
    pipe = _pipe()
    P = Partition(K=0, N=2, c=2, s=1)
    session = pipe.session("aa", P, switch=PromptSwitch(mode, settle=settle))
    session.start()
    session.next_chunk()  # frames 0-1 out; 2-5 in the buffer
    session.set_prompt("bbbb")
    labels = [session.prompt_at(f)[0] for f in range(10)]
    assert labels == ["aa"] * first_new + ["bbbb"] * (10 - first_new)


def test_an_immediate_switch_lets_nearly_formed_frames_finish_with_their_prompt(tiny_model):
    """With ``settle``, the frames already below that noise level keep the old text until they
    leave; every other frame sees the new one from the next call. With 0, all switch at once."""
    P = Partition(K=0, N=4, c=2, s=1)  # chunk levels 0.25, 0.5, 0.75, 1 at each call
    old, new = random_text(seed=1), random_text(seed=2)
    rec = Recorder(tiny_model)
    stream = Streamer(rec, P, SHAPE, text=old, seed=0)
    stream.step()
    settled = int((stream.state.sigma < 0.4).sum())
    assert settled == 2  # the output chunk
    assert stream.set_text(new, settle=0.4) == settled
    stream.step()
    assert rec.texts[-1].texts == (old, new) and rec.texts[-1].index.tolist() == [0, 0] + [1] * 6
    stream.step()  # the old frames have left
    assert rec.texts[-1] is new
    assert stream.set_text(old, settle=0.0) == 0
    stream.step()
    assert rec.texts[-1] is old


def test_a_chunk_exactly_at_the_settle_level_finishes_with_its_prompt(tiny_model):
    """The output chunk of a partition whose band starts at the settle level (0.5 here, as at the
    embedded default's K = 2, N = 3 under its shift-2 warp) keeps the old text; the chunk above
    it switches."""
    P = Partition(K=0, N=4, c=2, s=1)  # after a step: 0.25, 0.5, 0.75, 1
    old, new = random_text(seed=1), random_text(seed=2)
    rec = Recorder(tiny_model)
    stream = Streamer(rec, P, SHAPE, text=old, seed=0)
    stream.step()
    assert float(stream.state.sigma[3]) == pytest.approx(0.5) and float(stream.state.sigma[4]) > 0.5
    assert stream.set_text(new, settle=0.5) == 4  # both chunks at or below 0.5 finish as they were
    stream.step()
    assert rec.texts[-1].index.tolist() == [0] * 4 + [1] * 4


def test_a_settled_switch_labels_frames_by_the_prompt_they_finished_with():
    pipe = _pipe()
    P = Partition(K=0, N=4, c=2, s=1)
    session = pipe.session("aa", P, switch=PromptSwitch("immediate", settle=0.4))
    session.start()
    session.next_chunk()  # frames 0-1 out; 2-9 in the buffer, 2-3 below noise 0.4
    session.set_prompt("bbbb")
    assert [session.prompt_at(f)[0] for f in range(12)] == ["aa"] * 4 + ["bbbb"] * 8
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="settle must be a noise level"):
            PromptSwitch("immediate", settle=bad)


class Seer:
    """Records what each call sees: latents, levels and text; can fail on one call."""

    def __init__(self, model, fail_on: int | None = None):
        self.model, self.fail_on, self.seen = model, fail_on, []

    def __call__(self, x, sigma, text):
        if self.fail_on is not None and len(self.seen) == self.fail_on:
            self.fail_on = None
            raise KeyboardInterrupt
        self.seen.append((x.clone(), sigma.clone(), text))
        return self.model(x, sigma, text)


def _switched_stream(model, redraw: bool, P=Partition(K=2, N=3, c=2, s=1)):
    stream = Streamer(model, P, SHAPE, text=random_text(seed=1), seed=0)
    stream.step()
    stream.step()
    stream.set_text(random_text(seed=2), settle=0.5, redraw=redraw)
    return stream


def test_an_immediate_switch_that_redraws_noises_the_partly_formed_frames_back_up(tiny_model):
    """With ``redraw`` the first call after the switch sees the frames above ``settle`` and below
    the entering level as fresh noise at that level, drawn from the stream's generator; the kept
    frames and the reference frames are untouched, and the next call is ordinary again."""
    seer = Seer(tiny_model)
    stream = _switched_stream(seer, redraw=True)
    before = stream.state.x.clone()
    levels = stream.state.sigma.float()  # [8]: refs 0, then 0.5 (kept), ~0.8 (redrawn), 1
    middle = (levels > 0.5 + 1e-6) & (levels < 1 - 1e-6)
    assert middle.tolist() == [False] * 4 + [True] * 2 + [False] * 2
    gen = torch.Generator()
    gen.set_state(stream.state.generator.get_state())
    stream.step()
    x, sigma, _ = seer.seen[-1]
    assert sigma[0, middle].tolist() == [1.0, 1.0]
    assert torch.equal(sigma[0, ~middle], levels[~middle])
    assert torch.equal(x[:, :, ~middle], before[:, :, ~middle])
    assert torch.equal(x[:, :, middle], torch.randn(x[:, :, middle].shape, generator=gen))
    levels = stream.state.sigma.float()
    stream.step()
    assert torch.equal(seer.seen[-1][1][0], levels)  # back on the table


def test_without_redraw_a_switch_steps_the_buffer_as_it_was(tiny_model):
    seer = Seer(tiny_model)
    stream = _switched_stream(seer, redraw=False)
    before, levels = stream.state.x.clone(), stream.state.sigma.float()
    stream.step()
    x, sigma, _ = seer.seen[-1]
    assert torch.equal(x, before) and torch.equal(sigma[0], levels)


def test_a_redraw_interrupted_in_the_model_continues_as_if_never_interrupted(tiny_model):
    """The noise of a redraw is committed with the call: an interrupt leaves the stream, its
    generator and the pending redraw as they were, and the retried stream matches one never
    interrupted, chunk for chunk."""
    plain = _switched_stream(tiny_model, redraw=True)
    failing = Seer(tiny_model, fail_on=2)  # the two calls before the switch pass, the third fails
    broken = _switched_stream(failing, redraw=True)
    state = broken.state.generator.get_state()
    with pytest.raises(KeyboardInterrupt):
        broken.step()
    assert torch.equal(broken.state.generator.get_state(), state) and broken.state.prompt.redraw >= 0
    for a, b in zip(plain.chunks(3), broken.chunks(3)):
        assert torch.equal(a.latents, b.latents)


def test_redraw_noises_a_video_to_video_stream_up_to_its_strength(tiny_model):
    """A video-to-video stream's chunks enter at its strength, not at 1: a redraw raises the
    switched frames to that level and keeps ``1 - strength`` of their content."""
    seer = Seer(tiny_model)
    P = Partition(K=0, N=4, c=2, s=1)
    stream = Streamer(seer, P, SHAPE, text=random_text(seed=1), seed=0)
    clip = torch.randn(1, SHAPE[0], 24, *SHAPE[1:], generator=torch.Generator().manual_seed(3))
    stream.fill_video(clip[:, :, :8], strength=0.6)
    stream.feed(clip[:, :, 8:])
    stream.step()
    levels = stream.state.sigma.float()
    stream.set_text(random_text(seed=2), settle=0.2, redraw=True)
    stream.step()
    sigma = seer.seen[-1][1][0]
    top = float(levels.max())
    assert top == pytest.approx(0.6)
    moved = (levels > 0.2 + 1e-6) & (levels < top - 1e-6)
    assert moved.any() and torch.allclose(sigma[moved], torch.full((int(moved.sum()),), top))
    assert torch.equal(sigma[~moved], levels[~moved])


def test_only_an_immediate_switch_redraws():
    stream = Streamer(randomized(), Partition(K=0, N=2, c=2, s=1), SHAPE, text=random_text(seed=1), seed=0)
    for kwargs in ({"entering_only": True}, {"blend_calls": 2}):
        with pytest.raises(StreamError, match="only an immediate prompt switch redraws"):
            stream.set_text(random_text(seed=2), redraw=True, **kwargs)
    assert stream.state.prompt.redraw == -1
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="redraw must be True or False"):
            PromptSwitch("immediate", redraw=bad)


def test_a_session_redraws_on_immediate_switches_by_default_and_reproduces_its_seed():
    """The same seed gives the same frames, redraw or not; the frames before the switch do not
    depend on it and the frames after it do."""
    P = Partition(K=2, N=3, c=2, s=1)

    def frames(redraw: bool):
        session = _pipe().session("aa", P, seed=4, switch=PromptSwitch("immediate", redraw=redraw))
        session.start()
        out = [session.next_chunk().frames for _ in range(2)]
        session.set_prompt("bbbb")
        out += [session.next_chunk().frames for _ in range(3)]
        return out

    assert PromptSwitch("immediate").redraw is True
    drawn, again, plain = frames(True), frames(True), frames(False)
    assert all(torch.equal(a, b) for a, b in zip(drawn, again))
    assert all(torch.equal(a, b) for a, b in zip(drawn[:2], plain[:2]))  # out before the switch
    assert not torch.equal(drawn[3], plain[3])
