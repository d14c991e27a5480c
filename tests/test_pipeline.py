"""The composed pipeline on the tiny stack: variants, run folders, resume, the composite prompt."""

import json
import logging

import imageio.v3 as iio
import numpy as np
import pytest

from vchain import VChainOutput, VChainPipeline
from vchain.errors import ConfigurationError
from vchain.interfaces import Interpolator
from vchain.testing import DEMO_PROMPT, ScriptedReasoner, demo_pipeline


class CountingTuner:
    """Wraps a tuner and counts `tune` calls."""

    def __init__(self, tuner):
        self.inner, self.calls = tuner, 0

    def tune(self, generator, pairs):
        self.calls += 1
        return self.inner.tune(generator, pairs)

    def load_adapter(self, directory):
        return self.inner.load_adapter(directory)


@pytest.fixture
def pipe():
    pipe = demo_pipeline(steps=10)
    pipe.tuner = CountingTuner(pipe.tuner)
    return pipe


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_full_run_writes_the_run_folder(pipe, tmp_path):
    out = pipe(DEMO_PROMPT, output_dir=tmp_path)
    assert isinstance(out, VChainOutput)
    assert out.video_path == tmp_path / "video.mp4"
    video = iio.imread(out.video_path)
    assert video.shape[:3] == (17, 64, 64)
    assert len(out.frames) == 17 and out.prompt == out.chain.composite_prompt
    names = {p.name for p in tmp_path.iterdir()}
    assert {"chain.json", "metadata.csv", "manifest.json", "video.mp4", "lora"} <= names
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    m = manifest(tmp_path)
    assert {s: r["status"] for s, r in m["stages"].items()} == {
        s: "done" for s in ("reasoning", "tuning", "sampling")
    }
    assert set(m["stages"]["reasoning"]["seconds"]) == {"plan", "generate", "perception", "edit"}
    assert set(m["stages"]["tuning"]["seconds"]) == {"preprocess", "fine_tune"}
    assert set(m["stages"]["sampling"]["seconds"]) == {"denoise", "decode", "save"}
    assert m["seed"] == 0 and m["variant"] == "vchain" and "diffusers" in m["versions"]
    assert m["models"]["tuner"]["class"] == "CountingTuner"
    assert m["models"]["generator"]["config"]["num_frames"] == 17


def test_runs_are_deterministic_for_a_seed(tmp_path):
    a = demo_pipeline(steps=10)(DEMO_PROMPT, tmp_path / "a", seed=3)
    b = demo_pipeline(steps=10)(DEMO_PROMPT, tmp_path / "b", seed=3)
    c = demo_pipeline(steps=10)(DEMO_PROMPT, tmp_path / "c", seed=4)
    frames = [np.stack([np.asarray(f) for f in out.frames]) for out in (a, b, c)]
    assert np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[0], frames[2])


def test_base_model_is_restored_after_every_prompt(pipe):
    before = pipe.generator.sample("plain prompt", seed=0, output_type="latent")
    pipe(DEMO_PROMPT)
    pipe("A steel ball is dropped into water.")
    assert np.array_equal(before, pipe.generator.sample("plain prompt", seed=0, output_type="latent"))


def test_t2v_never_calls_the_reasoner_or_tuner(pipe, tmp_path):
    out = pipe(DEMO_PROMPT, tmp_path, variant="t2v")
    assert pipe.reasoner.calls == [] and pipe.image_backend.calls == [] and pipe.tuner.calls == 0
    assert out.chain is None and out.prompt == DEMO_PROMPT and len(out.frames) == 17
    stages = manifest(tmp_path)["stages"]
    assert (stages["reasoning"]["status"], stages["tuning"]["status"]) == ("skipped", "skipped")


def test_t2v_needs_only_a_generator(pipe):
    VChainPipeline(generator=pipe.generator)(DEMO_PROMPT, variant="t2v")


def test_prompt_aug_samples_the_rewritten_prompt(pipe, tmp_path):
    out = pipe(DEMO_PROMPT, tmp_path, variant="t2v-prompt-aug")
    assert [c[0] for c in pipe.reasoner.calls] == ["augment_prompt"]
    assert pipe.tuner.calls == 0 and out.prompt == f"{DEMO_PROMPT}, in rich physical detail."
    assert manifest(tmp_path)["stages"]["reasoning"]["detail"]["augmented_prompt"] == out.prompt


def test_no_visual_thought_reasons_but_never_tunes(pipe, tmp_path):
    out = pipe(DEMO_PROMPT, tmp_path, variant="no-visual-thought")
    assert pipe.tuner.calls == 0 and len(out.chain.images) == 3
    assert out.prompt == out.chain.composite_prompt
    assert not (tmp_path / "lora").exists()


def test_no_sparse_tuning_interpolates_the_keyframes(pipe, tmp_path):
    class Recording(Interpolator):
        def interpolate(self, keyframes, num_frames):
            self.seen = (len(keyframes), num_frames)
            return [keyframes[0]] * num_frames

    pipe.interpolator = Recording()
    out = pipe(DEMO_PROMPT, tmp_path, variant="no-sparse-tuning")
    assert pipe.interpolator.seen == (3, 17) and pipe.tuner.calls == 0
    assert iio.imread(out.video_path).shape[0] == 17


