"""Wan video generation (Wan2.1 / Wan2.2 through diffusers), tunable by `vchain.tuning.LoRATuner`.

`WanVideoGenerator` wraps a diffusers `WanPipeline` and implements `TunableGenerator`: keyframes become
normalised one-frame VAE latents, captions UMT5 embeddings at sampling's sequence length, the objective
is Wan's flow matching with the scheduler's shift, and Wan2.2's two experts each serve their noise
levels. `WanLoRATuner` is the generic tuner with Wan's LoRA targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from vchain.backends._configs import (
    DEFAULT_MODEL,
    WAN_LORA_TARGETS,
    WanLoRAConfig,
    WanSamplingConfig,
    frame_errors,
)
from vchain.backends.diffusers_video import DiffusersVideoGenerator
from vchain.errors import ConfigurationError
from vchain.tuning import FlowMatchingObjective, LoRATuner


# Every linear of every transformer block: self- and cross-attention projections and the feed-forward.
# These are also the module names diffusers maps other Wan LoRA formats onto.
class WanVideoGenerator(DiffusersVideoGenerator):
    """A Wan text-to-video model behind a diffusers `WanPipeline` (Wan2.1, or Wan2.2 with two experts).

    Args:
        pipeline: a loaded `diffusers.WanPipeline`, used as is (you own its device and dtype).
        compile, compile_backend, attention_backend, cache, cache_threshold: the acceleration switches
            (`vchain.backends.diffusers_video.Acceleration`), applied around each sampling call.
        offload_text_encoder: keep UMT5 on the CPU between encodings (11 GiB of bfloat16 freed on the device).
        **sampling: defaults for every `sample` call, the fields of `WanSamplingConfig`
            (`height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0`, ...).

    `from_pretrained(model_id, dtype=..., device=..., **settings)` loads a checkpoint (default
    `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`); the VAE stays in float32, as Wan's authors recommend.
    """

    lora_targets = WAN_LORA_TARGETS
    pipeline_class = "WanPipeline"
    sampling_class = WanSamplingConfig
    default_model = DEFAULT_MODEL
    what = "Wan weights"

    @classmethod
    def _load(cls, source: dict, dtype: torch.dtype):
        from diffusers import AutoencoderKLWan, WanPipeline

        vae = AutoencoderKLWan.from_pretrained(**source, subfolder="vae", dtype=torch.float32)
        return WanPipeline.from_pretrained(**source, vae=vae, dtype=dtype)

    def _checked(self, config: WanSamplingConfig) -> WanSamplingConfig:
        return config.check(*self._multiples(), self._max_size())

    def _multiples(self) -> tuple[int, int]:
        patch = self.pipeline.transformer.config.patch_size
        return self.pipeline.vae_scale_factor_spatial * patch[1], self.pipeline.vae_scale_factor_temporal

    def _max_size(self) -> tuple[int, int]:
        """The largest frame the rotary positions cover (Wan2.1/2.2: 16384 px a side; a tiny test model less)."""
        side = self.pipeline.transformer.config.rope_max_seq_len * self._multiples()[0]
        return side, side

    # -- sampling

    def _call_arguments(self, prompt: str, config: WanSamplingConfig) -> dict[str, Any]:
        return dict(
            prompt=prompt,
            negative_prompt=config.negative_prompt,
            height=config.height,
            width=config.width,
            num_frames=config.num_frames,
            guidance_scale=config.guidance_scale,
            guidance_scale_2=config.guidance_scale_2 if self.pipeline.config.boundary_ratio else None,
            max_sequence_length=config.max_sequence_length,
        )

    @property
    def text_tokens(self) -> int:
        return self.config.max_sequence_length

    # -- TunableGenerator

    def denoisers(self) -> list[torch.nn.Module]:
        """One transformer for Wan2.1; the high-noise and low-noise experts for Wan2.2."""
        second = getattr(self.pipeline, "transformer_2", None)
        return [self.pipeline.transformer] if second is None else [self.pipeline.transformer, second]

    def denoiser_for(self, level: float) -> int:
        """Wan2.2 sends noise levels at or above its boundary to the first (high-noise) expert."""
        boundary = self.pipeline.config.boundary_ratio
        if boundary is None or len(self.denoisers()) == 1:
            return 0
        return 0 if level >= boundary else 1

    def training_objective(self) -> FlowMatchingObjective:
        config = self.pipeline.scheduler.config
        # UniPC calls the shift flow_shift, FlowMatchEuler calls it shift.
        shift = config.get("flow_shift") if "flow_shift" in config else config.get("shift")
        return FlowMatchingObjective(float(shift or 1.0))

    def check_frame(self, height: int, width: int) -> None:
        errors = frame_errors(height, width, self._multiples()[0], max_size=self._max_size())
        if errors:
            raise ConfigurationError("invalid tuning size: " + "; ".join(errors))

    @torch.no_grad()
    def encode_keyframes(self, images: Sequence[Image.Image], *, height: int, width: int) -> torch.Tensor:
        """Normalised VAE latents `[N, C, 1, h, w]` of images taken as one-frame videos."""
        vae = self.pipeline.vae
        pixels = self.pipeline.video_processor.preprocess(list(images), height=height, width=width)
        pixels = pixels.unsqueeze(2).to(device=self.device, dtype=vae.dtype)  # [N, 3, 1, H, W]
        latents = vae.encode(pixels).latent_dist.mode()
        shape = (1, -1, 1, 1, 1)
        mean, std = (
            torch.tensor(values, device=latents.device, dtype=latents.dtype).view(shape)
            for values in (vae.config.latents_mean, vae.config.latents_std)
        )
        return (latents - mean) / std

    def predict(self, denoiser, noisy, timestep, context) -> torch.Tensor:
        return denoiser(hidden_states=noisy, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]


class WanLoRATuner(LoRATuner):
    """`LoRATuner` with Wan's defaults: rank 16, alpha 16, lr 1e-4 (the paper's), 300 steps, Wan's targets.

    Args:
        config: a `WanLoRAConfig`, or its fields as keywords (`WanLoRATuner(rank=16, steps=300)`).
    """

    config_class = WanLoRAConfig
