"""Stage 2, sparse inference-time tuning: a LoRA fitted to a few (keyframe, caption) pairs, any generator.

`LoRATuner` is model-agnostic. It meets the video model through `vchain.interfaces.TunableGenerator`
(encoders, denoisers, the training objective, the prediction) and never imports a backend. Each keyframe
is encoded once as a one-frame video and each caption once; the steps then run the denoiser only, with
the base weights frozen in their dtype (bf16 on a GPU) and the LoRA parameters in float32.

Everything random is drawn up front on the host from `seed`: the keyframe order, the noise levels and
which denoiser serves each one. The steps then index device tensors with Python ints and never wait
for the device, except every `log_every` steps to read the loss. On a GPU such a step is bound by
kernel launches more than by FLOPs; the levers for that are several keyframes per step (`batch_size`),
regional `torch.compile` of the denoiser's repeated blocks (`compile`) and AdamW's fused kernel
(`fused_adamw`, on by default on CUDA).

The result is a `LoRAAdapter` in memory: `apply(generator)` folds it into the weights from a snapshot
(or adds peft layers) and puts the base model back bit-exactly on exit; `save(dir)` writes the
`pytorch_lora_weights.safetensors` that stock diffusers `load_lora_weights` reads, `save(path,
format="comfyui")` the layout ComfyUI and the original Wan code use (`vchain.lora_files`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vchain import _io, lora_files
from vchain.errors import ConfigurationError, NumericalError, StageError, VChainError
from vchain.images import UnreadableImageError, read_image
from vchain.interfaces import Adapter, TrainingObjective, TunableGenerator, Tuner, TuningReport, VideoGenerator
from vchain.lora_config import LoRAConfig
from vchain.lora_files import LORA_WEIGHT_NAME

logger = logging.getLogger(__name__)

ADAPTER_NAME = "vchain"
_PREFIX = lora_files.DIFFUSERS_PREFIX


# ------------------------------------------------------------------------------------------ objectives


class FlowMatchingObjective(TrainingObjective):
    """Rectified flow as Wan is trained: `x_t = (1 - s) x0 + s noise`, predict `noise - x0` at `t = 1000 s`.

    `shift` is the scheduler's time shift (`flow_shift`), applied to the draw as at sampling, so training
    spends its steps at the noise levels sampling visits.
    """

    def __init__(self, shift: float = 1.0, num_train_timesteps: int = 1000):
        if not (math.isfinite(shift) and shift > 0):
            raise ConfigurationError(f"shift must be a positive number, got {shift!r}")
        self.shift, self.num_train_timesteps = float(shift), num_train_timesteps

    def levels(self, u: torch.Tensor) -> torch.Tensor:
        return self.shift * u / (1 + (self.shift - 1) * u)

    def corrupt(self, x0, noise, level):
        s = level.view(-1, *([1] * (x0.dim() - 1)))
        return (1 - s) * x0 + s * noise, level * self.num_train_timesteps, noise - x0


# --------------------------------------------------------------------------------------------- config


# -------------------------------------------------------------------------------------------- adapter


class LoRAAdapter(Adapter):
    """A LoRA for a generator's denoiser(s), held in memory.

    `state_dicts[i]` holds the peft LoRA weights of denoiser i (`blocks.0.attn1.to_q.lora_A.weight`, ...).
    Weights that are not finite are refused here, whoever made them (a tuning run, a file, a custom
    tuner): such an adapter would turn every sample black.
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
        for i, state_dict in enumerate(state_dicts):
            bad = next((k for k, v in state_dict.items() if not bool(torch.isfinite(v).all())), None)
            if bad is not None:
                raise NumericalError(f"the LoRA weights of denoiser {i} are not finite ({bad} holds NaN or inf)")
        self.state_dicts = state_dicts
        self.rank, self.alpha, self.target_modules = rank, float(alpha), tuple(target_modules)
        self.merge = merge
        self.report = report

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def metadata(self) -> dict:
        return {"r": self.rank, "lora_alpha": self.alpha, "target_modules": sorted(self.target_modules)}

    @contextlib.contextmanager
    def apply(self, generator: VideoGenerator) -> Iterator[None]:
        denoisers = _tunable(generator, "apply a LoRA adapter to").denoisers()
        if len(denoisers) != len(self.state_dicts):
            raise ConfigurationError(
                f"the adapter has LoRAs for {len(self.state_dicts)} denoiser(s), the generator has "
                f"{len(denoisers)}: it was tuned on another kind of model"
            )
        for i, (denoiser, state_dict) in enumerate(zip(denoisers, self.state_dicts, strict=True)):
            _check_fits(denoiser, state_dict, i)
        with contextlib.ExitStack() as stack:
            for denoiser, state_dict in zip(denoisers, self.state_dicts, strict=True):
                # A quantized weight cannot hold the sum: there the LoRA runs beside it as layers.
                apply = _merged if self.merge and not is_quantized(denoiser) else _as_peft_layers
                stack.enter_context(apply(denoiser, state_dict, self))
            yield

    def save(self, path: str | Path, format: str = "diffusers") -> Path:
        """Write the LoRA in `format`; returns the (first) file written. Each file is written atomically.

        `"diffusers"`: `path/pytorch_lora_weights.safetensors`, what `load_lora_weights` reads, alpha
        included; a second denoiser's LoRA (Wan2.2) goes to `path/transformer_2/`.
        `"comfyui"`: the original Wan code's module names (`diffusion_model.blocks.N.self_attn.q`, ...) with
        `lora_down`/`lora_up` and `alpha`, what ComfyUI and diffusers' non-diffusers Wan converter read; into
        `path` if it names a `.safetensors` file, else `path/vchain_lora.safetensors`. Wan2.2's experts go to
        two files, `<name>_high_noise.safetensors` and `<name>_low_noise.safetensors`.
        """
        lora_files.check_format(format)
        path = _io.check_path(path, "path")
        if format == "comfyui":
            converted = [lora_files.to_comfyui(state_dict, self.alpha) for state_dict in self.state_dicts]
            targets = lora_files.comfyui_paths(path, len(self.state_dicts))
            for target, tensors in zip(targets, converted, strict=True):
                lora_files.write_safetensors(target, tensors, {})
            return targets[0]
        header = lora_files.diffusers_metadata(self.metadata())
        for i, state_dict in enumerate(self.state_dicts):
            target = (path if i == 0 else path / "transformer_2") / LORA_WEIGHT_NAME
            tensors = {f"{_PREFIX}{k}": v.detach().to("cpu", torch.float32) for k, v in state_dict.items()}
            lora_files.write_safetensors(target, tensors, header)
        return path / LORA_WEIGHT_NAME

    @classmethod
    def load(cls, path: str | Path, *, merge: bool = True) -> LoRAAdapter:
        """Read a LoRA file, or a folder as `save` (or a diffusers LoRA training script) writes it.

        diffusers, ComfyUI / original-Wan and musubi-tuner layouts are read (`vchain.lora_files`); see
        `lora_files.find_lora_files` for how a folder or a Wan2.2 pair of files is found.
        """
        files = lora_files.find_lora_files(_io.check_path(path, "path"))
        state_dicts, metadata = [], {}
        for file in files:
            state_dict, metadata = lora_files.read_lora_file(file)
            state_dicts.append(state_dict)
        where = str(path)
        ranks = {v.shape[0] for sd in state_dicts for k, v in sd.items() if k.endswith("lora_A.weight")}
        rank = int(metadata.get("r") or max(ranks))
        if ranks != {rank}:
            raise VChainError(
                f"the LoRA in {where!r} says rank {rank} but its lora_A tensors have rank(s) "
                f"{sorted(ranks)}: one adapter holds one rank, and a file and its metadata must agree"
            )
        alpha = float(metadata.get("lora_alpha", rank))
        # Without metadata the targets are the LoRA'd modules' full names (peft matches them exactly).
        targets = metadata.get("target_modules") or sorted(
            {module for sd in state_dicts for module, _, _ in lora_files.lora_pairs(sd)}
        )
        try:
            return cls(state_dicts, rank=rank, alpha=alpha, target_modules=targets, merge=merge)
        except NumericalError as e:
            raise VChainError(f"the LoRA in {where!r} is unusable: {e}; tune again") from e


