"""Open-weight keyframes in process: `DiffusersImageBackend` draws and edits with a diffusers pipeline.

Three families of image editors, told apart by the pipeline's class:

| pipeline | references per edit | `generate` draws with | vchain's `guidance_scale` sets |
|---|---|---|---|
| `QwenImageEditPlusPipeline` (Qwen-Image-Edit-2509/2511) | 1 to 3 | `QwenImagePipeline.from_pipe` | `true_cfg_scale` |
| `Flux2KleinPipeline` (FLUX.2 klein) | up to 4, each at its size | the same pipeline, no image | `guidance_scale` |
| `FluxKontextPipeline` (FLUX.1 Kontext) | 1 | the same pipeline, no image | `guidance_scale` (distilled) |

`generate` never loads a second copy of the weights: Qwen's text-to-image pipeline is built on the edit
pipeline's own components. The reasoning loop passes an editor at most `max_references` keyframes,
keeping keyframe 0 (it fixes the scene) and the most recent ones; FLUX.1 Kontext, which takes one, is
given the latest keyframe, so each keyframe is an edit of the one before and the scene's identity
travels through the images alone.

Reference sizes. `QwenImageEditPlusPipeline` resizes every reference to about 1024² pixels for its VAE
and about 384² for its vision-language encoder, whatever the output size: the module constants
`VAE_IMAGE_SIZE` and `CONDITION_IMAGE_SIZE` of `diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus`,
read at every call. FLUX.1 Kontext likewise takes its reference to the nearest of its trained resolutions
(`PREFERRED_KONTEXT_RESOLUTIONS`, about 1 megapixel each). Those are the sizes the models were trained at,
so vchain leaves them alone: with a real model each reference costs about as much as a 1-megapixel image,
whatever the keyframe size, and patching the constants here would change every such pipeline in the
process. On tiny test models the same sizes make one Qwen edit take 25 to 45 s on a CPU, so tests shrink
them with `vchain.testing.tiny_image.small_references()`. FLUX.2 klein keeps each reference at its own
size (shrunk to 1 megapixel if larger, and enlarged here to 64 pixels a side, its minimum, if smaller).

Outputs are drawn at the keyframe size rounded to the multiples the pipeline needs (16 pixels for the
real models); the reasoning loop then crops them exactly to the frame.

Example::

    import torch
    from vchain.backends.diffusers_image import DiffusersImageBackend

    images = DiffusersImageBackend.from_pretrained(
        "Qwen/Qwen-Image-Edit-2509", dtype=torch.bfloat16, device="cuda"
    )
    first = images.generate("A white egg on a wooden table.", width=832, height=480)
    second = images.edit([first], images.instruction("The egg lies cracked."), width=832, height=480)
    images.release()  # hand the GPU memory to the next stage
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from vchain._hub import check_hub_options, resolve_pretrained, weights_identity
from vchain.accounting import report_request
from vchain.backends.diffusers_video import parse_dtype
from vchain.config import Config, check_device
from vchain.errors import BackendError, ConfigurationError, NumericalError
from vchain.interfaces import ImageBackend

# vchain's default edit instruction explains to an API model that the references are earlier keyframes
# and asks it to hold their look. Open editors are trained on short, direct instructions instead, and
# FLUX's CLIP encoder reads only the first 77 tokens: the caption (which the reasoner writes so that it
# can serve as an edit instruction) comes first, then one short request to keep the look.
EDIT_INSTRUCTION = "{caption} Keep the camera, framing, lighting and colours of the last image unchanged."
EDIT_RETRY = " An earlier attempt was rejected: {problem}"


@dataclass(frozen=True)
class ImageFamily:
    """What vchain needs to know about one kind of diffusers image-edit pipeline.

    Attributes:
        name: a short name for records.
        pipeline: the diffusers class name of the edit pipeline.
        max_references: the most reference images one edit takes.
        text_to_image: the diffusers class that `generate` builds with `from_pipe` on the same
            components; None when the edit pipeline itself draws from text when given no image.
        guidance: the `__call__` keyword that vchain's `guidance_scale` sets.
        negative_prompt: sent when guidance is on, for pipelines whose guidance needs one.
        area: the `__call__` keyword of a pipeline that rescales any requested size to an area.
        min_reference_side: references with a shorter side are enlarged to it.
        distilled_defaults: (steps, guidance) for checkpoints whose config says `is_distilled`.
    """

    name: str
    pipeline: str
    max_references: int
    text_to_image: str | None = None
    guidance: str = "guidance_scale"
    negative_prompt: str | None = None
    area: str | None = None
    min_reference_side: int = 1
    distilled_defaults: tuple[int, float] | None = None


FAMILIES: dict[str, ImageFamily] = {
    family.pipeline: family
    for family in (
        # Qwen's model card: 1 to 3 input images; its classifier-free guidance is "true CFG" and is
        # only on when a negative prompt is given (one space, as the card does).
        ImageFamily(
            "qwen-image-edit-plus",
            "QwenImageEditPlusPipeline",
            max_references=3,
            text_to_image="QwenImagePipeline",
            guidance="true_cfg_scale",
            negative_prompt=" ",
        ),
        # Black Forest Labs: up to 4 references for klein 4B and 9B. Flux2ImageProcessor refuses images
        # under 64 pixels a side. The distilled checkpoints sample in 4 steps without guidance.
        ImageFamily(
            "flux2-klein", "Flux2KleinPipeline", max_references=4, min_reference_side=64, distilled_defaults=(4, 1.0)
        ),
        # Kontext conditions on one image (a list would be a batch) and draws at `max_area` pixels.
        ImageFamily("flux-kontext", "FluxKontextPipeline", max_references=1, area="max_area"),
    )
}


class DiffusersImageConfig(Config):
    """Sampling settings of `DiffusersImageBackend`; None takes the family's default."""

    num_inference_steps: int | None = Field(
        None, ge=1, le=1000, description="denoising steps; None: the pipeline's default (4 for distilled klein)"
    )
    guidance_scale: float | None = Field(
        None, ge=0, le=100, description="guidance strength; None: the pipeline's default (1 for distilled klein)"
    )
    seed: int = Field(0, ge=0, description="seeds a fresh torch.Generator for every image")


