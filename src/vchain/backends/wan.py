"""Wan video generation (Wan2.1 / Wan2.2 through diffusers) and sparse inference-time LoRA tuning (peft).

`WanVideoGenerator` wraps a diffusers `WanPipeline`; `WanLoRATuner` learns a LoRA on its transformer(s)
from a few (keyframe, caption) pairs, each keyframe treated as a one-frame video, with Wan's own
flow-matching objective. The adapter lives in memory: applied for sampling, removed after, with the base
weights restored bit-exactly, so one loaded pipeline serves prompt after prompt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from vchain.errors import ConfigurationError, StageError, VChainError
from vchain.interfaces import Adapter, Tuner, VideoGenerator

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# Every linear of every transformer block: self- and cross-attention projections and the feed-forward.
# These are also the module names diffusers maps other Wan LoRA formats onto.
WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
ADAPTER_NAME = "vchain"


# ------------------------------------------------------------------------------------------ sampling


@dataclass
class WanSamplingConfig:
    """Sampling settings of `WanVideoGenerator`; checked against the model before anything runs.

    Args:
        height, width: frame size in pixels; multiples of the VAE stride times the patch size (16 for Wan).
        num_frames: frames per video; Wan's VAE needs 4k+1 (81 = 5 s at 16 fps).
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance (Wan2.2: high-noise expert); `guidance_scale_2` is the
            low-noise expert's (None: same as `guidance_scale`).
        negative_prompt: the classifier-free guidance negative; None encodes the empty prompt.
        max_sequence_length: text tokens; tuning encodes captions with the same length.
        fps: frame rate of the written mp4.
        cache: step caching, `None` (off), `"first-block"` (diffusers `FirstBlockCacheConfig`).
        cache_threshold: the first-block cache's residual threshold (higher: faster, less faithful).
    """

    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    negative_prompt: str | None = None
    max_sequence_length: int = 512
    fps: int = 16
    cache: str | None = None
    cache_threshold: float = 0.05

    def check(self, spatial_multiple: int = 16, temporal_stride: int = 4) -> WanSamplingConfig:
        errors = []
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0 or value % spatial_multiple:
                errors.append(f"{name} must be a positive multiple of {spatial_multiple}, got {value!r}")
        if (
            not isinstance(self.num_frames, int)
            or self.num_frames < 1
            or (self.num_frames - 1) % temporal_stride
        ):
            errors.append(
                f"num_frames must be {temporal_stride}k+1 (1, {1 + temporal_stride}, ..., 81), "
                f"got {self.num_frames!r}"
            )
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            errors.append(f"num_inference_steps must be a positive integer, got {self.num_inference_steps!r}")
        if self.guidance_scale < 0:
            errors.append(f"guidance_scale must be >= 0, got {self.guidance_scale!r}")
        if not 1 <= self.max_sequence_length <= 512:
            errors.append(f"max_sequence_length must be in 1..512, got {self.max_sequence_length!r}")
        if self.fps < 1:
            errors.append(f"fps must be positive, got {self.fps!r}")
        if self.cache not in (None, "first-block"):
            errors.append(f"cache must be None or 'first-block', got {self.cache!r}")
        if errors:
            raise ConfigurationError("invalid Wan sampling settings: " + "; ".join(errors))
        return self


class WanVideoGenerator(VideoGenerator):
    """A Wan text-to-video model behind a diffusers `WanPipeline` (Wan2.1, or Wan2.2 with two experts).

    Args:
        pipeline: a loaded `diffusers.WanPipeline`, used as is (you own its device and dtype).
        **sampling: defaults for every `sample` call, the fields of `WanSamplingConfig`
            (`height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0`, ...).
    """

    def __init__(self, pipeline, **sampling):
        self.pipeline = pipeline
        self.config = self._checked(WanSamplingConfig(**sampling))
        self.model_id: str | None = getattr(pipeline, "name_or_path", None)
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_pretrained(
        cls, model_id: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", *, torch_dtype=torch.bfloat16, **sampling
    ) -> WanVideoGenerator:
        """Load a Diffusers-format Wan checkpoint (hub id or local folder).

        The VAE stays in float32, as Wan's authors recommend; the rest takes `torch_dtype`.
        Sampling settings are checked before the (large) download or load starts.
        """
        WanSamplingConfig(**sampling).check()
        from diffusers import AutoencoderKLWan, WanPipeline

        try:
            vae = AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", torch_dtype=torch.float32)
            pipeline = WanPipeline.from_pretrained(model_id, vae=vae, torch_dtype=torch_dtype)
        except OSError as e:
            raise ConfigurationError(
                f"cannot load Wan weights {model_id!r}: {e}. Check the id, your network or HF_HOME cache; "
                "gated models need `huggingface-cli login`"
            ) from e
        pipeline.set_progress_bar_config(desc="sampling")
        generator = cls(pipeline, **sampling)
        generator.model_id = model_id
        return generator

    # -- what tuners and the pipeline read

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
    def transformers(self) -> list[torch.nn.Module]:
        """The denoisers: one for Wan2.1, the high-noise and low-noise experts for Wan2.2."""
        return [
            t
            for t in (self.pipeline.transformer, getattr(self.pipeline, "transformer_2", None))
            if t is not None
        ]

    @property
    def device(self) -> torch.device:
        return self.pipeline._execution_device

    def to(self, *args, **kwargs) -> WanVideoGenerator:
        self.pipeline.to(*args, **kwargs)
        return self

    def _checked(self, config: WanSamplingConfig) -> WanSamplingConfig:
        patch = self.transformers[0].config.patch_size
        return config.check(
            spatial_multiple=self.pipeline.vae_scale_factor_spatial * patch[1],
            temporal_stride=self.pipeline.vae_scale_factor_temporal,
        )

    def sampling_config(self, **overrides) -> WanSamplingConfig:
        unknown = set(overrides) - set(WanSamplingConfig.__dataclass_fields__)
        if unknown:
            raise ConfigurationError(f"unknown sampling settings {sorted(unknown)}; known: "
                                     f"{sorted(WanSamplingConfig.__dataclass_fields__)}")  # fmt: skip
        return self._checked(replace(self.config, **overrides))

    # -- sampling

    def sample(self, prompt: str, *, seed: int | None = None, output_type: str = "pil", **overrides):
        """Sample one video. Returns PIL frames (`output_type="pil"`), or the latents (`"latent"`)."""
        config = self.sampling_config(**overrides)
        generator = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        marks = {"start": time.perf_counter()}

        def mark_denoised(pipeline, step, timestep, tensors):
            if step == config.num_inference_steps - 1:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()  # once per video, so the split below is honest
                marks["denoised"] = time.perf_counter()
            return tensors

        with self._step_cache(config):
            result = self.pipeline(
                prompt=prompt,
                negative_prompt=config.negative_prompt,
                height=config.height,
                width=config.width,
                num_frames=config.num_frames,
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                guidance_scale_2=config.guidance_scale_2 if self.pipeline.config.boundary_ratio else None,
                generator=generator,
                max_sequence_length=config.max_sequence_length,
                output_type=output_type,
                callback_on_step_end=mark_denoised,
            )
        end = time.perf_counter()
        denoised = marks.get("denoised", end)
        self.last_timings = {
            "denoise": round(denoised - marks["start"], 3),
            "decode": round(end - denoised, 3),
        }
        frames = result.frames
        return frames if output_type == "latent" else list(frames[0])

    @contextlib.contextmanager
    def _step_cache(self, config: WanSamplingConfig) -> Iterator[None]:
        if config.cache is None:
            yield
            return
        from diffusers.hooks import FirstBlockCacheConfig

        for transformer in self.transformers:
            transformer.enable_cache(FirstBlockCacheConfig(threshold=config.cache_threshold))
        try:
            yield
        finally:
            for transformer in self.transformers:
                transformer.disable_cache()

    def prompt_tokens(self, prompt: str) -> tuple[int, int]:
        ids = self.pipeline.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return len(ids), self.config.max_sequence_length

    # -- encoders, for tuners

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str], max_sequence_length: int | None = None) -> torch.Tensor:
        """Caption embeddings `[N, L, D]` exactly as sampling computes them (same length and padding)."""
        embeds, _ = self.pipeline.encode_prompt(
            list(captions),
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length or self.config.max_sequence_length,
            device=self.device,
        )
        return embeds

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], height: int, width: int) -> torch.Tensor:
        """Normalised VAE latents `[N, C, 1, h, w]` of images taken as one-frame videos."""
        vae = self.pipeline.vae
        pixels = self.pipeline.video_processor.preprocess(list(images), height=height, width=width)
        pixels = pixels.unsqueeze(2).to(device=self.device, dtype=vae.dtype)  # [N, 3, 1, H, W]
        latents = vae.encode(pixels).latent_dist.mode()
        mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=latents.dtype).view(
            1, -1, 1, 1, 1
        )
        std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=latents.dtype).view(
            1, -1, 1, 1, 1
        )
        return (latents - mean) / std


# ------------------------------------------------------------------------------------------- tuning


@dataclass
class WanLoRAConfig:
    """Settings of `WanLoRATuner`. Rank, alpha and learning rate are the paper's.

    Args:
        rank, alpha: LoRA rank and scaling numerator (the update is scaled by alpha / rank).
        learning_rate: AdamW learning rate of the LoRA parameters.
        steps: optimizer steps. 300 by default: with five keyframes that is about 60 passes over each,
            enough at lr 1e-4 for a rank-16 LoRA to imprint the keyframes' content, while staying short
            of the point where a few stills start to freeze the video's motion (the paper's trade-off;
            it gives no step count). Raise it for stronger adherence, lower it for more motion.
        batch_size: keyframes per step, drawn without replacement in shuffled rounds.
        weighting_scheme: how the noise level is drawn: `"logit_normal"` (default, as Wan trains) or
            `"uniform"`; the draw is then shifted with the scheduler's flow shift, like sampling.
        logit_mean, logit_std: parameters of the logit-normal draw.
        height, width: training resolution; None takes the generator's (what sampling renders).
        gradient_checkpointing: recompute block activations in backward (for the 14B model).
        max_grad_norm: gradient clipping; None disables it.
        weight_decay: AdamW weight decay.
        target_modules: module names (suffixes) that get the LoRA.
        log_every: steps between loss reports (each report waits for the device, so not every step).
        seed: seeds LoRA initialisation, keyframe order, noise and noise levels.
        merge_for_sampling: fold the LoRA into the weights while sampling (no per-layer adapter cost),
            restoring the original weights from a snapshot afterwards; False applies it as peft layers.
    """

    rank: int = 16
    alpha: float = 16
    learning_rate: float = 1e-4
    steps: int = 300
    batch_size: int = 1
    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    height: int | None = None
    width: int | None = None
    gradient_checkpointing: bool = False
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    target_modules: tuple[str, ...] = WAN_LORA_TARGETS
    log_every: int = 10
    seed: int = 0
    merge_for_sampling: bool = True

    def __post_init__(self):
        errors = []
        for name in ("rank", "steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                errors.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("alpha", "learning_rate"):
            if not getattr(self, name) > 0:
                errors.append(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.weighting_scheme not in ("logit_normal", "uniform"):
            errors.append(
                f"weighting_scheme must be 'logit_normal' or 'uniform', got {self.weighting_scheme!r}"
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            errors.append(f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0 or value % 16):
                errors.append(f"{name} must be a positive multiple of 16 or None, got {value!r}")
        if not self.target_modules:
            errors.append("target_modules must name at least one module, got none")
        self.target_modules = tuple(self.target_modules)
        if errors:
            raise ConfigurationError("invalid WanLoRAConfig: " + "; ".join(errors))

    def to_dict(self) -> dict:
        return asdict(self)

    def lora_config(self):
        """The peft `LoraConfig` these settings describe."""
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.target_modules),
                          init_lora_weights=True)  # fmt: skip


@dataclass
class TuningReport:
    """What one tuning run did: losses at each report, and where the time went."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    trainable_parameters: int = 0