def _check_fits(denoiser: torch.nn.Module, state_dict: dict, index: int) -> None:
    """A LoRA for other modules or shapes is refused before any weight is touched."""
    for module_name, down, up in lora_files.lora_pairs(state_dict):
        try:
            module = denoiser.get_submodule(module_name)
            # A linear's own sizes: a 4-bit weight (bitsandbytes) is stored packed, in another shape.
            shape = (
                (module.out_features, module.in_features)
                if isinstance(module, torch.nn.Linear)
                else tuple(module.weight.shape)
            )
        except AttributeError:
            raise VChainError(
                f"the LoRA for denoiser {index} targets {module_name!r}, which {type(denoiser).__name__} "
                "does not have: it was tuned on another model"
            ) from None
        if up.dim() != 2 or down.dim() != 2 or (up.shape[0], down.shape[1]) != shape:
            raise VChainError(
                f"the LoRA for {module_name!r} has shape {tuple(up.shape)} x {tuple(down.shape)}, the "
                f"model's weight is {shape}: it was tuned on another model"
            )


@contextlib.contextmanager
def _merged(denoiser: torch.nn.Module, state_dict: dict, adapter: LoRAAdapter) -> Iterator[None]:
    """Fold W += scale * B @ A into each target weight; copy the snapshot back on exit (bit-exact).

    The snapshot of a GPU weight lives in pinned host memory: the device holds one copy of the model,
    and the copy back is fast.
    """
    snapshot: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for module_name, down, up in lora_files.lora_pairs(state_dict):
                weight = denoiser.get_submodule(module_name).weight
                keep = torch.empty(weight.shape, dtype=weight.dtype, device="cpu", pin_memory=weight.is_cuda)
                snapshot[module_name] = keep.copy_(weight)
                delta = (up.to(weight.device, torch.float32) @ down.to(weight.device, torch.float32)) * adapter.scale
                weight.copy_((weight.float() + delta).to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for module_name, original in snapshot.items():
                denoiser.get_submodule(module_name).weight.copy_(original, non_blocking=True)
            if any(t.is_pinned() for t in snapshot.values()):
                torch.cuda.synchronize()  # the snapshot must not be freed while the copies run


@contextlib.contextmanager
def _as_peft_layers(denoiser: torch.nn.Module, state_dict: dict, adapter: LoRAAdapter) -> Iterator[None]:
    """Add the LoRA as peft layers; remove them (wrappers included) on exit."""
    from peft import LoraConfig, set_peft_model_state_dict

    state = _module_state(denoiser)
    config = LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, target_modules=list(adapter.target_modules))
    try:
        _add_adapter(denoiser, config)
        set_peft_model_state_dict(denoiser, state_dict, adapter_name=ADAPTER_NAME)
        yield
    finally:
        _remove_adapter(denoiser)
        _restore_module_state(denoiser, state)


