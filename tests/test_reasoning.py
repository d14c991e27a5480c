"""Stage 1 on the shipped fakes: the loop, its bounds, its answers checked, its paid answers kept."""

import logging

import numpy as np
import pytest

from vchain.accounting import UsageMeter
from vchain.chain import NextKeyframe, ScenePlan
from vchain.errors import ConfigurationError, MalformedResponseError, RefusalError, StageError
from vchain.reasoning import KeyframeAnswer, ReasoningConfig, ReasoningLog, augment, edit_references, reason
from vchain.testing import DrawingImageBackend, ScriptedReasoner, draw_image

CONFIG = ReasoningConfig(width=64, height=32)


def test_loop_stops_on_the_last_flag():
    reasoner = ScriptedReasoner(["peak", "end", "consequence"])
    backend = DrawingImageBackend()
    result = reason("An egg falls.", reasoner, backend, CONFIG)
    assert result.stop_reason == "model"
    assert result.chain.key_frames == ["peak", "end", "consequence"]
    assert len(result.chain.images) == 4
    assert [c[0] for c in reasoner.calls] == ["plan"] + ["next_keyframe"] * 3
    assert [c[0] for c in backend.calls] == ["generate", "edit", "edit", "edit"]
    assert all(image.size == (64, 32) for image in result.chain.images)


def test_loop_stops_at_the_cap_and_records_it(caplog):
    reasoner = ScriptedReasoner(["again"], flag_last=False)
    with caplog.at_level(logging.WARNING):
        result = reason("p", reasoner, DrawingImageBackend(), ReasoningConfig(max_keyframes=4, width=8, height=8))
    assert result.stop_reason == "cap"
    assert len(result.chain.images) == 4
    assert "max_keyframes=4" in caplog.text


def test_edit_inputs_setting_picks_the_references():
    for setting, expected in (("chain", [1, 2]), ("last", [1, 1])):
        backend = DrawingImageBackend()
        reason("p", ScriptedReasoner(["a", "b"]), backend, ReasoningConfig(edit_inputs=setting, width=8, height=8))
        assert [n for kind, _, n in backend.calls if kind == "edit"] == expected


def test_the_reference_window_keeps_the_first_and_the_latest():
    images = [draw_image(str(i), 4, 4) for i in range(6)]
    assert edit_references(images, None) == images
    assert edit_references(images, 3) == [images[0], images[4], images[5]]
    assert edit_references(images, 1) == [images[5]]
    assert edit_references(images, 10) == images
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigurationError, match="max_references"):
            edit_references(images, bad)


def test_a_backend_reference_limit_is_never_exceeded():
    backend = DrawingImageBackend()
    backend.max_references = 2
    reason("p", ScriptedReasoner(["a", "b", "c", "d"]), backend, CONFIG)
    assert [n for kind, _, n in backend.calls if kind == "edit"] == [1, 2, 2, 2]


def test_edit_instruction_comes_from_the_backend_and_carries_the_caption():
    class Plain(DrawingImageBackend):
        def instruction(self, caption, problem=None):
            return f"EDIT: {caption}"

    default, plain = DrawingImageBackend(), Plain()
    reason("p", ScriptedReasoner(["The egg lies shattered."]), default, CONFIG)
    reason("p", ScriptedReasoner(["The egg lies shattered."]), plain, CONFIG)
    assert "The egg lies shattered." in default.calls[1][1] and default.calls[1][1] != "EDIT: The egg lies shattered."
    assert plain.calls[1][1] == "EDIT: The egg lies shattered."


class Flaky(ScriptedReasoner):
    def __init__(self, failures, error=MalformedResponseError):
        super().__init__(["end"])
        self.failures, self.error = failures, error

    def next_keyframe(self, chain, composite):
        if self.failures:
            self.failures -= 1
            raise self.error("bad answer")
        return super().next_keyframe(chain, composite)


def test_malformed_answers_are_asked_again_within_the_bound():
    meter = UsageMeter()
    result = reason("p", Flaky(2), DrawingImageBackend(), CONFIG, meter=meter)
    assert result.chain.key_frames == ["end"]
    perception = [r for r in meter.records if r.step == "perception"]
    assert [r.outcome for r in perception] == ["malformed", "malformed", "ok"]