class DiffusersImageBackend(ImageBackend):
    """An image backend on a diffusers image-edit pipeline (the families in this module's docstring).

    Args:
        pipeline: a loaded `QwenImageEditPlusPipeline`, `Flux2KleinPipeline` or `FluxKontextPipeline` (or a
            subclass), used as is: you own its device and dtype.
        generate_pipeline: draws `generate`'s images from text instead of the family's own (which shares
            the edit pipeline's weights).
        num_inference_steps: denoising steps per image; default: the pipeline's.
        guidance_scale: guidance strength, set on the family's guidance keyword; default: the pipeline's.
        seed: every image starts from a generator seeded with it, so equal inputs give equal images.
        model_id: the name records give the model; default: where the pipeline was loaded from.
    """

    def __init__(
        self,
        pipeline,
        *,
        generate_pipeline=None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        model_id: str | None = None,
    ):
        from diffusers import DiffusionPipeline

        self.family = family_of(pipeline)
        if generate_pipeline is not None and not isinstance(generate_pipeline, DiffusionPipeline):
            raise ConfigurationError(
                f"generate_pipeline must be a diffusers text-to-image pipeline or None, got "
                f"{type(generate_pipeline).__name__}"
            )
        self.config = DiffusersImageConfig(
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed
        )
        self.pipeline = pipeline
        self._generate_pipeline = generate_pipeline
        self._generate_given = generate_pipeline is not None
        self.model_id: str | None = model_id or getattr(pipeline, "name_or_path", None)
        self.weights: dict | None = None  # which weights, when from_pretrained loaded them (no token)
        self.max_references = self.family.max_references
        steps, guidance = self._defaults()
        self.num_inference_steps = self.config.num_inference_steps or steps
        self.guidance_scale = guidance if self.config.guidance_scale is None else self.config.guidance_scale

    @classmethod
    def from_pretrained(
        cls,
        id_or_dir: str | Path,
        *,
        dtype=None,
        torch_dtype=None,
        device: str | torch.device | None = None,
        cpu_offload: bool = False,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        revision: str | None = None,
        variant: str | None = None,
        cache_dir: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        **kwargs: Any,
    ) -> DiffusersImageBackend:
        """Load a Diffusers-format image-edit checkpoint (hub id or local folder) of a supported family.

        Args:
            id_or_dir: e.g. `"Qwen/Qwen-Image-Edit-2509"`, `"black-forest-labs/FLUX.2-klein-4B"`,
                `"black-forest-labs/FLUX.1-Kontext-dev"`, or a folder laid out like one.
            dtype: the weights' dtype (default bfloat16; `torch_dtype=` is the older name).
            device: where to put the pipeline (default: leave it on the CPU, you call `.to(...)`).
            cpu_offload: keep each model on the CPU until it runs (diffusers' `enable_model_cpu_offload`),
                for accelerators too small for the whole pipeline; `device` then names the accelerator.
            num_inference_steps, guidance_scale, seed: as for the constructor.
            revision, variant, cache_dir, token, local_files_only: diffusers' hub keywords, passed through. The
                commit the revision resolved to (or the folder's path) goes into `describe()`, hence into
                manifests and the reasoning fingerprint; the token does not.
            **kwargs: passed to the pipeline's `from_pretrained`.

        The family comes from the checkpoint's `model_index.json`; the checkpoint is found, and the
        settings checked, before any weight is read.
        """
        settings = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed)
        DiffusersImageConfig(**settings)
        if not isinstance(cpu_offload, bool):
            raise ConfigurationError(f"cpu_offload must be True or False, got {cpu_offload!r}")
        if device is not None:
            check_device(device)
        if cpu_offload:
            from diffusers.utils.torch_utils import get_device

            if torch.device(device or get_device()).type == "cpu":
                raise ConfigurationError(
                    f"cpu_offload=True offloads to the CPU from an accelerator, but the device is {device or 'cpu'}; "
                    "pass device='cuda' (or another accelerator), or leave cpu_offload off"
                )
        if dtype is not None and torch_dtype is not None:
            raise ConfigurationError("pass dtype= or its older name torch_dtype=, not both")
        dtype = parse_dtype(dtype if dtype is not None else torch_dtype)
        check_hub_options(variant=variant)
        source = resolve_pretrained(
            id_or_dir,
            what="image model weights",
            marker="model_index.json",
            argument="id_or_dir",
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )
        if variant:
            kwargs["variant"] = variant
        import diffusers

        try:
            class_name = diffusers.DiffusionPipeline.load_config(**source).get("_class_name")
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"cannot read model_index.json of {str(id_or_dir)!r}: {e}") from e
        family = FAMILIES.get(class_name)
        if family is None:
            raise ConfigurationError(
                f"id_or_dir {str(id_or_dir)!r} holds a {class_name}, which DiffusersImageBackend does not "
                f"support; supported: {', '.join(FAMILIES)}"
            )
        try:
            if family.pipeline == "QwenImageEditPlusPipeline" and "processor" not in kwargs:
                processor = _qwen_processor(source)
                kwargs.update({} if processor is None else {"processor": processor})
            pipeline = getattr(diffusers, class_name).from_pretrained(**source, dtype=dtype, **kwargs)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigurationError(
                f"cannot load {str(id_or_dir)!r} as a {class_name}: {type(e).__name__}: {e}"
            ) from e
        if cpu_offload:
            pipeline.enable_model_cpu_offload(device=device)
        elif device is not None:
            pipeline.to(device)
        backend = cls(pipeline, model_id=str(id_or_dir), **settings)
        backend.weights = weights_identity(source, "model_index.json", variant)
        return backend

    # -- the ImageBackend

    def generate(self, prompt: str, *, width: int, height: int) -> Image.Image:
        return self._draw(self.generate_pipeline, prompt, [], width, height)

    def edit(self, images: Sequence[Image.Image], prompt: str, *, width: int, height: int) -> Image.Image:
        if not images:
            raise ConfigurationError("images must hold at least one reference image to edit, got none")
        if len(images) > self.max_references:
            raise ConfigurationError(
                f"{self.family.pipeline} takes at most {self.max_references} reference images, got {len(images)}"
            )
        references = [_at_least(image.convert("RGB"), self.family.min_reference_side) for image in images]
        return self._draw(self.pipeline, prompt, references, width, height)

    def instruction(self, caption: str, problem: str | None = None) -> str:
        text = EDIT_INSTRUCTION.format(caption=caption.strip())
        return text + EDIT_RETRY.format(problem=problem) if problem else text

    # -- pipelines and memory

    @property
    def generate_pipeline(self):
        """The text-to-image pipeline `generate` uses, built on first use from the edit pipeline's components."""
        if self._generate_pipeline is None:
            if self.family.text_to_image is None:
                self._generate_pipeline = self.pipeline
            else:
                import diffusers

                built = getattr(diffusers, self.family.text_to_image).from_pipe(self.pipeline)
                # The edit pipeline's tqdm options (where set) carry over to its text-to-image twin.
                built.set_progress_bar_config(**getattr(self.pipeline, "_progress_bar_config", {}))
                self._generate_pipeline = built
        return self._generate_pipeline

    def to(self, *args, **kwargs) -> DiffusersImageBackend:
        """Move the pipelines, e.g. back to `"cuda"` after `release()`."""
        for pipeline in self._pipelines():
            pipeline.to(*args, **kwargs)
        return self

    def release(self) -> None:
        """Give the accelerator memory back, so the next stage's model fits.

        Without CPU offload the weights move to the CPU: the backend still works there, slowly, and
        `.to("cuda")` brings it back. With `cpu_offload=True` every model returns to the CPU and comes
        back by itself on the next call. The CUDA cache is emptied either way.
        """
        for pipeline in self._pipelines():
            if getattr(pipeline, "_all_hooks", None):  # the hooks enable_model_cpu_offload installed
                pipeline.maybe_free_model_hooks()
            else:
                pipeline.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        for pipeline in self._pipelines():
            pipeline.set_progress_bar_config(**kwargs)

    def describe(self) -> dict[str, Any]:
        info = {
            "class": type(self).__name__,
            "model": self.model_id,
            **({"weights": self.weights} if self.weights else {}),
            "family": self.family.name,
            "pipeline": type(self.pipeline).__name__,
            "dtype": str(self.pipeline.dtype).removeprefix("torch."),
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "seed": self.config.seed,
        }
        if self._generate_given:
            info["generate_pipeline"] = type(self._generate_pipeline).__name__
        return info

    # -- helpers

    def _pipelines(self) -> list:
        given = self._generate_pipeline
        return [self.pipeline] if given is None or given is self.pipeline else [self.pipeline, given]

    def _defaults(self) -> tuple[int, float]:
        """(steps, guidance) the pipeline uses when not told: its `__call__` defaults, or the family's
        for distilled checkpoints."""
        if self.family.distilled_defaults and self.pipeline.config.get("is_distilled"):
            return self.family.distilled_defaults
        parameters = inspect.signature(type(self.pipeline).__call__).parameters
        return parameters["num_inference_steps"].default, parameters[self.family.guidance].default

    def _draw(self, pipeline, prompt: str, references: list[Image.Image], width: int, height: int) -> Image.Image:
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        multiple = pipeline.vae_scale_factor * 2
        width, height = (max(multiple, round(side / multiple) * multiple) for side in (width, height))
        family = self.family
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "height": height,
            "width": width,
            "num_inference_steps": self.num_inference_steps,
            family.guidance: self.guidance_scale,
            "output_type": "np",
            # A CPU generator gives the same noise on every device.
            "generator": torch.Generator("cpu").manual_seed(self.config.seed),
        }
        if family.negative_prompt is not None and self.guidance_scale > 1:
            kwargs["negative_prompt"] = family.negative_prompt
        if family.area is not None:
            kwargs[family.area] = width * height
        if references:
            kwargs["image"] = references[0] if family.max_references == 1 else references
        record = {"model": self.model_id or family.name, "images_in": len(references)}
        start = time.perf_counter()
        try:
            pixels = np.asarray(pipeline(**kwargs).images[0])
        except Exception as e:
            report_request(
                **record, outcome="failed", seconds=time.perf_counter() - start, error=f"{type(e).__name__}: {e}"
            )
            raise BackendError(f"{type(pipeline).__name__} failed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - start
        if not np.isfinite(pixels).all():
            report_request(**record, outcome="failed", seconds=seconds, error="non-finite image")
            raise NumericalError(
                f"{type(pipeline).__name__} returned an image with non-finite values (model {self.model_id}); "
                "check the weights' dtype (float16 overflows in some of these models)"
            )
        report_request(**record, images_out=1, seconds=seconds)
        return Image.fromarray((pixels.clip(0, 1) * 255).round().astype(np.uint8), mode="RGB")


def family_of(pipeline) -> ImageFamily:
    """The `ImageFamily` of a loaded pipeline (its class or a parent's), or a `ConfigurationError`."""
    supported = ", ".join(FAMILIES)
    if isinstance(pipeline, (str, Path)):
        raise ConfigurationError(
            f"pipeline must be a loaded diffusers pipeline, got the string {str(pipeline)!r}; "
            f"use DiffusersImageBackend.from_pretrained({str(pipeline)!r}) (supported: {supported})"
        )
    for cls in type(pipeline).__mro__:
        if cls.__name__ in FAMILIES and cls.__module__.startswith("diffusers."):
            return FAMILIES[cls.__name__]
    raise ConfigurationError(
        f"pipeline must be a diffusers image-edit pipeline of a supported family ({supported}), "
        f"got {type(pipeline).__name__}"
    )


def _at_least(image: Image.Image, side: int) -> Image.Image:
    """`image` enlarged, aspect kept, so that its shorter side is at least `side` (as is when it is)."""
    width, height = image.size
    if min(width, height) >= side:
        return image
    scale = side / min(width, height)
    return image.resize((math.ceil(width * scale), math.ceil(height * scale)), Image.Resampling.LANCZOS)


def _qwen_processor(source: dict):
    """Qwen's processor, assembled without its video half where torchvision is missing.

    The checkpoint names `Qwen2VLProcessor`, whose video processor needs torchvision; the edit pipeline
    only ever sends text and images, so a tokenizer and the PIL image processor suffice.
    """
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    from vchain.backends.transformers import without_video

    if is_torchvision_available():
        return None
    folder = {**source, "subfolder": "processor"}
    processor_class = transformers.Qwen2VLProcessor
    return without_video(processor_class)(
        image_processor=AutoImageProcessor.from_pretrained(**folder),
        tokenizer=AutoTokenizer.from_pretrained(**folder),
        video_processor=None,
    )