# ---------------------------------------------------------------------------------------------- tuner


class LoRATuner(Tuner):
    """Sparse inference-time tuning: a LoRA on any `TunableGenerator` from a few (keyframe, caption) pairs.

    Args:
        config: a `LoRAConfig`, or its fields as keywords (`LoRATuner(rank=16, steps=300)`).
    """

    def __init__(self, config: LoRAConfig | None = None, **fields: Any):
        if config is not None and fields:
            raise ConfigurationError("pass either config= or its fields as keywords, not both")
        if config is not None and not isinstance(config, LoRAConfig):
            raise ConfigurationError(f"config must be a LoRAConfig, got {type(config).__name__}")
        self.config = config or self.config_class(**fields)
        self._progress: dict[str, Any] = {}
        self._probed: set[tuple] = set()

    config_class: type[LoRAConfig] = LoRAConfig

    def describe(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "config": self.config.to_dict()}

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options for the bar over tuning steps (`disable=True` hides it), as in diffusers."""
        self._progress = dict(kwargs)

    def load_adapter(self, path: str | Path) -> LoRAAdapter:
        """A saved LoRA: a folder `save` wrote, or a diffusers, ComfyUI / original-Wan or musubi-tuner file."""
        return LoRAAdapter.load(path, merge=self.config.merge_for_sampling)

    def check(self, generator: VideoGenerator) -> None:
        """The generator is tunable, the targets match its linears, the training size is one it takes, and
        one training step runs on it as loaded (dtypes, device, memory).

        The step is a probe: a grey keyframe at the training size, one caption, the configured LoRA and
        checkpointing, no compilation; the model is left exactly as it was. It costs about one tuning step
        and is taken once per generator and settings, so a pipeline finds a pair that cannot tune before
        it pays for reasoning.
        """
        generator = _tunable(generator, "tune")
        targets = self._targets(generator)
        height, width = self.config.height or generator.height, self.config.width or generator.width
        denoisers = generator.denoisers()
        signature = (
            id(generator),
            height,
            width,
            self.config,
            tuple((input_dtype(d), str(next(d.parameters()).device)) for d in denoisers),
        )
        if signature in self._probed:
            return
        probe = self.config.replace(steps=1, log_every=1, batch_size=1, compile=False)
        try:
            latents = generator.encode_keyframes(
                [Image.new("RGB", (width, height), (128, 128, 128))], height=height, width=width
            ).float()
            context = generator.encode_captions(["a still frame"])
            self._train(probe, generator, denoisers, targets, latents, context, TuningReport(), progress=False)
        except (StageError, RuntimeError) as e:
            raise ConfigurationError(
                f"{type(self).__name__} cannot run a training step on {type(generator).__name__} as loaded "
                f"(compute dtype(s) {[str(d).removeprefix('torch.') for d, _ in signature[-1]]}, "
                f"{height}x{width}): {e}"
            ) from e
        self._probed.add(signature)

    def _targets(self, generator: TunableGenerator) -> tuple[str, ...]:
        config = self.config
        generator.check_frame(config.height or generator.height, config.width or generator.width)
        targets = config.target_modules or generator.lora_targets
        if not targets:
            raise ConfigurationError(f"{type(generator).__name__} names no lora_targets; set target_modules")
        for denoiser in generator.denoisers():
            _check_targets(denoiser, targets, config.rank)
            if config.compile:
                repeated_blocks(denoiser)
        return tuple(targets)

    def tune(self, generator: VideoGenerator, pairs: Sequence[tuple[Image.Image, str]]) -> LoRAAdapter:
        generator = _tunable(generator, "tune")
        config = self.config
        images, captions = check_pairs(pairs)
        targets = self._targets(generator)
        height, width = config.height or generator.height, config.width or generator.width
        denoisers = generator.denoisers()
        report = TuningReport(steps=config.steps, keyframes=len(images))

        start = time.perf_counter()
        latents = generator.encode_keyframes(images, height=height, width=width).float()
        context = generator.encode_captions(captions)
        report.seconds["preprocess"] = round(time.perf_counter() - start, 3)

        start = time.perf_counter()
        state_dicts = self._train(config, generator, denoisers, targets, latents, context, report)
        report.seconds["fine_tune"] = round(time.perf_counter() - start, 3)
        try:
            return LoRAAdapter(
                state_dicts,
                rank=config.rank,
                alpha=config.alpha,
                target_modules=targets,
                merge=config.merge_for_sampling and not any(is_quantized(d) for d in denoisers),
                report=report,
            )
        except NumericalError as e:  # the last steps blew up after the last loss read
            raise StageError(
                f"{e} after step {config.steps}; lower learning_rate (now {config.learning_rate})",
                stage="tuning",
                step="fine_tune",
            ) from e

    def _train(
        self, config: LoRAConfig, generator, denoisers, targets, latents, context, report, *, progress: bool = True
    ) -> list[dict]:
        from peft.utils import get_peft_model_state_dict
        from tqdm.auto import tqdm

        device = latents.device
        dtypes = [input_dtype(d) for d in denoisers]  # read once: walking modules is slow
        saved = [_module_state(d) for d in denoisers]
        objective = generator.training_objective()
        schedule = _Schedule(config, len(latents), objective, generator.denoiser_for, device)
        step = 0
        compiled, held = contextlib.ExitStack(), contextlib.ExitStack()
        try:
            for denoiser in denoisers:
                held.enter_context(_held_on_device(denoiser))
            params = []
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(config.seed)  # peft draws LoRA init from the global RNG
                for denoiser in denoisers:
                    _add_adapter(denoiser, config.lora_config(targets))
                    denoiser.train()
                    if config.gradient_checkpointing and hasattr(denoiser, "enable_gradient_checkpointing"):
                        denoiser.enable_gradient_checkpointing()
                    for name, param in denoiser.named_parameters():
                        if f".{ADAPTER_NAME}." in name:  # not the weights of a LoRA the model already holds
                            param.data = param.data.float()
                            params.append(param)
                        else:
                            param.requires_grad_(False)
            report.trainable_parameters = sum(p.numel() for p in params)
            if config.compile:
                for denoiser in denoisers:
                    compiled.enter_context(compiled_blocks(denoiser, backend=config.compile_backend))
            fused = config.fused_adamw if config.fused_adamw is not None else device.type == "cuda"
            optimizer = torch.optim.AdamW(
                params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused
            )
            noise_rng = torch.Generator(device=device).manual_seed(config.seed)
            running = torch.zeros((), device=device)
            first_bad = torch.full((), -1, device=device, dtype=torch.long)
            bar = {"desc": "tuning", "unit": "step", "leave": False, **self._progress}
            progress = tqdm(range(1, config.steps + 1), **(bar if progress else {**bar, "disable": True}))
            scale = 1.0 / (latents[0].numel() * schedule.batch_size)  # the mean over the batch's elements
            started = time.perf_counter()
            for step in progress:
                terms = []
                for which, rows, level in schedule.groups(step - 1):
                    x0 = latents[rows]
                    noise = torch.randn(x0.shape, generator=noise_rng, device=device, dtype=x0.dtype)
                    noisy, timestep, target = objective.corrupt(x0, noise, level)
                    prediction = generator.predict(
                        denoisers[which],
                        noisy.to(dtypes[which]),
                        timestep,
                        _take(context, rows, dtypes[which]),
                    )
                    terms.append(torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="sum"))
                loss = (terms[0] if len(terms) == 1 else torch.stack(terms).sum()) * scale
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                detached = loss.detach()
                running += detached
                # The first step whose loss is not finite, kept on the device until the next read.
                first_bad = torch.where(torch.isfinite(detached) | (first_bad >= 0), first_bad, step)
                if step % config.log_every == 0 or step == config.steps:
                    count = (step - 1) % config.log_every + 1
                    mean = (running / count).item()  # the one wait for the device, every log_every steps
                    running.zero_()
                    self._check_finite(config, int(first_bad.item()), mean, step)
                    report.losses.append((step, mean))
                    report.timeline.append((step, time.perf_counter() - started))
                    progress.set_postfix(loss=f"{mean:.4f}")
            return [
                {k: v.detach().clone() for k, v in get_peft_model_state_dict(d, adapter_name=ADAPTER_NAME).items()}
                for d in denoisers
            ]
        except NumericalError as e:
            raise StageError(str(e), stage="tuning", step="fine_tune") from e
        except torch.OutOfMemoryError as e:
            raise StageError(
                f"out of memory at step {step}: {e}; try gradient_checkpointing=True "
                "(--gradient-checkpointing), a smaller batch_size, or a smaller training size",
                stage="tuning",
                step="fine_tune",
            ) from e
        except RuntimeError as e:
            raise StageError(
                f"tuning failed at step {step} (learning_rate {config.learning_rate}): {type(e).__name__}: {e}",
                stage="tuning",
                step="fine_tune",
            ) from e
        finally:
            compiled.close()
            for denoiser, state in zip(denoisers, saved, strict=True):
                _remove_adapter(denoiser)
                _restore_module_state(denoiser, state)
            held.close()

    @staticmethod
    def _check_finite(config: LoRAConfig, first_bad: int, mean: float, step: int) -> None:
        if first_bad >= 0 or not math.isfinite(mean):
            at = first_bad if first_bad >= 0 else step
            value = mean if not math.isfinite(mean) else "non-finite"
            raise NumericalError(
                f"the loss became {value} at step {at} (read every {config.log_every}); lower learning_rate "
                f"(now {config.learning_rate}) or check the keyframes"
            )


class _Schedule:
    """Everything random about the steps, drawn on the host up front and moved to the device once.

    Keyframes are visited in shuffled rounds (each seen equally often); noise levels follow the
    weighting scheme and the objective's mapping; each step's batch is ordered by the denoiser that
    serves its levels, so a step is a few contiguous slices and routing never reads the device. A
    step's keyframes are a plain slice where they are consecutive (always with one per step), else a
    view of the index tensor: either way no copy and no kernel before the denoiser runs.
    """

    def __init__(self, config: LoRAConfig, n: int, objective: TrainingObjective, denoiser_for, device):
        self.batch_size = min(config.batch_size, n)
        rng = torch.Generator().manual_seed(config.seed)
        order: list[int] = []
        while len(order) < config.steps * self.batch_size:
            order += torch.randperm(n, generator=rng).tolist()
        shape = (config.steps, self.batch_size)
        if config.weighting_scheme == "logit_normal":
            u = torch.sigmoid(torch.randn(shape, generator=rng) * config.logit_std + config.logit_mean)
        else:
            u = torch.rand(shape, generator=rng)
        levels = objective.levels(u.double()).float().tolist()
        rows, groups = [], []
        for step in range(config.steps):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            served = sorted((denoiser_for(level), i, level) for i, level in zip(batch, levels[step], strict=True))
            rows.append([(i, level) for _, i, level in served])
            spans, start = [], 0
            for which in dict.fromkeys(w for w, _, _ in served):
                count = sum(1 for w, _, _ in served if w == which)
                spans.append((which, start, start + count))
                start += count
            groups.append(spans)
        index = torch.tensor([[i for i, _ in row] for row in rows], device=device)
        levels = torch.tensor([[lv for _, lv in row] for row in rows], device=device)
        self._steps = []
        for step, spans in enumerate(groups):
            parts = []
            for which, start, end in spans:
                ids = [i for i, _ in rows[step][start:end]]
                consecutive = ids == list(range(ids[0], ids[0] + len(ids)))
                keyframes = slice(ids[0], ids[0] + len(ids)) if consecutive else index[step, start:end]
                parts.append((which, keyframes, levels[step, start:end]))
            self._steps.append(parts)

    def groups(self, step: int) -> list[tuple[int, slice | torch.Tensor, torch.Tensor]]:
        """(denoiser index, keyframe rows, levels) per denoiser that serves part of step `step`."""
        return self._steps[step]


@contextlib.contextmanager
def compiled_blocks(module: torch.nn.Module, **options: Any) -> Iterator[None]:
    """Regional compilation: `torch.compile(**options)` on each repeated block of `module`, undone on exit.

    The blocks are diffusers' `_repeated_blocks` (compiled by its `compile_repeated_blocks`), else the
    members of the module's longest `ModuleList` of one class. Blocks of one class share one compiled
    graph, and dynamo keeps it on the class's code across entries: a later entry with the same shapes,
    or after weights changed in place (a merged adapter), runs it without recompiling.
    """
    compiled_before = {id(m) for m in module.modules() if m._compiled_call_impl is not None}
    try:
        if getattr(module, "_repeated_blocks", None):
            module.compile_repeated_blocks(**options)
        else:
            for block in repeated_blocks(module):
                block.compile(**options)
        yield
    finally:
        # `nn.Module.compile` keeps the compiled callable in `_compiled_call_impl`; clearing it restores
        # the eager call (torch offers no public undo).
        for m in module.modules():
            if id(m) not in compiled_before:
                m._compiled_call_impl = None


def repeated_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks `compiled_blocks` compiles; `ConfigurationError` for a module without any."""
    names = getattr(module, "_repeated_blocks", None)
    if names:
        return [m for m in module.modules() if type(m).__name__ in names]
    lists = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList) and len({type(b) for b in m}) == 1]
    if not lists:
        raise ConfigurationError(
            f"{type(module).__name__} has no list of repeated blocks to compile; leave compile off"
        )
    return list(max(lists, key=len))


