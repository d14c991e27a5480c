"""The composed pipeline on the tiny stack: variants, run folders, what a re-run reuses and what it redoes."""

import json
import logging

import imageio.v3 as iio
import numpy as np
import pytest

from vchain import VChainOutput, VChainPipeline
from vchain.errors import ConfigurationError, StageError
from vchain.interfaces import Interpolator, Tuner
from vchain.reasoning import ReasoningConfig
from vchain.testing import DEMO_PROMPT, DrawingImageBackend, ScriptedReasoner, demo_pipeline, tiny_wan_pipeline
from vchain.variants import VARIANTS


class CountingTuner(Tuner):
    """Wraps a tuner and counts `tune` calls."""

    def __init__(self, tuner):
        self.inner, self.calls = tuner, 0

    def describe(self):
        return self.inner.describe()

    def tune(self, generator, pairs):
        self.calls += 1
        return self.inner.tune(generator, pairs)

    def load_adapter(self, directory):
        return self.inner.load_adapter(directory)


def counting(pipe):
    """Count every model call of a pipeline: reasoner and image calls are recorded by the fakes."""
    pipe.tuner = CountingTuner(pipe.tuner)
    real, pipe.samples = pipe.generator.sample, []

    def sample(*args, **kwargs):
        pipe.samples.append(kwargs.get("seed"))
        return real(*args, **kwargs)

    pipe.generator.sample = sample
    return pipe


def calls(pipe):
    return len(pipe.reasoner.calls), len(pipe.image_backend.calls), pipe.tuner.calls, len(pipe.samples)


@pytest.fixture
def pipe():
    return counting(demo_pipeline(steps=10))


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def frames_array(frames):
    return np.stack([np.asarray(f) for f in frames])


def test_a_full_run_writes_the_run_folder(pipe, tmp_path):
    out = pipe(DEMO_PROMPT, output_dir=tmp_path)
    assert isinstance(out, VChainOutput) and out.video_path == tmp_path / "video.mp4"
    assert iio.imread(out.video_path).shape[:3] == (17, 64, 64)
    assert len(out.frames) == 17 and out.prompt == out.chain.composite_prompt and out.adapter is not None
    names = {p.name for p in tmp_path.iterdir()}
    assert {"chain.json", "metadata.csv", "manifest.json", "video.mp4", "lora"} <= names
    assert not [n for n in names if n.startswith(".") and n != ".lock"]
    m = manifest(tmp_path)
    assert out.statuses == {s: "done" for s in ("reasoning", "tuning", "sampling")}
    stages = m["stages"]
    assert set(stages["reasoning"]["seconds"]) == {"plan", "generate", "perception", "edit"}
    assert set(stages["tuning"]["seconds"]) == {"preprocess", "fine_tune"}
    assert set(stages["sampling"]["seconds"]) == {"denoise", "decode", "save"}
    assert stages["sampling"]["seed"] == 0 and m["variant"] == "vchain" and "diffusers" in m["versions"]
    assert stages["tuning"]["inputs"]["tuner"]["config"]["steps"] == 10
    assert stages["sampling"]["inputs"]["generator"]["config"]["num_frames"] == 17
    assert set(stages["tuning"]["outputs"]) == {"lora/pytorch_lora_weights.safetensors"}
    assert set(stages["sampling"]["outputs"]) == {"video.mp4"}
    assert m["usage"]["requests"] == len(m["calls"]) == 6


def test_runs_are_deterministic_for_a_seed(tmp_path):
    a = demo_pipeline(steps=10)(DEMO_PROMPT, tmp_path / "a", seed=3)
    b = demo_pipeline(steps=10)(DEMO_PROMPT, tmp_path / "b", seed=3)
    c = demo_pipeline(steps=10)(DEMO_PROMPT, tmp_path / "c", seed=4)
    assert np.array_equal(frames_array(a.frames), frames_array(b.frames))
    assert not np.array_equal(frames_array(a.frames), frames_array(c.frames))


