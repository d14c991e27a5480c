"""Stages 2 and 3 on a tiny random Wan: real diffusers and peft code paths, behaviour asserted."""

import pytest
import torch

from vchain.backends.wan import (
    WAN_LORA_TARGETS,
    WanLoRAAdapter,
    WanLoRAConfig,
    WanLoRATuner,
    WanSamplingConfig,
    WanVideoGenerator,
    flow_matching_loss,
)
from vchain.errors import ConfigurationError, StageError
from vchain.testing import draw_image, tiny_wan_pipeline

SIZE = dict(height=32, width=32, num_frames=1, num_inference_steps=4, max_sequence_length=32)
CAPTIONS = ["a red egg on the table", "a blue ball in the water", "a yellow duck in the sky"]


def make_generator(**overrides):
    return WanVideoGenerator(tiny_wan_pipeline(), **{**SIZE, **overrides})


def make_pairs(captions=CAPTIONS, tag=""):
    return [(draw_image(tag + caption, 32, 32), caption) for caption in captions]


@pytest.fixture(scope="module")
def generator():
    return make_generator()


def latent(generator, prompt, seed=0):
    return generator.sample(prompt, seed=seed, output_type="latent")


def test_tuning_lowers_the_loss_on_a_fixed_evaluation_set(generator):
    pairs = make_pairs()
    x0 = generator.encode_images([image for image, _ in pairs], 32, 32).float()
    context = generator.encode_text([caption for _, caption in pairs])
    rng = torch.Generator().manual_seed(123)
    noise = torch.randn(x0.shape, generator=rng)
    sigma = torch.tensor([0.3, 0.6, 0.9])

    def evaluate():
        with torch.no_grad():
            return flow_matching_loss(generator.transformers, None, x0, context, noise, sigma).item()

    before = evaluate()
    adapter = WanLoRATuner(steps=150, learning_rate=1e-3).tune(generator, pairs)
    with adapter.apply(generator):
        after = evaluate()
    assert after < 0.9 * before, (before, after)
    assert evaluate() == before  # and the base is back
    losses = [loss for _, loss in adapter.report.losses]
    assert losses[-1] < losses[0]


def test_tuned_samples_move_toward_their_keyframes(generator):
    pairs = make_pairs()
    keyframe_latents = generator.encode_images([image for image, _ in pairs], 32, 32)
    adapter = WanLoRATuner(steps=300, learning_rate=2e-3).tune(generator, pairs)

    def distance():
        errors = [
            torch.mean((latent(generator, caption, seed) - keyframe_latents[i : i + 1]) ** 2).item()
            for i, (_, caption) in enumerate(pairs)
            for seed in range(4)
        ]
        return sum(errors) / len(errors)

    before = distance()
    with adapter.apply(generator):
        after = distance()
    assert after <= 0.85 * before, (before, after)


@pytest.mark.parametrize("merge", [True, False])
def test_removing_the_adapter_restores_the_base_exactly(merge):
    generator = make_generator()
    base = latent(generator, "a red egg")
    weights = {k: v.clone() for k, v in generator.pipeline.transformer.state_dict().items()}
    flags = {n: p.requires_grad for n, p in generator.pipeline.transformer.named_parameters()}
    adapter = WanLoRATuner(steps=20, learning_rate=1e-3, merge_for_sampling=merge).tune(
        generator, make_pairs()
    )
    assert torch.equal(latent(generator, "a red egg"), base)  # tuning leaves no trace
    with adapter.apply(generator):
        assert not torch.equal(latent(generator, "a red egg"), base)
    assert torch.equal(latent(generator, "a red egg"), base)
    state = generator.pipeline.transformer.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    assert {n: p.requires_grad for n, p in generator.pipeline.transformer.named_parameters()} == flags
    assert not generator.pipeline.transformer.training


def test_an_adapter_is_removed_even_when_sampling_fails(generator):
    base = latent(generator, "a red egg")
    adapter = WanLoRATuner(steps=5).tune(generator, make_pairs())
    with pytest.raises(ConfigurationError), adapter.apply(generator):
        generator.sample("x", num_frames=2)
    assert torch.equal(latent(generator, "a red egg"), base)


