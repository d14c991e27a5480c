"""CogVideoX through the generic tuner, on tiny random CogVideoX pipelines: real diffusers and peft paths."""

import json

import pytest
import torch

from vchain.backends.cogvideox import (
    COGVIDEOX_LORA_TARGETS,
    CogVideoXLoRAConfig,
    CogVideoXLoRATuner,
    CogVideoXSamplingConfig,
    CogVideoXVideoGenerator,
    VPredictionObjective,
)
from vchain.errors import ConfigurationError
from vchain.testing import draw_image, tiny_wan_pipeline
from vchain.testing.tiny_cogvideox import TINY_TEXT_TOKENS, tiny_cogvideox_pipeline

SIZE = dict(height=32, width=32, num_frames=1, num_inference_steps=4)
CAPTIONS = ["a red egg on the table", "a blue ball in the water", "a yellow duck in the sky"]


def make_generator(version="5b", **overrides):
    return CogVideoXVideoGenerator(tiny_cogvideox_pipeline(version=version), **{**SIZE, **overrides})


@pytest.fixture(scope="module")
def generator():
    return make_generator()


def make_pairs():
    return [(draw_image(caption, 32, 32), caption) for caption in CAPTIONS]


def tuner(**fields):
    tuner = CogVideoXLoRATuner(**fields)
    tuner.set_progress_bar_config(disable=True)
    return tuner


def latent(generator, prompt, seed=0):
    return generator.sample(prompt, seed=seed, output_type="latent")


def evaluation_loss(generator, pairs):
    """The objective on fixed noise and levels: what tuning should lower."""
    images, captions = zip(*pairs, strict=True)
    x0 = generator.encode_keyframes(images, height=32, width=32).float().repeat(4, 1, 1, 1, 1)
    context = generator.encode_captions(captions).repeat(4, 1, 1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(123))
    levels = torch.tensor([0.2, 0.4, 0.6, 0.8]).repeat_interleave(len(pairs))  # each keyframe at each
    noisy, timestep, target = generator.training_objective().corrupt(x0, noise, levels)
    with torch.no_grad():
        prediction = generator.predict(generator.denoisers()[0], noisy, timestep, context)
    return torch.nn.functional.mse_loss(prediction, target).item()


def snapshot(transformer):
    return (
        {k: v.clone() for k, v in transformer.state_dict().items()},
        {n: p.requires_grad for n, p in transformer.named_parameters()},
        {n: m.training for n, m in transformer.named_modules()},
    )


def assert_same(transformer, before):
    weights, flags, modes = before
    state = transformer.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    assert {n: p.requires_grad for n, p in transformer.named_parameters()} == flags
    assert {n: m.training for n, m in transformer.named_modules()} == modes


# ------------------------------------------------------------------------------------------ tuning


def test_tuned_samples_move_toward_their_keyframes(generator):
    pairs = make_pairs()
    keyframes = generator.encode_keyframes([image for image, _ in pairs], height=32, width=32)
    adapter = tuner(steps=300, learning_rate=2e-3).tune(generator, pairs)

    def distance():
        errors = [
            torch.mean((latent(generator, caption, seed) - keyframes[i : i + 1]) ** 2).item()
            for i, (_, caption) in enumerate(pairs)
            for seed in range(4)
        ]
        return sum(errors) / len(errors)

    before = distance()
    with adapter.apply(generator):
        after = distance()
    assert after <= 0.7 * before, (before, after)


@pytest.mark.parametrize("version", ["2b", "1.5"])
def test_every_release_tunes_and_is_restored(version):
    generator = make_generator(version)
    pairs = make_pairs()
    base, loss = latent(generator, "a red egg"), evaluation_loss(generator, pairs)
    before = snapshot(generator.pipeline.transformer)
    adapter = tuner(steps=150, learning_rate=2e-3).tune(generator, pairs)
    with adapter.apply(generator):
        assert evaluation_loss(generator, pairs) < 0.7 * loss
        assert not torch.equal(latent(generator, "a red egg"), base)
    assert torch.equal(latent(generator, "a red egg"), base)
    assert_same(generator.pipeline.transformer, before)


# ------------------------------------------------------------------------------- model specifics