def test_the_base_model_is_restored_after_every_prompt(pipe):
    before = pipe.generator.sample("plain prompt", seed=0, output_type="latent")
    pipe(DEMO_PROMPT)
    pipe("A steel ball is dropped into water.")
    assert np.array_equal(before, pipe.generator.sample("plain prompt", seed=0, output_type="latent"))


def test_the_same_command_twice_runs_no_stage_the_second_time(pipe, tmp_path):
    first = pipe(DEMO_PROMPT, tmp_path)
    before, record = calls(pipe), (tmp_path / "manifest.json").read_bytes()

    def mtimes():  # every artifact; the lock file records who holds the folder, so it changes
        return {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}

    written = mtimes()
    again = pipe(DEMO_PROMPT, tmp_path)
    assert calls(pipe) == before
    assert (tmp_path / "manifest.json").read_bytes() == record and mtimes() == written
    assert np.array_equal(frames_array(again.frames), iio.imread(first.video_path))  # read back from the mp4
    # One source of frames: the run that sampled returns the video's frames too, not the lossless ones.
    assert np.array_equal(frames_array(first.frames), frames_array(again.frames))


def test_a_changed_seed_samples_again_and_the_record_matches_the_video(pipe, tmp_path, caplog):
    first = pipe(DEMO_PROMPT, tmp_path)
    reasoner, images, tunes, samples = calls(pipe)
    with caplog.at_level(logging.INFO):
        second = pipe(DEMO_PROMPT, tmp_path, seed=7)
    assert calls(pipe) == (reasoner, images, tunes, samples + 1) and pipe.samples[-1] == 7
    assert "sampling inputs changed (seed: 0 -> 7)" in caplog.text
    on_disk = iio.imread(tmp_path / "video.mp4").astype(int)
    assert not np.array_equal(frames_array(first.frames), frames_array(second.frames))
    # the new video is on disk (the mp4 is lossy, so: nearer the new frames than the old)
    assert np.abs(on_disk - frames_array(second.frames)).mean() < np.abs(on_disk - frames_array(first.frames)).mean()
    assert manifest(tmp_path)["stages"]["sampling"]["seed"] == 7


