"""What vchain's benchmarks share: the real Wan shapes, random-initialised pipelines of them, the analytic
FLOPs, interleaved timing with medians and spread, peak memory, and the header every figure carries.

Models are random-initialised from the released configurations (same shapes and FLOPs as the released
weights, no download): timings and memory transfer, output quality does not.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets: the floor a time is compared to.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}

WAN21_1_3B = dict(
    attention_head_dim=128,
    num_attention_heads=12,
    num_layers=30,
    ffn_dim=8960,
    text_dim=4096,
    freq_dim=256,
    in_channels=16,
    out_channels=16,
    patch_size=(1, 2, 2),
    qk_norm="rms_norm_across_heads",
    cross_attn_norm=True,
    eps=1e-6,
)
WAN21_14B = {**WAN21_1_3B, "num_attention_heads": 40, "num_layers": 40, "ffn_dim": 13824}
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    d_kv=64,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
)
# 1.3B's block count and heads at a narrow width, with a small text encoder: on a CPU, a step whose
# cost is dispatching ops rather than arithmetic, as a GPU step of the real model is.
NARROW_1_3B = {**WAN21_1_3B, "attention_head_dim": 16, "ffn_dim": 512, "text_dim": 64, "freq_dim": 32}
NARROW_UMT5 = dict(
    vocab_size=256,
    d_model=64,
    d_ff=128,
    num_layers=2,
    num_heads=2,
    d_kv=32,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=8,
)


@dataclass(frozen=True)
class Preset:
    """A model and the sizes a benchmark runs it at."""

    transformer: dict | None  # None: vchain.testing's tiny Wan
    text_encoder: dict | None
    height: int
    width: int
    num_frames: int
    steps: int
    tune_steps: int
    keyframes: int = 5
    text_tokens: int = 512
    gradient_checkpointing: bool = False
    dtype: str = "bfloat16"
    note: str = ""

    def sampling(self, steps: int | None = None) -> dict:
        """`WanSamplingConfig` fields for the preset's video, with `steps` denoising steps (default: its own)."""
        return dict(
            height=self.height,
            width=self.width,
            num_frames=self.num_frames,
            num_inference_steps=steps or self.steps,
            max_sequence_length=self.text_tokens,
        )


PRESETS = {
    "cpu-tiny": Preset(
        None,
        None,
        32,
        32,
        5,
        3,
        20,
        keyframes=3,
        text_tokens=32,
        note="tiny random Wan in bfloat16 as from_pretrained loads it (CI: the script cannot rot)",
    ),
    "cpu-small": Preset(
        NARROW_1_3B,
        NARROW_UMT5,
        64,
        64,
        5,
        8,
        60,
        keyframes=5,
        text_tokens=64,
        dtype="float32",
        note="Wan2.1-1.3B's 30 blocks and 12 heads at width 192, small UMT5 and VAE; CPU",
    ),
    "wan2.1-1.3b": Preset(WAN21_1_3B, UMT5_XXL, 480, 832, 81, 50, 300, note="Wan2.1-T2V-1.3B shapes"),
    "wan2.1-14b": Preset(
        WAN21_14B,
        UMT5_XXL,
        480,
        832,
        81,
        50,
        300,
        gradient_checkpointing=True,
        note="Wan2.1-T2V-14B shapes, gradient checkpointing",
    ),
}


# ------------------------------------------------------------------------------------------------ FLOPs


