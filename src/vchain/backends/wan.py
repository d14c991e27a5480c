"""Wan video generation (Wan2.1 / Wan2.2 through diffusers), tunable by `vchain.tuning.LoRATuner`.

`WanVideoGenerator` wraps a diffusers `WanPipeline` and implements `TunableGenerator`: keyframes become
normalised one-frame VAE latents, captions UMT5 embeddings at sampling's sequence length, the objective
is Wan's flow matching with the scheduler's shift, and Wan2.2's two experts each serve their noise
levels. `WanVACEVideoGenerator` wraps a `WanVACEPipeline` (Wan2.1-VACE) and also samples with keyframes
placed at their moments. `WanLoRATuner` is the generic tuner with Wan's LoRA targets.
"""

from __future__ import annotations

import logging
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
from vchain.chain import check_times
from vchain.errors import ConfigurationError
from vchain.images import fit_to_frame
from vchain.interfaces import KeyframeConditionedGenerator
from vchain.tuning import FlowMatchingObjective, LoRATuner

DEFAULT_VACE_MODEL = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
# VACE reads mid-grey as "nothing here": frames to generate hold it, so their reactive latents carry no content.
_GREY = (128, 128, 128)
logger = logging.getLogger(__name__)


class WanVideoGenerator(DiffusersVideoGenerator):
    """A Wan text-to-video model behind a diffusers `WanPipeline` (Wan2.1, or Wan2.2 with two experts).

    Args:
        pipeline: a loaded `diffusers.WanPipeline`, used as is (you own its device and dtype).
        compile, compile_backend, attention_backend, cache, cache_threshold, cache_interval: the acceleration switches
            (`vchain.backends.diffusers_video.Acceleration`), applied around each sampling call.
        offload_text_encoder: keep UMT5 on the CPU between encodings (11 GiB of bfloat16 freed on the device).
        **sampling: defaults for every `sample` call, the fields of `WanSamplingConfig`
            (`height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0`, ...).

    `from_pretrained(model_id, dtype=..., device=..., **settings)` loads a checkpoint (default
    `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`); the VAE stays in float32, as Wan's authors recommend. Its
    `quantization=` ("int8", "fp8", "nf4"; both experts of Wan2.2), `offload=` ("model", "group") and
    `vae_tiling=` fit the 14B models to smaller GPUs (docs/big-models.md).
    """

    lora_targets = WAN_LORA_TARGETS
    pipeline_class = "WanPipeline"
    step_caches = ("first-block", "sea", "taylorseer")
    quantized_components = ("transformer", "transformer_2")  # Wan2.2's second expert, where there is one
    sampling_class = WanSamplingConfig
    default_model = DEFAULT_MODEL
    what = "Wan weights"

    @classmethod
    def _load(cls, source: dict, dtype: torch.dtype, quantization=None):
        from diffusers import AutoencoderKLWan, WanPipeline

        vae = AutoencoderKLWan.from_pretrained(**source, subfolder="vae", dtype=torch.float32)
        return WanPipeline.from_pretrained(**source, vae=vae, dtype=dtype, quantization_config=quantization)

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


