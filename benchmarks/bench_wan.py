"""Time sparse tuning and sampling, vchain against stock diffusers, on random weights of real Wan shapes.

    python benchmarks/bench_wan.py --preset cpu-tiny                       # seconds on a CPU; CI runs it
    python benchmarks/bench_wan.py --preset cpu-small --rounds 7           # the CPU study in docs/benchmarks.md
    python benchmarks/bench_wan.py --preset wan2.1-1.3b --sampling-steps 3 --compile --cache first-block
    python benchmarks/bench_wan.py --preset wan2.1-14b --skip-sampling --tune-steps 20   # 14B tuning memory

Tuning: vchain's `WanLoRATuner` with the default schedule (or `--tune-steps`); per 100 steps is timed
between the loss reads (each waits for the device), from the first read on, so set-up, encoding and
the first steps' warm-up are out of it; its spread is over those intervals. Peak memory of tuning.

Sampling, like for like, in one process on one set of weights: vchain sampling inside its applied
(merged) adapter, against stock `WanPipeline.__call__` with the same LoRA file loaded by
`load_lora_weights`, unfused (peft layers) and fused (its peft layers stay, folded), and against the
stock base model with no LoRA (the same modules as vchain's merged model, so the same cost: the
calibration of the method). With acceleration switches given, also vchain with them and stock diffusers
with the same switches applied through diffusers' API (LoRA fused). Every variant is called
once to warm up, then `--rounds` interleaved rounds (the order alternates); medians with min and max.
Each call is timed whole and per denoising step (a forward hook's clock), so a run with fewer steps than
the preset's extrapolates honestly (printed as such). vchain's adapter merge and restore, which a
stock user pays once per load, is timed on its own. Peak memory of each variant's calls.

Every figure is printed with the command, device, versions and date; `--out DIR` writes results.json
(repeats, medians, spread) and results.md (the rows of docs/benchmarks.md's table).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch
from harness import (  # the shared module beside this script
    PRESETS,
    PeakMemory,
    build_pipeline,
    environment,
    peak_tflops,
    spread,
    sync,
    transformer_flops,
    tuning_step_flops,
    video_tokens,
)

PROMPT = "keyframe 0 of the chain"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tune-steps", type=int, default=None, help="override the preset's default schedule")
    parser.add_argument("--sampling-steps", type=int, default=None, help="denoising steps per call (default: preset)")
    parser.add_argument("--rounds", type=int, default=3, help="timed, interleaved rounds of sampling")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="tune with it (on in the 14B preset)")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--compile", action="store_true", help="acceleration: regional torch.compile")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--attention-backend", default=None, help="acceleration: diffusers' attention backend")
    parser.add_argument(
        "--cache", choices=["first-block", "sea", "taylorseer"], default=None, help="acceleration: step cache"
    )
    parser.add_argument("--cache-threshold", type=float, default=None, help="first-block, sea (default: theirs)")
    parser.add_argument("--cache-interval", type=int, default=None, help="taylorseer (default: its own)")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and results.md here")
    args = parser.parse_args(argv)

    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
    from vchain.testing import draw_image

    preset = PRESETS[args.preset]
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(device, __file__, argv)
    print(_header(env, preset.note), flush=True)
    pipe = build_pipeline(preset, device)
    steps = args.sampling_steps or preset.steps
    sampling = preset.sampling(steps)
    generator = WanVideoGenerator(pipe, **sampling)
    config = dict(pipe.transformer.config)
    results: dict = {"environment": env, "preset": args.preset, "sizes": sampling, "keyframes": preset.keyframes}

    pairs = [
        (draw_image(f"keyframe {i}", preset.width, preset.height), f"keyframe {i} of the chain")
        for i in range(preset.keyframes)
    ]
    tune_steps = args.tune_steps or preset.tune_steps
    checkpointing = args.gradient_checkpointing or preset.gradient_checkpointing
    tuner = WanLoRATuner(steps=tune_steps, gradient_checkpointing=checkpointing)
    results["tuning"], adapter = _tuning(generator, tuner, pairs, config, preset, device)

    if not args.skip_sampling:
        switches = dict(
            compile=args.compile,
            compile_backend=args.compile_backend,
            attention_backend=args.attention_backend,
            cache=args.cache,
            cache_threshold=args.cache_threshold,
            cache_interval=args.cache_interval,
        )
        fast = WanVideoGenerator(pipe, **switches, **sampling) if _any(switches) else None
        results["sampling"] = _sampling(generator, fast, adapter, args.rounds, device, preset, steps)
        results["acceleration"] = switches if fast else None
    _floors(results, config, preset, steps, env["device"])

    table = _table(results)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        (args.out / "results.md").write_text(table)
    return results


def _any(switches: dict) -> bool:
    return bool(switches["compile"] or switches["attention_backend"] or switches["cache"])


# ----------------------------------------------------------------------------------------------- tuning


def _tuning(generator, tuner, pairs, config, preset, device):
    sync(device)
    start = time.perf_counter()
    with PeakMemory(device) as peak:
        adapter = tuner.tune(generator, pairs)
    total = time.perf_counter() - start
    report = adapter.report
    # Steps between consecutive loss reads; the first interval (warm-up) is left out.
    marks = report.timeline
    per_100 = [100 * (t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in itertools.pairwise(marks)]
    tokens = video_tokens(preset.height, preset.width, 1)
    step_flops = tuning_step_flops(config, tokens, preset.text_tokens, tuner.config.gradient_checkpointing)
    return {
        "steps": tuner.config.steps,
        "log_every": tuner.config.log_every,
        "gradient_checkpointing": tuner.config.gradient_checkpointing,
        "preprocess_s": report.seconds["preprocess"],
        "fine_tune_s": report.seconds["fine_tune"],
        "total_s": round(total, 3),
        "per_100_steps_s": spread(per_100) if per_100 else None,
        "steps_s": round(marks[-1][1], 3),
        "peak_memory_gib": peak.gib,
        "peak_memory_kind": peak.kind,
        "trainable_parameters": report.trainable_parameters,
        "flops_per_step": step_flops * tuner.config.batch_size,
        "flops_over_forward": round(step_flops / transformer_flops(config, tokens, preset.text_tokens), 3),
    }, adapter


# --------------------------------------------------------------------------------------------- sampling


class _StepClock:
    """The time at each transformer forward (a forward pre-hook; on CUDA it synchronises first)."""

    def __init__(self, transformers, device):
        self.device, self.marks = device, []
        self.hooks = [t.register_forward_pre_hook(self._mark) for t in transformers]

    def _mark(self, *_):
        sync(self.device)
        self.marks.append(time.perf_counter())

    def step_seconds(self, steps: int) -> list[float]:
        """Seconds from each denoising step's start to the next's (a step is one or two forwards, CFG)."""
        starts = self.marks[:: len(self.marks) // steps]
        return [b - a for a, b in itertools.pairwise(starts)]

    def remove(self):
        for hook in self.hooks:
            hook.remove()


class _Variant:
    """One way of sampling: `enter` and `exit` change the pipeline's state (untimed), `run` is one call."""

    def __init__(self, run, enter=None, exit=None):
        self.run, self.enter, self.exit = run, enter or (lambda: None), exit or (lambda: None)


