"""Class 7, numerical faults: a loss or an adapter that is not finite is a `StageError` naming the step and
the learning rate, tuning is marked failed, the chain stays, no adapter is saved and no video is made; a
sample that is not finite writes no video; a run is never "done" with a NaN adapter or a black video."""

from __future__ import annotations

import pytest
import torch

from tests.bad_inputs import NO_WORK, PROMPT, CountingTuner, assert_names, read_manifest, toy_pipeline, work_done
from vchain import ThoughtChain, VChainPipeline
from vchain.errors import NumericalError, StageError
from vchain.interfaces import Tuner
from vchain.testing import DrawingImageBackend, ScriptedReasoner
from vchain.testing.toy import ToyGenerator
from vchain.tuning import LoRAAdapter, LoRATuner

STEPS = 6


class Poisoned(ToyGenerator):
    """The toy generator, with a non-finite value injected into `where` at its `at`-th call."""

    def __init__(self, where: str, at: int, value: float):
        super().__init__()
        self.where, self.at, self.value, self.count = where, at, value, 0

    def _poison(self, where, tensor):
        if where == self.where:
            self.count += 1
            if self.count == self.at:
                return tensor * self.value
        return tensor

    def predict(self, denoiser, noisy, timestep, context):
        return self._poison("predict", super().predict(denoiser, noisy, timestep, context))

    def encode_keyframes(self, images, *, height, width):
        return self._poison("keyframes", super().encode_keyframes(images, height=height, width=width))

    def encode_captions(self, captions):
        return self._poison("captions", super().encode_captions(captions))


BLOW_UPS = [
    pytest.param("predict", 1, float("nan"), 1, 1, id="nan-at-the-first-step"),
    pytest.param("predict", 3, float("nan"), 1, 3, id="nan-in-the-middle"),
    pytest.param("predict", 3, float("inf"), 100, 3, id="inf-between-loss-reads"),
    pytest.param("predict", STEPS, float("nan"), 100, STEPS, id="nan-at-the-last-step"),
    pytest.param("predict", STEPS, 1e30, 100, STEPS, id="an-overflow-at-the-last-step"),
    pytest.param("keyframes", 1, float("nan"), 1, 1, id="nan-keyframe-latents"),
    pytest.param("captions", 1, float("inf"), 1, 1, id="inf-caption-embeddings"),
]


@pytest.mark.parametrize(("where", "at", "value", "log_every", "step"), BLOW_UPS)
def test_a_blow_up_fails_tuning_naming_step_and_rate_and_keeps_the_chain(where, at, value, log_every, step, tmp_path):
    folder = tmp_path / "run"
    generator = Poisoned(where, at, value)
    weights = {k: v.clone() for k, v in generator.denoiser.state_dict().items()}
    tuner = LoRATuner(steps=STEPS, learning_rate=3e-3, log_every=log_every, max_grad_norm=None)
    generator.where = None  # healthy for the probe step the pipeline takes first (once per generator) ...
    tuner.check(generator)
    generator.where = where  # ... so the poison strikes the tuning run's own calls
    pipe = toy_pipeline(generator=generator, tuner=tuner)
    with pytest.raises(StageError) as error:
        pipe(PROMPT, folder)
    assert error.value.stage == "tuning"
    assert_names(str(error.value), f"step {step}", "learning_rate", "0.003")
    stages = read_manifest(folder)["stages"]
    assert stages["reasoning"]["status"] == "done" and stages["tuning"]["status"] == "failed"
    assert f"step {step}" in stages["tuning"]["error"] and stages["sampling"]["status"] == "pending"
    assert len(ThoughtChain.load(folder).images) == 3
    assert not (folder / "lora").exists() and not (folder / "video.mp4").exists()
    assert all(torch.equal(v, generator.denoiser.state_dict()[k]) for k, v in weights.items())