class WanLoRAAdapter(Adapter):
    """A LoRA for a Wan generator's transformer(s), held in memory.

    `state_dicts[i]` holds the peft LoRA weights of transformer i (`blocks.0.attn1.to_q.lora_A.weight`, ...).
    """

    def __init__(
        self,
        state_dicts: list[dict[str, torch.Tensor]],
        *,
        rank: int,
        alpha: float,
        target_modules: Sequence[str],
        merge: bool = True,
        report: TuningReport | None = None,
    ):
        self.state_dicts = state_dicts
        self.rank, self.alpha, self.target_modules = rank, alpha, tuple(target_modules)
        self.merge = merge
        self.report = report

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def metadata(self) -> dict:
        return {"r": self.rank, "lora_alpha": self.alpha, "target_modules": sorted(self.target_modules)}

    @contextlib.contextmanager
    def apply(self, generator: WanVideoGenerator) -> Iterator[None]:
        transformers = generator.transformers
        if len(transformers) != len(self.state_dicts):
            raise ConfigurationError(
                f"the adapter has LoRAs for {len(self.state_dicts)} transformer(s), the generator has "
                f"{len(transformers)}: it was tuned on another kind of Wan model"
            )
        with contextlib.ExitStack() as stack:
            for transformer, state_dict in zip(transformers, self.state_dicts, strict=True):
                apply = _merged if self.merge else _as_peft_layers
                stack.enter_context(apply(transformer, state_dict, self))
            yield

    def save(self, directory: str | Path) -> Path:
        """Write `pytorch_lora_weights.safetensors`, the file stock diffusers `load_lora_weights` reads.

        Wan2.2's second expert, when present, goes to `transformer_2/` beside it in the same format.
        """
        from diffusers import WanPipeline

        directory = Path(directory)
        for i, state_dict in enumerate(self.state_dicts):
            target = directory if i == 0 else directory / "transformer_2"
            WanPipeline.save_lora_weights(
                target,
                transformer_lora_layers={
                    k: v.detach().to("cpu", torch.float32) for k, v in state_dict.items()
                },
                transformer_lora_adapter_metadata=self.metadata(),
                weight_name=LORA_WEIGHT_NAME,
            )
        return directory / LORA_WEIGHT_NAME

    @classmethod
    def load(cls, directory: str | Path, *, merge: bool = True) -> WanLoRAAdapter:
        directory = Path(directory)
        files = [directory / LORA_WEIGHT_NAME]
        if (directory / "transformer_2" / LORA_WEIGHT_NAME).is_file():
            files.append(directory / "transformer_2" / LORA_WEIGHT_NAME)
        if not files[0].is_file():
            raise VChainError(f"no {LORA_WEIGHT_NAME} in {str(directory)!r}")
        state_dicts, metadata = [], {}
        for path in files:
            state_dict, metadata = _read_lora_file(path)
            state_dicts.append(state_dict)
        rank = int(metadata.get("r") or next(v.shape[0] for k, v in state_dicts[0].items() if "lora_A" in k))
        alpha = float(metadata.get("lora_alpha", rank))
        targets = metadata.get("target_modules") or WAN_LORA_TARGETS
        return cls(state_dicts, rank=rank, alpha=alpha, target_modules=targets, merge=merge)


