"""The keyframe-guided and vchain-guided variants on tiny Wan VACE: API, resume, suite, CLI, refusals."""

import json

import numpy as np
import pytest
import torch

from vchain import VChainPipeline
from vchain.backends.wan import WanLoRATuner, WanVACEVideoGenerator, WanVideoGenerator
from vchain.cli import main
from vchain.errors import ConfigurationError
from vchain.reasoning import ReasoningConfig
from vchain.suite import run_suite
from vchain.testing import DrawingImageBackend, ScriptedReasoner, tiny_wan_pipeline, tiny_wan_vace_pipeline
from vchain.variants import TABLE_1, VARIANTS

SIZE = dict(height=32, width=32, num_frames=9, num_inference_steps=2, max_sequence_length=32)
PROMPT = "An egg falls onto the ground."


@pytest.fixture(scope="module")
def vace():
    return WanVACEVideoGenerator(tiny_wan_vace_pipeline(), **SIZE)


def guided_pipe(generator, times=(0.5, 1.0)):
    tuner = WanLoRATuner(rank=4, steps=2)
    tuner.set_progress_bar_config(disable=True)
    reasoner = ScriptedReasoner(["The egg hits the ground.", "The shell lies broken."], times=list(times))
    return VChainPipeline(reasoner, DrawingImageBackend(), generator, tuner, reasoning=ReasoningConfig())


def held_frames(generator):
    """Record, per sampling call, which frames the pipeline's mask holds (black)."""
    calls, real = [], generator.pipeline.preprocess_conditions

    def preprocess(video, mask, *args, **kwargs):
        calls.append([i for i, m in enumerate(mask or []) if np.asarray(m).max() == 0])
        return real(video, mask, *args, **kwargs)

    generator.pipeline.preprocess_conditions = preprocess
    return calls


def test_table_1_is_unchanged_and_the_guided_variants_sit_beside_it():
    assert list(VARIANTS)[:5] == list(TABLE_1) and not any(VARIANTS[name].guided for name in TABLE_1)
    assert [(v.reasoning, v.tuning, v.guided) for v in (VARIANTS["keyframe-guided"], VARIANTS["vchain-guided"])] == [
        ("chain", False, True),
        ("chain", True, True),
    ]


def test_keyframe_guided_places_the_keyframes_and_does_not_tune(vace, tmp_path):
    calls = held_frames(vace)
    try:
        out = guided_pipe(vace)(PROMPT, tmp_path, variant="keyframe-guided")
    finally:
        del vace.pipeline.preprocess_conditions
    assert calls == [[0, 4, 8]]  # times 0, 0.5, 1 of 9 frames
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["tuning"]["status"] == "skipped" and out.adapter is None
    placed = manifest["stages"]["sampling"]["inputs"]["keyframes"]
    assert [k["time"] for k in placed] == [0.0, 0.5, 1.0] and all(len(k["image"]) == 64 for k in placed)
    assert (tmp_path / "video.mp4").is_file() and len(out.frames) == 9


def test_vchain_guided_tunes_restores_the_base_and_a_rerun_reuses_everything(vace, tmp_path):
    before = vace.sample(PROMPT, seed=5, output_type="latent")
    pipe = guided_pipe(vace)
    calls = held_frames(vace)
    try:
        out = pipe(PROMPT, tmp_path, variant="vchain-guided")
        again = guided_pipe(vace)(PROMPT, tmp_path, variant="vchain-guided")
    finally:
        del vace.pipeline.preprocess_conditions
    assert out.ran == ("reasoning", "tuning", "sampling") and out.adapter is not None
    assert calls == [[0, 4, 8]] and again.ran == ()
    assert VChainPipeline()(PROMPT, tmp_path, variant="vchain-guided").ran == ()  # a finished run needs no model
    assert torch.equal(before, vace.sample(PROMPT, seed=5, output_type="latent"))


def test_other_times_sample_another_video(vace, tmp_path):
    early = guided_pipe(vace, times=(0.25, 0.5))(PROMPT, tmp_path / "early", variant="keyframe-guided")
    late = guided_pipe(vace, times=(0.75, 1.0))(PROMPT, tmp_path / "late", variant="keyframe-guided")
    assert not np.array_equal(np.asarray(early.frames[2]), np.asarray(late.frames[2]))


@pytest.mark.parametrize("variant", ["keyframe-guided", "vchain-guided"])
def test_a_generator_that_cannot_take_keyframes_is_refused_before_any_request(variant, tmp_path):
    pipe = guided_pipe(WanVideoGenerator(tiny_wan_pipeline(), **SIZE))
    with pytest.raises(ConfigurationError, match=f"variant '{variant}' places the keyframes.*got WanVideoGenerator"):
        pipe(PROMPT, tmp_path, variant=variant)
    assert pipe.reasoner.calls == [] and not (tmp_path / "chain.json").exists()


def test_the_suite_runs_the_guided_variants(vace, tmp_path):
    runs = run_suite(lambda: guided_pipe(vace), tmp_path, variants=["t2v", "keyframe-guided"], prompts=[PROMPT])
    assert [run.id.split("/")[1] for run in runs] == ["t2v", "keyframe-guided"]
    assert all((run.path / "video.mp4").is_file() for run in runs)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    vace_folder, plain_folder = tmp_path_factory.mktemp("vace"), tmp_path_factory.mktemp("plain")
    tiny_wan_vace_pipeline().save_pretrained(vace_folder)
    tiny_wan_pipeline().save_pretrained(plain_folder)
    return str(vace_folder), str(plain_folder)


TINY = ["--height", "32", "--width", "32", "--frames", "5", "--steps", "2", "--dtype", "float32"]


def test_the_cli_runs_vchain_guided_on_a_vace_checkpoint_and_refuses_a_plain_one(
    server, checkpoints, tmp_path, capsys
):
    vace_folder, plain_folder = checkpoints
    urls = ["--base-url", server.base_url, "--image-base-url", server.base_url]
    run = str(tmp_path / "run")
    tuning = ["--rank", "4", "--tune-steps", "2"]
    args = ["generate", PROMPT, "-o", run, "--variant", "vchain-guided", *urls, *TINY, *tuning]
    assert main([*args, "--model", vace_folder]) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["variant"] == "vchain-guided" and manifest["stages"]["tuning"]["status"] == "done"
    assert manifest["stages"]["reasoning"]["times_from"] == "even"
    assert [k["time"] for k in manifest["stages"]["sampling"]["inputs"]["keyframes"]] == manifest["stages"][
        "reasoning"
    ]["times"]
    requests = len(server.requests)
    capsys.readouterr()
    other = str(tmp_path / "other")
    assert (
        main(["generate", PROMPT, "-o", other, "--variant", "keyframe-guided", *urls, *TINY, "--model", plain_folder])
        == 2
    )
    assert "needs a keyframe-conditioned model" in capsys.readouterr().err
    assert len(server.requests) == requests