def input_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of the tensors that enter `module`: the compute dtype of its layers, not of its first parameter.

    `from_pretrained(torch_dtype=torch.bfloat16)` keeps the modules a class lists in `_keep_in_fp32_modules`
    (Wan: norms, the time embedder, `scale_shift_table`) in float32, and such a table can be the first
    parameter. diffusers' own rule (`ModelMixin.dtype`, which its pipelines cast latents and prompt
    embeddings to) skips those modules and honours layerwise casting; any other module gets the same rule
    here.
    """
    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    kept = getattr(module, "_keep_in_fp32_modules", None) or ()
    floating = [(n, p.dtype) for n, p in module.named_parameters() if p.is_floating_point()]
    for name, param_dtype in floating:
        if not any(k in name.split(".") for k in kept):
            return param_dtype
    return floating[0][1] if floating else torch.float32


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether `module` holds quantized weights: diffusers marks a model it quantized while loading
    (`is_quantized`); torchao's `quantize_` leaves tensor subclasses, bitsandbytes its `Params4bit`."""
    if getattr(module, "is_quantized", False):
        return True
    return any(type(p) not in (torch.Tensor, torch.nn.Parameter) for p in module.parameters())


def _take(context, rows: slice | torch.Tensor, dtype: torch.dtype):
    if isinstance(context, dict):
        return {k: v[rows].to(dtype) if v.is_floating_point() else v[rows] for k, v in context.items()}
    return context[rows].to(dtype)


