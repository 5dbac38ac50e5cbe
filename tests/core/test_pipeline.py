"""The streaming loop shared by generate and evaluate: switches, decoding, seeds."""

import pytest
import torch

from helpers import PIXEL_CONFIG, Words, randomized
from streamdit_core.codec import PixelCodec
from streamdit_core.velocity import ModelWrapper
from streamdit_core import Pipeline, PromptSchedule, PromptSwitch


class Recorder(ModelWrapper):
    def __init__(self, model):
        super().__init__(model)
        self.texts = []

    def forward(self, x, sigma, text):
        self.texts.append(float(text.tokens[0, 0, 0]))
        return self.inner(x, sigma, text)


def _pipe(fps=4):
    return Pipeline(Recorder(randomized(PIXEL_CONFIG)), PixelCodec(), Words(), fps)


def test_frames_come_in_order_decoded_and_in_range():
    pipe = _pipe()
    chunks = []
    for chunk in pipe.frames("abc", pipe.default_partition(chunk=2, steps=4), seed=1):
        chunks.append(chunk)
        if len(chunks) == 5:
            break
    assert [c.index for c in chunks] == [0, 2, 4, 6, 8]
    assert all(c.frames.shape == (2, 3, 8, 8) and 0 <= c.frames.min() and c.frames.max() <= 1 for c in chunks)


def test_same_seed_same_frames_and_other_seed_other_frames():
    def first(seed):
        pipe = _pipe()
        return next(iter(pipe.frames("abc", pipe.default_partition(2, 4), seed=seed))).frames
    assert torch.equal(first(3), first(3)) and not torch.equal(first(3), first(4))


def test_a_switch_takes_effect_when_the_output_reaches_its_time():
    pipe = _pipe(fps=4)  # PixelCodec: one video frame per latent frame, so 1 s = 4 frames
    schedule = PromptSchedule(((0.0, "ab"), (1.0, "abcdef")))
    P = pipe.default_partition(chunk=2, steps=4)  # N=2, s=2
    # settle 0: the paper's switch, every frame at once (by default the output chunk, at noise
    # 0.5 here, would finish with the old prompt; tests/core/test_switch.py)
    for chunk in pipe.frames(schedule, P, seed=0, warm_start=False, switch=PromptSwitch(settle=0.0)):
        if chunk.index >= 8:
            break
    texts = pipe.model.texts
    # Calls 0-3 emit frames 0-3 (before 1 s) under "ab"; from the call after frame 3 left, "abcdef".
    assert texts[:4] == [2.0] * 4 and set(texts[4:]) == {6.0}


def test_prompt_schedule_validation_names_the_problem():
    with pytest.raises(ValueError, match="starts with a prompt at 0"):
        PromptSchedule(((1.0, "x"),))
    with pytest.raises(ValueError, match="must increase"):
        PromptSchedule(((0.0, "x"), (2.0, "y"), (1.0, "z")))
    with pytest.raises(ValueError, match="empty"):
        PromptSchedule(((0.0, " "),))
    s = PromptSchedule(((0.0, "x"), (2.0, "y")))
    assert (s.at(0), s.at(1.99), s.at(2.0), s.at(50)) == ("x", "x", "y", "y")


def test_the_recommended_reference_frames_shape_the_default_partition_where_they_fit():
    pipe = Pipeline(randomized(PIXEL_CONFIG), PixelCodec(), Words(), 4, reference_frames=2)
    B = pipe.geometry.buffer_frames
    P = pipe.default_partition()
    assert (P.K, P.N, P.c) == (2, (B - 2) // 2, 2)
    assert pipe.default_partition(chunk=B).K == 0, "a chunk that does not divide B - K streams without references"
    assert pipe.default_partition(2, steps=(B - 2) // 2 * 3) == P.__class__(K=2, N=(B - 2) // 2, c=2, s=3)
    chunks = next(iter(pipe.frames("abc", P, seed=1))).frames
    assert chunks.shape[0] >= 2 and torch.isfinite(chunks).all()
    assert Pipeline(randomized(PIXEL_CONFIG), PixelCodec(), Words(), 4).default_partition().K == 0


def test_a_distilled_student_opens_at_its_teacher_guidance_and_streams_unguided():
    from streamdit_core.velocity import CallCounter

    net = randomized(PIXEL_CONFIG)
    counter = CallCounter(net)
    student = Pipeline(counter, PixelCodec(), Words(), 4, opening_guidance=2.0)
    plain = Pipeline(net, PixelCodec(), Words(), 4)
    P = plain.default_partition(chunk=2, steps=2)
    session = student.session("abc", P, seed=1)
    session.start()
    opened = counter.samples
    assert opened == 2 * session.calls  # every opening call guided: both branches
    guided = plain.session("abc", P, seed=1, guidance=2.0)
    unguided = plain.session("abc", P, seed=1)
    guided.start()
    unguided.start()
    assert torch.equal(session.stream.state.x, guided.stream.state.x)
    assert not torch.equal(session.stream.state.x, unguided.stream.state.x)
    session.step()
    assert counter.samples == opened + 1  # then one unguided call at a time


def test_a_pipeline_with_opening_steps_opens_with_that_many_calls_per_chunk_band():
    from streamdit_core.velocity import CallCounter

    net = randomized(PIXEL_CONFIG)
    P = Pipeline(net, PixelCodec(), Words(), 4).default_partition(chunk=2, steps=2 * ((PIXEL_CONFIG.buffer_frames) // 2))
    counts = {}
    for per_band in (None, 1, 6):
        counter = CallCounter(net)
        session = Pipeline(counter, PixelCodec(), Words(), 4, opening_steps_per_chunk=per_band).session("abc", P, seed=1)
        session.start()
        counts[per_band] = counter.samples
    def calls(steps: int) -> int:  # K = 0: the last band's steps are the stream's own first calls
        return steps - steps // P.N

    assert P.K == 0 and P.T < 4 * P.N
    assert counts[None] == calls(4 * P.N)  # the default: four steps per band
    assert counts[1] == calls(P.T), "never fewer than the stream's own T"
    assert counts[6] == calls(6 * P.N)


def test_the_embedded_student_opens_as_its_file_records():
    student = Pipeline.load("embedded")
    assert (student.opening_guidance, student.opening_steps_per_chunk) == (3.0, 8)
    teacher = Pipeline.load("embedded-teacher")
    assert (teacher.opening_guidance, teacher.opening_steps_per_chunk) == (None, None)
    assert teacher.opening_model is None
    # the student's opening is drawn by the embedded teacher, loaded beside it
    assert all(torch.equal(a, b) for a, b in zip(student.opening_model.state_dict().values(),
                                                 teacher.model.state_dict().values()))
