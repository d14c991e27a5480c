"""Bad input and faults: every user mistake a clear error before any work, nothing lost, nothing silent.

One module per class of mistake (components, options, paths, artifacts on disk, backend answers, the
hub, numerical faults, the record, options that do not apply, the docs' claims). Each is parametrized
over many inputs of its class; the rows of `docs/bad-inputs.md` keep their id (K01, C27, ...) in the
test id, so `pytest tests/bad_inputs -k C27` re-tries one row.

What this module holds is shared by them: a recording pipeline on the toy generator (every model call
counted), the CLI run in process, and a local OpenAI stand-in that can also answer what no OpenAI server
should (an HTML page with status 200, raw image bytes).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vchain import VChainPipeline
from vchain.testing import DEMO_PROMPT, DrawingImageBackend, FakeOpenAIServer, ScriptedReasoner
from vchain.testing.toy import ToyGenerator
from vchain.tuning import LoRATuner

PROMPT = DEMO_PROMPT
CAPTIONS = ("The egg touches the pillow, which dents.", "The egg rests in the dent, intact.")
# A clean think run of the script: plan, first image, then perception and edit for each caption.
CLEAN_REQUESTS = 2 + 2 * len(CAPTIONS)


class CountingGenerator(ToyGenerator):
    """The toy generator, counting `sample` calls."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.samples = 0

    def sample(self, prompt, *, seed=None, **overrides):
        self.samples += 1
        return super().sample(prompt, seed=seed, **overrides)


class CountingTuner(LoRATuner):
    """The generic LoRA tuner, counting `tune` calls."""

    def __init__(self, config=None, **fields):
        super().__init__(config, **fields)
        self.calls = 0

    def tune(self, generator, pairs):
        self.calls += 1
        return super().tune(generator, pairs)


def toy_pipeline(seed: int = 0, **components) -> VChainPipeline:
    """The whole pipeline on recording doubles: a scripted reasoner, drawn images, the toy generator."""
    parts = {
        "reasoner": ScriptedReasoner(CAPTIONS),
        "image_backend": DrawingImageBackend(),
        "generator": CountingGenerator(),
        "tuner": CountingTuner(steps=3, seed=seed),
    }
    return VChainPipeline(**{**parts, **components})


def wan_from(folder: str):
    """The tiny Wan saved in `folder`, loaded as the command line loads it (32x32, 5 frames, 2 steps)."""
    from vchain.backends.wan import WanVideoGenerator

    return WanVideoGenerator.from_pretrained(
        folder, dtype="float32", height=32, width=32, num_frames=5, num_inference_steps=2
    )


def toy_demo_pipeline(seed: int = 0, **_):
    """Stands in for `vchain.testing.demo_pipeline` so CLI rows run in milliseconds."""
    return toy_pipeline(seed)


def work_done(pipe: VChainPipeline) -> dict[str, int]:
    """Every model call the pipeline's recording doubles saw."""
    return {
        "reasoner": len(getattr(pipe.reasoner, "calls", ())),
        "images": len(getattr(pipe.image_backend, "calls", ())),
        "tunes": getattr(pipe.tuner, "calls", 0),
        "samples": getattr(pipe.generator, "samples", 0),
    }


NO_WORK = {"reasoner": 0, "images": 0, "tunes": 0, "samples": 0}


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def assert_names(message: str, *fragments: str) -> None:
    """The message names each fragment (an argument, a value, a file, a fix)."""
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{missing} not named in: {message}"


# ----------------------------------------------------------------------------------------------- CLI


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """What stderr says, without progress bars (tqdm redraws its line with carriage returns)."""
        return [line for line in self.err.splitlines() if line.strip() and "\r" not in line and "%|" not in line]


def server_flags(server: FakeOpenAIServer) -> list[str]:
    """The flags that point both OpenAI backends of a command at a local server."""
    return ["--base-url", server.base_url, "--image-base-url", server.base_url]


def run_cli(capsys, *args) -> CliResult:
    from vchain.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_usage_error(result: CliResult, *fragments: str) -> None:
    """Exit code 2, one or two lines on stderr that name each fragment, no traceback."""
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err, result.err[-2000:]
    assert 1 <= len(result.lines) <= 2, result.lines
    assert_names(" ".join(result.lines), *fragments)


def assert_stage_failure(result: CliResult, *fragments: str) -> None:
    """Exit code 1, a message of one or two lines naming each fragment, no traceback."""
    assert result.code == 1, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err, result.err[-2000:]
    message = [line for line in result.lines if line.startswith("vchain")]
    assert message, result.lines
    tail = result.lines[result.lines.index(message[0]) :]
    assert len(tail) <= 2, tail
    assert_names(" ".join(tail), *fragments)


# ------------------------------------------------------------------------------------ the OpenAI stand-in


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def openai_backends(base_url: str, *, timeout: float = 5.0, max_retries: int = 2):
    """The real OpenAI reasoner and image backend, on a local server."""
    from vchain.backends.openai import OpenAIImageBackend, OpenAIReasoner

    options = {"base_url": base_url, "timeout": timeout, "max_retries": max_retries}
    return OpenAIReasoner(**options), OpenAIImageBackend(**options)