def _sampling(generator, fast, adapter, rounds, device, preset, steps):
    pipe, config = generator.pipeline, generator.config

    def stock():
        pipe(
            PROMPT,
            height=config.height,
            width=config.width,
            num_frames=config.num_frames,
            num_inference_steps=steps,
            guidance_scale=config.guidance_scale,
            max_sequence_length=config.max_sequence_length,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )

    folder = Path(tempfile.mkdtemp(prefix="vchain-bench-lora-"))
    adapter.save(folder)
    applied = contextlib.ExitStack()
    variants = {
        # The stock base model with no LoRA: vchain's merged model has exactly its modules and cost.
        "diffusers_no_lora": _Variant(stock),
        "vchain": _Variant(
            lambda: generator.sample(PROMPT, seed=0, output_type="np"),
            lambda: applied.enter_context(adapter.apply(generator)),
            applied.close,
        ),
        "diffusers": _Variant(stock, lambda: pipe.load_lora_weights(str(folder)), pipe.unload_lora_weights),
        "diffusers_fused": _Variant(
            stock,
            lambda: (pipe.load_lora_weights(str(folder)), pipe.fuse_lora()),
            lambda: (pipe.unfuse_lora(), pipe.unload_lora_weights()),
        ),
    }
    if fast is not None:
        variants["vchain_accelerated"] = _Variant(
            lambda: fast.sample(PROMPT, seed=0, output_type="np"),
            lambda: applied.enter_context(adapter.apply(fast)),
            applied.close,
        )
        stock_switches = contextlib.ExitStack()

        def enter_stock_accelerated():
            pipe.load_lora_weights(str(folder))
            pipe.fuse_lora()
            stock_switches.enter_context(_stock_accelerated(pipe, fast.acceleration))

        variants["diffusers_fused_accelerated"] = _Variant(
            stock,
            enter_stock_accelerated,
            lambda: (stock_switches.close(), pipe.unfuse_lora(), pipe.unload_lora_weights()),
        )

    clock = _StepClock(generator.denoisers(), device)
    calls = {name: [] for name in variants}
    step_times = {name: [] for name in variants}
    memory = {name: 0 for name in variants}
    try:
        for r in range(rounds + 1):  # round 0 warms every variant up (compilation, allocator, kernels)
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                variant = variants[name]
                variant.enter()
                try:
                    clock.marks.clear()
                    with PeakMemory(device) as peak:
                        sync(device)
                        start = time.perf_counter()
                        variant.run()
                        sync(device)
                        seconds = time.perf_counter() - start
                finally:
                    variant.exit()
                if r == 0:
                    continue
                calls[name].append(seconds)
                step_times[name] += clock.step_seconds(steps)
                memory[name] = max(memory[name], peak.bytes or 0)
        merge = []
        for _ in range(rounds):
            sync(device)
            start = time.perf_counter()
            with adapter.apply(generator):
                sync(device)
            merge.append(time.perf_counter() - start)
    finally:
        clock.remove()

    out: dict = {"steps_per_call": steps, "preset_steps": preset.steps, "rounds": rounds, "variants": {}}
    for name in variants:
        step = spread(step_times[name])
        per_call = spread(calls[name])
        overhead = per_call["median"] - steps * step["median"]
        out["variants"][name] = {
            "per_call_s": per_call,
            "per_step_s": step,
            "outside_steps_s": round(overhead, 4),
            f"per_call_at_{preset.steps}_steps_extrapolated_s": round(overhead + preset.steps * step["median"], 3)
            if steps != preset.steps
            else None,
            "peak_memory_gib": round(memory[name] / 2**30, 3),
        }
    out["adapter_merge_and_restore_s"] = spread(merge)
    out["ratios"] = {}
    pairs = [("vchain", "diffusers_no_lora"), ("vchain", "diffusers_fused"), ("vchain", "diffusers")]
    if fast is not None:
        pairs += [("vchain_accelerated", "diffusers_fused"), ("vchain_accelerated", "diffusers_fused_accelerated")]
    for a, b in pairs:
        # Per round: both calls of a round ran back to back, so their ratio cancels slow drifts.
        step_a, step_b = (out["variants"][name]["per_step_s"]["median"] for name in (a, b))
        out["ratios"][f"{a}/{b}"] = {
            "per_call": spread([x / y for x, y in zip(calls[a], calls[b], strict=True)], 3),
            "per_step": round(step_a / step_b, 3),
        }
    return out


