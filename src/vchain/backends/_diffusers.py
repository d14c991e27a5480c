"""What the diffusers-based backends share: reading a dtype, and one timed, checked video pipeline call."""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from vchain.accounting import report_timing
from vchain.errors import ConfigurationError, NumericalError

OUTPUT_TYPES = ("pil", "np", "latent")


def parse_dtype(value: object, *, argument: str = "dtype") -> torch.dtype:
    """A floating torch dtype from a dtype or its name (`"bfloat16"`, `"torch.float16"`); None: bfloat16."""
    if value is None:
        return torch.bfloat16
    dtype = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigurationError(f"{argument} must be a floating torch dtype such as torch.bfloat16, got {value!r}")
    return dtype


def sample_video(pipeline, *, num_inference_steps: int, output_type: str, owner: str, **call):
    """Call a diffusers video pipeline; report `denoise` and `decode` time; return checked frames.

    Returns the latents (`output_type="latent"`), the float frames `[F, H, W, 3]` in [0, 1] (`"np"`),
    or PIL frames (`"pil"`). A non-finite video is a `NumericalError` naming `owner`: it is never
    turned into (black) frames.
    """
    if output_type not in OUTPUT_TYPES:
        raise ConfigurationError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}")
    marks = {"start": time.perf_counter()}

    def mark_denoised(pipeline, step, timestep, tensors):
        if step == num_inference_steps - 1:
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # once per video, so the split below is honest
            marks["denoised"] = time.perf_counter()
        return tensors

    result = pipeline(
        num_inference_steps=num_inference_steps,
        output_type="latent" if output_type == "latent" else "np",
        callback_on_step_end=mark_denoised,
        **call,
    )
    end = time.perf_counter()
    denoised = marks.get("denoised", end)
    report_timing("denoise", denoised - marks["start"])
    report_timing("decode", end - denoised)
    if output_type == "latent":
        return result.frames
    video = np.asarray(result.frames[0])
    if not np.isfinite(video).all():
        raise NumericalError(
            f"the sampled video of {owner} is not finite (NaN or inf): a diverged adapter or broken weights; "
            "nothing was written"
        )
    if output_type == "np":
        return video
    return [Image.fromarray(frame) for frame in (video.clip(0, 1) * 255).round().astype(np.uint8)]
