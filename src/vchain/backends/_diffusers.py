"""What the diffusers-based backends share: a dtype read once, a timed and checked video pipeline call,
and `DiffusersVideoGenerator`, the base of the generator families (Wan, CogVideoX)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from vchain._hub import resolve_pretrained
from vchain.accounting import report_timing
from vchain.config import Config
from vchain.errors import ConfigurationError, NumericalError
from vchain.interfaces import TunableGenerator

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


class DiffusersVideoGenerator(TunableGenerator):
    """The plumbing every generator over a diffusers pipeline shares; a family adds what is its own.

    A family sets `pipeline_class` (the diffusers class name it wraps), `sampling_class` (its `Config`
    of sampling settings), `default_model` and `what` (for messages), and implements `_checked` (the
    model's size rules), `_load` (from a resolved source) and the `TunableGenerator` methods.

    Args:
        pipeline: a loaded diffusers pipeline of `pipeline_class`, used as is (you own device and dtype).
        **sampling: defaults for every `sample` call, the fields of `sampling_class`.
    """

    pipeline_class: ClassVar[str]
    sampling_class: ClassVar[type[Config]]
    default_model: ClassVar[str]
    what: ClassVar[str]

    def __init__(self, pipeline, **sampling: Any):
        import diffusers

        expected = getattr(diffusers, self.pipeline_class)
        name = type(self).__name__
        if isinstance(pipeline, str):
            raise ConfigurationError(
                f"pipeline must be a loaded diffusers {self.pipeline_class}, got the string {pipeline!r}; "
                f"use {name}.from_pretrained({pipeline!r})"
            )
        if not isinstance(pipeline, expected):
            raise ConfigurationError(
                f"pipeline must be a diffusers {self.pipeline_class}, got {type(pipeline).__name__}; "
                f"use {name}.from_pretrained(...) to load one"
            )
        self.pipeline = pipeline
        self.config = self._checked(self.sampling_class(**sampling))
        self.model_id: str | None = getattr(pipeline, "name_or_path", None)

    @classmethod
    def from_pretrained(cls, model_id: str | None = None, *, dtype=None, torch_dtype=None, device=None, **sampling):
        """Load a Diffusers-format checkpoint (hub id or local folder; default `default_model`).

        Args:
            dtype: the weights' dtype (default bfloat16); `torch_dtype=` is the older name.
            device: where to put the pipeline (default: leave it on the CPU, you call `.to(...)`).
            **sampling: sampling settings, checked before the (large) download or load starts.
        """
        model_id = cls.default_model if model_id is None else model_id
        cls.sampling_class(**sampling).check()
        if dtype is not None and torch_dtype is not None:
            raise ConfigurationError("pass dtype= or its older name torch_dtype=, not both")
        dtype = parse_dtype(dtype if dtype is not None else torch_dtype)
        source = resolve_pretrained(model_id, what=cls.what, marker="model_index.json")
        try:
            pipeline = cls._load(source, dtype)
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"cannot load {cls.what} {str(model_id)!r}: {e}") from e
        generator = cls(pipeline, **sampling)
        generator.model_id = str(model_id)
        return generator.to(device) if device is not None else generator

    @classmethod
    def _load(cls, source: dict, dtype: torch.dtype):
        """The pipeline from `resolve_pretrained`'s keyword arguments."""
        import diffusers

        return getattr(diffusers, cls.pipeline_class).from_pretrained(**source, dtype=dtype)

    def _checked(self, config):
        """`config` checked against the loaded model's own size rules."""
        return config.check()

    @property
    def height(self) -> int:
        return self.config.height

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    @property
    def fps(self) -> int:
        return self.config.fps

    @property
    def device(self) -> torch.device:
        return self.pipeline._execution_device

    def describe(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "model_id": self.model_id,
            "dtype": str(self.pipeline.transformer.dtype).removeprefix("torch."),
            "denoisers": len(self.denoisers()),
            "config": self.config.to_dict(),
        }

    def to(self, *args, **kwargs):
        self.pipeline.to(*args, **kwargs)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.pipeline.set_progress_bar_config(**kwargs)

    def sampling_config(self, **overrides: Any):
        """The sampling settings with `overrides` applied, checked against the model."""
        return self._checked(self.config.replace(**overrides))