@contextlib.contextmanager
def _stock_accelerated(pipe, switches):
    """The same switches as vchain's, through diffusers' own API on a stock pipeline."""
    from diffusers.models.attention_dispatch import attention_backend

    from vchain.tuning import compiled_blocks

    with contextlib.ExitStack() as stack:
        if switches.compile:
            stack.enter_context(compiled_blocks(pipe.transformer, backend=switches.compile_backend))
        if switches.attention_backend:
            stack.enter_context(attention_backend(switches.attention_backend))
        if switches.cache:
            pipe.transformer.enable_cache(switches.cache_config())  # diffusers' config object, built as vchain does
            stack.callback(pipe.transformer.disable_cache)
        yield


# ------------------------------------------------------------------------------------------------ report


def _floors(results: dict, config: dict, preset, steps: int, device_name: str) -> None:
    """The analytic FLOPs of each stage and, on a known GPU, the time at its dense bf16 peak."""
    tokens = video_tokens(preset.height, preset.width, preset.num_frames)
    forward = transformer_flops(config, tokens, preset.text_tokens)
    tuning = results["tuning"]
    floors = {
        "forward_flops": forward,
        "sampling_step_flops": 2 * forward,  # classifier-free guidance: two forwards per step
        "tuning_step_flops": tuning["flops_per_step"],
        "tuning_step_over_forward_of_a_keyframe": tuning["flops_over_forward"],
    }
    peak = peak_tflops(device_name)
    if peak:
        floors["peak_tflops"] = peak
        floors["sampling_step_floor_s"] = round(2 * forward / (peak * 1e12), 4)
        floors["tuning_per_100_steps_floor_s"] = round(100 * tuning["flops_per_step"] / (peak * 1e12), 3)
    results["floors"] = floors