def _tunable(generator: object, action: str) -> TunableGenerator:
    if not isinstance(generator, TunableGenerator):
        raise ConfigurationError(
            f"cannot {action} {type(generator).__name__}: the generator must implement "
            "vchain.interfaces.TunableGenerator (WanVideoGenerator and CogVideoXVideoGenerator do)"
        )
    return generator


def _check_targets(denoiser: torch.nn.Module, targets: Sequence[str], rank: int) -> None:
    names = _linear_names(denoiser)
    unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unmatched:
        examples = sorted({n.split(".", 2)[-1] for n in names})[:8]
        raise ConfigurationError(
            f"target_modules {unmatched} match no linear layer of {type(denoiser).__name__}; "
            f"its linears are named like {examples}"
        )
    # A rank above a layer's narrower side adds parameters and no expressiveness: a mistake, not a choice.
    modules = dict(denoiser.named_modules())
    # A linear that already holds a LoRA is measured by its base layer.
    linears = {n: modules[n].get_base_layer() if hasattr(modules[n], "get_base_layer") else modules[n] for n in names}
    width, name = min(
        (min(m.in_features, m.out_features), n)
        for n, m in linears.items()
        if any(n == t or n.endswith(f".{t}") for t in targets)
    )
    if rank > width:
        raise ConfigurationError(
            f"rank {rank} is above the width of the targeted layers of {type(denoiser).__name__} (the narrowest, "
            f"{name}, is {width} wide); a LoRA's rank can be at most min(in, out): choose rank <= {width}"
        )


