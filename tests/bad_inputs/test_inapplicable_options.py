"""Class 9, options that do not apply: a flag the command will not use (sizes with `suite --demo`, tuning
flags for a variant that does not tune, sampling flags for `vchain tune`, ...) is refused or warned about,
naming the flag; it is never silently ignored."""

from __future__ import annotations

import logging

import pytest

from tests.bad_inputs import PROMPT, server_flags
from vchain.errors import ConfigurationError

STOP = "stopped where the models would load"


@pytest.fixture
def stop_at_load(monkeypatch):
    """Models are never loaded: the command stops there with a usage error, after any warning it gives."""
    from vchain.backends.wan import WanVideoGenerator

    def stop(*args, **kwargs):
        raise ConfigurationError(STOP)

    monkeypatch.setattr(WanVideoGenerator, "from_pretrained", classmethod(stop))
    monkeypatch.setattr("vchain.testing.demo_pipeline", stop)


def assert_refused_or_warned(result, caplog, flag: str) -> None:
    said = result.err + caplog.text
    assert result.code == 2 and "Traceback" not in result.err, (result.code, result.err[-2000:])
    assert flag in said, f"{flag} was ignored without a word: {said[-1500:]}"


SUITE_DEMO = [
    ["--height", "64"],
    ["--frames", "9"],
    ["--guidance", "3"],
    ["--rank", "4"],
    ["--tune-steps", "10"],
    ["--max-keyframes", "3"],
    ["--model", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"],
    ["--device", "cpu"],
    ["--dtype", "float32"],
    ["--base-url", "http://localhost:8000/v1"],
    ["--image-base-url", "http://localhost:8000/v1"],
    ["--reasoner-model", "gpt-4o-mini"],
    ["--image-model", "gpt-image-1-mini"],
    ["--edit-inputs", "last"],
]


@pytest.mark.parametrize("flags", [pytest.param(f, id=f"suite-demo{f[0]}") for f in SUITE_DEMO])
def test_suite_demo_refuses_what_its_fixed_models_cannot_take(cli, stop_at_load, caplog, tmp_path, flags):
    with caplog.at_level(logging.WARNING):
        result = cli("suite", "-o", tmp_path / "suite", "--demo", "--cases", "4", *flags)
    assert_refused_or_warned(result, caplog, flags[0])
    assert not (tmp_path / "suite" / "summary.csv").exists()


GENERATE = [
    ("t2v", ["--max-keyframes", "3"]),
    ("t2v", ["--edit-inputs", "last"]),
    ("t2v", ["--reasoner-model", "gpt-4o-mini"]),
    ("t2v", ["--image-model", "gpt-image-1-mini"]),
    ("t2v", ["--base-url", "http://localhost:8000/v1"]),
    ("t2v", ["--rank", "4"]),
    ("t2v", ["--tune-steps", "10"]),
    ("t2v", ["--lr", "1e-3"]),
    ("t2v", ["--gradient-checkpointing"]),
    ("t2v-prompt-aug", ["--rank", "4"]),
    ("t2v-prompt-aug", ["--image-model", "gpt-image-1-mini"]),
    ("t2v-prompt-aug", ["--edit-inputs", "last"]),
    ("t2v-prompt-aug", ["--max-keyframes", "3"]),
    ("no-visual-thought", ["--tune-steps", "10"]),
    ("no-visual-thought", ["--alpha", "8"]),
    ("no-sparse-tuning", ["--rank", "4"]),
    ("no-sparse-tuning", ["--guidance", "3"]),
    ("no-sparse-tuning", ["--steps", "10"]),
]


@pytest.mark.parametrize(("variant", "flags"), [pytest.param(v, f, id=f"{v}{f[0]}") for v, f in GENERATE])
def test_generate_refuses_or_warns_about_flags_its_variant_does_not_use(
    cli, faulty_server, stop_at_load, caplog, tmp_path, variant, flags
):
    # Only the servers the variant talks to (t2v none, prompt augmentation the chat model's).
    servers = {"t2v": [], "t2v-prompt-aug": server_flags(faulty_server)[:2]}.get(variant, server_flags(faulty_server))
    with caplog.at_level(logging.WARNING):
        result = cli("generate", PROMPT, "-o", tmp_path / "run", "--variant", variant, *servers, *flags)
    assert_refused_or_warned(result, caplog, flags[0])
    assert faulty_server.requests == []


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(f, id=f"tune{f[0]}")
        for f in (["--guidance", "3"], ["--steps", "10"], ["--seed", "3"], ["--frames", "9"])
    ],
)
def test_tune_refuses_or_warns_about_sampling_flags(cli, stop_at_load, caplog, thought_run, flags):
    with caplog.at_level(logging.WARNING):
        result = cli("tune", "-o", thought_run, *flags)
    assert_refused_or_warned(result, caplog, flags[0])


def test_sample_on_a_run_that_does_not_tune_refuses_or_warns_about_tuning_flags(
    cli, wan, stop_at_load, caplog, tmp_path
):
    from vchain import VChainPipeline

    VChainPipeline(generator=wan)(PROMPT, tmp_path / "run", variant="t2v")
    with caplog.at_level(logging.WARNING):
        result = cli("sample", "-o", tmp_path / "run", "--rank", "4")
    assert_refused_or_warned(result, caplog, "--rank")


@pytest.mark.parametrize("flags", [["--height", "64"], ["--model", "x/y"], ["--base-url", "http://localhost:1/v1"]])
def test_demo_has_no_flags_for_models_it_does_not_load(cli, stop_at_load, caplog, tmp_path, flags):
    result = cli("demo", "-o", tmp_path / "run", *flags)
    assert_refused_or_warned(result, caplog, flags[0])
    assert len(result.lines) <= 2, result.lines