def _header(env: dict, note: str) -> str:
    return (
        f"# {env['command']}\n# device {env['device']}, torch {env['torch']}, diffusers {env['diffusers']}, "
        f"peft {env['peft']}, {env['cpu_threads']} CPU threads, {env['date']}\n# {note}"
    )


def _table(results: dict) -> str:
    """The rows of docs/benchmarks.md's table, each with its command, device, versions and date."""
    env = results["environment"]
    lines = [
        _header(env, PRESETS[results["preset"]].note),
        "",
        "| figure | median | min | max | n |",
        "|---|---|---|---|---|",
    ]

    def row(label, value):
        if isinstance(value, dict):
            lines.append(f"| {label} | {value['median']} | {value['min']} | {value['max']} | {value['n']} |")
        elif value is not None:
            lines.append(f"| {label} | {value} | | | |")

    tuning = results["tuning"]
    row(f"tuning: seconds per 100 steps ({tuning['steps']}-step schedule, set-up excluded)", tuning["per_100_steps_s"])
    row(f"tuning: seconds for the {tuning['steps']} steps", tuning["steps_s"])
    row("tuning: seconds in all (encoding and set-up included)", tuning["total_s"])
    row(f"tuning: peak memory GiB ({tuning['peak_memory_kind']})", tuning["peak_memory_gib"])
    sampling = results.get("sampling")
    if sampling:
        for name, variant in sampling["variants"].items():
            row(f"sampling {name}: seconds per step", variant["per_step_s"])
            row(f"sampling {name}: seconds per call ({sampling['steps_per_call']} steps)", variant["per_call_s"])
            extrapolated = variant.get(f"per_call_at_{sampling['preset_steps']}_steps_extrapolated_s")
            row(f"sampling {name}: seconds per call at {sampling['preset_steps']} steps (extrapolated)", extrapolated)
            row(f"sampling {name}: peak memory GiB", variant["peak_memory_gib"])
        row("vchain adapter merge + restore, seconds", sampling["adapter_merge_and_restore_s"])
        for pair, ratio in sampling["ratios"].items():
            row(f"ratio {pair}, per call", ratio["per_call"])
            row(f"ratio {pair}, per step (medians)", ratio["per_step"])
    floors = results["floors"]
    row("tuning step FLOPs / forward FLOPs (one keyframe)", floors["tuning_step_over_forward_of_a_keyframe"])
    row("sampling step floor at peak bf16, seconds", floors.get("sampling_step_floor_s"))
    row("tuning per 100 steps floor at peak bf16, seconds", floors.get("tuning_per_100_steps_floor_s"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
