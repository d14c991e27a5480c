"""Class 2, numbers and options: every setting (configs, arguments, CLI flags) is checked for type and range
before any work; the message names the setting and the value; NaN, inf, bools for ints, strings for
numbers and out-of-range values are never accepted."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.bad_inputs import (
    NO_WORK,
    PROMPT,
    CountingGenerator,
    assert_names,
    assert_usage_error,
    read_manifest,
    server_flags,
    toy_pipeline,
    work_done,
)
from vchain import VChainPipeline
from vchain.errors import ConfigurationError
from vchain.reasoning import ReasoningConfig
from vchain.testing import DrawingImageBackend, ScriptedReasoner
from vchain.tuning import LoRATuner

NAN, INF = math.nan, math.inf


def _config_error(make, *fragments):
    with pytest.raises(ConfigurationError) as error:
        make()
    assert_names(str(error.value), *fragments)


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [
        pytest.param({"max_keyframes": "8"}, ["max_keyframes", "'8'"], id="R02-a-string"),
        pytest.param({"max_keyframes": 2.5}, ["max_keyframes", "2.5"], id="a-float-for-an-int"),
        pytest.param({"max_keyframes": True}, ["max_keyframes", "True"], id="a-bool-for-an-int"),
        pytest.param({"max_keyframes": 1}, ["max_keyframes", "1"], id="one-keyframe"),
        pytest.param({"max_keyframes": 10**6}, ["max_keyframes", "1000000"], id="a-million-keyframes"),
        pytest.param({"max_keyframes": None}, ["max_keyframes", "None"], id="none"),
        pytest.param({"max_attempts": 0}, ["max_attempts", "0"], id="no-attempts"),
        pytest.param({"max_attempts": NAN}, ["max_attempts", "nan"], id="nan-attempts"),
        pytest.param({"composite_max_pixels": 10}, ["composite_max_pixels", "10"], id="tiny-composite"),
        pytest.param({"composite_max_pixels": -1}, ["composite_max_pixels", "-1"], id="negative-composite"),
        pytest.param({"edit_inputs": "all"}, ["edit_inputs", "'all'"], id="unknown-choice"),
        pytest.param({"edit_inputs": ""}, ["edit_inputs", "''"], id="empty-choice"),
        pytest.param({"width": 0}, ["width", "0"], id="zero-width"),
        pytest.param({"width": -832}, ["width", "-832"], id="negative-width"),
        pytest.param({"height": "480"}, ["height", "'480'"], id="a-string-height"),
        pytest.param({"height": 10**9}, ["height", "1000000000"], id="a-huge-height"),
        pytest.param({"max_keyframe": 4}, ["max_keyframe", "max_keyframes"], id="a-typo-names-the-known-fields"),
    ],
)
def test_reasoning_settings(fields, fragments):
    _config_error(lambda: ReasoningConfig(**fields), *fragments)


LORA_ROWS = [
    pytest.param({"rank": True}, ["rank", "True"], id="T04-rank-true"),
    pytest.param({"rank": 0}, ["rank", "0"], id="rank-zero"),
    pytest.param({"rank": 2.5}, ["rank", "2.5"], id="rank-a-float"),
    pytest.param({"rank": "16"}, ["rank", "'16'"], id="rank-a-string"),
    pytest.param({"rank": 2**40}, ["rank", str(2**40)], id="rank-huge"),
    pytest.param({"alpha": NAN}, ["alpha", "nan"], id="alpha-nan"),
    pytest.param({"alpha": -16}, ["alpha", "-16"], id="alpha-negative"),
    pytest.param({"learning_rate": INF}, ["learning_rate", "inf"], id="T03-lr-inf"),
    pytest.param({"learning_rate": NAN}, ["learning_rate", "nan"], id="lr-nan"),
    pytest.param({"learning_rate": 0}, ["learning_rate", "0"], id="lr-zero"),
    pytest.param({"learning_rate": -1e-4}, ["learning_rate", "-0.0001"], id="lr-negative"),
    pytest.param({"learning_rate": 1e6}, ["learning_rate", "1000000"], id="lr-a-million"),
    pytest.param({"learning_rate": "1e-4"}, ["learning_rate", "'1e-4'"], id="lr-a-string"),
    pytest.param({"steps": 0}, ["steps", "0"], id="no-steps"),
    pytest.param({"steps": 2.5}, ["steps", "2.5"], id="steps-a-float"),
    pytest.param({"steps": -300}, ["steps", "-300"], id="negative-steps"),
    pytest.param({"batch_size": 0}, ["batch_size", "0"], id="batch-zero"),
    pytest.param({"weighting_scheme": "cosine"}, ["weighting_scheme", "'cosine'"], id="unknown-scheme"),
    pytest.param({"logit_std": 0}, ["logit_std", "0"], id="logit-std-zero"),
    pytest.param({"logit_mean": INF}, ["logit_mean", "inf"], id="logit-mean-inf"),
    pytest.param({"height": -32}, ["height", "-32"], id="negative-training-height"),
    pytest.param({"gradient_checkpointing": "yes"}, ["gradient_checkpointing", "'yes'"], id="a-string-bool"),
    pytest.param({"gradient_checkpointing": 1}, ["gradient_checkpointing", "1"], id="an-int-bool"),
    pytest.param({"max_grad_norm": NAN}, ["max_grad_norm", "nan"], id="grad-norm-nan"),
    pytest.param({"max_grad_norm": 0}, ["max_grad_norm", "0"], id="grad-norm-zero"),
    pytest.param({"weight_decay": -0.1}, ["weight_decay", "-0.1"], id="negative-decay"),
    pytest.param({"target_modules": ()}, ["target_modules"], id="no-targets"),
    pytest.param({"target_modules": ("",)}, ["target_modules", "''"], id="a-blank-target"),
    pytest.param({"target_modules": "to_q"}, ["target_modules", "'to_q'"], id="a-string-for-the-targets"),
    pytest.param({"log_every": 0}, ["log_every", "0"], id="log-every-zero"),
    pytest.param({"seed": -1}, ["seed", "-1"], id="negative-seed"),
    pytest.param({"seed": 2**63}, ["seed", str(2**63)], id="seed-beyond-torch"),
    pytest.param({"seed": "0"}, ["seed", "'0'"], id="a-string-seed"),
    pytest.param({"merge_for_sampling": "false"}, ["merge_for_sampling", "'false'"], id="a-string-flag"),
    pytest.param({"rnak": 4}, ["rnak", "rank"], id="a-typo-names-the-known-fields"),
]


@pytest.mark.parametrize(("fields", "fragments"), LORA_ROWS)
def test_tuning_settings(fields, fragments):
    _config_error(lambda: LoRATuner(**fields), *fragments)


@pytest.mark.parametrize(("fields", "fragments"), LORA_ROWS[:8])
def test_wan_tuning_settings(fields, fragments):
    from vchain.backends.wan import WanLoRATuner

    _config_error(lambda: WanLoRATuner(**fields), *fragments)


SAMPLING_ROWS = [
    pytest.param({"guidance_scale": NAN}, ["guidance_scale", "nan"], id="C27-guidance-nan"),
    pytest.param({"guidance_scale": "5"}, ["guidance_scale", "'5'"], id="S07-guidance-a-string"),
    pytest.param({"guidance_scale": INF}, ["guidance_scale", "inf"], id="guidance-inf"),
    pytest.param({"guidance_scale": -1.0}, ["guidance_scale", "-1"], id="guidance-negative"),
    pytest.param({"guidance_scale_2": NAN}, ["guidance_scale_2", "nan"], id="second-guidance-nan"),
    pytest.param({"height": 33}, ["height", "33"], id="height-not-a-multiple"),
    pytest.param({"height": -32}, ["height", "-32"], id="height-negative"),
    pytest.param({"width": 2.5}, ["width", "2.5"], id="width-a-float"),
    pytest.param({"width": True}, ["width", "True"], id="width-a-bool"),
    pytest.param({"num_frames": 80}, ["num_frames", "80"], id="frames-not-4k-plus-1"),
    pytest.param({"num_frames": 0}, ["num_frames", "0"], id="no-frames"),
    pytest.param({"num_inference_steps": 0}, ["num_inference_steps", "0"], id="no-steps"),
    pytest.param({"num_inference_steps": 10**6}, ["num_inference_steps", "1000000"], id="a-million-steps"),
    pytest.param({"max_sequence_length": 513}, ["max_sequence_length", "513"], id="beyond-the-encoder"),
    pytest.param({"fps": 0}, ["fps", "0"], id="zero-fps"),
    pytest.param({"fps": 2.5}, ["fps", "2.5"], id="fractional-fps"),
    pytest.param({"cache": "on"}, ["cache", "'on'"], id="unknown-cache"),
    pytest.param({"cache_threshold": 0}, ["cache_threshold", "0"], id="cache-threshold-zero"),
    pytest.param({"negative_prompt": 5}, ["negative_prompt", "5"], id="a-number-for-a-prompt"),
    pytest.param({"guidance": 5.0}, ["guidance", "guidance_scale"], id="a-typo-names-the-known-fields"),
]


@pytest.mark.parametrize(("fields", "fragments"), SAMPLING_ROWS)
def test_sampling_settings_of_the_wan_wrapper(wan, fields, fragments):
    from vchain.backends.wan import WanVideoGenerator

    _config_error(lambda: WanVideoGenerator(wan.pipeline, **{**wan.config.to_dict(), **fields}), *fragments)


@pytest.mark.parametrize(("fields", "fragments"), SAMPLING_ROWS[:6])
def test_sampling_settings_are_checked_before_any_weight_is_read(tiny_wan_dir, no_weights_load, fields, fragments):
    from vchain.backends.wan import WanVideoGenerator

    _config_error(lambda: WanVideoGenerator.from_pretrained(tiny_wan_dir, **fields), *fragments)


@pytest.mark.parametrize(("fields", "fragments"), SAMPLING_ROWS[:6])
def test_a_sampling_override_is_refused_before_sampling(wan, fields, fragments, monkeypatch):
    calls = []
    monkeypatch.setattr(type(wan.pipeline), "__call__", lambda *a, **k: calls.append(1))
    pipe = VChainPipeline(generator=wan)
    _config_error(lambda: pipe.sample(PROMPT, **fields), *fragments)
    assert calls == []


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        pytest.param({"dtype": "int8"}, ["dtype", "'int8'"], id="an-integer-dtype"),
        pytest.param({"dtype": "bf16"}, ["dtype", "'bf16'"], id="a-dtype-nickname"),
        pytest.param({"dtype": torch.int32}, ["dtype", "torch.int32"], id="a-torch-integer-dtype"),
        pytest.param({"dtype": 16}, ["dtype", "16"], id="a-number"),
        pytest.param({"dtype": "float32", "torch_dtype": "float16"}, ["dtype", "torch_dtype"], id="both-names"),
    ],
)
def test_dtypes_are_checked_before_any_weight_is_read(tiny_wan_dir, no_weights_load, kwargs, fragments):
    from vchain.backends.wan import WanVideoGenerator

    _config_error(lambda: WanVideoGenerator.from_pretrained(tiny_wan_dir, **kwargs), *fragments)


@pytest.mark.parametrize("output_type", ["mp4", "pt", "", None])
def test_an_unknown_output_type_is_named(wan, output_type):
    _config_error(lambda: wan.sample("a red egg", output_type=output_type), "output_type", repr(output_type))


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        pytest.param(
            lambda o: o.OpenAIReasoner(model="", base_url="http://localhost:1/v1"),
            ["model", "''"],
            id="an-empty-model",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(temperature=NAN, base_url="http://localhost:1/v1"),
            ["temperature", "nan"],
            id="temperature-nan",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(temperature=True, base_url="http://localhost:1/v1"),
            ["temperature", "True"],
            id="temperature-a-bool",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(temperature="0.7", base_url="http://localhost:1/v1"),
            ["temperature", "'0.7'"],
            id="temperature-a-string",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(image_detail="max", base_url="http://localhost:1/v1"),
            ["image_detail", "'max'"],
            id="unknown-detail",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(timeout=NAN, base_url="http://localhost:1/v1"),
            ["timeout", "nan"],
            id="timeout-nan",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(timeout=0, base_url="http://localhost:1/v1"),
            ["timeout", "0"],
            id="timeout-zero",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(timeout=-1, base_url="http://localhost:1/v1"),
            ["timeout", "-1"],
            id="timeout-negative",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(max_retries=2.5, base_url="http://localhost:1/v1"),
            ["max_retries", "2.5"],
            id="retries-a-float",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(max_retries=True, base_url="http://localhost:1/v1"),
            ["max_retries", "True"],
            id="retries-a-bool",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(max_retries=-1, base_url="http://localhost:1/v1"),
            ["max_retries", "-1"],
            id="retries-negative",
        ),
        pytest.param(
            lambda o: o.OpenAIReasoner(base_url="not-a-url"), ["base_url", "'not-a-url'"], id="C12-not-a-url"
        ),
        pytest.param(lambda o: o.OpenAIReasoner(base_url="ftp://example.com/v1"), ["base_url", "ftp://"], id="ftp"),
        pytest.param(lambda o: o.OpenAIReasoner(base_url="http://"), ["base_url", "'http://'"], id="no-host"),
        pytest.param(
            lambda o: o.OpenAIReasoner(base_url="http://local host/v1"),
            ["base_url", "local host"],
            id="a-space-in-the-host",
        ),
        pytest.param(
            lambda o: o.OpenAIImageBackend(size="1024x1024 ", base_url="http://localhost:1/v1"),
            ["size", "'1024x1024 '"],
            id="a-size-with-a-space",
        ),
        pytest.param(
            lambda o: o.OpenAIImageBackend(quality="ultra", base_url="http://localhost:1/v1"),
            ["quality", "'ultra'"],
            id="unknown-quality",
        ),
    ],
)
def test_openai_backend_settings(make, fragments):
    from vchain.backends import openai as backends

    _config_error(lambda: make(backends), *fragments)


# ------------------------------------------------------------------------------------ stage arguments


@pytest.mark.parametrize(
    ("seed", "fragments"),
    [
        pytest.param(2**70, ["seed", str(2**70)], id="X07-beyond-torch"),
        pytest.param("0", ["seed", "'0'"], id="X08-a-string"),
        pytest.param(-1, ["seed", "-1"], id="negative"),
        pytest.param(1.5, ["seed", "1.5"], id="a-float"),
        pytest.param(True, ["seed", "True"], id="a-bool"),
        pytest.param(NAN, ["seed", "nan"], id="nan"),
    ],
)
def test_a_bad_seed_is_refused_before_any_work(seed, fragments, tmp_path):
    pipe = toy_pipeline()
    _config_error(lambda: pipe.sample(PROMPT, seed=seed), *fragments)
    _config_error(lambda: pipe(PROMPT, tmp_path / "run", seed=seed), *fragments)
    assert work_done(pipe) == NO_WORK
    assert not (tmp_path / "run" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        pytest.param(
            lambda p, d: p(PROMPT, d, variant="VChain"), ["variant", "'VChain'", "vchain"], id="variant-case"
        ),
        pytest.param(lambda p, d: p(PROMPT, d, variant=""), ["variant", "''"], id="variant-empty"),
        pytest.param(
            lambda p, d: p(PROMPT, d, stop_after="sampling"), ["stop_after", "'sampling'"], id="stop-after-the-last"
        ),
        pytest.param(lambda p, d: p(PROMPT, d, stop_after="reason"), ["stop_after", "'reason'"], id="stop-after-typo"),
        pytest.param(
            lambda p, d: p(PROMPT, d, variant="t2v", stop_after="tuning"),
            ["stop_after", "'tuning'", "t2v"],
            id="stop-after-a-stage-the-variant-lacks",
        ),
        pytest.param(lambda p, d: p(PROMPT, d, overwrite="yes"), ["overwrite", "'yes'"], id="overwrite-a-string"),
        pytest.param(lambda p, d: p.think(PROMPT, d, overwrite=1), ["overwrite", "1"], id="overwrite-an-int"),
        pytest.param(lambda p, d: p("   ", d), ["prompt", "'   '"], id="C37-a-blank-prompt"),
        pytest.param(lambda p, d: p(None, d), ["prompt", "None"], id="no-prompt"),
        pytest.param(lambda p, d: p(["An egg falls."], d), ["prompt", "['An egg falls.']"], id="a-list-of-prompts"),
    ],
)
def test_a_bad_run_argument_is_refused_before_any_work(call, fragments, tmp_path):
    pipe = toy_pipeline()
    _config_error(lambda: call(pipe, tmp_path / "run"), *fragments)
    assert work_done(pipe) == NO_WORK
    assert not (tmp_path / "run" / "manifest.json").exists()


@pytest.mark.parametrize(
    "tuner",
    [
        pytest.param(lambda: LoRATuner(target_modules=("nonexistent",), steps=1), id="T10-targets-that-match-nothing"),
        pytest.param(lambda: LoRATuner(target_modules=("proj_in", "to_q"), steps=1), id="one-target-matches-nothing"),
    ],
)
def test_tuner_targets_are_checked_before_reasoning(tuner, tmp_path):
    pipe = toy_pipeline(tuner=tuner())
    with pytest.raises(ConfigurationError) as error:
        pipe(PROMPT, tmp_path / "run")
    assert_names(str(error.value), "target_modules", "match no linear layer")
    assert work_done(pipe) == NO_WORK


@pytest.mark.parametrize(("height", "width"), [(30, 32), (32, 8), (48, 40)])
def test_a_tuning_size_the_model_cannot_take_is_refused_before_reasoning(wan, height, width, tmp_path):
    from vchain.backends.wan import WanLoRATuner

    pipe = VChainPipeline(ScriptedReasoner(), DrawingImageBackend(), wan, WanLoRATuner(height=height, width=width))
    with pytest.raises(ConfigurationError) as error:
        pipe(PROMPT, tmp_path / "run")
    assert_names(str(error.value), "multiple of 16")
    assert work_done(pipe)["reasoner"] == work_done(pipe)["images"] == 0


def test_keyframes_of_another_size_than_the_generator_renders_are_refused_at_construction():
    with pytest.raises(ConfigurationError) as error:
        VChainPipeline(
            ScriptedReasoner(),
            DrawingImageBackend(),
            CountingGenerator(),
            reasoning=ReasoningConfig(width=832, height=480),
        )
    assert_names(str(error.value), "832x480", "4x4")


# ---------------------------------------------------------------------------------------------- CLI

# Flags of `generate --variant t2v`: checked before the model loads.
GENERATE_T2V = [
    pytest.param(["--guidance", "nan"], ["guidance_scale", "nan"], id="C27-guidance-nan"),
    pytest.param(["--guidance", "inf"], ["guidance_scale", "inf"], id="guidance-inf"),
    pytest.param(["--guidance", "-1"], ["guidance_scale", "-1"], id="guidance-negative"),
    pytest.param(["--guidance", "abc"], ["--guidance", "'abc'"], id="guidance-not-a-number"),
    pytest.param(["--frames", "80"], ["num_frames", "80"], id="frames-not-4k-plus-1"),
    pytest.param(["--frames", "0"], ["num_frames", "0"], id="no-frames"),
    pytest.param(["--frames", "-5"], ["num_frames", "-5"], id="negative-frames"),
    pytest.param(["--height", "33"], ["height", "33"], id="height-not-a-multiple"),
    pytest.param(["--height", "abc"], ["--height", "'abc'"], id="height-not-a-number"),
    pytest.param(["--width", "0"], ["width", "0"], id="zero-width"),
    pytest.param(["--steps", "0"], ["num_inference_steps", "0"], id="no-steps"),
    pytest.param(["--steps", "2.5"], ["--steps", "'2.5'"], id="fractional-steps"),
    pytest.param(["--seed", "-1"], ["seed", "-1"], id="negative-seed"),
    pytest.param(["--seed", "abc"], ["--seed", "'abc'"], id="seed-not-a-number"),
    pytest.param(["--device", "cuda"], ["--device cuda", "CUDA"], id="C35-cuda-without-a-gpu"),
    pytest.param(["--device", "cuda:7"], ["cuda:7"], id="a-gpu-that-is-not-there"),
    pytest.param(["--device", "tpu"], ["--device", "tpu"], id="an-unknown-device"),
    pytest.param(["--device", ""], ["--device", "''"], id="an-empty-device"),
    pytest.param(["--dtype", "int8"], ["--dtype", "'int8'"], id="an-unknown-dtype"),
    pytest.param(["--variant", "VChain"], ["--variant", "'VChain'"], id="a-variant-in-capitals"),
]

# Flags of the full `generate` (the default variant reasons and tunes), with a local server.
GENERATE_VCHAIN = [
    pytest.param(
        ["--seed", "1180591620717411303424"], ["seed", "1180591620717411303424"], id="C18b-seed-beyond-torch"
    ),
    pytest.param(["--max-keyframes", "1"], ["max_keyframes", "1"], id="C60-one-keyframe"),
    pytest.param(["--max-keyframes", "0"], ["max_keyframes", "0"], id="no-keyframes"),
    pytest.param(["--max-keyframes", "65"], ["max_keyframes", "65"], id="too-many-keyframes"),
    pytest.param(["--max-keyframes", "2.5"], ["--max-keyframes", "'2.5'"], id="fractional-keyframes"),
    pytest.param(["--edit-inputs", "all"], ["--edit-inputs", "'all'"], id="an-unknown-edit-input"),
    pytest.param(["--rank", "0"], ["rank", "0"], id="rank-zero"),
    pytest.param(["--rank", "2.5"], ["--rank", "'2.5'"], id="fractional-rank"),
    pytest.param(["--alpha", "0"], ["alpha", "0"], id="alpha-zero"),
    pytest.param(["--alpha", "nan"], ["alpha", "nan"], id="alpha-nan"),
    pytest.param(["--lr", "inf"], ["learning_rate", "inf"], id="T03-lr-inf"),
    pytest.param(["--lr", "nan"], ["learning_rate", "nan"], id="lr-nan"),
    pytest.param(["--lr", "0"], ["learning_rate", "0"], id="lr-zero"),
    pytest.param(["--lr", "2"], ["learning_rate", "2"], id="lr-above-one"),
    pytest.param(["--tune-steps", "0"], ["steps", "0"], id="no-tuning-steps"),
    pytest.param(["--tune-steps", "-1"], ["steps", "-1"], id="negative-tuning-steps"),
    pytest.param(["--reasoner-model", ""], ["model", "''"], id="an-empty-reasoner-model"),
    pytest.param(["--image-model", "  "], ["model", "'  '"], id="a-blank-image-model"),
]


@pytest.fixture
def gpu_less(monkeypatch):
    """The checks see a torch without CUDA, whatever machine runs the tests."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize(("flags", "fragments"), GENERATE_T2V)
