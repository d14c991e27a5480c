"""Class 15, flags and values that cannot be meant: an option that does not apply with the others given, a
value out of its range, an argument of the wrong type. Each is one clear error (exit 2 on the command line)
naming the flag or argument and the value, before any request, model load or write."""

from __future__ import annotations

import pytest

from tests.bad_inputs import PROMPT, assert_names, assert_usage_error, server_flags, toy_pipeline
from vchain.errors import ConfigurationError

LOCAL = "transformers:Qwen/Qwen2.5-VL-3B-Instruct"

REFUSED = [
    pytest.param(["think", PROMPT, "--max-redos", "3"], ["--max-redos", "--verify-keyframes"], id="redos-unverified"),
    pytest.param(["think", PROMPT, "--reasoner", LOCAL, "--base-url", "http://h:1/v1"], ["--base-url"], id="base-url"),
    pytest.param(["think", PROMPT, "--reasoner", LOCAL, "--reasoner-model", "m"], ["--reasoner-model"], id="r-model"),
    pytest.param(
        ["think", PROMPT, "--image-backend", "diffusers:some/editor", "--image-base-url", "http://h:1/v1"],
        ["--image-base-url"],
        id="image-base-url-with-a-local-editor",
    ),
    pytest.param(["think", PROMPT, "--device", "cpu"], ["--device", "OpenAI"], id="device-with-openai-models"),
    pytest.param(["think", PROMPT, "--dtype", "float16"], ["--dtype", "OpenAI"], id="dtype-with-openai-models"),
    pytest.param(["think", PROMPT, "--color-correction", "2"], ["color_correction", "2"], id="colour-strength-2"),
]


@pytest.mark.parametrize(("args", "fragments"), REFUSED)
def test_an_option_that_does_not_apply_or_cannot_be_meant_is_refused_before_any_work(
    cli, faulty_server, tmp_path, args, fragments
):
    command, *rest = args
    result = cli(command, "-o", tmp_path / "run", *rest, *server_flags(faulty_server))
    assert_usage_error(result, *fragments)
    assert faulty_server.requests == [] and not (tmp_path / "run").exists()


JUDGE_REFUSED = [
    pytest.param(["--device", "cuda"], ["--device", "OpenAI judge"], id="device-with-an-openai-judge"),
    pytest.param(["--dtype", "float16"], ["--dtype", "OpenAI judge"], id="dtype-with-an-openai-judge"),
    pytest.param(["--judge", LOCAL, "--judge-model", "gpt-4o-mini"], ["--judge-model"], id="judge-model-local"),
    pytest.param(["--judge", LOCAL, "--base-url", "http://h:1/v1"], ["--base-url"], id="base-url-with-a-local-judge"),
    pytest.param(["--frames", "0"], ["frames", "0"], id="no-frames"),
]


@pytest.mark.parametrize(("flags", "fragments"), JUDGE_REFUSED)
def test_judge_options_that_do_not_apply_are_refused(cli, finished_run, flags, fragments):
    assert_usage_error(cli("judge", finished_run, *flags), *fragments)
    assert not (finished_run / "scores.json").exists()


def test_color_correction_without_a_strength_does_not_eat_the_prompt(cli, faulty_server, tmp_path):
    result = cli("think", "--color-correction", PROMPT, "-o", tmp_path / "run", *server_flags(faulty_server))
    assert result.code == 0, result.err[-2000:]
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert '"color_correction": 1.0' in manifest and PROMPT in manifest


TUNER_VALUES = [
    pytest.param({"alpha": 1e30}, ["alpha", "1e+30"], id="alpha-1e30"),
    pytest.param({"rank": 1024}, ["rank 1024", "<= "], id="rank-above-the-layer-width"),
]