class WanVACEVideoGenerator(WanVideoGenerator, KeyframeConditionedGenerator):
    """Wan2.1-VACE behind a diffusers `WanVACEPipeline`: text-to-video that can hold keyframes at their moments.

    `sample(prompt, keyframes=[(time, image), ...])` fits each image to the frame and places it at frame
    `round(time * (num_frames - 1))` of the conditioning `video`, with the `mask` black (keep) there and
    white (generate) elsewhere; the other frames are mid-grey. Without keyframes it is plain text-to-video.
    It is tuned like `WanVideoGenerator` (same targets, objective and encoders); during tuning the VACE
    branch sees the empty conditioning (an all-white mask), as in text-to-video sampling.

    Args: as `WanVideoGenerator`; `from_pretrained` defaults to `Wan-AI/Wan2.1-VACE-1.3B-diffusers`.
    """

    pipeline_class = "WanVACEPipeline"
    step_caches = DiffusersVideoGenerator.step_caches
    default_model = DEFAULT_VACE_MODEL
    what = "Wan VACE weights"

    def __init__(self, pipeline, **settings: Any):
        super().__init__(pipeline, **settings)
        self._controls: dict[tuple, torch.Tensor] = {}

    @classmethod
    def _load(cls, source: dict, dtype: torch.dtype, quantization=None):
        from diffusers import AutoencoderKLWan, WanVACEPipeline

        vae = AutoencoderKLWan.from_pretrained(**source, subfolder="vae", dtype=torch.float32)
        return WanVACEPipeline.from_pretrained(**source, vae=vae, dtype=dtype, quantization_config=quantization)

    def sample(
        self,
        prompt: str,
        *,
        keyframes: Sequence[tuple[float, Image.Image]] = (),
        seed: int | None = None,
        output_type: str = "pil",
        **overrides: Any,
    ):
        """Sample one video with each `(time, image)` of `keyframes` held at its frame (see the class)."""
        config = self.sampling_config(**overrides)
        conditions = self.conditioning(keyframes, config) if keyframes else {}
        return self._sample(prompt, config, seed=seed, output_type=output_type, **conditions)

    def conditioning(self, keyframes: Sequence[tuple[float, Image.Image]], config: WanSamplingConfig | None = None):
        """The pipeline's `video` and `mask` (PIL frames) that hold `keyframes` at their frames."""
        config = config or self.config
        keyframes = list(keyframes)
        if any(not isinstance(k, tuple | list) or len(k) != 2 for k in keyframes):
            raise ConfigurationError(f"keyframes must be (time, image) pairs, got {keyframes!r:.200}")
        check_times([t for t, _ in keyframes], len(keyframes), "keyframe times", starts_at_zero=False)
        size = (config.width, config.height)
        video = [Image.new("RGB", size, _GREY) for _ in range(config.num_frames)]
        mask = [Image.new("L", size, 255) for _ in range(config.num_frames)]
        placed: dict[int, float] = {}
        for time, image in keyframes:
            if not isinstance(image, Image.Image):
                raise ConfigurationError(f"keyframe at time {time} must be a PIL image, got {type(image).__name__}")
            frame = round(time * (config.num_frames - 1))
            if frame in placed:
                logger.warning(
                    "Keyframes at times %s and %s share frame %d; the later one is kept", placed[frame], time, frame
                )
            placed[frame] = time
            video[frame] = fit_to_frame(image.convert("RGB"), config.width, config.height)
            mask[frame] = Image.new("L", size, 0)
        return {"video": video, "mask": mask}

    def predict(self, denoiser, noisy, timestep, context) -> torch.Tensor:
        control = self._empty_control(noisy).expand(noisy.shape[0], -1, -1, -1, -1)
        return denoiser(
            hidden_states=noisy,
            timestep=timestep,
            encoder_hidden_states=context,
            control_hidden_states=control,
            return_dict=False,
        )[0]

    @torch.no_grad()
    def _empty_control(self, noisy: torch.Tensor) -> torch.Tensor:
        """The VACE branch's input for no conditioning (zero video, all-white mask), as the pipeline builds it
        for one latent frame of `noisy`'s size; cached, since a tuning run asks for it at every step."""
        frames, height, width = noisy.shape[2], *(n * self.pipeline.vae_scale_factor_spatial for n in noisy.shape[3:])
        key = (frames, height, width, noisy.device, noisy.dtype)
        cache = self._controls
        if key not in cache:
            pixels = (frames - 1) * self.pipeline.vae_scale_factor_temporal + 1
            video = torch.zeros(1, 3, pixels, height, width, device=noisy.device)
            mask = torch.ones_like(video)
            latents = self.pipeline.prepare_video_latents(video, mask, [[]], device=noisy.device)
            masks = self.pipeline.prepare_masks(mask, [[]])
            cache.clear()
            cache[key] = torch.cat([latents, masks.to(latents)], dim=1).to(noisy.dtype)
        return cache[key]


class WanLoRATuner(LoRATuner):
    """`LoRATuner` with Wan's defaults: rank 16, alpha 16, lr 1e-4 (the paper's), 300 steps, Wan's targets.

    Args:
        config: a `WanLoRAConfig`, or its fields as keywords (`WanLoRATuner(rank=16, steps=300)`).
    """

    config_class = WanLoRAConfig
