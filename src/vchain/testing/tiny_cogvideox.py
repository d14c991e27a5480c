"""A tiny random diffusers `CogVideoXPipeline` built offline, in the shape of each CogVideoX release."""

from __future__ import annotations

from typing import Literal

# What tells the three releases apart, beyond size: how the transformer knows positions (fixed
# sinusoids for 2b, rotary for 5b and 1.5), whether it patches time (1.5 packs two latent frames
# into a token), the VAE's latent scale, and the noise schedule's SNR shift.
_VERSIONS = {
    "2b": {"rotary": False, "patch_size_t": None, "scaling_factor": 1.15258426, "snr_shift_scale": 3.0},
    "5b": {"rotary": True, "patch_size_t": None, "scaling_factor": 0.7, "snr_shift_scale": 1.0},
    "1.5": {"rotary": True, "patch_size_t": 2, "scaling_factor": 0.7, "snr_shift_scale": 1.0},
}
TINY_TEXT_TOKENS = 32


def tiny_cogvideox_pipeline(seed: int = 0, *, version: Literal["2b", "5b", "1.5"] = "5b"):
    """A tiny random diffusers `CogVideoXPipeline`: real code paths, no download, CPU-fast, deterministic.

    The components have the shapes of diffusers' own CogVideoX pipeline tests (a one-block transformer,
    a four-level VAE of 8 channels, a T5 encoder of width 32) with the traits of `version`: CogVideoX-2b,
    -5b or 1.5-5B. The scheduler is CogVideoX's v-prediction DDIM with zero terminal SNR. It renders
    sizes that are multiples of 16 up to 64x64 and takes `TINY_TEXT_TOKENS` text tokens.
    """
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from vchain.testing.tiny import tiny_tokenizer

    if version not in _VERSIONS:
        raise ValueError(f"version must be one of {list(_VERSIONS)}, got {version!r}")
    traits = _VERSIONS[version]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = T5EncoderModel(
            T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                     eos_token_id=1, decoder_start_token_id=0)
        )  # fmt: skip
        vae = AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
            temporal_compression_ratio=4, scaling_factor=traits["scaling_factor"],
        )  # fmt: skip
        # Rotary embeddings split each head's width three ways (time, height, width): 16 per head.
        # A 1.5 transformer renders at most its sample size: 8 latent pixels, 64 pixels.
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
            text_embed_dim=32, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            patch_size_t=traits["patch_size_t"], patch_bias=traits["patch_size_t"] is None,
            temporal_compression_ratio=4, max_text_seq_length=TINY_TEXT_TOKENS,
            use_rotary_positional_embeddings=traits["rotary"],
        )  # fmt: skip
    scheduler = CogVideoXDDIMScheduler(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
        clip_sample=False, set_alpha_to_one=True, snr_shift_scale=traits["snr_shift_scale"],
    )  # fmt: skip
    pipeline = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipeline.set_progress_bar_config(disable=True)
    for module in (text_encoder, vae, transformer):
        module.eval()
    return pipeline