@pytest.mark.parametrize(("fields", "fragments"), TUNER_VALUES)
def test_tuner_values_that_cannot_be_meant_are_refused_before_reasoning(tmp_path, fields, fragments):
    from tests.bad_inputs import CountingTuner

    with pytest.raises(ConfigurationError) as error:
        pipe = toy_pipeline(tuner=CountingTuner(steps=2, **fields))
        pipe(PROMPT, tmp_path / "run")
    assert_names(str(error.value), *fragments)
    assert not (tmp_path / "run" / "chain.json").exists()


def test_cli_rank_above_the_layer_width_is_refused_before_reasoning(cli, faulty_server, tiny_wan_dir, tmp_path):
    flags = ["--model", tiny_wan_dir, "--height", "32", "--width", "32", "--frames", "5", "--dtype", "float32"]
    result = cli("generate", PROMPT, "-o", tmp_path / "run", "--rank", "1024", *flags, *server_flags(faulty_server))
    assert result.code == 2 and "rank 1024" in result.err, result.err[-2000:]
    assert faulty_server.requests == []


DEVICES = [
    pytest.param("cuda:7", ["device", "cuda:7"], id="a-missing-gpu"),
    pytest.param("tpu", ["device", "'tpu'"], id="an-unknown-device"),
    pytest.param(3, ["device", "3"], id="a-number"),
]


@pytest.mark.parametrize(("device", "fragments"), DEVICES)
def test_from_pretrained_checks_the_device_before_loading(device, fragments, tiny_wan_dir, no_weights_load):
    import torch

    from vchain.backends.wan import WanVideoGenerator

    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    with pytest.raises(ConfigurationError) as error:
        WanVideoGenerator.from_pretrained(tiny_wan_dir, device=device)
    assert_names(str(error.value), *fragments)


def test_a_judge_answering_off_the_scale_is_a_stage_error_naming_the_score(tmp_path):
    from tests.test_judging import make_run
    from vchain.backends.openai import OpenAIJudge
    from vchain.errors import StageError
    from vchain.judging import DIMENSIONS, judge_runs
    from vchain.testing import FakeOpenAIServer, Reply

    make_run(tmp_path / "runs" / "a", "A prompt.")
    nine = Reply.json({d: 9 for d in DIMENSIONS} | {f"{d}_reason": "Fine." for d in DIMENSIONS})
    with FakeOpenAIServer(lambda body: nine) as server, pytest.raises(StageError) as error:
        judge_runs(tmp_path / "runs", OpenAIJudge(base_url=server.base_url))
    assert_names(str(error.value), "frame_quality", "1 to 5", "9")
    assert "pydantic" not in str(error.value) and "errors.pydantic.dev" not in str(error.value)


# ------------------------------------------------------------------------- argument types of public functions

PATHS = [pytest.param(None, id="None"), pytest.param(3, id="an-int"), pytest.param("", id="empty")]


@pytest.mark.parametrize("path", PATHS)
def test_a_path_argument_that_is_no_path_is_named(path, finished_run):
    from vchain import ThoughtChain
    from vchain.tuning import LoRAAdapter, LoRATuner

    chain = ThoughtChain.load(finished_run)
    adapter = LoRAAdapter.load(finished_run / "lora")
    for call in (
        lambda: ThoughtChain.load(path),
        lambda: chain.save(path),
        lambda: LoRAAdapter.load(path),
        lambda: adapter.save(path),
        lambda: LoRATuner().load_adapter(path),
    ):
        with pytest.raises(ConfigurationError) as error:
            call()
        assert_names(str(error.value), "must be a path", repr(path))


@pytest.mark.parametrize("output_type", ["latent", "np", None])
def test_pipe_sample_refuses_an_output_type_that_is_not_frames(output_type):
    from vchain import ThoughtChain

    pipe = toy_pipeline()
    chain = ThoughtChain(PROMPT, "t", "c", "f", "p")
    with pytest.raises(ConfigurationError) as error:
        pipe.sample(chain, output_type=output_type)
    assert_names(str(error.value), "output_type", repr(output_type), "pipe.generator.sample")
    assert pipe.generator.samples == 0