def test_always_malformed_fails_naming_stage_step_and_keyframe():
    with pytest.raises(StageError, match=r"reasoning/perception \(keyframe 1\)") as e:
        reason("p", Flaky(10), DrawingImageBackend(), CONFIG)
    assert (e.value.stage, e.value.step, e.value.index) == ("reasoning", "perception", 1)


def test_refusal_is_not_retried():
    reasoner = Flaky(1, error=RefusalError)
    with pytest.raises(StageError, match="perception"):
        reason("p", reasoner, DrawingImageBackend(), CONFIG)
    assert reasoner.failures == 0 and [c[0] for c in reasoner.calls] == ["plan"]


class Answers(ScriptedReasoner):
    """Answers next_keyframe with whatever it is given."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def next_keyframe(self, chain, composite):
        self.calls.append(("next_keyframe", len(chain.key_frames)))
        return self.answer


@pytest.mark.parametrize(
    "answer",
    [
        {"caption": "x", "is_last": True},
        "a caption",
        None,
        42,
        ScenePlan(thoughts="t", consequences="c", context_frame="f", concise_prompt="p"),
    ],
)
def test_a_wrong_kind_of_answer_fails_at_once_naming_the_method(answer):
    reasoner = Answers(answer)
    with pytest.raises(StageError, match=r"Answers\.next_keyframe\(\) must return a NextKeyframe, got") as e:
        reason("p", reasoner, DrawingImageBackend(), CONFIG)
    assert e.value.step == "perception" and e.value.index == 1
    assert [c[0] for c in reasoner.calls].count("next_keyframe") == 1  # not asked again


def test_a_blank_caption_is_malformed_and_asked_again():
    class Blank(ScriptedReasoner):
        def next_keyframe(self, chain, composite):
            self.calls.append(("next_keyframe", 0))
            return NextKeyframe(caption="   ", is_last=True)

    reasoner = Blank()
    with pytest.raises(StageError, match=r"malformed answer 3 times.*caption must not be blank"):
        reason("p", reasoner, DrawingImageBackend(), CONFIG)
    assert [c[0] for c in reasoner.calls].count("next_keyframe") == 3


class Returns(DrawingImageBackend):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def generate(self, prompt, *, width, height):
        return self.value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, r"Returns\.generate\(\) must return a PIL image, got NoneType"),
        ({"image": 1}, r"must return a PIL image, got dict"),
        (b"not a png", r"returned bytes that are not an image"),
        (np.zeros((4, 4, 7), np.uint8), r"array of shape \(4, 4, 7\)"),
        (np.full((4, 4, 3), np.nan), r"float64 array"),
    ],
)
def test_a_wrong_image_answer_fails_naming_the_method(value, message):
    with pytest.raises(StageError, match=message) as e:
        reason("p", ScriptedReasoner(), Returns(value), CONFIG)
    assert e.value.step == "generate"


@pytest.mark.parametrize("value", ["png", "uint8", "float"])
def test_harmless_image_answers_are_converted(value):
    import io

    image = draw_image("x", 64, 32)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    answer = {"png": buffer.getvalue(), "uint8": np.asarray(image), "float": np.asarray(image) / 255.0}[value]
    chain = reason("p", ScriptedReasoner(), Returns(answer), CONFIG).chain
    assert chain.images[0].tobytes() == image.tobytes()


def test_a_backend_exception_becomes_a_stage_error_naming_the_call():
    class Broken(DrawingImageBackend):
        def edit(self, images, prompt, *, width, height):
            raise RuntimeError("connection lost")

    with pytest.raises(StageError, match=r"reasoning/edit \(keyframe 1\).*Broken\.edit\(\) raised RuntimeError"):
        reason("p", ScriptedReasoner(), Broken(), CONFIG)


def test_paid_answers_in_the_log_are_used_instead_of_asking_again():
    reasoner = ScriptedReasoner(["a", "b"])
    first = reason("p", reasoner, DrawingImageBackend(), CONFIG)
    chain = first.chain
    chain.key_frames, chain.images = chain.key_frames[:1], chain.images[:2]  # as if the edit of 2 crashed
    log = ReasoningLog({2: KeyframeAnswer(index=2, caption="the paid caption", is_last=True)})
    again = ScriptedReasoner(["a", "b"])
    result = reason("p", again, DrawingImageBackend(), CONFIG, chain=chain, log=log)
    assert result.chain.key_frames == ["a", "the paid caption"] and again.calls == []


def test_a_chain_whose_last_keyframe_was_flagged_is_not_extended():
    chain = reason("p", ScriptedReasoner(["a", "b"]), DrawingImageBackend(), CONFIG).chain
    log = ReasoningLog({2: KeyframeAnswer(index=2, caption="b", is_last=True)})
    again = ScriptedReasoner(["a", "b", "c"])
    result = reason("p", again, DrawingImageBackend(), CONFIG, chain=chain, log=log)
    assert result.stop_reason == "model" and len(result.chain.images) == 3 and again.calls == []


def test_every_answer_reaches_the_log_before_its_edit():
    events = []

    class Log(ReasoningLog):
        def record_answer(self, answer):
            super().record_answer(answer)
            events.append(("answer", answer.index))

        def commit(self, chain):
            events.append(("commit", len(chain.images)))

    class Backend(DrawingImageBackend):
        def edit(self, images, prompt, *, width, height):
            events.append(("edit", len(images)))
            return super().edit(images, prompt, width=width, height=height)

    reason("p", ScriptedReasoner(["a", "b"]), Backend(), CONFIG, log=Log())
    assert events == [
        ("commit", 0),
        ("commit", 1),
        ("answer", 1),
        ("edit", 1),
        ("commit", 2),
        ("answer", 2),
        ("edit", 2),
        ("commit", 3),
    ]


def test_augment_returns_the_stripped_rewrite_and_rejects_blank_ones():
    assert augment("p", ScriptedReasoner(augmented="  {prompt}, richer.  ")) == "p, richer."
    with pytest.raises(StageError, match=r"reasoning/augment.*blank"):
        augment("p", ScriptedReasoner(augmented="   "))


@pytest.mark.parametrize("prompt", ["", "   \n", None, 3])
def test_empty_prompts_are_rejected(prompt):
    with pytest.raises(ConfigurationError, match="prompt"):
        reason(prompt, ScriptedReasoner(), DrawingImageBackend(), CONFIG)


def test_config_errors_are_collected_with_values():
    with pytest.raises(ConfigurationError) as e:
        ReasoningConfig(max_keyframes=1, max_attempts=0, edit_inputs="all")
    message = str(e.value)
    assert "max_keyframes must be greater than or equal to 2, got 1" in message
    assert "max_attempts must be greater than or equal to 1, got 0" in message
    assert "edit_inputs must be 'chain' or 'last', got 'all'" in message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_keyframes": "8"}, "max_keyframes must be a valid integer, got '8'"),
        ({"max_keyframes": 2.5}, "max_keyframes must be a valid integer, got 2.5"),
        ({"max_keyframes": True}, "max_keyframes must be a valid integer, got True"),
        ({"width": 0}, "width must be greater than 0, got 0"),
        ({"composite_max_pixels": 10}, "composite_max_pixels must be greater than or equal to 4096, got 10"),
        ({"max_keyframe": 4}, "unknown setting 'max_keyframe'; known: color_correction, composite_max_pixels"),
    ],
)
def test_config_types_and_ranges_are_checked(fields, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ReasoningConfig(**fields)


def test_configs_are_frozen_and_replace_checks():
    config = ReasoningConfig()
    with pytest.raises(Exception, match="frozen"):
        config.max_keyframes = 3
    assert config.replace(max_keyframes=3).max_keyframes == 3 and config.max_keyframes == 8
    with pytest.raises(ConfigurationError, match="max_keyframes"):
        config.replace(max_keyframes=1)


def test_next_keyframe_model_shape():
    assert set(NextKeyframe.model_json_schema()["properties"]) == {"caption", "is_last", "time"}
