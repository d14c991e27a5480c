"""What the diffusers-based backends share: a dtype read once, a timed and checked video pipeline call,
the acceleration switches, and `DiffusersVideoGenerator`, the base of the generator families (Wan,
CogVideoX)."""

from __future__ import annotations

import contextlib
import time
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from vchain._hub import check_hub_options, resolve_pretrained, weights_identity
from vchain.accounting import report_timing
from vchain.backends._configs import OFFLOADS, QUANTIZATIONS, Acceleration
from vchain.config import Config, check_device
from vchain.errors import ConfigurationError, NumericalError
from vchain.interfaces import TunableGenerator
from vchain.parallel import check_mode, check_sampling, parallel_sampling, require_process_group
from vchain.tuning import compiled_blocks

OUTPUT_TYPES = ("pil", "np", "latent")
# What each quantization needs installed, and the pip name to say when it is missing.
_QUANTIZATION_PACKAGES = {"int8": "torchao", "fp8": "torchao", "nf4": "bitsandbytes"}


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
        compile: regional `torch.compile` of the transformer's repeated blocks while sampling.
        compile_backend: the `torch.compile` backend (default `"inductor"`).
        attention_backend: diffusers' attention kernel while sampling (`"flash"`, `"sage"`, ...).
        cache: a step cache while sampling: `"first-block"` (diffusers' FirstBlockCache), `"sea"` (SeaCache) or
            `"taylorseer"` (TaylorSeer); `cache_threshold` (first-block, sea) and `cache_interval` (taylorseer)
            tune it, None taking the cache's default.
        offload_text_encoder: keep the text encoder on the CPU between encodings; it moves to the device for
            each (a prompt, or the captions of a tuning run) and back, which frees its memory (11 GiB for
            UMT5-XXL in bfloat16) for the transformer at the cost of two copies per encoding.
        parallel: sample on the ranks of a launch (`torchrun`): `"cfg"` (the two guidance branches on two
            ranks), `"ulysses"` or `"ring"` (diffusers' context parallelism, CUDA only); see `vchain.parallel`.
            Needs the process group initialised first.
        **sampling: defaults for every `sample` call, the fields of `sampling_class`.
    """

    pipeline_class: ClassVar[str]
    # The pipeline's components `quantization` applies to: the denoiser(s), most of the weights.
    quantized_components: ClassVar[tuple[str, ...]] = ("transformer",)
    sampling_class: ClassVar[type[Config]]
    # The step caches that work on the family's pipeline. SeaCache needs the scheduler's step and sigma, which
    # only diffusers' WanPipeline passes to it; elsewhere it "fails open" (warns and caches nothing).
    step_caches: ClassVar[tuple[str, ...]] = ("first-block", "taylorseer")
    default_model: ClassVar[str]
    what: ClassVar[str]

    def __init__(
        self,
        pipeline,
        *,
        compile: bool = False,
        compile_backend: str = "inductor",
        attention_backend: str | None = None,
        cache: str | None = None,
        cache_threshold: float | None = None,
        cache_interval: int | None = None,
        offload_text_encoder: bool = False,
        parallel: str | None = None,
        **sampling: Any,
    ):
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
        self.acceleration = self._acceleration(
            compile=compile,
            compile_backend=compile_backend,
            attention_backend=attention_backend,
            cache=cache,
            cache_threshold=cache_threshold,
            cache_interval=cache_interval,
        )
        if self.acceleration.attention_backend is not None:
            self._check_dispatched()
        self.offload_text_encoder = _checked_flag(offload_text_encoder, "offload_text_encoder")
        if offload_text_encoder:
            pipeline.text_encoder.to("cpu")
        self.parallel = self._parallel(parallel, self.config.guidance_scale)
        self.model_id: str | None = getattr(pipeline, "name_or_path", None)
        # Which weights: set by from_pretrained (a hub commit or a folder); unknown for a wrapped pipeline.
        self.weights: dict | None = None
        # How from_pretrained fitted the model to the memory (None / False for a wrapped pipeline).
        self.quantization: str | None = None
        self.offload: str | None = None
        self.vae_tiling = False

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | None = None,
        *,
        dtype=None,
        torch_dtype=None,
        device=None,
        revision: str | None = None,
        variant: str | None = None,
        cache_dir: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        quantization: str | None = None,
        offload: str | None = None,
        vae_tiling: bool = False,
        **settings,
    ):
        """Load a Diffusers-format checkpoint (hub id or local folder; default `default_model`).

        Args:
            dtype: the weights' dtype (default bfloat16); `torch_dtype=` is the older name.
            device: where to put the pipeline (default: leave it on the CPU, you call `.to(...)`); with
                `offload`, where the pipeline runs (default: cuda when there is one, else the CPU).
            quantization: store the denoiser(s) (`quantized_components`) quantized as they load: `"int8"` or
                `"fp8"` (torchao, weight-only; CPU and GPU) or `"nf4"` (bitsandbytes 4-bit; a CUDA GPU only).
                A LoRA tuned or applied on such a model is added as layers, never folded into the weights.
            offload: keep the weights on the CPU and move them to the device as they run: `"model"` one whole
                model at a time (diffusers' model CPU offload; needs an accelerator), `"group"` one transformer
                block at a time (diffusers' group offloading, overlapped with compute on CUDA streams).
            vae_tiling: decode (and encode) the video in tiles, for large frames on a small GPU.
            revision, variant, cache_dir, token, local_files_only: diffusers' hub keywords, passed through.
                The commit the revision resolved to (or the local folder's path) goes into `describe()`,
                hence into manifests and run fingerprints; the token does not.
            **settings: the constructor's keywords (sampling settings, acceleration switches,
                `offload_text_encoder`, `parallel`), checked before the (large) download or load starts.
        """
        model_id = cls.default_model if model_id is None else model_id
        switches = {k: v for k, v in settings.items() if k in Acceleration.model_fields}
        cls._acceleration(**switches)
        sampling = {
            k: v for k, v in settings.items() if k not in switches and k not in ("offload_text_encoder", "parallel")
        }
        config = cls.sampling_class(**sampling).check()
        cls._parallel(settings.get("parallel"), config.guidance_scale)
        _checked_flag(settings.get("offload_text_encoder", False), "offload_text_encoder")
        if dtype is not None and torch_dtype is not None:
            raise ConfigurationError("pass dtype= or its older name torch_dtype=, not both")
        dtype = parse_dtype(dtype if dtype is not None else torch_dtype)
        if device is not None:
            check_device(device)
        check_memory_options(
            quantization, offload, vae_tiling, device=device, offload_text_encoder=settings.get("offload_text_encoder")
        )
        check_hub_options(variant=variant)
        source = resolve_pretrained(
            model_id,
            what=cls.what,
            marker="model_index.json",
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )
        cls._check_checkpoint(model_id, source)
        try:
            pipeline = cls._load(
                {**source, **({"variant": variant} if variant else {})},
                dtype,
                quantization_config(quantization, cls._quantized(model_id, source), dtype) if quantization else None,
            )
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"cannot load {cls.what} {str(model_id)!r}: {e}") from e
        generator = cls(pipeline, **settings)
        generator.model_id = str(model_id)
        generator.weights = weights_identity(source, "model_index.json", variant)
        generator.quantization = quantization
        if vae_tiling:
            pipeline.vae.enable_tiling()
            generator.vae_tiling = True
        if offload is not None:
            _enable_offload(pipeline, offload, device)
            generator.offload = offload
            return generator
        return generator.to(device) if device is not None else generator

    @classmethod
    def _acceleration(cls, **switches: Any) -> Acceleration:
        """The checked switches, with a step cache the family's pipeline can drive."""
        acceleration = Acceleration(**switches)
        if acceleration.cache is not None and acceleration.cache not in cls.step_caches:
            raise ConfigurationError(
                f"cache={acceleration.cache!r} cannot apply to {cls.__name__} (diffusers' {cls.pipeline_class} does "
                f"not give it the scheduler's steps); its step caches: {', '.join(cls.step_caches)}"
            )
        return acceleration

    @classmethod
    def _parallel(cls, parallel: object, guidance_scale: float) -> str | None:
        """The checked parallel mode: one the family and the guidance allow, with its process group started."""
        mode = check_mode(parallel)
        if mode is not None:
            check_sampling(mode, guidance_scale=guidance_scale, pipeline_class=cls.pipeline_class)
            require_process_group(mode)
        return mode

    @classmethod
    def _check_checkpoint(cls, model_id: str, source: dict) -> None:
        """Refuse a checkpoint of another pipeline class before its weights load (a VACE checkpoint is not a
        plain text-to-video one, nor the reverse)."""
        from vchain.backends import GENERATOR_FAMILIES, checkpoint_class

        name = checkpoint_class(model_id, source)
        if name != cls.pipeline_class:
            family = GENERATOR_FAMILIES.get(name)
            hint = f"; load it with {family.generator}" if family is not None else ""
            raise ConfigurationError(
                f"model_id {str(model_id)!r} is a {name!r} checkpoint, but {cls.__name__} wraps a "
                f"{cls.pipeline_class}{hint}"
            )

    @classmethod
    def _quantized(cls, model_id: str, source: dict) -> tuple[str, ...]:
        """Those of `quantized_components` the checkpoint has (Wan2.1 has no `transformer_2`)."""
        from vchain.backends import checkpoint_index

        index = checkpoint_index(model_id, source)
        return tuple(name for name in cls.quantized_components if (index.get(name) or [None])[0] is not None)

    @classmethod
    def _load(cls, source: dict, dtype: torch.dtype, quantization=None):
        """The pipeline from `resolve_pretrained`'s keyword arguments; `quantization` a diffusers
        `PipelineQuantizationConfig` (or None)."""
        import diffusers

        return getattr(diffusers, cls.pipeline_class).from_pretrained(
            **source, dtype=dtype, quantization_config=quantization
        )

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
            **({"weights": self.weights} if self.weights else {}),
            "dtype": str(self.pipeline.transformer.dtype).removeprefix("torch."),
            "denoisers": len(self.denoisers()),
            "config": self.config.to_dict(),
            "acceleration": self.acceleration.to_dict(),
            # Only when set, so that the records of runs on a plain model keep their fingerprints.
            **({"quantization": self.quantization} if self.quantization else {}),
            **({"offload": self.offload} if self.offload else {}),
            **({"vae_tiling": True} if self.vae_tiling else {}),
            **({"parallel": self.parallel} if self.parallel else {}),
        }

    def to(self, *args, **kwargs):
        if self.offload is not None:
            raise ConfigurationError(
                f"{type(self).__name__} was loaded with offload={self.offload!r}: its weights move to the device "
                "as they run, so it cannot be moved as a whole; load it again without offload to place it"
            )
        self.pipeline.to(*args, **kwargs)
        if self.offload_text_encoder:
            self.pipeline.text_encoder.to("cpu")
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.pipeline.set_progress_bar_config(**kwargs)

    @property
    @abstractmethod
    def text_tokens(self) -> int:
        """The text encoder's sequence length, in sampling and in tuning alike."""

    def prompt_tokens(self, prompt: str) -> tuple[int, int]:
        ids = self.pipeline.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return len(ids), self.text_tokens

    @torch.no_grad()
    def encode_captions(self, captions) -> torch.Tensor:
        """Caption embeddings exactly as sampling computes them (the pipeline's own `encode_prompt`)."""
        with self.text_encoder_on_device():
            embeds, _ = self.pipeline.encode_prompt(
                list(captions),
                do_classifier_free_guidance=False,
                max_sequence_length=self.text_tokens,
                device=self.device,
            )
        return embeds

    def sampling_config(self, **overrides: Any):
        """The sampling settings with `overrides` applied, checked against the model."""
        return self._checked(self.config.replace(**overrides))

    # -- sampling

    def sample(self, prompt: str, *, seed: int | None = None, output_type: str = "pil", **overrides: Any):
        """Sample one video: PIL frames (`output_type="pil"`), float frames (`"np"`) or latents (`"latent"`),
        with the acceleration switches on for the call."""
        return self._sample(prompt, self.sampling_config(**overrides), seed=seed, output_type=output_type)

    def _sample(self, prompt: str, config, *, seed: int | None, output_type: str, **conditions: Any):
        """One pipeline call with checked settings; `conditions` are extra pipeline keywords (a family's own)."""
        call = {**self._call_arguments(prompt, config), **conditions}
        check_sampling(self.parallel, guidance_scale=config.guidance_scale, pipeline_class=self.pipeline_class)
        if self.offload_text_encoder or self.parallel == "cfg":  # cfg: rank 1 needs the negative embeddings
            call = self._with_prompt_embeddings(call)
        with self.accelerated(), parallel_sampling(self.parallel, self.denoisers(), call):
            return sample_video(
                self.pipeline,
                num_inference_steps=config.num_inference_steps,
                output_type=output_type,
                owner=type(self).__name__,
                generator=None if seed is None else torch.Generator(device="cpu").manual_seed(seed),
                **call,
            )

    @abstractmethod
    def _call_arguments(self, prompt: str, config) -> dict[str, Any]:
        """The family's pipeline keywords for one video: `prompt`, `negative_prompt`, `guidance_scale`,
        `max_sequence_length`, sizes and its own (steps, seed and output type are added by `sample`)."""

    @torch.no_grad()
    def _with_prompt_embeddings(self, call: dict[str, Any]) -> dict[str, Any]:
        """`call` with the prompts encoded here (the encoder on the device only meanwhile), as the
        pipeline's `prompt_embeds` / `negative_prompt_embeds`: the pipeline's own `encode_prompt`, so the
        embeddings are the ones it would compute."""
        call = dict(call)
        with self.text_encoder_on_device():
            positive, negative = self.pipeline.encode_prompt(
                call.pop("prompt"),
                call.pop("negative_prompt"),
                do_classifier_free_guidance=call["guidance_scale"] > 1.0,
                max_sequence_length=call["max_sequence_length"],
                device=self.device,
            )
        return {**call, "prompt_embeds": positive, "negative_prompt_embeds": negative}

    @contextlib.contextmanager
    def text_encoder_on_device(self) -> Iterator[None]:
        """The text encoder on the execution device for the duration; with `offload_text_encoder`, back to
        the CPU after (otherwise it stays where it is)."""
        if not self.offload_text_encoder:
            yield
            return
        encoder = self.pipeline.text_encoder
        encoder.to(self.device)
        try:
            yield
        finally:
            encoder.to("cpu")

    @contextlib.contextmanager
    def accelerated(self) -> Iterator[None]:
        """The acceleration switches on for the duration, each removed on exit (also on an error)."""
        switches = self.acceleration
        with contextlib.ExitStack() as stack:
            if switches.attention_backend is not None:
                from diffusers.models.attention_dispatch import attention_backend

                stack.enter_context(attention_backend(switches.attention_backend))
            for denoiser in self.denoisers():
                if switches.compile:
                    # Not fullgraph: the step cache's hooks decide in Python whether a block runs.
                    stack.enter_context(compiled_blocks(denoiser, backend=switches.compile_backend))
                if switches.cache is not None:
                    denoiser.enable_cache(switches.cache_config())
                    stack.callback(denoiser.disable_cache)
            yield

    def _check_dispatched(self) -> None:
        """`attention_backend` needs attention that goes through diffusers' dispatcher; diffusers itself
        would skip other processors without a word."""
        for denoiser in self.denoisers():
            processors = [getattr(m, "processor", None) for m in denoiser.modules() if hasattr(m, "processor")]
            if not any(hasattr(p, "_attention_backend") for p in processors):
                names = sorted({type(p).__name__ for p in processors})
                raise ConfigurationError(
                    f"attention_backend={self.acceleration.attention_backend!r} cannot apply to "
                    f"{type(denoiser).__name__}: its attention processors ({', '.join(names)}) call torch directly, "
                    "not diffusers' attention dispatcher; leave attention_backend None"
                )


def check_memory_options(
    quantization: object, offload: object, vae_tiling: object, *, device=None, offload_text_encoder: object = False
) -> None:
    """`from_pretrained`'s memory options checked before anything loads: values, the packages they need, and
    the hardware (nf4 and model offload cannot run on a CPU-only machine)."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ConfigurationError(
            f"quantization must be one of {', '.join(QUANTIZATIONS)} or None, got {quantization!r}"
        )
    if offload is not None and offload not in OFFLOADS:
        raise ConfigurationError(f"offload must be one of {', '.join(OFFLOADS)} or None, got {offload!r}")
    _checked_flag(vae_tiling, "vae_tiling")
    if offload is not None and offload_text_encoder:
        raise ConfigurationError(
            f"offload={offload!r} already keeps the text encoder on the CPU between uses; leave offload_text_encoder "
            "False"
        )
    if quantization == "nf4" and not torch.cuda.is_available():
        raise ConfigurationError(
            "quantization='nf4' needs a CUDA GPU (bitsandbytes' 4-bit loading in diffusers refuses to run without "
            "one); on a CPU use 'int8' or 'fp8'"
        )
    if quantization is not None:
        package = _QUANTIZATION_PACKAGES[quantization]
        try:
            __import__(package)
        except ImportError as e:
            raise ConfigurationError(
                f"quantization={quantization!r} needs {package}: pip install 'vchain[quant]' (or {package} alone)"
            ) from e
    on_cpu = device is not None and torch.device(device).type == "cpu"
    if offload == "model" and (on_cpu or not _has_accelerator()):
        raise ConfigurationError(
            f"offload='model' needs an accelerator (CUDA, or another torch accelerator) to move the models to, "
            f"got device {str(device or 'cpu')!r}; on a CPU use offload='group' (its hooks move nothing there) or None"
        )


def quantization_config(quantization: str, components: tuple[str, ...], dtype: torch.dtype):
    """diffusers' `PipelineQuantizationConfig` that stores `components` in `quantization` as they load."""
    from diffusers.quantizers import PipelineQuantizationConfig

    if quantization == "nf4":
        from diffusers import BitsAndBytesConfig

        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    else:
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

        # Weight-only: the activations stay in the compute dtype, so it runs on CPUs and any GPU.
        config = TorchAoConfig(Int8WeightOnlyConfig() if quantization == "int8" else Float8WeightOnlyConfig())
    return PipelineQuantizationConfig(quant_mapping={name: config for name in components})


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def _enable_offload(pipeline, offload: str, device) -> None:
    """diffusers' offloading onto `device` (default: the accelerator, else the CPU, where group offloading's
    hooks run and move nothing)."""
    if device is None:
        device = torch.accelerator.current_accelerator() if _has_accelerator() else torch.device("cpu")
    device = torch.device(device)
    if offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
        return
    pipeline.enable_group_offload(
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=device.type == "cuda",
    )


def _checked_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value