def test_a_changed_tuning_setting_tunes_and_samples_again(pipe, tmp_path, caplog):
    pipe(DEMO_PROMPT, tmp_path)
    reasoner, images, tunes, samples = calls(pipe)
    old_lora = (tmp_path / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    pipe.tuner.inner = type(pipe.tuner.inner)(pipe.tuner.inner.config.replace(rank=4))
    with caplog.at_level(logging.INFO):
        out = pipe(DEMO_PROMPT, tmp_path)
    assert calls(pipe) == (reasoner, images, tunes + 1, samples + 1)
    assert "tuner.config.rank: 16 -> 4" in caplog.text
    assert out.adapter.rank == 4
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").read_bytes() != old_lora
    assert manifest(tmp_path)["stages"]["tuning"]["inputs"]["tuner"]["config"]["rank"] == 4


def test_a_changed_reasoning_setting_is_refused_naming_it_and_overwrite_redoes_it(pipe, tmp_path):
    pipe(DEMO_PROMPT, tmp_path)
    before = calls(pipe)
    pipe.reasoning = ReasoningConfig(max_keyframes=3)
    with pytest.raises(ConfigurationError, match=r"config\.max_keyframes: 8 -> 3.*overwrite=True \(--overwrite\)"):
        pipe(DEMO_PROMPT, tmp_path)
    assert calls(pipe) == before and manifest(tmp_path)["stages"]["sampling"]["status"] == "done"
    out = pipe(DEMO_PROMPT, tmp_path, overwrite=True)
    reasoner, images, tunes, samples = calls(pipe)
    assert (reasoner, images, tunes, samples) == (before[0] + 3, before[1] + 3, before[2] + 1, before[3] + 1)
    assert (
        len(out.chain.images) == 3
        and manifest(tmp_path)["stages"]["reasoning"]["inputs"]["config"]["max_keyframes"] == 3
    )


# The guided variants need a keyframe-conditioned generator: their resume is in test_guided_variants.py.
@pytest.mark.parametrize("variant", [name for name, spec in VARIANTS.items() if not spec.guided])
def test_resuming_a_finished_run_of_every_variant_makes_no_request(variant, tmp_path):
    first = counting(demo_pipeline(steps=5))
    first(DEMO_PROMPT, tmp_path, variant=variant)
    again = counting(demo_pipeline(steps=5))
    out = again(DEMO_PROMPT, tmp_path, variant=variant)
    assert calls(again) == (0, 0, 0, 0) and len(out.frames) == 17
    bare = VChainPipeline()  # a finished run needs no component at all
    assert len(bare(DEMO_PROMPT, tmp_path, variant=variant).frames) == 17


def test_resuming_prompt_augmentation_reuses_the_paid_rewrite(pipe, tmp_path):
    out = pipe(DEMO_PROMPT, tmp_path, variant="t2v-prompt-aug")
    assert [c[0] for c in pipe.reasoner.calls] == ["augment_prompt"]
    assert pipe.tuner.calls == 0 and out.prompt == f"{DEMO_PROMPT}, in rich physical detail."
    assert manifest(tmp_path)["stages"]["reasoning"]["augmented_prompt"] == out.prompt
    again = VChainPipeline(generator=pipe.generator)(DEMO_PROMPT, tmp_path, variant="t2v-prompt-aug", seed=5)
    assert [c[0] for c in pipe.reasoner.calls] == ["augment_prompt"] and pipe.samples[-1] == 5
    assert again.prompt == out.prompt


def test_t2v_never_calls_the_reasoner_or_tuner(pipe, tmp_path):
    out = pipe(DEMO_PROMPT, tmp_path, variant="t2v")
    assert calls(pipe)[:3] == (0, 0, 0)
    assert out.chain is None and out.prompt == DEMO_PROMPT and len(out.frames) == 17
    assert out.statuses == {"reasoning": "skipped", "tuning": "skipped", "sampling": "done"}


def test_t2v_needs_only_a_generator(pipe):
    assert len(VChainPipeline(generator=pipe.generator)(DEMO_PROMPT, variant="t2v").frames) == 17


def test_no_visual_thought_reasons_but_never_tunes(pipe, tmp_path):
    out = pipe(DEMO_PROMPT, tmp_path, variant="no-visual-thought")
    assert pipe.tuner.calls == 0 and len(out.chain.images) == 3
    assert out.prompt == out.chain.composite_prompt and not (tmp_path / "lora").exists()


def test_no_sparse_tuning_interpolates_the_keyframes(pipe, tmp_path):
    class Recording(Interpolator):
        def interpolate(self, keyframes, num_frames):
            self.seen = (len(keyframes), num_frames)
            return [keyframes[0]] * num_frames

    pipe.interpolator = Recording()
    out = pipe(DEMO_PROMPT, tmp_path, variant="no-sparse-tuning")
    assert pipe.interpolator.seen == (3, 17) and pipe.tuner.calls == 0 and pipe.samples == []
    assert iio.imread(out.video_path).shape[0] == 17


def test_a_crash_after_tuning_resumes_without_redoing_reasoning_or_tuning(pipe, tmp_path):
    real_sample = pipe.generator.sample
    pipe.generator.sample = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("GPU lost"))
    with pytest.raises(StageError, match="GPU lost"):
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
    assert np.array_equal(frames_array(out.frames), frames_array(fresh.frames))


