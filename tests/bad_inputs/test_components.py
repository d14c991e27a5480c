"""Class 1, components: the wrong object in a component's place is refused when it is passed, naming the
keyword, the interface and what was given, before any model call."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.bad_inputs import NO_WORK, PROMPT, CountingGenerator, CountingTuner, assert_names, toy_pipeline, work_done
from vchain import ThoughtChain, VChainPipeline
from vchain.errors import ConfigurationError
from vchain.reasoning import ReasoningConfig
from vchain.testing import DrawingImageBackend, ScriptedReasoner, example_plan
from vchain.testing.toy import ToyGenerator
from vchain.tuning import LoRAConfig, LoRATuner


class DuckReasoner:
    """Has the methods of a reasoner, but is not a `vchain.interfaces.Reasoner`."""

    def plan(self, prompt):
        return example_plan(prompt)

    def next_keyframe(self, chain, composite):
        raise AssertionError("never called")


def _adapter():
    return LoRATuner(steps=1).tune(ToyGenerator(), [(Image.new("RGB", (4, 4)), "a caption")])


# (keyword, value as a factory, fragments the message must name)
WRONG_COMPONENTS = [
    pytest.param(
        "reasoner",
        DrawingImageBackend,
        ["reasoner", "Reasoner", "DrawingImageBackend", "image_backend="],
        id="K01-swapped-image-backend-as-reasoner",
    ),
    pytest.param(
        "image_backend",
        ScriptedReasoner,
        ["image_backend", "ImageBackend", "ScriptedReasoner", "reasoner="],
        id="K01-swapped-reasoner-as-image-backend",
    ),
    pytest.param(
        "reasoner",
        lambda: ScriptedReasoner,
        ["reasoner", "the class ScriptedReasoner", "ScriptedReasoner(...)"],
        id="K03-the-class-not-an-instance",
    ),
    pytest.param(
        "generator",
        lambda: "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        ["generator", "VideoGenerator", "WanVideoGenerator.from_pretrained('Wan-AI/Wan2.1-T2V-1.3B-Diffusers')"],
        id="K06-a-hub-id-string",
    ),
    pytest.param(
        "reasoner", DuckReasoner, ["reasoner", "vchain.interfaces.Reasoner", "DuckReasoner"], id="duck-typed-reasoner"
    ),
    pytest.param("reasoner", lambda: ScriptedReasoner().plan, ["reasoner", "Reasoner", "method"], id="a-bound-method"),
    pytest.param("reasoner", lambda: "gpt-4o", ["reasoner", "Reasoner", "str"], id="a-model-name"),
    pytest.param(
        "image_backend", lambda: Image.new("RGB", (4, 4)), ["image_backend", "ImageBackend", "Image"], id="a-pil-image"
    ),
    pytest.param(
        "generator",
        lambda: ToyGenerator,
        ["generator", "the class ToyGenerator", "ToyGenerator(...)"],
        id="a-generator-class",
    ),
    pytest.param(
        "generator",
        lambda: ToyGenerator().denoiser,
        ["generator", "VideoGenerator", "ToyDenoiser"],
        id="a-torch-module",
    ),
    pytest.param(
        "generator",
        lambda: CountingTuner(),
        ["generator", "VideoGenerator", "CountingTuner", "tuner="],
        id="a-tuner-as-generator",
    ),
    pytest.param("tuner", lambda: LoRAConfig(), ["tuner", "Tuner", "LoRAConfig"], id="a-config-not-a-tuner"),
    pytest.param("tuner", lambda: LoRATuner, ["tuner", "the class LoRATuner"], id="a-tuner-class"),
    pytest.param("tuner", _adapter, ["tuner", "Tuner", "LoRAAdapter"], id="an-adapter-not-a-tuner"),
    pytest.param("tuner", lambda: "lora", ["tuner", "Tuner", "str"], id="a-string-tuner"),
    pytest.param(
        "interpolator",
        lambda: lambda keyframes, n: keyframes,
        ["interpolator", "Interpolator", "function"],
        id="a-function-interpolator",
    ),
    pytest.param(
        "interpolator",
        CountingGenerator,
        ["interpolator", "Interpolator", "CountingGenerator", "generator="],
        id="a-generator-as-interpolator",
    ),
]


@pytest.mark.parametrize(("keyword", "make", "fragments"), WRONG_COMPONENTS)
def test_a_wrong_component_is_refused_at_construction(keyword, make, fragments):
    right = toy_pipeline()
    parts = {k: getattr(right, k) for k in ("reasoner", "image_backend", "generator", "tuner")}
    with pytest.raises(ConfigurationError) as error:
        VChainPipeline(**{**parts, keyword: make()})
    assert_names(str(error.value), *fragments)
    assert work_done(right) == NO_WORK


def test_K04_a_diffusers_pipeline_not_wrapped_points_at_the_wrapper(wan):
    with pytest.raises(ConfigurationError) as error:
        VChainPipeline(generator=wan.pipeline)
    assert_names(str(error.value), "generator", "WanPipeline", "WanVideoGenerator(pipeline)")


@pytest.mark.parametrize(
    ("keyword", "value", "fragments"),
    [
        pytest.param(
            "reasoning",
            {"max_keyframes": 4},
            ["reasoning", "ReasoningConfig(**{'max_keyframes': 4})"],
            id="K07-a-dict-for-the-config",
        ),
        pytest.param("reasoning", LoRAConfig(), ["reasoning", "ReasoningConfig", "LoRAConfig"], id="another-config"),
        pytest.param("reasoning", "default", ["reasoning", "ReasoningConfig", "str"], id="a-string-config"),
        pytest.param("save_adapter", "yes", ["save_adapter", "'yes'"], id="save-adapter-a-string"),
        pytest.param("save_adapter", 1, ["save_adapter", "1"], id="save-adapter-an-int"),
    ],
)
def test_a_wrong_setting_of_the_pipeline_is_refused_at_construction(keyword, value, fragments):
    with pytest.raises(ConfigurationError) as error:
        VChainPipeline(ScriptedReasoner(), DrawingImageBackend(), **{keyword: value})
    assert_names(str(error.value), *fragments)


@pytest.mark.parametrize(
    ("pipeline", "fragments"),
    [
        pytest.param(None, ["pipeline", "WanPipeline", "NoneType", "from_pretrained"], id="S15-none"),
        pytest.param(
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            ["WanVideoGenerator.from_pretrained('Wan-AI/Wan2.1-T2V-1.3B-Diffusers')"],
            id="S16-a-hub-id",
        ),
        pytest.param(
            "./checkpoints/wan", ["WanVideoGenerator.from_pretrained('./checkpoints/wan')"], id="a-folder-string"
        ),
        pytest.param({"transformer": None}, ["pipeline", "WanPipeline", "dict"], id="a-dict"),
        pytest.param(ToyGenerator(), ["pipeline", "WanPipeline", "ToyGenerator"], id="a-vchain-generator"),
    ],
)
def test_the_wan_wrapper_refuses_what_is_not_a_wan_pipeline(pipeline, fragments):
    from vchain.backends.wan import WanVideoGenerator

    with pytest.raises(ConfigurationError) as error:
        WanVideoGenerator(pipeline)
    assert_names(str(error.value), *fragments)


def test_the_wan_wrapper_refuses_a_transformer_alone(wan):
    from vchain.backends.wan import WanVideoGenerator

    with pytest.raises(ConfigurationError) as error:
        WanVideoGenerator(wan.pipeline.transformer)
    assert_names(str(error.value), "pipeline", "WanPipeline", "WanTransformer3DModel")


# ------------------------------------------------------------------------------- what stages are given


def _plan_only_chain() -> ThoughtChain:
    return ThoughtChain.from_plan(PROMPT, example_plan(PROMPT))


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        pytest.param(lambda p: p.tune(PROMPT), ["chain", "ThoughtChain", "str"], id="X18-tune-a-prompt"),
        pytest.param(lambda p: p.tune(None), ["chain", "ThoughtChain", "NoneType"], id="tune-none"),
        pytest.param(lambda p: p.tune([("image", "caption")]), ["chain", "ThoughtChain", "list"], id="tune-pairs"),
        pytest.param(
            lambda p: p.tune(_plan_only_chain()),
            ["chain", "0 images", "finish reasoning"],
            id="tune-a-chain-without-keyframes",
        ),
        pytest.param(lambda p: p.sample(123), ["chain", "ThoughtChain", "int"], id="sample-a-number"),
        pytest.param(
            lambda p: p.sample(PROMPT, adapter="runs/demo/lora"),
            ["adapter", "tuner.load_adapter"],
            id="X09-an-adapter-path",
        ),
        pytest.param(
            lambda p: p.sample(PROMPT, adapter=p.tuner),
            ["adapter", "Adapter", "CountingTuner"],
            id="a-tuner-for-the-adapter",
        ),
        pytest.param(
            lambda p: p.sample(PROMPT, adapter={"lora_A": 1}),
            ["adapter", "Adapter", "dict"],
            id="a-state-dict-for-the-adapter",
        ),
        pytest.param(
            lambda p: p.think(_plan_only_chain()), ["prompt", "non-empty string", "ThoughtChain"], id="think-a-chain"
        ),
    ],
)
def test_a_wrong_argument_to_a_stage_is_refused_before_any_model_call(call, fragments):
    pipe = toy_pipeline()
    with pytest.raises(ConfigurationError) as error:
        call(pipe)
    assert_names(str(error.value), *fragments)
    assert work_done(pipe) == NO_WORK


@pytest.mark.parametrize(
    ("components", "variant", "fragments"),
    [
        pytest.param(
            {"generator": CountingGenerator()},
            "vchain",
            ["reasoner", "image_backend", "reasoning"],
            id="vchain-without-a-reasoner",
        ),
        pytest.param(
            {"reasoner": ScriptedReasoner(), "image_backend": DrawingImageBackend()},
            "vchain",
            ["generator", "tuner", "tuning"],
            id="vchain-without-a-generator",
        ),
        pytest.param(
            {"reasoner": ScriptedReasoner(), "image_backend": DrawingImageBackend(), "generator": CountingGenerator()},
            "vchain",
            ["tuner", "tuning"],
            id="vchain-without-a-tuner",
        ),
        pytest.param(
            {"generator": CountingGenerator()}, "t2v-prompt-aug", ["reasoner"], id="augment-without-a-reasoner"
        ),
        pytest.param({"reasoner": ScriptedReasoner()}, "t2v", ["generator"], id="t2v-without-a-generator"),
    ],
)
def test_a_missing_component_is_named_before_any_work(components, variant, fragments, tmp_path):
    pipe = VChainPipeline(**components)
    with pytest.raises(ConfigurationError) as error:
        pipe(PROMPT, tmp_path / "run", variant=variant)
    assert_names(str(error.value), *fragments)
    assert work_done(pipe) == NO_WORK
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_pipeline_config_is_never_changed_under_it():
    config = ReasoningConfig(max_keyframes=3)
    pipe = VChainPipeline(ScriptedReasoner(), DrawingImageBackend(), reasoning=config)
    with pytest.raises(Exception, match="frozen"):
        pipe.reasoning.max_keyframes = 5
    assert config.max_keyframes == 3
