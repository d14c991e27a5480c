"""The settings of the diffusers video generators (sampling, acceleration, LoRA targets), in a module that
imports no torch or diffusers: the command line reads and checks every flag before any heavy import.
`vchain.backends.wan`, `vchain.backends.cogvideox` and `vchain.backends.diffusers_video` re-export them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vchain.config import Config
from vchain.errors import ConfigurationError
from vchain.lora_config import LoRAConfig

# The caches' defaults: diffusers' own for SeaCache and TaylorSeer; 0.05 for the first-block cache.
FIRST_BLOCK_THRESHOLD, SEA_THRESHOLD, TAYLORSEER_INTERVAL = 0.05, 0.25, 5


class Acceleration(Config):
    """Speed switches of a diffusers generator, each through diffusers' own machinery, all off by default.

    They are applied around each sampling call and removed after it, so between calls the wrapped
    pipeline is exactly the stock one. They change outputs (within float tolerance for `compile` and
    the attention kernels, by skipped work for the step cache), so a manifest records them; their
    quality cost at full size is unknown until measured.
    """

    compile: bool = Field(
        False,
        description="regional torch.compile of the transformer's repeated blocks; compiled once per process, "
        "later prompts and merged adapters reuse it",
    )
    compile_backend: str = Field(
        "inductor", min_length=1, description="the torch.compile backend ('eager' or 'aot_eager' test the plumbing)"
    )
    attention_backend: str | None = Field(
        None,
        description="diffusers' attention kernel: 'native', 'flash', 'sage', '_native_cudnn', ... as the "
        "installed packages allow; None keeps diffusers' default",
    )
    cache: Literal["first-block", "sea", "taylorseer"] | None = Field(
        None,
        description="step cache: None (off), 'first-block' (diffusers' FirstBlockCache: the other blocks are "
        "skipped while the first block's output barely changes), 'sea' (SeaCache: the block stack is replaced by "
        "its extrapolated residual while a spectrum-weighted change of the input stays within a budget; Wan's "
        "text-to-video model has a built-in adapter, no calibration) or 'taylorseer' (TaylorSeer, diffusers' lite "
        "form: the blocks run every cache_interval steps and the output in between is a Taylor extrapolation)",
    )
    cache_threshold: float | None = Field(
        None,
        gt=0,
        le=10,
        description="how much change the first-block or sea cache tolerates before it runs the blocks again "
        f"(higher skips more); None: the cache's own default (first-block {FIRST_BLOCK_THRESHOLD}, "
        f"sea {SEA_THRESHOLD})",
    )
    cache_interval: int | None = Field(
        None,
        ge=1,
        le=100,
        description=f"the taylorseer cache's refresh interval in steps; None: {TAYLORSEER_INTERVAL}",
    )

    @model_validator(mode="after")
    def _cache_settings_fit(self) -> Acceleration:
        """A threshold belongs to the first-block and sea caches, an interval to taylorseer: one given to
        another cache (or to none) would be recorded but do nothing."""
        if self.cache_threshold is not None and self.cache not in ("first-block", "sea"):
            raise ValueError(
                f"cache_threshold={self.cache_threshold} applies to cache='first-block' or 'sea', "
                f"not cache={self.cache!r}"
            )
        if self.cache == "first-block" and self.cache_threshold is not None and self.cache_threshold > 1:
            raise ValueError(
                f"cache_threshold must be at most 1 for the first-block cache (a relative change), "
                f"got {self.cache_threshold}"
            )
        if self.cache_interval is not None and self.cache != "taylorseer":
            raise ValueError(
                f"cache_interval={self.cache_interval} applies to cache='taylorseer', not cache={self.cache!r}"
            )
        return self

    def cache_config(self):
        """diffusers' config object for `cache` (None when off), with vchain's defaults filled in."""
        if self.cache is None:
            return None
        from diffusers.hooks import FirstBlockCacheConfig, SeaCacheConfig, TaylorSeerCacheConfig

        if self.cache == "first-block":
            return FirstBlockCacheConfig(threshold=self.cache_threshold or FIRST_BLOCK_THRESHOLD)
        if self.cache == "sea":
            return SeaCacheConfig(threshold=self.cache_threshold or SEA_THRESHOLD)
        # Lite mode keeps one tensor per trajectory (the output projection's) rather than every block's output:
        # the full form would hold ~25 GiB of Taylor factors per guidance branch for Wan-14B at 81x480x832.
        return TaylorSeerCacheConfig(cache_interval=self.cache_interval or TAYLORSEER_INTERVAL, use_lite_mode=True)

    @field_validator("attention_backend")
    @classmethod
    def _usable(cls, name: str | None) -> str | None:
        """A backend diffusers knows and whose package is installed (checked before any model loads)."""
        if name is None:
            return None
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

        known = [backend.value for backend in AttentionBackendName]
        if name not in known:
            raise ValueError(f"must be one of diffusers' attention backends ({', '.join(known)})")
        try:
            _check_attention_backend_requirements(AttentionBackendName(name))
        except RuntimeError as e:
            raise ValueError(f"cannot be used here: {e}") from None
        return name


def frame_errors(
    height: int,
    width: int,
    multiple: int,
    *,
    num_frames: int | None = None,
    frame_stride: int = 1,
    typical_frames: int = 81,
    max_size: tuple[int, int] | None = None,
) -> list[str]:
    """What is wrong with a frame size (and count) for a model: sizes must be multiples of `multiple`
    (its VAE's and patch's compression), counts `frame_stride`k+1, sizes within `max_size` if it has one.
    Stock pipelines round such values silently or fail deep inside; vchain says so up front."""
    errors = [
        f"{name} must be a positive multiple of {multiple}, got {value}"
        for name, value in (("height", height), ("width", width))
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple
    ]
    if max_size is not None and not errors and (height > max_size[0] or width > max_size[1]):
        errors.append(
            f"height x width must be at most {max_size[0]}x{max_size[1]} (the transformer's sample size), "
            f"got {height}x{width}"
        )
    if num_frames is not None and (num_frames - 1) % frame_stride:
        errors.append(
            f"num_frames must be {frame_stride}k+1 (1, {1 + frame_stride}, ..., {typical_frames}), got {num_frames}"
        )
    return errors


# -- Wan

WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
DEFAULT_MODEL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
# Wan's VAE compresses 8x in space and 4x in time, and its transformer patches 2x2: frame sizes are
# multiples of 16 and frame counts 4k+1. The loaded model's own factors are checked too.
_SPATIAL, _TEMPORAL = 16, 4


class WanSamplingConfig(Config):
    """Sampling settings of `WanVideoGenerator`; checked against the model before anything runs."""

    height: int = Field(480, gt=0, description="frame height in pixels, a multiple of 16")
    width: int = Field(832, gt=0, description="frame width in pixels, a multiple of 16")
    num_frames: int = Field(81, gt=0, description="frames per video, 4k+1 (81 = 5 s at 16 fps)")
    num_inference_steps: int = Field(50, ge=1, le=1000, description="denoising steps")
    guidance_scale: float = Field(5.0, ge=0, le=100, description="classifier-free guidance")
    guidance_scale_2: float | None = Field(
        None, ge=0, le=100, description="Wan2.2's low-noise expert guidance; None: same as guidance_scale"
    )
    negative_prompt: str | None = Field(None, description="the guidance negative; None encodes the empty prompt")
    max_sequence_length: int = Field(512, ge=1, le=512, description="text tokens; tuning encodes with it too")
    fps: int = Field(16, ge=1, le=240, description="frame rate of the written mp4")

    def check(
        self,
        spatial_multiple: int = _SPATIAL,
        temporal_stride: int = _TEMPORAL,
        max_size: tuple[int, int] | None = None,
    ) -> WanSamplingConfig:
        """Raise `ConfigurationError` for sizes the model cannot render (it would round them silently)."""
        errors = frame_errors(
            self.height,
            self.width,
            spatial_multiple,
            num_frames=self.num_frames,
            frame_stride=temporal_stride,
            max_size=max_size,
        )
        if errors:
            raise ConfigurationError("invalid Wan sampling settings: " + "; ".join(errors))
        return self


class WanLoRAConfig(LoRAConfig):
    """`LoRAConfig` with Wan's targets: every linear of every transformer block."""

    target_modules: tuple[str, ...] | None = Field(
        WAN_LORA_TARGETS, strict=False, min_length=1, description="module-name suffixes that get the LoRA"
    )