def test_the_objective_is_the_schedulers_v_prediction(generator):
    scheduler = generator.pipeline.scheduler
    objective = generator.training_objective()
    x0 = torch.randn(3, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    noisy, timestep, target = objective.corrupt(x0, noise, torch.tensor([0.0, 0.5, 1.0]))
    assert timestep.tolist() == [0, 500, 999] and timestep.dtype == torch.long
    a = scheduler.alphas_cumprod[timestep].float().view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noisy, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    torch.testing.assert_close(target, a.sqrt() * noise - (1 - a).sqrt() * x0)
    torch.testing.assert_close(noisy[2], noise[2])  # zero terminal SNR: the last timestep is pure noise
    assert objective.scheduler is not scheduler  # training never touches the pipeline's scheduler
    assert objective.levels(torch.tensor([0.25])).item() == 0.25


def test_a_scheduler_that_does_not_predict_v_is_refused(generator):
    from diffusers import DDIMScheduler

    with pytest.raises(ConfigurationError, match=r"prediction_type='v_prediction'.*got DDIMScheduler.*'epsilon'"):
        VPredictionObjective(DDIMScheduler())


def test_the_training_forward_gets_the_rotary_positions_sampling_uses(generator):
    transformer = generator.pipeline.transformer
    noisy = torch.randn(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    context = generator.encode_captions(CAPTIONS[:2])
    timestep = torch.tensor([300, 700])
    with torch.no_grad():
        predicted = generator.predict(transformer, noisy, timestep, context)
        rotary = generator.pipeline._prepare_rotary_positional_embeddings(32, 32, 1, torch.device("cpu"))
        with_positions = transformer(noisy, context, timestep, image_rotary_emb=rotary, return_dict=False)[0]
        without = transformer(noisy, context, timestep, return_dict=False)[0]
    assert torch.equal(predicted, with_positions)
    assert not torch.allclose(predicted, without)


def test_a_15_keyframe_fills_the_two_latent_frames_of_a_token():
    generator = make_generator("1.5")
    latents = generator.encode_keyframes([draw_image("x", 32, 32)], height=32, width=32)
    assert latents.shape == (1, 2, 4, 4, 4) and torch.equal(latents[:, 0], latents[:, 1])
    single = make_generator("5b").encode_keyframes([draw_image("x", 32, 32)], height=32, width=32)
    assert single.shape == (1, 1, 4, 4, 4)


def test_the_real_5b_config_gets_lora_on_all_252_block_linears():
    from diffusers import CogVideoXTransformer3DModel
    from peft.tuners.lora import LoraLayer

    with torch.device("meta"):
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=48,
            attention_head_dim=64,
            num_layers=42,
            patch_bias=False,
            use_rotary_positional_embeddings=True,
        )
    transformer.add_adapter(CogVideoXLoRAConfig().lora_config(COGVIDEOX_LORA_TARGETS), adapter_name="vchain")
    lora_layers = [m for m in transformer.modules() if isinstance(m, LoraLayer)]
    trainable = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" in n)
    assert len(lora_layers) == 42 * 6
    assert trainable == 42 * 16 * (4 * (3072 + 3072) + 2 * (3072 + 12288))  # 37.2 M


# ----------------------------------------------------------------------------- sampling and checks


def test_sampling_returns_frames_and_reports_its_timings(generator):
    from vchain.accounting import collect_timings

    with collect_timings() as seconds:
        frames = generator.sample("a red egg", seed=1, num_frames=9, height=48, width=64)
    assert len(frames) == 9 and frames[0].size == (64, 48)
    assert set(seconds) == {"denoise", "decode"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_frames": 5}, r"num_frames must be 8k\+1.*got 5"),
        ({"num_frames": 48}, r"num_frames must be 8k\+1.*got 48"),
        ({"height": 24}, "height must be a positive multiple of 16, got 24"),
        ({"width": 40}, "width must be a positive multiple of 16, got 40"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
    ],
)
def test_bad_frame_counts_and_sizes_are_refused_before_any_work(generator, overrides, message):
    calls = []
    hook = generator.pipeline.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ConfigurationError, match=message):
            generator.sample("x", **overrides)
        with pytest.raises(ConfigurationError, match=message):
            CogVideoXVideoGenerator(generator.pipeline, **{**SIZE, **overrides})
        with pytest.raises(ConfigurationError, match=message):  # before any download or load
            CogVideoXVideoGenerator.from_pretrained("no-such-owner/no-such-model", **overrides)
    finally:
        hook.remove()
    assert calls == []


def test_15_refuses_sizes_beyond_its_rotary_table():
    with pytest.raises(ConfigurationError, match=r"at most 64x64.*got 80x32"):
        make_generator("1.5", height=80)
    generator = make_generator("1.5")
    with pytest.raises(ConfigurationError, match=r"invalid tuning size.*at most 64x64"):
        tuner(steps=1, width=96).tune(generator, make_pairs())


def test_from_pretrained_loads_a_saved_checkpoint_folder(generator, tmp_path):
    tiny_cogvideox_pipeline().save_pretrained(tmp_path)
    loaded = CogVideoXVideoGenerator.from_pretrained(tmp_path, dtype=torch.float32, **SIZE)
    assert loaded.describe()["model_id"] == str(tmp_path)
    assert torch.equal(latent(loaded, "a red egg"), latent(generator, "a red egg"))


def test_only_a_cogvideox_pipeline_is_wrapped():
    with pytest.raises(ConfigurationError, match=r"use CogVideoXVideoGenerator\.from_pretrained\('THUDM/"):
        CogVideoXVideoGenerator("THUDM/CogVideoX-5b")
    with pytest.raises(ConfigurationError, match=r"CogVideoXPipeline.*got WanPipeline"):
        CogVideoXVideoGenerator(tiny_wan_pipeline())


def test_defaults_are_cogvideox_and_the_papers(generator):
    sampling = CogVideoXSamplingConfig()
    assert (sampling.height, sampling.width, sampling.num_frames, sampling.fps) == (480, 720, 49, 8)
    assert (sampling.guidance_scale, sampling.num_inference_steps) == (6.0, 50)
    lora = CogVideoXLoRAConfig()
    assert (lora.rank, lora.alpha, lora.learning_rate, lora.steps) == (16, 16, 1e-4, 300)
    assert lora.target_modules == COGVIDEOX_LORA_TARGETS and lora.weighting_scheme == "uniform"
    assert generator.prompt_tokens("a red egg")[1] == TINY_TEXT_TOKENS
    info = generator.describe()
    assert info["class"] == "CogVideoXVideoGenerator" and info["dtype"] == "float32"
    assert info["config"]["num_frames"] == 1 and json.dumps(info)