def test_generate_flags_are_checked_before_the_model_loads(cli, no_model_load, gpu_less, tmp_path, flags, fragments):
    result = cli("generate", PROMPT, "-o", tmp_path / "run", "--variant", "t2v", *flags)
    assert_usage_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "fragments"), GENERATE_VCHAIN)
def test_generate_flags_are_checked_before_any_request_or_load(
    cli, faulty_server, no_model_load, tmp_path, flags, fragments
):
    server = faulty_server
    result = cli("generate", PROMPT, "-o", tmp_path / "run", *server_flags(server), *flags)
    assert_usage_error(result, *fragments)
    assert server.requests == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        pytest.param("", ["--model", "''"], id="an-empty-model"),
        pytest.param("not an id", ["--model", "'not an id'"], id="not-an-id"),
        pytest.param("{tmp}/missing", ["--model", "missing"], id="a-folder-that-is-not-there"),
        pytest.param("{tmp}/notes.txt", ["--model", "notes.txt"], id="a-file"),
        pytest.param("{tmp}", ["--model", "model_index.json"], id="a-folder-that-is-not-a-checkpoint"),
    ],
)
def test_a_bad_model_flag_is_named_before_any_weight_is_read(cli, no_weights_load, tmp_path, model, fragments):
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("generate", PROMPT, "-o", tmp_path / "run", "--variant", "t2v", "--model", model.format(tmp=tmp_path))
    assert_usage_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(["think", "", "-o", "{tmp}/run"], ["prompt", "''"], id="C05-think-an-empty-prompt-without-a-key"),
        pytest.param(
            ["generate", "   ", "-o", "{tmp}/run", "--variant", "t2v", "--model", "{model}"],
            ["prompt", "'   '"],
            id="C37-generate-a-blank-prompt",
        ),
        pytest.param(
            ["generate", "", "-o", "{tmp}/run"], ["prompt", "''"], id="generate-an-empty-prompt-without-a-key"
        ),
    ],
)
def test_a_blank_prompt_is_named_before_the_key_or_the_model(cli, no_model_load, tmp_path, args, fragments):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    result = cli(*(a.format(tmp=tmp_path, model=tmp_path / "model") for a in args))
    assert_usage_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        pytest.param(["--base-url", "not-a-url"], ["base_url", "'not-a-url'"], id="C12-not-a-url"),
        pytest.param(["--base-url", "ftp://example.com/v1"], ["base_url", "ftp://"], id="an-ftp-url"),
        pytest.param(["--base-url", "http://"], ["base_url", "'http://'"], id="a-url-without-a-host"),
        pytest.param(["--max-keyframes", "1"], ["max_keyframes", "1"], id="one-keyframe"),
        pytest.param(["--reasoner-model", ""], ["model", "''"], id="an-empty-model"),
    ],
)
def test_think_flags_are_checked_before_any_request(cli, tmp_path, flags, fragments):
    result = cli("think", PROMPT, "-o", tmp_path / "run", *flags)
    assert_usage_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("command", "flags", "fragments"),
    [
        pytest.param("tune", ["--rank", "0"], ["rank", "0"], id="tune-rank-zero"),
        pytest.param("tune", ["--lr", "inf"], ["learning_rate", "inf"], id="tune-lr-inf"),
        pytest.param("tune", ["--tune-steps", "0"], ["steps", "0"], id="tune-no-steps"),
        pytest.param("tune", ["--height", "33"], ["height", "33"], id="tune-height-not-a-multiple"),
        pytest.param("tune", ["--device", "tpu"], ["--device", "tpu"], id="tune-unknown-device"),
        pytest.param("sample", ["--seed", "-1"], ["seed", "-1"], id="sample-negative-seed"),
        pytest.param("sample", ["--guidance", "nan"], ["guidance_scale", "nan"], id="sample-guidance-nan"),
        pytest.param("sample", ["--frames", "80"], ["num_frames", "80"], id="sample-frames-not-4k-plus-1"),
        pytest.param("sample", ["--steps", "x"], ["--steps", "'x'"], id="sample-steps-not-a-number"),
    ],
)
def test_tune_and_sample_flags_are_checked_before_the_model_loads(
    cli, no_model_load, thought_run, command, flags, fragments
):
    folder = thought_run
    record = (folder / "manifest.json").read_bytes()
    assert_usage_error(cli(command, "-o", folder, *flags), *fragments)
    assert (folder / "manifest.json").read_bytes() == record


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        pytest.param(["--cases", "1,1"], ["--cases", "'1,1'"], id="C55-a-case-twice"),
        pytest.param(["--cases", "a"], ["--cases", "'a'"], id="cases-not-numbers"),
        pytest.param(["--cases", "-1"], ["--cases", "'-1'"], id="a-negative-case"),
        pytest.param(["--cases", "25"], ["--cases", "'25'"], id="a-case-beyond-the-list"),
        pytest.param(["--cases", ""], ["--cases", "''"], id="no-cases"),
        pytest.param(["--variants", "foo"], ["--variants", "'foo'"], id="an-unknown-variant"),
        pytest.param(["--variants", "t2v", "t2v"], ["variants", "t2v"], id="a-variant-twice"),
    ],
)
def test_suite_flags_are_checked_before_any_run(cli, tmp_path, flags, fragments):
    assert_usage_error(cli("suite", "-o", tmp_path / "suite", "--demo", *flags), *fragments)
    assert not (tmp_path / "suite").exists()


def test_a_suite_of_real_models_checks_its_settings_before_any_request(cli, faulty_server, no_model_load, tmp_path):
    server = faulty_server
    result = cli("suite", "-o", tmp_path / "suite", *server_flags(server), "--guidance", "nan")
    assert_usage_error(result, "guidance_scale", "nan")
    assert server.requests == []


def test_settings_recorded_in_a_folder_are_checked_like_flags(cli, no_model_load, thought_run):
    """A hand-edited manifest cannot smuggle in a value the flags would refuse."""
    folder = thought_run
    manifest = read_manifest(folder)
    manifest["stages"]["tuning"]["inputs"] = {"tuner": {"config": {"learning_rate": "inf"}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = cli("tune", "-o", folder)
    assert result.code in (1, 2) and "Traceback" not in result.err
    assert_names(" ".join(result.lines), "learning_rate", "inf")