def test_crossfade_passes_through_every_keyframe(pipe):
    from vchain.interpolation import CrossfadeInterpolator

    chain = pipe.think(DEMO_PROMPT)
    frames = CrossfadeInterpolator().interpolate(chain.images, 17)
    assert len(frames) == 17
    for frame, keyframe in (
        (frames[0], chain.images[0]),
        (frames[8], chain.images[1]),
        (frames[16], chain.images[2]),
    ):
        assert frame.tobytes() == keyframe.tobytes()


def test_crash_after_tuning_resumes_without_redoing_reasoning_or_tuning(pipe, tmp_path):
    real_sample = pipe.generator.sample
    pipe.generator.sample = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("GPU lost"))
    with pytest.raises(RuntimeError, match="GPU lost"):
        pipe(DEMO_PROMPT, tmp_path)
    m = manifest(tmp_path)
    assert (m["stages"]["tuning"]["status"], m["stages"]["sampling"]["status"]) == ("done", "failed")
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    reasoner_calls, tunes = len(pipe.reasoner.calls), pipe.tuner.calls

    pipe.generator.sample = real_sample
    out = pipe(DEMO_PROMPT, tmp_path)
    assert len(pipe.reasoner.calls) == reasoner_calls and pipe.tuner.calls == tunes
    assert manifest(tmp_path)["stages"]["sampling"]["status"] == "done" and len(out.frames) == 17

    # In memory or from lora/, the same adapter: the resumed video equals a run that never crashed.
    fresh = demo_pipeline(steps=10)(DEMO_PROMPT, tmp_path / "fresh")
    assert np.array_equal(np.stack([np.asarray(f) for f in out.frames]),
                          np.stack([np.asarray(f) for f in fresh.frames]))  # fmt: skip


def test_a_finished_run_is_not_redone(pipe, tmp_path):
    pipe(DEMO_PROMPT, tmp_path)
    calls, tunes = len(pipe.reasoner.calls), pipe.tuner.calls
    out = pipe(DEMO_PROMPT, tmp_path)
    assert len(pipe.reasoner.calls) == calls and pipe.tuner.calls == tunes and len(out.frames) == 17


def test_stop_after_tune_then_resume_without_a_reasoner(pipe, tmp_path):
    assert pipe(DEMO_PROMPT, tmp_path, stop_after="tune") is None
    assert not (tmp_path / "video.mp4").exists() and (tmp_path / "lora").is_dir()
    out = VChainPipeline(generator=pipe.generator, tuner=pipe.tuner)(DEMO_PROMPT, tmp_path)
    assert out.video_path.is_file() and pipe.tuner.calls == 1


@pytest.mark.parametrize(
    ("kwargs", "variant", "message"),
    [
        ({"generator": None}, "vchain", r"generator \(needed to tune\), tuner|generator \(needed to tune\)"),
        ({"tuner": None}, "vchain", r"tuner \(needed to tune\)"),
        ({"reasoner": None}, "t2v-prompt-aug", r"reasoner \(needed to augment\)"),
        ({"image_backend": None}, "no-sparse-tuning", r"image_backend \(needed to think\)"),
    ],
)
def test_missing_components_fail_before_any_call(pipe, kwargs, variant, message):
    for name, value in kwargs.items():
        setattr(pipe, name, value)
    with pytest.raises(ConfigurationError, match=message):
        pipe(DEMO_PROMPT, variant=variant)
    if pipe.reasoner is not None:
        assert pipe.reasoner.calls == []


def test_unknown_variant_and_empty_prompt_are_named(pipe):
    with pytest.raises(ConfigurationError, match="'t2i'"):
        pipe(DEMO_PROMPT, variant="t2i")
    with pytest.raises(ConfigurationError, match="prompt must be a non-empty string"):
        pipe("   ")


def test_long_composite_prompt_keeps_first_and_last_with_a_warning(pipe, caplog):
    long = [f"Keyframe {i}: " + "the egg rests on the white pillow " * 12 for i in range(8)]
    pipe.reasoner = ScriptedReasoner(long)
    pipe.reasoning.max_keyframes = 10
    chain = pipe.think(DEMO_PROMPT)
    tokens, limit = pipe.generator.prompt_tokens(chain.composite_prompt)
    assert tokens > limit
    with caplog.at_level(logging.WARNING):
        text = pipe.composite_prompt(chain)
    assert "dropped" in caplog.text and "middle caption" in caplog.text
    assert text.startswith(chain.captions[0]) and text.endswith(chain.captions[-1])
    assert pipe.generator.prompt_tokens(text)[0] <= limit or "truncate" in caplog.text


def test_short_composite_prompt_is_the_joined_captions(pipe):
    chain = pipe.think(DEMO_PROMPT)
    assert pipe.composite_prompt(chain) == chain.composite_prompt