def test_two_prompts_tuned_in_turn_do_not_leak():
    shared = make_generator()
    first = WanLoRATuner(steps=30, learning_rate=1e-3).tune(shared, make_pairs(tag="first"))
    with first.apply(shared):
        latent(shared, CAPTIONS[0])
    second = WanLoRATuner(steps=30, learning_rate=1e-3).tune(shared, make_pairs(tag="second"))
    with second.apply(shared):
        after_first = latent(shared, CAPTIONS[0])

    fresh = make_generator()
    alone = WanLoRATuner(steps=30, learning_rate=1e-3).tune(fresh, make_pairs(tag="second"))
    with alone.apply(fresh):
        assert torch.equal(latent(fresh, CAPTIONS[0]), after_first)
    for a, b in zip(second.state_dicts[0].values(), alone.state_dicts[0].values(), strict=True):
        assert torch.equal(a, b)


def test_tuning_is_deterministic_for_a_seed(generator):
    a = WanLoRATuner(steps=10, seed=3).tune(generator, make_pairs())
    b = WanLoRATuner(steps=10, seed=3).tune(generator, make_pairs())
    c = WanLoRATuner(steps=10, seed=4).tune(generator, make_pairs())
    assert all(torch.equal(a.state_dicts[0][k], b.state_dicts[0][k]) for k in a.state_dicts[0])
    assert any(not torch.equal(a.state_dicts[0][k], c.state_dicts[0][k]) for k in a.state_dicts[0])