def _read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception as e:
        raise VChainError(f"cannot read LoRA file {str(path)!r}: {e}") from e
    metadata = json.loads(header.get("lora_adapter_metadata", "{}"))
    metadata = {k.removeprefix("transformer."): v for k, v in metadata.items()}
    state_dict = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    return state_dict, metadata


def _lora_pairs(state_dict: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    for key, down in state_dict.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            yield module, down, state_dict[f"{module}.lora_B.weight"]


@contextlib.contextmanager
def _merged(transformer: torch.nn.Module, state_dict: dict, adapter: WanLoRAAdapter) -> Iterator[None]:
    """Fold W += scale * B @ A into each target weight; put the snapshot back on exit (bit-exact)."""
    snapshot: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for module_name, down, up in _lora_pairs(state_dict):
                weight = transformer.get_submodule(module_name).weight
                snapshot[module_name] = weight.detach().clone()
                delta = (
                    up.to(weight.device, torch.float32) @ down.to(weight.device, torch.float32)
                ) * adapter.scale
                weight.copy_((weight.float() + delta).to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for module_name, original in snapshot.items():
                transformer.get_submodule(module_name).weight.copy_(original)


@contextlib.contextmanager
def _as_peft_layers(transformer, state_dict: dict, adapter: WanLoRAAdapter) -> Iterator[None]:
    """Inject the LoRA as peft layers (diffusers' own loader), remove them on exit."""
    state = _module_state(transformer)
    transformer.load_lora_adapter(
        state_dict, prefix=None, adapter_name=ADAPTER_NAME, metadata=adapter.metadata()
    )
    try:
        yield
    finally:
        _remove_adapter(transformer)
        _restore_module_state(transformer, state)


class WanLoRATuner(Tuner):
    """Sparse inference-time tuning: a LoRA on a Wan generator from a few (keyframe, caption) pairs.

    Each keyframe is encoded once by the VAE as a one-frame video and each caption once by the text
    encoder (with sampling's sequence length); the steps then run the transformer only. The base
    weights stay in their dtype (bf16 on GPU), the LoRA parameters train in float32.

    Args:
        config: a `WanLoRAConfig`, or its fields as keywords (`WanLoRATuner(rank=16, steps=300)`).
    """

    def __init__(self, config: WanLoRAConfig | None = None, **fields):
        if config is not None and fields:
            raise ConfigurationError("pass either config= or its fields as keywords, not both")
        self.config = config or WanLoRAConfig(**fields)
        self.last_report: TuningReport | None = None

    def load_adapter(self, directory: str | Path) -> WanLoRAAdapter:
        return WanLoRAAdapter.load(directory, merge=self.config.merge_for_sampling)

    def tune(self, generator: WanVideoGenerator, pairs: Sequence[tuple[Image.Image, str]]) -> WanLoRAAdapter:
        config = self.config
        images, captions = _check_pairs(pairs)
        height, width = config.height or generator.height, config.width or generator.width
        report = TuningReport()

        start = time.perf_counter()
        latents = generator.encode_images(images, height, width).float()
        text = generator.encode_text(captions)
        report.seconds["preprocess"] = round(time.perf_counter() - start, 3)

        start = time.perf_counter()
        state_dicts = self._train(generator, latents, text, report)
        report.seconds["fine_tune"] = round(time.perf_counter() - start, 3)
        self.last_report = report
        return WanLoRAAdapter(
            state_dicts,
            rank=config.rank,
            alpha=config.alpha,
            target_modules=config.target_modules,
            merge=config.merge_for_sampling,
            report=report,
        )

    def _train(self, generator: WanVideoGenerator, latents, text, report: TuningReport) -> list[dict]:
        from peft.utils import get_peft_model_state_dict
        from tqdm.auto import tqdm

        config = self.config
        transformers = generator.transformers
        device = latents.device
        saved = [_module_state(t) for t in transformers]
        try:
            params = []
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(config.seed)  # peft draws LoRA init from the global RNG
                for transformer in transformers:
                    transformer.add_adapter(config.lora_config(), adapter_name=ADAPTER_NAME)
                    transformer.train()
                    if config.gradient_checkpointing:
                        transformer.enable_gradient_checkpointing()
                    for name, param in transformer.named_parameters():
                        if "lora_" in name:
                            param.data = param.data.float()
                            params.append(param)
            report.trainable_parameters = sum(p.numel() for p in params)
            optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
            rng = torch.Generator(device=device).manual_seed(config.seed)
            order = _KeyframeOrder(len(latents), config.batch_size, config.seed)
            shift = _flow_shift(generator.pipeline.scheduler)
            boundary = generator.pipeline.config.boundary_ratio
            running = torch.zeros((), device=device)
            progress = tqdm(range(1, config.steps + 1), desc="tuning", unit="step", leave=False)
            for step in progress:
                index = order.next()
                x0, context = latents[index], text[index]
                noise = torch.randn(x0.shape, generator=rng, device=device, dtype=x0.dtype)
                sigma = self._draw_sigmas(len(index), shift, rng, device)
                loss = flow_matching_loss(transformers, boundary, x0, context, noise, sigma)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                running += loss.detach()
                if step % config.log_every == 0 or step == config.steps:
                    count = (step - 1) % config.log_every + 1
                    mean = (running / count).item()  # the only host-device sync: once per report
                    running.zero_()
                    if not math.isfinite(mean):
                        raise StageError(
                            f"the flow-matching loss became {mean} by step {step}; lower learning_rate "
                            f"(now {config.learning_rate}) or check the keyframes",
                            stage="tuning", step="fine_tune",
                        )  # fmt: skip
                    report.losses.append((step, mean))
                    progress.set_postfix(loss=f"{mean:.4f}")
            return [
                {
                    k: v.detach().clone()
                    for k, v in get_peft_model_state_dict(t, adapter_name=ADAPTER_NAME).items()
                }
                for t in transformers
            ]
        finally:
            for transformer, state in zip(transformers, saved, strict=True):
                _remove_adapter(transformer)
                _restore_module_state(transformer, state)

    def _draw_sigmas(self, n: int, shift: float, rng: torch.Generator, device) -> torch.Tensor:
        if self.config.weighting_scheme == "logit_normal":
            u = torch.randn(n, generator=rng, device=device) * self.config.logit_std + self.config.logit_mean
            u = torch.sigmoid(u)
        else:
            u = torch.rand(n, generator=rng, device=device)
        # The scheduler's time shift, as in sampling: more of the draw lands at high noise for shift > 1.
        return shift * u / (1 + (shift - 1) * u)


def flow_matching_loss(
    transformers: list, boundary_ratio: float | None, x0, context, noise, sigma
) -> torch.Tensor:
    """Wan's training objective: x_t = (1 - s) x0 + s noise, predict the velocity noise - x0 at t = 1000 s.

    Samples are routed to the expert that denoises their noise level (Wan2.2); the loss is the mean
    squared error over all elements, computed in float32.
    """
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    target = noise - x0
    timestep = sigma * 1000
    dtype = transformers[0].dtype
    total = x0.new_zeros(())
    for expert, mask in _route(transformers, boundary_ratio, timestep):
        prediction = expert(hidden_states=x_t[mask].to(dtype), timestep=timestep[mask],
                            encoder_hidden_states=context[mask].to(dtype), return_dict=False)[0]  # fmt: skip
        total = total + torch.nn.functional.mse_loss(
            prediction.float(), target[mask].float(), reduction="sum"
        )
    return total / target.numel()


def _check_pairs(pairs) -> tuple[list[Image.Image], list[str]]:
    if not pairs:
        raise ConfigurationError(f"pairs must hold at least one (image, caption) pair, got {pairs!r}")
    images, captions = [], []
    for i, pair in enumerate(pairs):
        try:
            image, caption = pair
        except (TypeError, ValueError):
            raise ConfigurationError(f"pairs[{i}] must be an (image, caption) pair, got {pair!r}") from None
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as opened:
                    image = opened.convert("RGB")
            except OSError as e:
                raise ConfigurationError(f"pairs[{i}] image {str(image)!r} cannot be read: {e}") from e
        if not isinstance(image, Image.Image):
            raise ConfigurationError(
                f"pairs[{i}] image must be a PIL image or a path, got {type(image).__name__}"
            )
        if not isinstance(caption, str) or not caption.strip():
            raise ConfigurationError(f"pairs[{i}] caption must be a non-empty string, got {caption!r}")
        images.append(image.convert("RGB"))
        captions.append(caption)
    return images, captions


class _KeyframeOrder:
    """Keyframe indices in shuffled rounds, so every keyframe is seen equally often."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, min(batch_size, n)
        self.rng = torch.Generator().manual_seed(seed)
        self.queue: list[int] = []

    def next(self) -> torch.Tensor:
        while len(self.queue) < self.batch_size:
            self.queue += torch.randperm(self.n, generator=self.rng).tolist()
        batch, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
        return torch.tensor(batch)


def _flow_shift(scheduler) -> float:
    config = scheduler.config
    shift = config.get("flow_shift") if "flow_shift" in config else config.get("shift")
    return float(shift or 1.0)


def _route(transformers: list, boundary_ratio: float | None, timestep: torch.Tensor):
    """Which expert denoises which sample: Wan2.2 sends timesteps at or above the boundary to the first."""
    if boundary_ratio is None or len(transformers) == 1:
        yield transformers[0], slice(None)
        return
    high = timestep >= boundary_ratio * 1000
    for expert, mask in ((transformers[0], high), (transformers[1], ~high)):
        if bool(mask.any()):
            yield expert, mask


def _remove_adapter(transformer) -> None:
    """Take vchain's adapter off. When it is the only one, peft's wrapper layers go too, so the module
    tree (and the cost of every later forward) is exactly the base model's again."""
    adapters = getattr(transformer, "peft_config", None) or {}
    if ADAPTER_NAME not in adapters:
        return
    if set(adapters) == {ADAPTER_NAME}:
        transformer.unload_lora()
    else:
        transformer.delete_adapters(ADAPTER_NAME)


def _module_state(module: torch.nn.Module) -> dict:
    return {
        "training": module.training,
        "requires_grad": {name: p.requires_grad for name, p in module.named_parameters()},
        "checkpointing": getattr(module, "gradient_checkpointing", False),
    }


def _restore_module_state(module: torch.nn.Module, state: dict) -> None:
    module.train(state["training"])
    for name, param in module.named_parameters():
        param.requires_grad_(state["requires_grad"].get(name, param.requires_grad))
    if getattr(module, "gradient_checkpointing", False) != state["checkpointing"]:
        if state["checkpointing"]:
            module.enable_gradient_checkpointing()
        else:
            module.disable_gradient_checkpointing()
