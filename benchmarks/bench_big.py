"""Memory and speed of the options for big models, on random weights of real Wan shapes loaded as a user loads
them: quantization, offloading and VAE tiling through `from_pretrained`, and sampling spread over GPUs.

    python benchmarks/bench_big.py --preset wan2.1-14b --quantization int8 --offload group --vae-tiling
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_big.py --preset wan2.1-14b --parallel cfg
    python benchmarks/bench_big.py --preset cpu-tiny --quantization int8        # seconds on a CPU (CI runs it)

The preset's random pipeline is saved once as a Diffusers checkpoint (`--checkpoints`, default a folder under
the system's temporary directory; 38 GB for the 14B preset with UMT5-XXL) and every run loads it with
`WanVideoGenerator.from_pretrained(...)`, so the quantization and offloading are diffusers' own, as in a real
run. Then: a tuning run of `--tune-steps` steps on the preset's keyframes (seconds per step between loss reads,
peak memory), and `--rounds` sampling calls of `--sampling-steps` steps after one warm-up (seconds per call and
per step, peak memory), the tuned adapter applied. Under `torchrun` every rank loads and samples with the base
model (no tuning: a merged adapter costs sampling nothing, and the ranks must hold the same weights); rank 0
reports.
Peak memory is `torch.cuda.max_memory_allocated` on a GPU (each rank's own), the peak RSS on a CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch
from harness import PRESETS, PeakMemory, build_pipeline, environment, spread, sync

PROMPT = "keyframe 0 of the chain"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quantization", choices=["int8", "fp8", "nf4"], default=None)
    parser.add_argument("--offload", choices=["model", "group"], default=None)
    parser.add_argument("--vae-tiling", action="store_true")
    parser.add_argument("--parallel", choices=["cfg", "ulysses", "ring"], default=None, help="under torchrun")
    parser.add_argument("--tune-steps", type=int, default=10)
    parser.add_argument("--skip-tuning", action="store_true")
    parser.add_argument("--sampling-steps", type=int, default=2, help="denoising steps per sampling call")
    parser.add_argument("--rounds", type=int, default=2, help="timed sampling calls after one warm-up")
    parser.add_argument("--checkpoints", type=Path, default=Path(tempfile.gettempdir()) / "vchain-bench-checkpoints")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and results.md here")
    args = parser.parse_args(argv)

    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
    from vchain.parallel import init_process_group, is_main_process, rank_device
    from vchain.testing import draw_image

    preset = PRESETS[args.preset]
    device = args.device
    if args.parallel:
        init_process_group(device)
        device = rank_device(device) or device
    main_process = is_main_process()
    env = environment(device, __file__, argv)
    # Named by the preset's shapes too: a checkpoint saved for other shapes is never picked up.
    folder = args.checkpoints / f"{args.preset}-{hashlib.sha256(repr(preset).encode()).hexdigest()[:8]}"
    if main_process and not (folder / "model_index.json").exists():
        _save_checkpoint(preset, folder, args.device)
    if args.parallel:
        torch.distributed.barrier()  # the others wait for rank 0's checkpoint

    options = {
        "quantization": args.quantization,
        "offload": args.offload,
        "vae_tiling": args.vae_tiling,
        "parallel": args.parallel,
    }
    sampling = preset.sampling(args.sampling_steps)
    start = time.perf_counter()
    generator = WanVideoGenerator.from_pretrained(
        str(folder), dtype=getattr(torch, preset.dtype), device=device, **options, **sampling
    )
    generator.set_progress_bar_config(disable=True)
    results: dict = {"environment": env, "preset": args.preset, "options": options, "sizes": sampling}
    results["load_s"] = round(time.perf_counter() - start, 2)

    adapter = None
    if not args.skip_tuning and not args.parallel:
        pairs = [
            (draw_image(f"keyframe {i}", preset.width, preset.height), f"keyframe {i} of the chain")
            for i in range(preset.keyframes)
        ]
        tuner = WanLoRATuner(steps=args.tune_steps, gradient_checkpointing=True, log_every=1)
        tuner.set_progress_bar_config(disable=True)
        with PeakMemory(device) as peak:
            sync(device)
            start = time.perf_counter()
            adapter = tuner.tune(generator, pairs)
            sync(device)
            whole = time.perf_counter() - start
        # Seconds per step between consecutive loss reads (each waits for the device).
        marks = adapter.report.timeline
        per_step = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in itertools.pairwise(marks)]
        results["tuning"] = {
            "steps": args.tune_steps,
            "whole_s": round(whole, 2),
            "per_step_s": spread(per_step) if per_step else None,
            "peak_gib": peak.gib,
            "peak_kind": peak.kind,
        }

    def sample() -> None:
        generator.sample(PROMPT, seed=0, output_type="latent")

    with PeakMemory(device) as peak:
        if adapter is not None:
            with adapter.apply(generator):
                calls = _timed(sample, args.rounds, device)
        else:
            calls = _timed(sample, args.rounds, device)
    results["sampling"] = {
        "per_call_s": spread(calls),
        "per_step_s": round(sorted(calls)[len(calls) // 2] / args.sampling_steps, 4),
        "peak_gib": peak.gib,
        "peak_kind": peak.kind,
    }
    if main_process:
        table = _table(results)
        print(table)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
            (args.out / "results.md").write_text(table)
    if args.parallel:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return results


def _save_checkpoint(preset, folder: Path, device: str) -> None:
    """The preset's random pipeline as a Diffusers checkpoint (built where it is fastest, saved once)."""
    pipeline = build_pipeline(preset, device)
    partial = folder.with_name(folder.name + ".partial")
    pipeline.save_pretrained(partial)
    partial.rename(folder)
    del pipeline
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _timed(call, rounds: int, device: str) -> list[float]:
    call()  # warm-up
    seconds = []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        call()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _table(results: dict) -> str:
    env, options = results["environment"], results["options"]
    chosen = ", ".join(f"{k}={v}" for k, v in options.items() if v) or "no options"
    lines = [
        f"# {env['command']}",
        f"# {env['device']}, torch {env['torch']}, diffusers {env['diffusers']}, peft {env['peft']}, {env['date']}",
        "",
        f"| {results['preset']}, {chosen} | value |",
        "|---|---|",
        f"| load (from_pretrained), s | {results['load_s']} |",
    ]
    tuning = results.get("tuning")
    if tuning:
        step = tuning["per_step_s"]["median"] if tuning["per_step_s"] else "—"
        lines += [
            f"| tuning, {tuning['steps']} steps, s per step (median between loss reads) | {step} |",
            f"| tuning, peak memory GiB ({tuning['peak_kind']}) | {tuning['peak_gib']} |",
        ]
    sampling = results["sampling"]
    lines += [
        f"| sampling, s per call of {results['sizes']['num_inference_steps']} steps (median) | "
        f"{sampling['per_call_s']['median']} |",
        f"| sampling, s per step | {sampling['per_step_s']} |",
        f"| sampling, peak memory GiB ({sampling['peak_kind']}, rank 0) | {sampling['peak_gib']} |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