def test_saved_lora_loads_in_stock_diffusers_to_the_same_sample(generator, tmp_path):
    adapter = WanLoRATuner(steps=30, learning_rate=1e-3, alpha=8).tune(generator, make_pairs())
    with adapter.apply(generator):
        in_memory = latent(generator, CAPTIONS[1])
    adapter.save(tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()

    stock = tiny_wan_pipeline()
    stock.load_lora_weights(tmp_path)
    from_file = stock(CAPTIONS[1], generator=torch.Generator().manual_seed(0), output_type="latent",
                      **{k: v for k, v in SIZE.items()}).frames  # fmt: skip
    assert (from_file - in_memory).abs().max().item() < 1e-4

    reloaded = WanLoRATuner().load_adapter(tmp_path)
    assert (reloaded.rank, reloaded.alpha) == (16, 8)  # alpha survives the round trip
    with reloaded.apply(generator):
        assert (latent(generator, CAPTIONS[1]) - in_memory).abs().max().item() < 1e-5


def test_encoders_run_once_per_tuning_run_whatever_the_steps(generator):
    calls = {"text": 0, "vae": 0}
    pipeline = generator.pipeline
    hooks = [
        pipeline.text_encoder.register_forward_hook(lambda *_: calls.__setitem__("text", calls["text"] + 1)),
        pipeline.vae.encoder.register_forward_hook(lambda *_: calls.__setitem__("vae", calls["vae"] + 1)),
    ]
    try:
        for steps in (3, 25):
            calls.update(text=0, vae=0)
            WanLoRATuner(steps=steps).tune(generator, make_pairs())
            assert calls == {"text": 1, "vae": 1}, (steps, calls)
    finally:
        for hook in hooks:
            hook.remove()


def test_the_real_wan21_config_gets_lora_on_all_300_block_linears():
    from diffusers import WanTransformer3DModel
    from peft.tuners.lora import LoraLayer

    with torch.device("meta"):
        transformer = WanTransformer3DModel(
            attention_head_dim=128, num_attention_heads=12, num_layers=30, ffn_dim=8960, text_dim=4096,
            freq_dim=256, in_channels=16, out_channels=16, patch_size=(1, 2, 2),
            qk_norm="rms_norm_across_heads", cross_attn_norm=True, eps=1e-6,
        )  # fmt: skip
    transformer.add_adapter(WanLoRAConfig().lora_config(), adapter_name="vchain")
    lora_layers = [m for m in transformer.modules() if isinstance(m, LoraLayer)]
    trainable = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" in n)
    assert len(lora_layers) == 300
    assert 21.8e6 < trainable < 21.9e6
    assert WanLoRAConfig().target_modules == WAN_LORA_TARGETS


def test_wan22_two_experts_sample_and_tune():
    generator = WanVideoGenerator(tiny_wan_pipeline(two_experts=True), **SIZE)
    base = latent(generator, "a red egg")
    adapter = WanLoRATuner(steps=20, learning_rate=1e-3).tune(generator, make_pairs())
    assert len(adapter.state_dicts) == 2
    with adapter.apply(generator):
        assert not torch.equal(latent(generator, "a red egg"), base)
    assert torch.equal(latent(generator, "a red egg"), base)


def test_nan_loss_stops_with_a_clear_error(generator):
    base = latent(generator, "a red egg")
    with pytest.raises(StageError, match=r"loss became nan.*learning_rate"):
        WanLoRATuner(steps=20, learning_rate=1e30, max_grad_norm=None).tune(generator, make_pairs())
    assert torch.equal(latent(generator, "a red egg"), base)


def test_sampling_returns_frames_and_writes_an_mp4(tmp_path):
    generator = make_generator(num_frames=5, height=48, width=64)
    frames = generator.sample("a red egg", seed=1)
    assert len(frames) == 5 and frames[0].size == (64, 48)
    path = generator.save_video(frames, tmp_path / "video.mp4")
    import imageio.v3 as iio

    assert iio.imread(path).shape[:3] == (5, 48, 64)


def test_step_cache_option_runs_and_is_removed_after(generator):
    base = latent(generator, "a red egg")
    generator.sample("a red egg", seed=0, output_type="latent", cache="first-block", cache_threshold=0.5)
    assert torch.equal(latent(generator, "a red egg"), base)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_frames": 80}, "num_frames must be 4k\\+1.*got 80"),
        ({"height": 33}, "height must be a positive multiple of 16, got 33"),
        ({"width": 0}, "width must be a positive multiple of 16, got 0"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"cache": "magic"}, "cache must be None or 'first-block', got 'magic'"),
    ],
)
def test_invalid_sampling_settings_name_the_argument_and_value(generator, overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        generator.sample("x", **overrides)
    with pytest.raises(ConfigurationError, match=message):
        WanVideoGenerator(generator.pipeline, **{**SIZE, **overrides})


def test_unknown_sampling_setting_is_named(generator):
    with pytest.raises(ConfigurationError, match="num_frame"):
        generator.sample("x", num_frame=5)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([], r"pairs must hold at least one"),
        ([("missing.png", "c")], r"pairs\[0\] image 'missing.png' cannot be read"),
        ([(draw_image("x", 8, 8), "")], r"pairs\[0\] caption must be a non-empty string"),
        ([(42, "c")], r"pairs\[0\] image must be a PIL image or a path, got int"),
        ([("just one thing",)], r"pairs\[0\] must be an \(image, caption\) pair"),
    ],
)
def test_bad_pairs_are_named(generator, pairs, message):
    with pytest.raises(ConfigurationError, match=message):
        WanLoRATuner(steps=1).tune(generator, pairs)


def test_unreadable_image_file_is_named(generator, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ConfigurationError, match=r"broken\.png"):
        WanLoRATuner(steps=1).tune(generator, [(bad, "c")])


def test_tuner_config_collects_errors_with_values():
    with pytest.raises(ConfigurationError) as e:
        WanLoRAConfig(rank=0, learning_rate=-1, weighting_scheme="cosine", height=30)
    message = str(e.value)
    assert "rank must be a positive integer, got 0" in message
    assert "learning_rate must be positive, got -1" in message
    assert "'cosine'" in message and "height must be a positive multiple of 16 or None, got 30" in message


def test_defaults_are_the_papers():
    config = WanLoRAConfig()
    assert (config.rank, config.alpha, config.learning_rate) == (16, 16, 1e-4)
    assert WanSamplingConfig().num_frames == 81 and (
        WanSamplingConfig().height,
        WanSamplingConfig().width,
    ) == (
        480,
        832,
    )


def test_adapter_for_another_model_kind_is_refused(generator):
    adapter = WanLoRAAdapter([{}, {}], rank=4, alpha=4, target_modules=WAN_LORA_TARGETS)
    with pytest.raises(ConfigurationError, match="2 transformer"), adapter.apply(generator):
        pass
