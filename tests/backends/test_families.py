"""The battery every tunable video family runs: tuning, exact restore, the LoRA file in stock diffusers, the
frame rules, the run folder's resume, the model as `from_pretrained` loads it in reduced precision, and pinned
numbers.

A new family is one more `Family` in `FAMILIES`; everything below then runs on it. What is particular to one
family (CogVideoX's rotary positions, Wan2.2's expert routing, ...) stays in its own test module.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable

import imageio.v3 as iio
import pytest
import torch

from vchain import VChainPipeline
from vchain.backends.cogvideox import CogVideoXLoRATuner, CogVideoXVideoGenerator
from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
from vchain.errors import ConfigurationError, NumericalError
from vchain.testing import DrawingImageBackend, ScriptedReasoner, draw_image, tiny_wan_pipeline
from vchain.testing.tiny_cogvideox import tiny_cogvideox_pipeline

CAPTIONS = ["a red egg on the table", "a blue ball in the water", "a yellow duck in the sky"]


@dataclasses.dataclass(frozen=True)
class Family:
    """A tunable family as the battery sees it: how to build its tiny pipeline and what it is called with."""

    name: str
    pipeline: Callable[[], object]
    generator_class: type
    tuner_class: type
    size: dict  # sampling settings for the tiny model (one frame: latents of one keyframe's shape)
    frames: int  # a valid longer frame count, for the whole pipeline
    dtypes: tuple[torch.dtype, ...]  # the reduced precisions `from_pretrained` loads it in
    golden_losses: tuple[float, ...]  # the tuning loss at steps 2 and 4 (float32, seed 0)
    golden_latents: tuple[float, ...]  # the first values of a seed-0 latent sample of the base model

    def generator(self, pipeline=None, **overrides):
        return self.generator_class(pipeline or self.pipeline(), **{**self.size, **overrides})

    def tuner(self, **fields):
        tuner = self.tuner_class(**fields)
        tuner.set_progress_bar_config(disable=True)
        return tuner


FAMILIES = [
    Family(
        "wan2.1",
        tiny_wan_pipeline,
        WanVideoGenerator,
        WanLoRATuner,
        dict(height=32, width=32, num_frames=1, num_inference_steps=4, max_sequence_length=32),
        frames=5,
        dtypes=(torch.bfloat16, torch.float16),
        golden_losses=(1.460657, 1.598150),
        golden_latents=(-1.111306, -1.718811, 0.762564, -0.816115),
    ),
    Family(
        "wan2.2-two-experts",
        lambda: tiny_wan_pipeline(two_experts=True),
        WanVideoGenerator,
        WanLoRATuner,
        dict(height=32, width=32, num_frames=1, num_inference_steps=4, max_sequence_length=32),
        frames=5,
        dtypes=(torch.bfloat16, torch.float16),
        golden_losses=(1.682014, 1.639308),
        golden_latents=(-0.477594, -0.645518, -0.115102, -0.374652),
    ),
    Family(
        "cogvideox-5b",
        tiny_cogvideox_pipeline,
        CogVideoXVideoGenerator,
        CogVideoXLoRATuner,
        dict(height=32, width=32, num_frames=1, num_inference_steps=4),
        frames=9,
        dtypes=(torch.bfloat16, torch.float16),
        golden_losses=(0.751007, 0.598802),
        golden_latents=(-0.966376, -1.367936, 1.108765, 1.092061),
    ),
]


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda family: family.name)
def family(request) -> Family:
    return request.param


@pytest.fixture(scope="module")
def generator(family):
    return family.generator()


@pytest.fixture(scope="module")
def saved(family, tmp_path_factory):
    """The tiny model saved as a checkpoint folder, for `from_pretrained` and the CLI."""
    folder = tmp_path_factory.mktemp(family.name)
    family.pipeline().save_pretrained(folder)
    return folder


def make_pairs(tag=""):
    return [(draw_image(tag + caption, 32, 32), caption) for caption in CAPTIONS]


def latent(generator, prompt="a red egg", seed=0):
    return generator.sample(prompt, seed=seed, output_type="latent")


def evaluation_loss(generator, pairs) -> float:
    """The training objective on fixed noise and levels, each sample through the denoiser that serves it."""
    images, captions = zip(*pairs, strict=True)
    x0 = generator.encode_keyframes(images, height=32, width=32).float()
    context = generator.encode_captions(captions).float()
    objective = generator.training_objective()
    total = 0.0
    for i, level in enumerate((0.2, 0.4, 0.6, 0.95)):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(123 + i))
        noisy, timestep, target = objective.corrupt(x0, noise, torch.full((len(x0),), level))
        denoiser = generator.denoisers()[generator.denoiser_for(level)]
        with torch.no_grad():
            prediction = generator.predict(denoiser, noisy, timestep, context)
        total += torch.nn.functional.mse_loss(prediction.float(), target).item()
    return total / 4


def snapshot(generator):
    return [
        (
            {k: v.clone() for k, v in denoiser.state_dict().items()},
            {n: p.requires_grad for n, p in denoiser.named_parameters()},
            {n: m.training for n, m in denoiser.named_modules()},
        )
        for denoiser in generator.denoisers()
    ]


def assert_same(generator, before):
    for denoiser, (weights, flags, modes) in zip(generator.denoisers(), before, strict=True):
        state = denoiser.state_dict()
        assert state.keys() == weights.keys()
        assert all(torch.equal(state[k], weights[k]) for k in weights)
        assert state.keys() == weights.keys() and {k: v.dtype for k, v in state.items()} == {
            k: v.dtype for k, v in weights.items()
        }
        assert {n: p.requires_grad for n, p in denoiser.named_parameters()} == flags
        assert {n: m.training for n, m in denoiser.named_modules()} == modes
        assert not hasattr(denoiser, "peft_config")


# ------------------------------------------------------------------------------------------ tuning


def test_tuning_lowers_the_objective_and_leaves_no_trace(family, generator):
    pairs = make_pairs()
    before, state = evaluation_loss(generator, pairs), snapshot(generator)
    adapter = family.tuner(steps=100, learning_rate=2e-3, log_every=20).tune(generator, pairs)
    assert_same(generator, state)  # tuning itself leaves the model as it was
    with adapter.apply(generator):
        after = evaluation_loss(generator, pairs)
    assert after < 0.85 * before, (before, after)
    assert evaluation_loss(generator, pairs) == before
    assert len(adapter.state_dicts) == len(generator.denoisers())
    assert {v.dtype for sd in adapter.state_dicts for v in sd.values()} == {torch.float32}


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "peft-layers"])
def test_leaving_the_adapter_restores_the_base_exactly(family, generator, merge):
    base, state = latent(generator), snapshot(generator)
    adapter = family.tuner(steps=10, learning_rate=1e-3, merge_for_sampling=merge).tune(generator, make_pairs())
    with adapter.apply(generator):
        assert not torch.equal(latent(generator), base)
    assert torch.equal(latent(generator), base)
    assert_same(generator, state)


def test_the_encoders_run_once_per_tuning_run_whatever_the_steps(family, generator):
    calls = {"text": 0, "vae": 0}
    pipeline = generator.pipeline
    hooks = [
        pipeline.text_encoder.register_forward_hook(lambda *_: calls.__setitem__("text", calls["text"] + 1)),
        pipeline.vae.encoder.register_forward_hook(lambda *_: calls.__setitem__("vae", calls["vae"] + 1)),
    ]
    try:
        for steps in (2, 12):
            calls.update(text=0, vae=0)
            family.tuner(steps=steps).tune(generator, make_pairs())
            assert calls == {"text": 1, "vae": 1}, (steps, calls)
    finally:
        for hook in hooks:
            hook.remove()


def test_pinned_numbers(family, generator):
    """A silent change in diffusers, peft or vchain shows here first (as diffusers pins its slices)."""
    adapter = family.tuner(steps=4, learning_rate=1e-3, log_every=2).tune(generator, make_pairs())
    losses = tuple(loss for _, loss in adapter.report.losses)
    sample = latent(generator).flatten()[:4].tolist()
    assert losses == pytest.approx(family.golden_losses, rel=1e-4, abs=1e-5), losses
    assert sample == pytest.approx(family.golden_latents, rel=1e-4, abs=1e-5), sample


# ------------------------------------------------------------------------------ the LoRA file


def test_a_saved_lora_loads_in_stock_diffusers_to_the_same_sample(family, generator, tmp_path):
    adapter = family.tuner(steps=20, learning_rate=1e-3, alpha=8).tune(generator, make_pairs())
    with adapter.apply(generator):
        in_memory = latent(generator, CAPTIONS[1])
    adapter.save(tmp_path)

    stock = family.pipeline()
    stock.load_lora_weights(tmp_path)
    if len(generator.denoisers()) == 2:  # Wan2.2: the second expert's LoRA, as diffusers documents it
        stock.load_lora_weights(tmp_path / "transformer_2", load_into_transformer_2=True)
    call = {**family.size, "max_sequence_length": generator.text_tokens}
    from_file = stock(CAPTIONS[1], generator=torch.Generator().manual_seed(0), output_type="latent", **call).frames
    assert (from_file - in_memory).abs().max().item() < 1e-4

    reloaded = family.tuner().load_adapter(tmp_path)
    assert (reloaded.rank, reloaded.alpha, len(reloaded.state_dicts)) == (16, 8, len(generator.denoisers()))
    with reloaded.apply(generator):
        assert (latent(generator, CAPTIONS[1]) - in_memory).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------------- frame rules


def test_a_bad_tuning_size_is_refused_before_encoding(family, generator):
    calls = []
    hook = generator.pipeline.vae.encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ConfigurationError, match="height must be a positive multiple of 16, got 40"):
            family.tuner(steps=1, height=40).tune(generator, make_pairs())
    finally:
        hook.remove()
    assert calls == []


@pytest.mark.parametrize(("setting", "value"), [("height", 24), ("width", 40), ("num_frames", 2)])
def test_bad_sampling_sizes_are_refused_before_any_work(family, generator, setting, value):
    calls = []
    hook = generator.denoisers()[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ConfigurationError, match=rf"{setting} must be .*got {value}"):
            generator.sample("x", **{setting: value})
        with pytest.raises(ConfigurationError, match=rf"{setting} must be .*got {value}"):
            family.generator(generator.pipeline, **{setting: value})
    finally:
        hook.remove()
    assert calls == []


def test_a_non_finite_video_is_refused(generator):
    bias = generator.denoisers()[0].proj_out.bias
    kept = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(float("nan"))
    try:
        with pytest.raises(NumericalError, match="not finite"):
            generator.sample("a red egg", seed=0)
    finally:
        with torch.no_grad():
            bias.copy_(kept)


# ---------------------------------------------------------------------------- the whole pipeline


def test_the_pipeline_runs_and_a_second_run_reuses_every_stage(family, generator, tmp_path):
    reasoner = ScriptedReasoner()
    tuner = family.tuner(steps=6, learning_rate=1e-3, log_every=3)
    video = family.generator(generator.pipeline, num_frames=family.frames)
    pipe = VChainPipeline(reasoner, DrawingImageBackend(), video, tuner)
    out = pipe("An egg is dropped onto a pillow.", output_dir=tmp_path)
    assert len(out.frames) == family.frames and out.frames[0].size == (32, 32)
    assert iio.imread(out.video_path).shape[:3] == (family.frames, 32, 32)
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {s: r["status"] for s, r in manifest["stages"].items()} == dict.fromkeys(
        ("reasoning", "tuning", "sampling"), "done"
    )
    assert manifest["stages"]["sampling"]["inputs"]["generator"]["class"] == family.generator_class.__name__

    asked, trained = len(reasoner.calls), []
    real = tuner.tune
    tuner.tune = lambda *a, **k: trained.append(1) or real(*a, **k)
    again = pipe("An egg is dropped onto a pillow.", output_dir=tmp_path)
    assert len(reasoner.calls) == asked and trained == []  # reused, nothing paid or tuned again
    assert again.video_path == out.video_path


# ------------------------------------------------------------- as from_pretrained loads it, reduced precision


def test_every_reduced_precision_tunes_samples_and_restores_exactly(family, saved):
    for dtype in family.dtypes:
        generator = family.generator_class.from_pretrained(saved, dtype=dtype, **family.size)
        generator.set_progress_bar_config(disable=True)
        denoiser = generator.denoisers()[0]
        assert denoiser.dtype == dtype  # diffusers' compute dtype, whatever it keeps in float32
        base, state = latent(generator), snapshot(generator)
        tuner = family.tuner(steps=3, learning_rate=1e-3, log_every=1)
        tuner.check(generator)  # the probe step runs in this precision too
        adapter = tuner.tune(generator, make_pairs())
        assert all(loss == loss for _, loss in adapter.report.losses)  # finite, every step
        assert {v.dtype for sd in adapter.state_dicts for v in sd.values()} == {torch.float32}
        for merge in (True, False):
            adapter.merge = merge
            with adapter.apply(generator):
                tuned = latent(generator)
            assert tuned.isfinite().all() and not torch.equal(tuned, base), (dtype, merge)
            assert torch.equal(latent(generator), base), (dtype, merge)
        assert_same(generator, state)


def test_the_cli_tunes_and_samples_a_checkpoint_in_bfloat16(family, saved, tmp_path_factory, capsys):
    from vchain.cli import main

    run = tmp_path_factory.mktemp(f"{family.name}-cli") / "run"
    assert main(["demo", "-o", str(run)]) == 0
    frame = ["--height", "32", "--width", "32", "--dtype", "bfloat16"]
    assert main(["tune", "-o", str(run), "--model", str(saved), "--tune-steps", "2", *frame]) == 0
    assert main(["sample", "-o", str(run), "--model", str(saved), *frame, "--frames", "1", "--steps", "2"]) == 0
    capsys.readouterr()
    manifest = json.loads((run / "manifest.json").read_text())
    generator = manifest["stages"]["sampling"]["inputs"]["generator"]
    assert generator["class"] == family.generator_class.__name__ and generator["dtype"] == "bfloat16"
    assert {s: r["status"] for s, r in manifest["stages"].items()} == dict.fromkeys(
        ("reasoning", "tuning", "sampling"), "done"
    )
    assert iio.imread(run / "video.mp4").shape[:3] == (1, 32, 32)
    shutil.rmtree(run)


def test_a_pair_that_cannot_take_a_step_fails_before_reasoning_is_paid(family, saved, monkeypatch, tmp_path):
    """The class of the bf16 failure: inputs cast to a dtype the first layer does not take. The pipeline's
    check runs one probe step, so it fails before any reasoning request."""
    import vchain.tuning

    generator = family.generator_class.from_pretrained(saved, dtype=torch.bfloat16, **family.size)
    generator.set_progress_bar_config(disable=True)
    monkeypatch.setattr(vchain.tuning, "input_dtype", lambda module: torch.float32)
    reasoner = ScriptedReasoner()
    pipe = VChainPipeline(reasoner, DrawingImageBackend(), generator, family.tuner(steps=2))
    before = snapshot(generator)
    with pytest.raises(ConfigurationError, match=r"cannot run a training step on .* as loaded"):
        pipe("An egg is dropped onto a pillow.", output_dir=tmp_path / "run")
    assert reasoner.calls == []
    assert_same(generator, before)
