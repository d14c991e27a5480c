"""CogVideoX video generation (CogVideoX-2b, -5b and 1.5-5B through diffusers), tunable by `LoRATuner`.

`CogVideoXVideoGenerator` wraps a diffusers `CogVideoXPipeline` and implements `TunableGenerator`, the
second family after Wan behind the same `vchain.tuning.LoRATuner`. What differs from Wan is all here:
latents are laid out `[B, F, C, h, w]` (frames before channels) and scaled by the VAE's scaling factor;
captions are T5 embeddings at the transformer's text length (226); the 5b models get their positions
from rotary embeddings that the training forward must be given; 1.5 packs two latent frames into one
token, so a keyframe's single latent frame is doubled; and the objective is v-prediction on the DDPM
schedule (`VPredictionObjective`), not flow matching. `CogVideoXLoRATuner` is the generic tuner with
CogVideoX's LoRA targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from vchain.backends._configs import (
    COGVIDEOX_DEFAULT_MODEL as DEFAULT_MODEL,
)
from vchain.backends._configs import (
    COGVIDEOX_LORA_TARGETS,
    CogVideoXLoRAConfig,
    CogVideoXSamplingConfig,
    frame_errors,
)
from vchain.backends.diffusers_video import DiffusersVideoGenerator
from vchain.errors import ConfigurationError
from vchain.tuning import LoRATuner, TrainingObjective


class VPredictionObjective(TrainingObjective):
    """CogVideoX's objective: from `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`, predict `v = sqrt(a_t) noise
    - sqrt(1 - a_t) x0` at an integer timestep t, with the model's own DDPM schedule.

    The schedule (scaled-linear betas, CogVideoX's SNR shift, zero terminal SNR) is the scheduler's:
    noise and target come from its `add_noise` and `get_velocity`, on a private copy so that training
    never moves or changes the pipeline's scheduler. A noise level in [0, 1] is the timestep over its
    range: uniform draws give each timestep equally often, as CogVideoX was trained. The plain mean squared
    error on v is the x0 loss weighted by 1 / (1 - a_t) that diffusers' CogVideoX LoRA script uses.

    Args:
        scheduler: a diffusers scheduler that predicts v (`prediction_type="v_prediction"`).
    """

    def __init__(self, scheduler):
        prediction = scheduler.config.get("prediction_type")
        if prediction != "v_prediction" or not hasattr(scheduler, "get_velocity"):
            raise ConfigurationError(
                "scheduler must predict v (prediction_type='v_prediction', with add_noise and get_velocity) "
                f"as CogVideoX's do, got {type(scheduler).__name__} with prediction_type={prediction!r}"
            )
        self.scheduler = type(scheduler).from_config(scheduler.config)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)

    def levels(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def corrupt(self, x0, noise, level):
        timestep = (level * self.num_train_timesteps).long().clamp_(max=self.num_train_timesteps - 1)
        noisy = self.scheduler.add_noise(x0, noise, timestep)
        return noisy, timestep, self.scheduler.get_velocity(x0, noise, timestep)


class CogVideoXVideoGenerator(DiffusersVideoGenerator):
    """A CogVideoX text-to-video model behind a diffusers `CogVideoXPipeline` (2b, 5b or 1.5-5B).

    Args:
        pipeline: a loaded `diffusers.CogVideoXPipeline`, used as is (you own its device and dtype).
        compile, compile_backend, cache, cache_threshold, cache_interval: the acceleration switches
            (`vchain.backends.diffusers_video.Acceleration`), applied around each sampling call. CogVideoX's
            attention calls torch directly, so `attention_backend` is refused.
        offload_text_encoder: keep T5 on the CPU between encodings.
        **sampling: defaults for every `sample` call, the fields of `CogVideoXSamplingConfig`
            (`height=480, width=720, num_frames=49, num_inference_steps=50, guidance_scale=6.0`, ...).

    `from_pretrained(model_id, dtype=..., device=..., **settings)` loads a checkpoint: a hub id
    (`"THUDM/CogVideoX-2b"`, `"THUDM/CogVideoX-5b"` (the default), `"THUDM/CogVideoX1.5-5B"`) or a folder.
    bfloat16 is what the 5b models recommend; the 2b recommends float16. `sample(..., output_type="latent")`
    gives `[1, F, C, h, w]`, on 1.5 with the padding frame in front when the latent frame count is odd.
    """

    lora_targets = COGVIDEOX_LORA_TARGETS
    pipeline_class = "CogVideoXPipeline"
    sampling_class = CogVideoXSamplingConfig
    default_model = DEFAULT_MODEL
    what = "CogVideoX weights"

    def __init__(self, pipeline, **settings: Any):
        super().__init__(pipeline, **settings)
        self._rotary: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def text_tokens(self) -> int:
        """The text length: the transformer's (226 for every release), in sampling and tuning alike.

        CogVideoX-2b adds fixed positions to exactly that many text tokens; the others accept any
        length, but were trained on 226.
        """
        return int(self.pipeline.transformer.config.max_text_seq_length)

    def _checked(self, config: CogVideoXSamplingConfig) -> CogVideoXSamplingConfig:
        return config.check(self._spatial_multiple(), 2 * self.pipeline.vae_scale_factor_temporal, self._max_size())

    def _spatial_multiple(self) -> int:
        return self.pipeline.vae_scale_factor_spatial * self.pipeline.transformer.config.patch_size

    def _max_size(self) -> tuple[int, int] | None:
        """1.5's rotary table covers the transformer's sample size and no more (2400x2400 for 1.5-5B)."""
        config = self.pipeline.transformer.config
        if config.patch_size_t is None:
            return None
        scale = self.pipeline.vae_scale_factor_spatial
        return config.sample_height * scale, config.sample_width * scale

    # -- sampling

    def _call_arguments(self, prompt: str, config: CogVideoXSamplingConfig) -> dict[str, Any]:
        return dict(
            prompt=prompt,
            negative_prompt=config.negative_prompt,
            height=config.height,
            width=config.width,
            num_frames=config.num_frames,
            guidance_scale=config.guidance_scale,
            use_dynamic_cfg=config.use_dynamic_cfg,
            max_sequence_length=self.text_tokens,
        )

    # -- TunableGenerator

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipeline.transformer]

    def training_objective(self) -> VPredictionObjective:
        return VPredictionObjective(self.pipeline.scheduler)

    def check_frame(self, height: int, width: int) -> None:
        errors = frame_errors(height, width, self._spatial_multiple(), max_size=self._max_size())
        if errors:
            raise ConfigurationError("invalid tuning size: " + "; ".join(errors))

    @torch.no_grad()
    def encode_keyframes(self, images: Sequence[Image.Image], *, height: int, width: int) -> torch.Tensor:
        """Scaled VAE latents `[N, F, C, h, w]` of images taken as one-frame videos: F is 1, or on 1.5 the
        two latent frames one token spans, the keyframe twice (a still video of it)."""
        vae = self.pipeline.vae
        pixels = self.pipeline.video_processor.preprocess(list(images), height=height, width=width)
        pixels = pixels.unsqueeze(2).to(device=self.device, dtype=vae.dtype)  # [N, 3, 1, H, W]
        latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
        latents = latents.permute(0, 2, 1, 3, 4)  # [N, 1, C, h, w], the transformer's layout
        patch_t = self.pipeline.transformer.config.patch_size_t
        return latents if patch_t is None else latents.repeat(1, patch_t, 1, 1, 1)

    def predict(self, denoiser, noisy, timestep, context) -> torch.Tensor:
        return denoiser(
            hidden_states=noisy,
            encoder_hidden_states=context,
            timestep=timestep,
            image_rotary_emb=self._rotary_embedding(denoiser, noisy),
            return_dict=False,
        )[0]

    def _rotary_embedding(self, denoiser, latents: torch.Tensor):
        """The rotary table sampling builds for this latent grid; without it the transformer would run
        without positions, silently. Built once per grid (the keyframes share one)."""
        if not denoiser.config.use_rotary_positional_embeddings:
            return None
        frames, _, h, w = latents.shape[1:]
        key = (frames, h, w, latents.device)
        if self._rotary is None or self._rotary[0] != key:
            scale = self.pipeline.vae_scale_factor_spatial
            # The pipeline's own builder, so training positions are exactly sampling's.
            table = self.pipeline._prepare_rotary_positional_embeddings(h * scale, w * scale, frames, latents.device)
            self._rotary = (key, table)
        return self._rotary[1]


class CogVideoXLoRATuner(LoRATuner):
    """`LoRATuner` with CogVideoX's defaults: rank 16, alpha 16, lr 1e-4 (the paper's), 300 steps, uniform
    timesteps, CogVideoX's targets.

    Args:
        config: a `CogVideoXLoRAConfig`, or its fields as keywords (`CogVideoXLoRATuner(steps=300)`).
    """

    config_class = CogVideoXLoRAConfig