def test_after_a_blow_up_a_rerun_with_a_sane_rate_pays_for_nothing_again(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(StageError):
        toy_pipeline(generator=Poisoned("predict", 2, float("nan")), tuner=LoRATuner(steps=3, log_every=1))(
            PROMPT, folder
        )
    pipe = toy_pipeline()
    out = pipe(PROMPT, folder)
    assert out.statuses == {"reasoning": "done", "tuning": "done", "sampling": "done"}
    assert work_done(pipe) == {**NO_WORK, "tunes": 1, "samples": 1}


class NanTuner(Tuner):
    """A custom tuner whose adapter has diverged: right shapes, NaN weights."""

    def tune(self, generator, pairs):
        adapter = CountingTuner(steps=1, rank=4).tune(generator, pairs)
        poisoned = [{k: torch.full_like(v, float("nan")) for k, v in sd.items()} for sd in adapter.state_dicts]
        return LoRAAdapter(poisoned, rank=4, alpha=4, target_modules=adapter.target_modules)


def test_a_nan_adapter_from_a_custom_tuner_never_makes_a_done_run(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(StageError) as error:
        toy_pipeline(tuner=NanTuner())(PROMPT, folder)
    assert_names(str(error.value), "not finite")
    manifest = read_manifest(folder)
    assert manifest["stages"]["tuning"]["status"] != "done" and manifest["stages"]["sampling"]["status"] != "done"
    assert not (folder / "video.mp4").exists() and not (folder / "lora").exists()


def test_a_nan_adapter_on_the_tiny_wan_writes_no_video(wan, tmp_path):
    folder = tmp_path / "run"
    pipe = VChainPipeline(ScriptedReasoner(), DrawingImageBackend(), wan, NanTuner())
    with pytest.raises(StageError) as error:
        pipe(PROMPT, folder)
    assert_names(str(error.value), "not finite")
    manifest = read_manifest(folder)
    assert manifest["stages"]["sampling"]["status"] != "done" and not (folder / "video.mp4").exists()
    assert manifest["stages"]["tuning"]["status"] != "done", "a NaN adapter was recorded as a finished tuning"


def test_a_non_finite_wan_sample_writes_no_video_and_the_run_is_not_done(wan, tmp_path, monkeypatch):
    vae = wan.pipeline.vae
    real = vae.decode
    monkeypatch.setattr(vae, "decode", lambda *a, **k: tuple(x * float("nan") for x in real(*a, **k)))
    folder = tmp_path / "run"
    with pytest.raises(StageError) as error:
        VChainPipeline(generator=wan)(PROMPT, folder, variant="t2v")
    assert error.value.stage == "sampling"
    assert_names(str(error.value), "not finite", "WanVideoGenerator")
    manifest = read_manifest(folder)
    assert (
        manifest["stages"]["sampling"]["status"] == "failed"
        and "not finite" in manifest["stages"]["sampling"]["error"]
    )
    assert not (folder / "video.mp4").exists()


class Diverges(ToyGenerator):
    def sample(self, prompt, *, seed=None, **overrides):
        raise NumericalError("the sampled latents are NaN from step 7 on")


def test_a_generator_reporting_a_non_finite_sample_fails_sampling_and_keeps_the_adapter(finished_run):
    (finished_run / "video.mp4").unlink()
    with pytest.raises(StageError) as error:
        toy_pipeline(generator=Diverges())(PROMPT, finished_run, seed=5)
    assert error.value.stage == "sampling" and "NaN from step 7" in str(error.value)
    stages = read_manifest(finished_run)["stages"]
    assert stages["sampling"]["status"] == "failed" and stages["tuning"]["status"] == "done"
    assert (finished_run / "lora").is_dir() and not (finished_run / "video.mp4").exists()


def test_a_toy_sample_from_nan_weights_is_not_a_black_video():
    """The shipped toy generator honours the interface: a non-finite sample is a `NumericalError`."""
    toy = ToyGenerator()
    with torch.no_grad():
        toy.denoiser.proj_out.weight.fill_(float("nan"))
    with pytest.raises(NumericalError):
        toy.sample("a red egg")
