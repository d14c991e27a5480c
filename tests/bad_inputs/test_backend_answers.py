"""Class 5, backend answers: a backend or server that answers the wrong thing gets a `StageError` naming the
backend, the method and what it returned, the moment it returns it; harmless forms are converted; an
answer worth asking again (malformed JSON, a 200 that is not JSON, an image that does not decode) is
asked again a bounded number of times; what was produced before stays."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.bad_inputs import (
    CAPTIONS,
    PROMPT,
    assert_names,
    openai_backends,
    png_bytes,
    read_manifest,
    toy_pipeline,
    work_done,
)
from vchain import NextKeyframe, ScenePlan, ThoughtChain, VChainPipeline
from vchain.errors import StageError
from vchain.interfaces import Interpolator, Tuner
from vchain.reasoning import ReasoningConfig
from vchain.testing import (
    DrawingImageBackend,
    Fault,
    HtmlPage,
    RawImage,
    Reply,
    ScriptedReasoner,
    draw_image,
    example_plan,
)
from vchain.testing.toy import ToyGenerator

FRAME = ReasoningConfig(width=16, height=16)


class Answers(ScriptedReasoner):
    """Answers `method` with `value` (the other method as scripted)."""

    def __init__(self, method: str, value):
        super().__init__(CAPTIONS)
        self.method, self.value = method, value

    def plan(self, prompt):
        return self._answer("plan", super().plan(prompt))

    def next_keyframe(self, chain, composite):
        return self._answer("next_keyframe", super().next_keyframe(chain, composite))

    def augment_prompt(self, prompt):
        return self._answer("augment_prompt", super().augment_prompt(prompt))

    def _answer(self, method, scripted):
        return self.value if method == self.method else scripted


class Draws(DrawingImageBackend):
    """Answers `method` (at keyframe `at` for edits) with `value`; draws otherwise."""

    def __init__(self, method: str, value, at: int = 1):
        super().__init__()
        self.method, self.value, self.at = method, value, at

    def generate(self, prompt, *, width, height):
        drawn = super().generate(prompt, width=width, height=height)
        return self.value if self.method == "generate" else drawn

    def edit(self, images, prompt, *, width, height):
        drawn = super().edit(images, prompt, width=width, height=height)
        return self.value if self.method == "edit" and len(images) == self.at else drawn


def _plan_fields(**changes):
    return {**example_plan(PROMPT).model_dump(), **changes}


PLANS = [
    pytest.param(_plan_fields(), "dict", id="a-dict-for-a-scene-plan"),
    pytest.param(None, "NoneType", id="none"),
    pytest.param("A plan, in prose.", "str", id="prose"),
    pytest.param(NextKeyframe(caption="x", is_last=True), "NextKeyframe", id="another-answer-model"),
    pytest.param(
        ScenePlan.model_construct(**_plan_fields(thoughts="   ")), "thoughts", id="a-blank-field-unvalidated"
    ),
    pytest.param(ScenePlan.model_construct(**_plan_fields(consequences=None)), "consequences", id="a-none-field"),
    pytest.param(ScenePlan.model_construct(**_plan_fields(context_frame=42)), "context_frame", id="a-number-field"),
]


@pytest.mark.parametrize(("value", "what"), PLANS)
def test_a_wrong_plan_is_named_before_any_image_is_drawn(value, what, tmp_path):
    reasoner, images = Answers("plan", value), DrawingImageBackend()
    with pytest.raises(StageError) as error:
        VChainPipeline(reasoner, images, reasoning=FRAME).think(PROMPT, tmp_path / "run")
    assert_names(str(error.value), "Answers.plan()", what)
    assert (error.value.stage, error.value.step) == ("reasoning", "plan") and images.calls == []


KEYFRAMES = [
    pytest.param("The egg rests.", "str", id="W02-a-string"),
    pytest.param(None, "NoneType", id="W03-none"),
    pytest.param({"caption": "The egg rests.", "is_last": True}, "dict", id="a-dict"),
    pytest.param(("The egg rests.", True), "tuple", id="a-tuple"),
    pytest.param(example_plan(PROMPT), "ScenePlan", id="another-answer-model"),
    pytest.param(
        NextKeyframe.model_construct(caption="   ", is_last=True),
        "caption",
        id="W05-a-blank-caption-built-without-validation",
    ),
    pytest.param(NextKeyframe.model_construct(caption=None, is_last=True), "caption", id="a-none-caption"),
    pytest.param(NextKeyframe.model_construct(caption=42, is_last=True), "caption", id="a-number-caption"),
    pytest.param(
        NextKeyframe.model_construct(caption="The egg rests.", is_last="yes"), "is_last", id="is-last-a-string"
    ),
]


@pytest.mark.parametrize(("value", "what"), KEYFRAMES)
def test_a_wrong_keyframe_answer_is_named_before_its_edit_and_keyframe_0_stays(value, what, tmp_path):
    reasoner, images = Answers("next_keyframe", value), DrawingImageBackend()
    with pytest.raises(StageError) as error:
        VChainPipeline(reasoner, images, reasoning=FRAME).think(PROMPT, tmp_path / "run")
    assert_names(str(error.value), "Answers.next_keyframe()", what)
    assert (error.value.step, error.value.index) == ("perception", 1)
    assert [kind for kind, _, _ in images.calls] == ["generate"]  # the edit for it was never paid
    assert len(ThoughtChain.load(tmp_path / "run").images) == 1


def test_W05_a_blank_caption_is_malformed_asked_again_and_never_edited():
    class Blank(ScriptedReasoner):
        def next_keyframe(self, chain, composite):
            self.calls.append(("next_keyframe", len(chain.key_frames)))
            return NextKeyframe(caption="   ", is_last=True)

    reasoner, images = Blank(CAPTIONS), DrawingImageBackend()
    with pytest.raises(StageError) as error:
        VChainPipeline(reasoner, images, reasoning=FRAME).think(PROMPT)
    assert_names(str(error.value), "reasoning/perception (keyframe 1)", "3 times", "caption")
    assert len(reasoner.calls) == 1 + 3 and [kind for kind, _, _ in images.calls] == ["generate"]


def _png(mode="RGB", size=(16, 16)):
    return png_bytes(Image.new(mode, size, 128 if mode in ("L", "I;16", "1") else (90, 40, 200)))


WRONG_IMAGES = [
    pytest.param(None, "NoneType", id="W06-none"),
    pytest.param({"b64_json": "..."}, "dict", id="a-dict"),
    pytest.param("/tmp/keyframe.png", "str", id="a-path"),
    pytest.param([draw_image("x", 16, 16)], "list", id="a-list-of-images"),
    pytest.param(torch.zeros(3, 16, 16), "Tensor", id="a-tensor"),
    pytest.param(b"not a png", "bytes", id="bytes-that-are-not-an-image"),
    pytest.param(b"", "bytes", id="no-bytes"),
    pytest.param(_png()[:50], "bytes", id="a-truncated-png"),
    pytest.param(np.zeros((16, 16, 7), np.uint8), "(16, 16, 7)", id="seven-channels"),
    pytest.param(np.full((16, 16, 3), np.nan), "float64", id="nan-pixels"),
    pytest.param(np.zeros((0, 0, 3), np.uint8), "ndarray", id="an-empty-array"),
    pytest.param(np.zeros(16, np.uint8), "ndarray", id="a-vector"),
    pytest.param(Image.new("RGB", (0, 0)), "0x0", id="an-empty-image"),
]


@pytest.mark.parametrize(("value", "what"), WRONG_IMAGES)
def test_a_wrong_first_image_is_named(value, what):
    images = Draws("generate", value)
    with pytest.raises(StageError) as error:
        VChainPipeline(ScriptedReasoner(CAPTIONS), images, reasoning=FRAME).think(PROMPT)
    assert_names(str(error.value), "Draws.generate()", what)
    assert error.value.step == "generate"


def test_a_decompression_bomb_from_an_image_backend_names_the_pixel_limit(bomb_png):
    with pytest.raises(StageError) as error:
        VChainPipeline(ScriptedReasoner(CAPTIONS), Draws("generate", bomb_png), reasoning=FRAME).think(PROMPT)
    assert_names(str(error.value), "Draws.generate()", "67108864")


HARMLESS_IMAGES = [
    pytest.param(_png(), id="W08-png-bytes"),
    pytest.param(bytearray(_png()), id="a-bytearray"),
    pytest.param(np.full((16, 16, 3), 200, np.uint8), id="a-uint8-array"),
    pytest.param(np.full((16, 16, 3), 0.5), id="a-float-array-in-0-1"),
    pytest.param(np.full((16, 16), 200, np.uint8), id="a-grey-array"),
    pytest.param(Image.new("RGBA", (16, 16)), id="rgba"),
    pytest.param(Image.new("L", (16, 16)), id="grey"),
    pytest.param(Image.new("P", (16, 16)), id="a-palette"),
    pytest.param(Image.new("RGB", (1536, 1024)), id="another-size"),
    pytest.param(Image.new("RGB", (7, 3)), id="a-tiny-odd-size"),
    pytest.param(_png("I;16"), id="a-16-bit-png"),
]


@pytest.mark.parametrize("value", HARMLESS_IMAGES)
def test_a_harmless_image_form_is_converted_to_the_frame(value):
    chain = VChainPipeline(ScriptedReasoner(CAPTIONS), Draws("generate", value), reasoning=FRAME).think(PROMPT)
    assert chain.images[0].mode == "RGB" and chain.images[0].size == (16, 16)


@pytest.mark.parametrize(("value", "what"), WRONG_IMAGES[:6])
def test_a_wrong_edit_keeps_the_keyframes_and_the_paid_caption_before_it(value, what, tmp_path):
    folder = tmp_path / "run"
    reasoner = ScriptedReasoner(CAPTIONS)
    with pytest.raises(StageError) as error:
        VChainPipeline(reasoner, Draws("edit", value, at=2), reasoning=FRAME).think(PROMPT, folder)
    assert_names(str(error.value), "Draws.edit()", what)
    assert (error.value.step, error.value.index) == ("edit", 2)
    assert len(ThoughtChain.load(folder).images) == 2
    assert [a["index"] for a in read_manifest(folder)["stages"]["reasoning"]["answers"]] == [1, 2]
    again, fixed = ScriptedReasoner(CAPTIONS), Draws("edit", value, at=0)  # the same backend, mended
    chain = VChainPipeline(again, fixed, reasoning=FRAME).think(PROMPT, folder)
    assert len(chain.images) == 3 and again.calls == []  # the caption of keyframe 2 was not paid for twice
    assert [kind for kind, _, _ in fixed.calls] == ["edit"]


@pytest.mark.parametrize(
    ("value", "what"),
    [
        pytest.param(None, "NoneType", id="none"),
        pytest.param("", "blank", id="blank"),
        pytest.param(42, "int", id="a-number"),
        pytest.param({"prompt": "x"}, "dict", id="a-dict"),
    ],
)
def test_a_wrong_rewrite_is_named(value, what):
    pipe = VChainPipeline(Answers("augment_prompt", value), generator=ToyGenerator())
    with pytest.raises(StageError) as error:
        pipe(PROMPT, variant="t2v-prompt-aug")
    assert_names(str(error.value), "augment_prompt()", what)


# ---------------------------------------------------------------------------- generators, tuners, interpolators


class Samples(ToyGenerator):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def sample(self, prompt, *, seed=None, **overrides):
        return self.value


WRONG_FRAMES = [
    pytest.param(None, "NoneType", id="none"),
    pytest.param([], "list", id="no-frames"),
    pytest.param(np.zeros((1, 4, 4, 3), np.uint8), "ndarray", id="an-array"),
    pytest.param([np.zeros((4, 4, 3), np.uint8)], "list", id="a-list-of-arrays"),
    pytest.param([None], "list", id="a-list-of-none"),
    pytest.param(torch.zeros(1, 3, 4, 4), "Tensor", id="a-tensor"),
]


@pytest.mark.parametrize(("value", "what"), WRONG_FRAMES)
def test_wrong_frames_from_a_generator_are_named_and_no_video_is_written(finished_run, value, what):
    (finished_run / "video.mp4").unlink()
    with pytest.raises(StageError) as error:
        toy_pipeline(generator=Samples(value))(PROMPT, finished_run, seed=3)
    assert_names(str(error.value), "Samples.sample()", what)
    assert error.value.stage == "sampling" and not (finished_run / "video.mp4").exists()
    stages = read_manifest(finished_run)["stages"]
    assert stages["sampling"]["status"] == "failed" and stages["tuning"]["status"] == "done"
    assert (finished_run / "lora").is_dir() and len(ThoughtChain.load(finished_run).images) == 3


class Tunes(Tuner):
    def __init__(self, value):
        self.value = value

    def tune(self, generator, pairs):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@pytest.mark.parametrize(
    ("value", "what"),
    [
        pytest.param(None, "NoneType", id="none"),
        pytest.param({"lora_A": torch.zeros(2)}, "dict", id="a-state-dict"),
        pytest.param("lora/", "str", id="a-path"),
        pytest.param(RuntimeError("CUDA error: misaligned address"), "RuntimeError", id="an-exception"),
    ],
)
def test_a_wrong_adapter_from_a_tuner_is_named_and_the_chain_stays(thought_run, value, what):
    with pytest.raises(StageError) as error:
        toy_pipeline(tuner=Tunes(value))(PROMPT, thought_run)
    assert_names(str(error.value), "Tunes.tune()", what)
    assert error.value.stage == "tuning" and not (thought_run / "lora").exists()
    assert read_manifest(thought_run)["stages"]["tuning"]["status"] == "failed"
    assert len(ThoughtChain.load(thought_run).images) == 3 and not (thought_run / "video.mp4").exists()


class Interpolates(Interpolator):
    def __init__(self, value):
        self.value = value

    def interpolate(self, keyframes, num_frames):
        return self.value


@pytest.mark.parametrize(("value", "what"), WRONG_FRAMES)
def test_wrong_frames_from_an_interpolator_are_named(tmp_path, value, what):
    pipe = toy_pipeline(interpolator=Interpolates(value))
    with pytest.raises(StageError) as error:
        pipe(PROMPT, tmp_path / "run", variant="no-sparse-tuning")
    assert_names(str(error.value), "Interpolates.interpolate()", what)
    assert not (tmp_path / "run" / "video.mp4").exists()


# ---------------------------------------------------------------------------------------- server answers


def _think(server, folder=None):
    reasoner, images = openai_backends(server.base_url)
    return VChainPipeline(reasoner, images, reasoning=FRAME).think(PROMPT, folder)


CHAT_ANSWERS = [
    pytest.param(HtmlPage(), id="a-200-that-is-a-web-page"),
    pytest.param(Fault(status=200, body={"status": "ok"}), id="a-200-that-is-other-json"),
    pytest.param(Reply.malformed(), id="malformed-json"),
    pytest.param(Reply(content='{"thoughts": "only this"}'), id="json-missing-fields"),
    pytest.param(Reply(content=None), id="no-content"),
    pytest.param(Reply(content='{"caption": "half', finish_reason="length"), id="cut-at-the-length-limit"),
]

IMAGE_ANSWERS = [
    pytest.param(HtmlPage(), id="a-200-that-is-a-web-page"),
    pytest.param(Fault(status=200, body={"created": 0, "data": []}), id="no-image-data"),
    pytest.param(RawImage(b64="%%% not base64 %%%"), id="not-base64"),
    pytest.param(RawImage(b"a text file"), id="base64-of-text"),
    pytest.param(RawImage(png_bytes(draw_image("x", 64, 64))[:80]), id="a-truncated-png"),
]


@pytest.mark.parametrize("answer", CHAT_ANSWERS)
def test_a_bad_chat_answer_is_asked_again_and_the_run_goes_on(faulty_server, answer):
    faulty_server.queue("chat", answer)
    assert len(_think(faulty_server).images) == 3


@pytest.mark.parametrize("answer", CHAT_ANSWERS)
def test_a_chat_answer_bad_every_time_fails_naming_the_step_after_a_bounded_number_of_asks(faulty_server, answer):
    faulty_server.queue("chat", *[answer] * 3)
    with pytest.raises(StageError) as error:
        _think(faulty_server)
    assert_names(str(error.value), "reasoning/plan", "3 times")
    assert len(faulty_server.requests) == 3


@pytest.mark.parametrize("answer", IMAGE_ANSWERS)
def test_a_bad_image_answer_is_asked_again_and_the_run_goes_on(faulty_server, answer):
    faulty_server.queue("generate", answer)
    assert len(_think(faulty_server).images) == 3


@pytest.mark.parametrize("answer", IMAGE_ANSWERS)
def test_an_image_answer_bad_every_time_fails_naming_the_step_and_keeps_the_plan(faulty_server, answer, tmp_path):
    faulty_server.queue("generate", *[answer] * 3)
    with pytest.raises(StageError) as error:
        _think(faulty_server, tmp_path / "run")
    assert_names(str(error.value), "reasoning/generate", "3 times")
    assert ThoughtChain.load(tmp_path / "run").thoughts  # the paid plan is on disk


def test_a_decompression_bomb_from_the_image_api_names_the_pixel_limit(faulty_server, bomb_png):
    faulty_server.queue("edit", *[RawImage(bomb_png)] * 3)
    with pytest.raises(StageError) as error:
        _think(faulty_server)
    assert_names(str(error.value), "reasoning/edit (keyframe 1)", "67108864")


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        pytest.param(Reply(refusal="I can't help with that."), "refused", id="a-refusal"),
        pytest.param(Reply(content="{}", finish_reason="content_filter"), "content filter", id="a-content-filter"),
    ],
)
def test_a_refusal_is_not_asked_again(faulty_server, answer, what):
    faulty_server.queue("chat", answer)
    with pytest.raises(StageError) as error:
        _think(faulty_server)
    assert_names(str(error.value), "reasoning/plan", what)
    assert len(faulty_server.requests) == 1


@pytest.mark.parametrize("size", [(7, 3), (4000, 100), (64, 4000)])
def test_an_image_of_any_size_is_brought_to_the_frame(faulty_server, size):
    faulty_server.queue("generate", Image.new("RGBA", size, (10, 200, 30, 128)))
    chain = _think(faulty_server)
    assert chain.images[0].size == (16, 16) and chain.images[0].mode == "RGB"


def test_jpeg_bytes_from_an_image_backend_are_decoded():
    buffer = io.BytesIO()
    draw_image("x", 16, 16).save(buffer, format="JPEG")
    chain = VChainPipeline(ScriptedReasoner(CAPTIONS), Draws("generate", buffer.getvalue()), reasoning=FRAME).think(
        PROMPT
    )
    assert chain.images[0].size == (16, 16)


def test_the_record_names_the_call_that_answered_wrong(tmp_path):
    """The records name the failing call: step, keyframe and outcome of each attempt."""
    pipe = toy_pipeline(image_backend=Draws("edit", None, at=1))
    with pytest.raises(StageError):
        pipe.think(PROMPT, tmp_path / "run")
    calls = read_manifest(tmp_path / "run")["calls"]
    assert [(c["step"], c["index"], c["outcome"]) for c in calls] == [
        ("plan", None, "ok"),
        ("generate", 0, "ok"),
        ("perception", 1, "ok"),
        ("edit", 1, "failed"),
    ]
    assert work_done(pipe)["images"] == 2