def video_tokens(height: int, width: int, frames: int) -> int:
    """Transformer tokens of a Wan video: 4x temporal and 8x spatial VAE compression, 2x2 patches."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def transformer_flops(config: dict, video_tokens: int, text_tokens: int) -> float:
    """Forward FLOPs of a Wan transformer (matmuls only; norms, RoPE and modulation are negligible)."""
    linear, attention = flop_parts(config, video_tokens, text_tokens)
    return linear + attention


def flop_parts(config: dict, video_tokens: int, text_tokens: int) -> tuple[float, float]:
    """(linear layers, attention products QK^T and PV) of one forward."""
    d = config["attention_head_dim"] * config["num_attention_heads"]
    n, t = video_tokens, text_tokens
    linear = 4 * 2 * n * d * d + 2 * 2 * n * d * d + 2 * 2 * t * d * d + 2 * 2 * n * d * config["ffn_dim"]
    attention = 2 * 2 * n * n * d + 2 * 2 * n * t * d
    return config["num_layers"] * linear, config["num_layers"] * attention


def tuning_step_flops(config: dict, video_tokens: int, text_tokens: int, checkpointing: bool) -> float:
    """FLOPs of one keyframe's training step with the base frozen: the forward, a backward that computes
    input gradients only (as many FLOPs as the linears' forward; the attention's backward 2.5x its
    forward, FlashAttention's recomputation included), and with checkpointing one more forward. The
    LoRA's own products (rank 16) are under 1% and left out: about 2.1x a forward, 3.1x with checkpointing."""
    linear, attention = flop_parts(config, video_tokens, text_tokens)
    forward = linear + attention
    return forward + linear + 2.5 * attention + (forward if checkpointing else 0.0)


# ----------------------------------------------------------------------------------------------- models


def build_pipeline(preset: Preset, device: str):
    """A WanPipeline with random weights of the preset's shapes (the text encoder too), progress bars off."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vchain.testing import tiny_tokenizer, tiny_wan_pipeline

    dtype = getattr(torch, preset.dtype)
    if preset.transformer is None:
        pipeline = tiny_wan_pipeline()
        as_loaded(pipeline.transformer, dtype)
        pipeline.text_encoder.to(dtype)
        return pipeline.to(device)
    torch.manual_seed(0)
    with torch.device(device):
        transformer = as_loaded(WanTransformer3DModel(**preset.transformer), dtype).eval()
        if preset.text_encoder is UMT5_XXL:
            vae = AutoencoderKLWan()  # the defaults are Wan2.1's VAE
        else:
            vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
        vae = vae.eval()  # float32, as Wan's authors recommend
        text_encoder = UMT5EncoderModel(UMT5Config(**preset.text_encoder)).to(dtype).eval()
    # Token ids do not change the cost: a small tokenizer padding to the same length is equivalent.
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipeline = WanPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def as_loaded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` in `dtype` as `from_pretrained(torch_dtype=dtype)` leaves it: the parameters of the modules
    its class keeps in float32 (Wan: norms, RoPE, the time embedder) stay float32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        param.data = param.data.to(torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return model


# ----------------------------------------------------------------------------------------------- timing


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def spread(values: list[float], digits: int = 4) -> dict:
    """Median, min and max of repeats (and the repeats themselves)."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
        "repeats": [round(v, digits) for v in values],
    }


def interleaved(variants: dict[str, Callable[[], object]], *, rounds: int, warmup: int, device: str) -> dict:
    """Seconds of each variant over `rounds` interleaved rounds, after `warmup` untimed calls of each.

    Rounds alternate the order (A B C, then C B A, ...), so a drift of the machine (clocks, caches,
    other load) falls on every variant alike. Returns {name: [seconds per round]}.
    """
    for _ in range(warmup):
        for run in variants.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            sync(device)
            start = time.perf_counter()
            variants[name]()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


class PeakMemory:
    """Peak memory of a block: `torch.cuda.max_memory_allocated` on CUDA; on a CPU the process's peak
    resident set (VmHWM), reset at entry through /proc/self/clear_refs (Linux)."""

    def __init__(self, device: str):
        self.device = str(device)
        self.bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif os.path.exists("/proc/self/clear_refs"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak RSS to the current RSS
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated()
        elif os.path.exists("/proc/self/status"):
            with open("/proc/self/status") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            self.bytes = kib * 1024

    @property
    def gib(self) -> float | None:
        return None if self.bytes is None else round(self.bytes / 2**30, 3)

    @property
    def kind(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.device.startswith("cuda") else "peak RSS (VmHWM)"


def environment(device: str, script: str, argv: list[str] | None = None) -> dict:
    """What every figure is printed with: the command (`script` run with `argv`, default the process's
    arguments), the device, the versions and the date."""
    import diffusers
    import peft

    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    argv = [f"benchmarks/{os.path.basename(script)}", *(sys.argv[1:] if argv is None else argv)]
    return {
        "command": "python " + shlex.join(argv),
        "device": name,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


# ------------------------------------------------------------------------------------- host-device waits

# Ops that make a GPU step wait: a value read on the host (`.item()`, `bool()`, `float()`), an output
# whose size depends on the data, and a tensor made from host data (a host-to-device copy on a GPU).
WAITING_OPS = frozenset(
    {
        "aten::_local_scalar_dense",
        "aten::nonzero",
        "aten::masked_select",
        "aten::_unique2",
        "aten::unique_consecutive",
        "aten::unique_dim",
        "aten::lift_fresh",
    }
)


class WaitingOps(TorchDispatchMode):
    """Counts the ATen ops run inside it (`ops`: on a GPU, about the kernel launches) and records each op
    of `WAITING_OPS` with its innermost caller outside torch (or in torch.optim), as (op, file, function)."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.events: list[tuple[str, str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func._schema.name in WAITING_OPS:
            frames = traceback.extract_stack()[:-1]
            caller = next(f for f in reversed(frames) if "/torch/" not in f.filename or "/torch/optim/" in f.filename)
            self.events.append((func._schema.name, caller.filename, caller.name))
        return func(*args, **(kwargs or {}))
