"""Stage 3: the composite prompt within the text window, and what sampling refuses to return."""

import logging

import pytest

from vchain.errors import ConfigurationError, NumericalError, StageError
from vchain.reasoning import ReasoningConfig, reason
from vchain.sampling import composite_prompt, interpolate, render
from vchain.testing import DrawingImageBackend, ScriptedReasoner
from vchain.testing.toy import ToyGenerator

CONFIG = ReasoningConfig(width=32, height=32, max_keyframes=10)


def chain_of(captions):
    return reason("An egg falls.", ScriptedReasoner(captions), DrawingImageBackend(), CONFIG).chain


class Counting(ToyGenerator):
    """A text window of 40 words."""

    def prompt_tokens(self, prompt):
        return len(prompt.split()), 40


def test_a_short_composite_prompt_is_the_joined_captions():
    chain = chain_of(["the egg touches the ground", "the egg lies broken"])
    assert composite_prompt(chain, Counting()) == chain.composite_prompt == " ".join(chain.captions)
    assert composite_prompt(chain, None) == chain.composite_prompt


def test_a_long_composite_prompt_keeps_the_first_and_last_captions_with_a_warning(caplog):
    chain = chain_of([f"keyframe {i}: " + "the egg rests on the white pillow " * 2 for i in range(8)])
    generator = Counting()
    assert generator.prompt_tokens(chain.composite_prompt)[0] > 40
    with caplog.at_level(logging.WARNING):
        text = composite_prompt(chain, generator)
    assert "dropped" in caplog.text and "middle caption" in caplog.text and "truncate" not in caplog.text
    assert text.startswith(chain.captions[0]) and text.endswith(chain.captions[-1])
    assert generator.prompt_tokens(text)[0] <= 40
    kept = [c for c in chain.captions if c in text]
    assert kept == [c for c in chain.captions if c in kept]  # the order is kept


def test_when_even_the_ends_do_not_fit_the_warning_says_the_encoder_truncates(caplog):
    chain = chain_of(["word " * 60, "more " * 60])
    with caplog.at_level(logging.WARNING):
        composite_prompt(chain, Counting())
    assert "still too long, the encoder will truncate the end" in caplog.text


def test_render_returns_frames_and_timings():
    rendered = render(ToyGenerator(), "a red egg", seed=3)
    assert len(rendered.frames) == 1 and rendered.frames[0].size == (4, 4) and "sample" in rendered.seconds


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        (
            NumericalError("the sampled video is not finite"),
            StageError,
            r"\[sampling\] the sampled video is not finite",
        ),
        (RuntimeError("CUDA error"), StageError, r"\[sampling\] Broken\.sample\(\) raised RuntimeError: CUDA error"),
        (ConfigurationError("num_frames must be 4k+1"), ConfigurationError, "num_frames"),
    ],
)
def test_render_turns_a_misbehaving_generator_into_a_clear_error(failure, error, message):
    class Broken(ToyGenerator):
        def sample(self, prompt, *, seed=None, **overrides):
            raise failure

    with pytest.raises(error, match=message):
        render(Broken(), "a red egg")


@pytest.mark.parametrize("value", [None, [], "frames", [1, 2]])
def test_render_refuses_what_is_not_a_list_of_images(value):
    class Wrong(ToyGenerator):
        def sample(self, prompt, *, seed=None, **overrides):
            return value

    with pytest.raises(StageError, match=r"Wrong\.sample\(\) must return a non-empty list of PIL images"):
        render(Wrong(), "a red egg")


def test_crossfades_pass_through_every_keyframe():
    from vchain.interpolation import CrossfadeInterpolator

    chain = chain_of(["the egg touches the ground", "the egg lies broken"])
    frames = interpolate(CrossfadeInterpolator(), chain, 17).frames
    assert len(frames) == 17
    for frame, keyframe in ((frames[0], chain.images[0]), (frames[8], chain.images[1]), (frames[16], chain.images[2])):
        assert frame.tobytes() == keyframe.tobytes()