def test_stop_after_tuning_then_resume_without_a_reasoner(pipe, tmp_path):
    out = pipe(DEMO_PROMPT, tmp_path, stop_after="tuning")
    assert out.frames == [] and out.adapter is not None and out.statuses["sampling"] == "pending"
    assert not (tmp_path / "video.mp4").exists() and (tmp_path / "lora").is_dir()
    resumed = VChainPipeline(generator=pipe.generator, tuner=pipe.tuner)(DEMO_PROMPT, tmp_path)
    assert resumed.video_path.is_file() and pipe.tuner.calls == 1


def test_think_resumes_a_partial_chain_without_asking_again(tmp_path):
    class CrashAt(ScriptedReasoner):
        def __init__(self, captions, crash_at):
            super().__init__(captions)
            self.crash_at = crash_at

        def next_keyframe(self, chain, composite):
            if len(chain.images) == self.crash_at:
                self.crash_at = None
                raise RuntimeError("connection lost")
            return super().next_keyframe(chain, composite)

    reasoner, backend = CrashAt(["a", "b", "c"], crash_at=2), DrawingImageBackend()
    pipe = VChainPipeline(reasoner, backend, reasoning=ReasoningConfig(width=64, height=32))
    with pytest.raises(StageError, match="connection lost"):
        pipe.think("An egg falls.", output_dir=tmp_path)
    assert len(list(tmp_path.glob("*.png"))) == 2  # what was produced is kept
    before = len(reasoner.calls), len(backend.calls)
    chain = pipe.think("An egg falls.", output_dir=tmp_path)
    assert chain.key_frames == ["a", "b", "c"]
    assert [c[0] for c in reasoner.calls[before[0] :]] == ["next_keyframe", "next_keyframe"]  # no re-plan
    assert [c[0] for c in backend.calls[before[1] :]] == ["edit", "edit"]  # no regenerated image
    n = len(reasoner.calls)
    assert pipe.think("An egg falls.", output_dir=tmp_path).key_frames == ["a", "b", "c"]
    assert len(reasoner.calls) == n


def test_a_caption_paid_for_before_a_failed_edit_is_not_asked_again(tmp_path):
    class FailOnce(DrawingImageBackend):
        failed = False

        def edit(self, images, prompt, *, width, height):
            if len(images) == 2 and not self.failed:
                self.failed = True
                raise RuntimeError("edit failed")
            return super().edit(images, prompt, width=width, height=height)

    reasoner = ScriptedReasoner(["a", "b"])
    pipe = VChainPipeline(reasoner, FailOnce(), reasoning=ReasoningConfig(width=32, height=32))
    with pytest.raises(StageError, match=r"reasoning/edit \(keyframe 2\)"):
        pipe.think(DEMO_PROMPT, tmp_path)
    assert [a["caption"] for a in manifest(tmp_path)["stages"]["reasoning"]["answers"]] == ["a", "b"]
    asked = len(reasoner.calls)
    assert pipe.think(DEMO_PROMPT, tmp_path).key_frames == ["a", "b"] and len(reasoner.calls) == asked


def test_think_refuses_a_folder_of_another_prompt(tmp_path):
    pipe = VChainPipeline(ScriptedReasoner(), DrawingImageBackend(), reasoning=ReasoningConfig(width=16, height=16))
    pipe.think("first prompt", output_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="first prompt"):
        pipe.think("second prompt", output_dir=tmp_path)