def _linear_names(module: torch.nn.Module) -> list[str]:
    """The names of `module`'s linear layers; a linear that already holds a LoRA (peft's wrapper, e.g. a
    LoRA loaded with diffusers' `load_lora_weights`) counts under its own name, not its parts'."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = dict(module.named_modules())
    wrapped = {name for name, m in modules.items() if isinstance(m, BaseTunerLayer)}
    # A wrapper's parts are `<name>.base_layer` and `<name>.lora_A.<adapter>` (lora_B likewise).
    parts = {n for n in modules if n.rsplit(".", 1)[0] in wrapped or n.rsplit(".", 2)[0] in wrapped}
    names = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear) and n not in parts]
    return names + [n for n in wrapped if isinstance(modules[n].get_base_layer(), torch.nn.Linear)]


def check_pairs(pairs) -> tuple[list[Image.Image], list[str]]:
    """Images (PIL or paths) and captions from (image, caption) pairs, each checked and named on error."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ConfigurationError(f"pairs must be a non-empty list of (image, caption) pairs, got {pairs!r:.80}")
    images, captions = [], []
    for i, pair in enumerate(pairs):
        try:
            image, caption = pair
        except (TypeError, ValueError):
            raise ConfigurationError(f"pairs[{i}] must be an (image, caption) pair, got {pair!r:.80}") from None
        if isinstance(image, (str, Path)):
            try:
                image = read_image(image)
            except UnreadableImageError as e:
                raise ConfigurationError(f"pairs[{i}] image cannot be read: {e}") from e
        if not isinstance(image, Image.Image):
            raise ConfigurationError(f"pairs[{i}] image must be a PIL image or a path, got {type(image).__name__}")
        if not isinstance(caption, str) or not caption.strip():
            raise ConfigurationError(f"pairs[{i}] caption must be a non-empty string, got {caption!r}")
        images.append(image.convert("RGB"))
        captions.append(caption)
    return images, captions