# -- CogVideoX

# Every linear of every transformer block: the joint text-video attention and the feed-forward.
# The feed-forward is `ff` here (`ffn` in Wan); these are the names diffusers' CogVideoX LoRAs use.
COGVIDEOX_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
COGVIDEOX_DEFAULT_MODEL = "THUDM/CogVideoX-5b"
# The VAE compresses 8x in space and 4x in time and the transformer patches 2x2: sizes are multiples of
# 16. The VAE decodes latent frames in pairs and only an odd count gives back 4(n-1)+1 frames (an even
# one gives 4n, whatever was asked), so frame counts are 8k+1. The loaded model's own factors are used.
_COGVIDEOX_SPATIAL, _FRAME_STRIDE = 16, 8


class CogVideoXSamplingConfig(Config):
    """Sampling settings of `CogVideoXVideoGenerator`; checked against the model before anything runs.

    The defaults are CogVideoX-2b/5b's (6 s at 8 fps, 480x720). CogVideoX1.5-5B was trained on 5 or
    10 s at 16 fps, 768x1360: pass `height=768, width=1360, num_frames=81, fps=16` for it.
    """

    height: int = Field(480, gt=0, description="frame height in pixels, a multiple of 16")
    width: int = Field(720, gt=0, description="frame width in pixels, a multiple of 16")
    num_frames: int = Field(49, gt=0, description="frames per video, 8k+1 (49 = 6 s at 8 fps)")
    num_inference_steps: int = Field(50, ge=1, le=1000, description="denoising steps")
    guidance_scale: float = Field(6.0, ge=0, le=100, description="classifier-free guidance")
    use_dynamic_cfg: bool = Field(
        False, description="raise the guidance over the steps on a cosine schedule (diffusers' option)"
    )
    negative_prompt: str | None = Field(None, description="the guidance negative; None encodes the empty prompt")
    fps: int = Field(8, ge=1, le=240, description="frame rate of the written mp4")

    def check(
        self,
        spatial_multiple: int = _COGVIDEOX_SPATIAL,
        frame_stride: int = _FRAME_STRIDE,
        max_size: tuple[int, int] | None = None,
    ) -> CogVideoXSamplingConfig:
        """Raise `ConfigurationError` for sizes the model cannot render (stock diffusers would round the
        frame count silently, or fail deep inside on a size that is not a multiple of 16)."""
        errors = frame_errors(
            self.height,
            self.width,
            spatial_multiple,
            num_frames=self.num_frames,
            frame_stride=frame_stride,
            typical_frames=49,
            max_size=max_size,
        )
        if errors:
            raise ConfigurationError("invalid CogVideoX sampling settings: " + "; ".join(errors))
        return self


class CogVideoXLoRAConfig(LoRAConfig):
    """`LoRAConfig` with CogVideoX's targets (every linear of every block) and its uniform timesteps."""

    target_modules: tuple[str, ...] | None = Field(
        COGVIDEOX_LORA_TARGETS, strict=False, min_length=1, description="module-name suffixes that get the LoRA"
    )
    weighting_scheme: Literal["logit_normal", "uniform"] = Field(
        "uniform", description="how noise levels are drawn; uniform timesteps, as CogVideoX was trained"
    )


# `from_pretrained`'s memory options (`quantization=`, `offload=`), here for the command line's choices.
QUANTIZATIONS = ("int8", "fp8", "nf4")
OFFLOADS = ("model", "group")