@pytest.mark.parametrize(
    ("missing", "variant", "message"),
    [
        ("generator", "vchain", r"needs generator for the tuning of 'vchain'"),
        ("tuner", "vchain", r"needs tuner for the tuning"),
        ("reasoner", "t2v-prompt-aug", r"needs reasoner for the reasoning of 't2v-prompt-aug'"),
        ("image_backend", "no-sparse-tuning", r"needs image_backend for the reasoning"),
    ],
)
def test_missing_components_fail_before_any_call_and_write_nothing(pipe, tmp_path, missing, variant, message):
    setattr(pipe, missing, None)
    with pytest.raises(ConfigurationError, match=message):
        pipe(DEMO_PROMPT, tmp_path / "run", variant=variant)
    assert pipe.reasoner is None or pipe.reasoner.calls == []
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_reasoner_without_augment_prompt_is_refused_before_any_work(tmp_path):
    from vchain.chain import NextKeyframe
    from vchain.interfaces import Reasoner
    from vchain.testing import example_plan

    class Minimal(Reasoner):
        def plan(self, prompt):
            return example_plan(prompt)

        def next_keyframe(self, chain, composite):
            return NextKeyframe(caption="x", is_last=True)

    pipe = demo_pipeline(steps=5)
    pipe.reasoner = Minimal()
    with pytest.raises(ConfigurationError, match="Minimal does not implement augment_prompt"):
        pipe(DEMO_PROMPT, tmp_path, variant="t2v-prompt-aug")
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"reasoner": DrawingImageBackend(), "image_backend": ScriptedReasoner()},
            "reasoner must be a vchain.interfaces.Reasoner, got DrawingImageBackend, which is a ImageBackend: pass it "
            "as image_backend=",
        ),
        ({"reasoner": ScriptedReasoner}, "got the class ScriptedReasoner; pass an instance"),
        ({"generator": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"}, r"load it first, e.g. WanVideoGenerator.from_pretrained"),
        ({"tuner": 3}, "tuner must be a vchain.interfaces.Tuner, got int"),
        ({"reasoning": {"max_keyframes": 4}}, r"reasoning must be a ReasoningConfig, got dict; use ReasoningConfig"),
        ({"save_adapter": "yes"}, "save_adapter must be True or False"),
    ],
)
def test_components_are_checked_against_their_interfaces(kwargs, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        VChainPipeline(**kwargs)


def test_an_unwrapped_diffusers_pipeline_is_named():
    with pytest.raises(ConfigurationError, match=r"got WanPipeline; wrap a diffusers pipeline first"):
        VChainPipeline(generator=tiny_wan_pipeline())


def test_a_shared_reasoning_config_is_never_changed(pipe):
    config = ReasoningConfig(max_keyframes=4)
    VChainPipeline(generator=pipe.generator, reasoning=config)
    assert (config.width, config.height, config.max_keyframes) == (None, None, 4)
    with pytest.raises(
        ConfigurationError, match="ReasoningConfig asks for 720x480 keyframes, the generator renders 64x64"
    ):
        VChainPipeline(generator=pipe.generator, reasoning=ReasoningConfig(width=720, height=480))


@pytest.mark.parametrize("seed", [-1, 2**63, "0", 1.5, True])
def test_bad_seeds_are_refused_before_any_work(pipe, tmp_path, seed):
    with pytest.raises(ConfigurationError, match=r"seed must be None or an integer in \[0, 2\*\*63\)"):
        pipe(DEMO_PROMPT, tmp_path, seed=seed)
    assert calls(pipe) == (0, 0, 0, 0) and not (tmp_path / "manifest.json").exists()


def test_unknown_variant_stop_after_and_empty_prompt_are_named(pipe):
    with pytest.raises(ConfigurationError, match="'t2i'"):
        pipe(DEMO_PROMPT, variant="t2i")
    with pytest.raises(ConfigurationError, match=r"stop_after must be None or a stage of 'vchain' before the last"):
        pipe(DEMO_PROMPT, stop_after="think")
    with pytest.raises(ConfigurationError, match="prompt must be a non-empty string"):
        pipe("   ")


def test_stage_methods_check_what_they_are_given(pipe):
    with pytest.raises(ConfigurationError, match="chain must be a ThoughtChain, got str"):
        pipe.tune("An egg falls.")
    chain = pipe.think(DEMO_PROMPT)
    with pytest.raises(ConfigurationError, match=r"adapter must be an Adapter, got str; load it with tuner"):
        pipe.sample(chain, adapter="runs/demo/lora")
    with pytest.raises(ConfigurationError, match="needs generator and tuner to tune"):
        VChainPipeline().tune(chain)
