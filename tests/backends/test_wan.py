"""The Wan backend on a tiny random WanPipeline: sampling, its checks, Wan2.2's experts, stock diffusers."""

import imageio.v3 as iio
import pytest
import torch

from vchain.backends.wan import (
    WAN_LORA_TARGETS,
    WanLoRAConfig,
    WanLoRATuner,
    WanSamplingConfig,
    WanVideoGenerator,
)
from vchain.errors import ConfigurationError
from vchain.testing import draw_image, tiny_wan_pipeline
from vchain.video import write_video

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


def test_sampling_returns_frames_that_write_an_mp4(tmp_path):
    generator = make_generator(num_frames=5, height=48, width=64)
    frames = generator.sample("a red egg", seed=1)
    assert len(frames) == 5 and frames[0].size == (64, 48)
    path = write_video(frames, tmp_path / "video.mp4", fps=generator.fps)
    assert iio.imread(path).shape[:3] == (5, 48, 64)


def test_sampling_is_deterministic_for_a_seed(generator):
    assert torch.equal(latent(generator, "a red egg", 3), latent(generator, "a red egg", 3))
    assert not torch.equal(latent(generator, "a red egg", 3), latent(generator, "a red egg", 4))


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


def test_an_adapter_is_removed_even_when_sampling_fails(generator):
    base = latent(generator, "a red egg")
    adapter = WanLoRATuner(steps=5).tune(generator, make_pairs())
    with pytest.raises(ConfigurationError), adapter.apply(generator):
        generator.sample("x", num_frames=2)
    assert torch.equal(latent(generator, "a red egg"), base)


def test_the_real_wan21_config_gets_lora_on_all_300_block_linears():
    from diffusers import WanTransformer3DModel
    from peft.tuners.lora import LoraLayer

    with torch.device("meta"):
        transformer = WanTransformer3DModel(
            attention_head_dim=128,
            num_attention_heads=12,
            num_layers=30,
            ffn_dim=8960,
            text_dim=4096,
            freq_dim=256,
            in_channels=16,
            out_channels=16,
            patch_size=(1, 2, 2),
            qk_norm="rms_norm_across_heads",
            cross_attn_norm=True,
            eps=1e-6,
        )
    transformer.add_adapter(WanLoRAConfig().lora_config(WAN_LORA_TARGETS), adapter_name="vchain")
    lora_layers = [m for m in transformer.modules() if isinstance(m, LoraLayer)]
    trainable = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" in n)
    assert len(lora_layers) == 300
    assert 21.8e6 < trainable < 21.9e6
    assert WanLoRAConfig().target_modules == WAN_LORA_TARGETS == WanVideoGenerator.lora_targets


def test_wan22_two_experts_each_get_their_noise_levels_and_a_lora(tmp_path):
    generator = WanVideoGenerator(tiny_wan_pipeline(two_experts=True), **SIZE)
    assert [generator.denoiser_for(level) for level in (0.95, 0.875, 0.5, 0.0)] == [0, 0, 1, 1]
    served = {0: 0, 1: 0}
    real = generator.predict

    def counting(denoiser, *args):
        served[generator.denoisers().index(denoiser)] += 1
        return real(denoiser, *args)

    generator.predict = counting
    base = latent(generator, "a red egg")
    adapter = WanLoRATuner(steps=20, learning_rate=1e-3).tune(generator, make_pairs())
    assert served[0] > 0 and served[1] > 0 and len(adapter.state_dicts) == 2
    with adapter.apply(generator):
        assert not torch.equal(latent(generator, "a red egg"), base)
    assert torch.equal(latent(generator, "a red egg"), base)
    adapter.save(tmp_path)
    assert (tmp_path / "transformer_2" / "pytorch_lora_weights.safetensors").is_file()
    assert len(WanLoRATuner().load_adapter(tmp_path).state_dicts) == 2


def test_step_cache_skips_blocks_while_sampling_and_is_removed_after(generator):
    cached_generator = WanVideoGenerator(generator.pipeline, cache="first-block", cache_threshold=0.5, **SIZE)
    ran = []
    hook = generator.pipeline.transformer.blocks[-1].ffn.register_forward_hook(lambda *_: ran.append(1))
    try:
        base = latent(generator, "a red egg")
        plain = len(ran)
        ran.clear()
        latent(cached_generator, "a red egg")
        cached = len(ran)
        ran.clear()
        assert torch.equal(latent(generator, "a red egg"), base)
    finally:
        hook.remove()
    assert cached < plain and len(ran) == plain  # fewer block runs with the cache, all of them again after


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_frames": 80}, r"num_frames must be 4k\+1.*got 80"),
        ({"height": 33}, "height must be a positive multiple of 16, got 33"),
        ({"width": 0}, "width must be greater than 0, got 0"),
        ({"num_inference_steps": 0}, "num_inference_steps must be greater than or equal to 1"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number, got nan"),
        ({"guidance_scale": "5"}, "guidance_scale must be a valid number, got '5'"),
        ({"num_frame": 5}, "unknown setting 'num_frame'"),
    ],
)
def test_invalid_sampling_settings_name_the_argument_and_value(generator, overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        generator.sample("x", **overrides)
    with pytest.raises(ConfigurationError, match=message):
        WanVideoGenerator(generator.pipeline, **{**SIZE, **overrides})


def test_output_type_is_checked(generator):
    with pytest.raises(ConfigurationError, match="output_type must be 'pil', 'np' or 'latent', got 'pt'"):
        generator.sample("x", output_type="pt")


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", r"got the string .*use WanVideoGenerator\.from_pretrained"),
        (None, "must be a diffusers WanPipeline, got NoneType"),
        (object(), "must be a diffusers WanPipeline, got object"),
    ],
)
def test_the_wrapper_refuses_what_is_not_a_wan_pipeline(pipeline, message):
    with pytest.raises(ConfigurationError, match=message):
        WanVideoGenerator(pipeline)


def test_defaults_are_the_papers():
    config, sampling = WanLoRAConfig(), WanSamplingConfig()
    assert (config.rank, config.alpha, config.learning_rate) == (16, 16, 1e-4)
    assert (sampling.height, sampling.width, sampling.num_frames) == (480, 832, 81)


def test_a_saved_checkpoint_loads_through_from_pretrained(tmp_path):
    tiny_wan_pipeline().save_pretrained(tmp_path)
    generator = WanVideoGenerator.from_pretrained(tmp_path, dtype="float32", **SIZE)
    assert generator.model_id == str(tmp_path) and generator.pipeline.vae.dtype == torch.float32
    assert generator.describe()["config"]["num_inference_steps"] == 4


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("./no/such/folder", "neither an existing folder nor a hub id"),
        ("", "must be a hub id or a folder"),
        (3, "must be a hub id or a folder"),
    ],
)
def test_bad_model_ids_fail_fast_and_clearly(model_id, message):
    with pytest.raises(ConfigurationError, match=message):
        WanVideoGenerator.from_pretrained(model_id)


def test_a_folder_that_is_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(ConfigurationError, match=r"folder without model_index\.json"):
        WanVideoGenerator.from_pretrained(tmp_path)


def test_an_unreachable_hub_is_reported_once_with_the_cause(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    with pytest.raises(ConfigurationError, match=r"cannot reach the Hugging Face hub .*Name or service not known"):
        WanVideoGenerator.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigurationError, match="HF_HUB_OFFLINE=1"):
        WanVideoGenerator.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
