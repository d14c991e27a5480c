"""Fixtures of the bad-input tests: guards that fail a test on any work it must not do, and shared models."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.bad_inputs import CAPTIONS, PROMPT, run_cli, toy_demo_pipeline, toy_pipeline, wan_from
from tests.conftest import SCHEMA
from vchain.testing import FakeOpenAIServer


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """No test here may reach the Hugging Face hub (the hub tests put their own stand-in in its place)."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        pytest.fail(f"the Hugging Face hub was asked about {args}")

    monkeypatch.setattr(huggingface_hub, "model_info", refuse)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test as soon as a video model is about to be loaded."""
    from vchain.backends.wan import WanVideoGenerator

    def refuse(cls, *args, **kwargs):
        pytest.fail(f"a model was loaded: {cls.__name__}.from_pretrained{args}")

    monkeypatch.setattr(WanVideoGenerator, "from_pretrained", classmethod(refuse))


@pytest.fixture
def no_weights_load(monkeypatch):
    """Fails the test when weights are read: `from_pretrained` may check its arguments, not load."""
    from vchain.backends.diffusers_video import DiffusersVideoGenerator
    from vchain.backends.wan import WanVideoGenerator

    def refuse(cls, *args, **kwargs):
        pytest.fail(f"weights were loaded: {cls.__name__}._load{args}")

    for cls in (DiffusersVideoGenerator, WanVideoGenerator):
        monkeypatch.setattr(cls, "_load", classmethod(refuse))


@pytest.fixture
def no_backoff(monkeypatch):
    """Retries of 429/5xx without the client's backoff sleep: the count is under test, not the wait."""
    monkeypatch.setattr("vchain.backends.openai._retry_delay", lambda attempt, response: 0.0)


@pytest.fixture
def cli(capsys):
    """`cli(*args)` runs `vchain` in process: a `CliResult` with the exit code, stdout and stderr."""
    return lambda *args: run_cli(capsys, *args)


@pytest.fixture
def toy_demo(monkeypatch):
    """`vchain demo` on the recording toy pipeline instead of the tiny Wan (milliseconds, same run folder)."""
    monkeypatch.setattr("vchain.testing.demo_pipeline", toy_demo_pipeline)


@pytest.fixture
def faulty_server():
    """The local OpenAI stand-in, answering the script of `CAPTIONS` (queue `HtmlPage`, `RawImage`, faults)."""
    from vchain.testing import ScriptedReasoner, scripted_chat

    with FakeOpenAIServer(scripted_chat(ScriptedReasoner(CAPTIONS)), schema_path=SCHEMA) as fake:
        yield fake
    assert all(not r.schema_errors for r in fake.requests), [r.schema_errors for r in fake.requests]


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    """A decompression bomb: a 48 KB PNG whose header says 20000 x 20000 (400 megapixels)."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def wan():
    """A tiny Wan generator (32x32, one frame, two steps), shared: every test leaves it as it found it."""
    from vchain.backends.wan import WanVideoGenerator
    from vchain.testing import tiny_wan_pipeline

    return WanVideoGenerator(
        tiny_wan_pipeline(), height=32, width=32, num_frames=1, num_inference_steps=2, max_sequence_length=32
    )


@pytest.fixture(scope="session")
def _thought_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("thought") / "run"
    toy_pipeline().think(PROMPT, folder)
    return folder


@pytest.fixture(scope="session")
def _finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished") / "run"
    toy_pipeline()(PROMPT, folder)
    return folder


@pytest.fixture
def thought_run(_thought_run, tmp_path):
    """A fresh copy of a run folder whose reasoning is done (toy pipeline, `PROMPT`)."""
    return Path(shutil.copytree(_thought_run, tmp_path / "thought"))


@pytest.fixture
def finished_run(_finished_run, tmp_path):
    """A fresh copy of a finished run folder (toy pipeline, `PROMPT`, seed 0)."""
    return Path(shutil.copytree(_finished_run, tmp_path / "finished"))


@pytest.fixture(scope="session")
def _wan_run(tiny_wan_dir, tmp_path_factory):
    from vchain import VChainPipeline
    from vchain.backends.wan import WanLoRATuner
    from vchain.testing import DrawingImageBackend, ScriptedReasoner

    folder = tmp_path_factory.mktemp("wan_run") / "run"
    generator = wan_from(tiny_wan_dir)
    VChainPipeline(ScriptedReasoner(CAPTIONS), DrawingImageBackend(), generator, WanLoRATuner(steps=2))(PROMPT, folder)
    return folder


@pytest.fixture
def wan_run(_wan_run, tmp_path):
    """A fresh copy of a finished run of the tiny Wan saved in `tiny_wan_dir` (32x32, 5 frames)."""
    return Path(shutil.copytree(_wan_run, tmp_path / "wan_run"))