def _add_adapter(denoiser: torch.nn.Module, config) -> None:
    """Inject vchain's LoRA (peft `config`) as an adapter active on top of those already active in the model
    (e.g. a step-distillation LoRA loaded with diffusers' `load_lora_weights`): peft would make it the only one."""
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]
    active = {id(m): list(m.active_adapters) for m in layers}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # the point: a second adapter
        inject_adapter_in_model(config, denoiser, adapter_name=ADAPTER_NAME)
    _refresh_offloading(denoiser)
    if not layers:
        return
    for module in denoiser.modules():
        if isinstance(module, BaseTunerLayer):
            mine = [ADAPTER_NAME] if ADAPTER_NAME in getattr(module, "lora_A", {}) else []
            module.set_adapter([*active.get(id(module), []), *mine])


def _remove_adapter(denoiser: torch.nn.Module) -> None:
    """Take vchain's adapter off. When it is the only one, peft's wrapper layers go too, so the module
    tree (and the cost of every later forward) is exactly the base model's again."""
    from diffusers.utils.peft_utils import delete_adapter_layers, recurse_remove_peft_layers

    adapters = getattr(denoiser, "peft_config", None) or {}
    if ADAPTER_NAME not in adapters:
        return
    if set(adapters) == {ADAPTER_NAME}:
        recurse_remove_peft_layers(denoiser)
        del denoiser.peft_config
    else:
        delete_adapter_layers(denoiser, ADAPTER_NAME)
        adapters.pop(ADAPTER_NAME, None)  # diffusers' helper pops it already when it loaded a LoRA
    _refresh_offloading(denoiser)


