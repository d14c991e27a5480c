"""Time sparse tuning and sampling, vchain against stock diffusers, on random weights of real Wan shapes.

    python benchmarks/bench_wan.py --preset cpu-tiny            # seconds on a CPU; CI runs it
    python benchmarks/bench_wan.py --preset wan2.1-1.3b         # one H100/H200: 81x480x832, 50 steps, CFG
    python benchmarks/bench_wan.py --preset wan2.1-14b --skip-sampling   # 14B tuning memory and time

The models are randomly initialised from the real configurations (same shapes, same FLOPs as the
released weights), so no download is needed; timings transfer, output quality does not. Every figure
comes from one process: tuning (pre-process, per 100 steps, total, peak memory), sampling through vchain
and through stock `WanPipeline.__call__` on the same components, and each stage's analytic FLOPs with
its distance from the device's peak. Results print as JSON and a markdown table (`--out` writes both).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, for the distance to the floor.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass
class Preset:
    transformer: dict
    height: int
    width: int
    num_frames: int
    steps: int
    tune_steps: int
    keyframes: int = 5
    text_tokens: int = 512
    gradient_checkpointing: bool = False
    tiny: bool = False


WAN21_1_3B = dict(attention_head_dim=128, num_attention_heads=12, num_layers=30, ffn_dim=8960, text_dim=4096,
                  freq_dim=256, in_channels=16, out_channels=16, patch_size=(1, 2, 2),
                  qk_norm="rms_norm_across_heads", cross_attn_norm=True, eps=1e-6)  # fmt: skip
WAN21_14B = {**WAN21_1_3B, "num_attention_heads": 40, "num_layers": 40, "ffn_dim": 13824}
PRESETS = {
    "cpu-tiny": Preset({}, 32, 32, 5, 2, 10, keyframes=3, text_tokens=32, tiny=True),
    "wan2.1-1.3b": Preset(WAN21_1_3B, 480, 832, 81, 50, 300),
    "wan2.1-14b": Preset(WAN21_14B, 480, 832, 81, 50, 300, gradient_checkpointing=True),
}


def transformer_flops(config: dict, video_tokens: int, text_tokens: int) -> float:
    """Forward FLOPs of a Wan transformer (matmuls only; norms, RoPE and modulation are negligible)."""
    d = config["attention_head_dim"] * config["num_attention_heads"]
    n, t = video_tokens, text_tokens
    self_attention = 4 * 2 * n * d * d + 2 * 2 * n * n * d
    cross_attention = 2 * 2 * n * d * d + 2 * 2 * t * d * d + 2 * 2 * n * t * d
    ffn = 2 * 2 * n * d * config["ffn_dim"]
    return config["num_layers"] * (self_attention + cross_attention + ffn)


def video_tokens(height: int, width: int, frames: int) -> int:
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def build(preset: Preset, device: str, dtype: torch.dtype):
    """A WanPipeline with random weights of the preset's shapes (the text encoder too)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vchain.testing import tiny_tokenizer, tiny_wan_pipeline

    if preset.tiny:
        return tiny_wan_pipeline().to(device)
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**preset.transformer).to(dtype)
        vae = AutoencoderKLWan().to(torch.float32)  # the defaults are Wan2.1's VAE
        text_encoder = UMT5EncoderModel(
            UMT5Config(vocab_size=256384, d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64,
                       feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
        ).to(dtype)  # fmt: skip
    # Token ids do not change the cost: a small tokenizer padding to the same 512 tokens is equivalent.
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tune-steps", type=int, default=None, help="override the preset's (default schedule)")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and results.md here")
    args = parser.parse_args(argv)

    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
    from vchain.testing import draw_image

    preset = PRESETS[args.preset]
    device = args.device
    dtype = torch.float32 if preset.tiny else torch.bfloat16
    pipe = build(preset, device, dtype)
    config = dict(pipe.transformer.config)
    sampling = dict(height=preset.height, width=preset.width, num_frames=preset.num_frames,
                    num_inference_steps=preset.steps, max_sequence_length=preset.text_tokens)  # fmt: skip
    generator = WanVideoGenerator(pipe, **sampling)
    pairs = [(draw_image(f"keyframe {i}", preset.width, preset.height), f"keyframe {i} of the chain")
             for i in range(preset.keyframes)]  # fmt: skip
    steps = args.tune_steps or preset.tune_steps
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    results: dict = {"preset": args.preset, "device": name, "date": time.strftime("%Y-%m-%d"),
                     "torch": torch.__version__, "steps": steps, "keyframes": preset.keyframes}  # fmt: skip

    # -- tuning
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    tuner = WanLoRATuner(steps=steps, gradient_checkpointing=preset.gradient_checkpointing, log_every=max(1, steps))
    sync(device)
    start = time.perf_counter()
    adapter = tuner.tune(generator, pairs)
    sync(device)
    tune_total = time.perf_counter() - start
    keyframe_tokens = video_tokens(preset.height, preset.width, 1)
    step_flops = 3 * transformer_flops(config, keyframe_tokens, preset.text_tokens)  # forward + backward
    fine_tune = adapter.report.seconds["fine_tune"]
    results["tuning"] = {
        "preprocess_s": adapter.report.seconds["preprocess"],
        "fine_tune_s": fine_tune,
        "total_s": round(tune_total, 3),
        "per_100_steps_s": round(100 * fine_tune / steps, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None,
        "trainable_parameters": adapter.report.trainable_parameters,
        "flops": steps * step_flops,
    }

    # -- sampling, vchain (adapter applied) and stock diffusers (same components, no adapter)
    if not args.skip_sampling:
        sample_flops = (
            2
            * preset.steps
            * transformer_flops(
                config, video_tokens(preset.height, preset.width, preset.num_frames), preset.text_tokens
            )
        )
        for label, run in (
            ("vchain", lambda: _vchain_sample(generator, adapter)),
            (
                "diffusers",
                lambda: pipe(
                    "keyframe 0 of the chain",
                    generator=torch.Generator().manual_seed(0),
                    output_type="np",
                    **sampling,
                ),
            ),
        ):
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            results[f"sampling_{label}"] = {
                "total_s": round(time.perf_counter() - start, 3),
                "flops": sample_flops,
            }
        vchain_s, diffusers_s = (
            results["sampling_vchain"]["total_s"],
            results["sampling_diffusers"]["total_s"],
        )
        results["ratios"] = {
            "vchain_over_diffusers": round(vchain_s / diffusers_s, 3),
            "tuning_over_sampling": round(tune_total / vchain_s, 3),
        }
    if peak:
        for key in ("tuning", "sampling_vchain", "sampling_diffusers"):
            if key in results:
                seconds = results[key].get("fine_tune_s") or results[key]["total_s"]
                floor = results[key]["flops"] / (peak * 1e12)
                results[key]["floor_s"] = round(floor, 3)
                results[key]["x_floor"] = round(seconds / floor, 2)

    print(json.dumps(results, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        (args.out / "results.md").write_text(_table(results))
    return results


def _vchain_sample(generator, adapter):
    with adapter.apply(generator):
        return generator.sample("keyframe 0 of the chain", seed=0)


def _table(results: dict) -> str:
    rows = ["| figure | value |", "|---|---|"]
    for section, values in results.items():
        if isinstance(values, dict):
            rows += [f"| {section}.{k} | {v} |" for k, v in values.items()]
        else:
            rows.append(f"| {section} | {values} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