@contextlib.contextmanager
def _held_on_device(denoiser: torch.nn.Module) -> Iterator[None]:
    """A group-offloaded denoiser whole on its device for the duration, its offloading put back after.

    diffusers' group offloading moves a block's weights in forward hooks and back right after the block ran,
    so the backward pass would find them gone: tuning holds the denoiser as model offloading would.
    """
    from diffusers.hooks import HookRegistry
    from diffusers.hooks import group_offloading as offloading

    hook = offloading._get_top_level_group_offload_hook(denoiser)
    if hook is None:
        yield
        return
    config = hook.config
    registry = HookRegistry.check_if_exists_or_initialize(denoiser)
    for name in (
        offloading._GROUP_OFFLOADING,
        offloading._LAYER_EXECUTION_TRACKER,
        offloading._LAZY_PREFETCH_GROUP_OFFLOADING,
    ):
        registry.remove_hook(name, recurse=True)
    denoiser.to(config.onload_device)
    try:
        yield
    finally:
        denoiser.to(config.offload_device)
        offloading._apply_group_offloading(denoiser, config)


def _refresh_offloading(denoiser: torch.nn.Module) -> None:
    """diffusers' group offloading hooks list the tensors they move when applied: after layers were added
    or removed they are applied again (as diffusers does when it loads a LoRA), else the LoRA's own
    weights would be left behind on the CPU."""
    from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading

    _maybe_remove_and_reapply_group_offloading(denoiser)


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
