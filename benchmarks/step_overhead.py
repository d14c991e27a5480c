"""vchain's tuning step against the shortest loop that does the same work, and the speed levers.

    python benchmarks/step_overhead.py --preset cpu-small --rounds 5 --threads 1
    python benchmarks/step_overhead.py --preset cpu-small --levers --threads 1     # batch, fused AdamW, compile
    git show REV:src/vchain/tuning.py > old.py     # or REV:src/vchain/backends/wan.py, before tuning.py existed
    python benchmarks/step_overhead.py --preset cpu-small --rounds 5 --threads 1 --baseline old.py

The reference loop is what a researcher would write around peft: LoRA on the same targets, AdamW,
gradient clipping, the same noise and noise levels, one keyframe per step, and a loss read every 10
steps as vchain's default. Both run on one model in one process, in interleaved rounds (the order
alternates); each round's figure is seconds per 100 steps from the 10th optimizer step to the last
(torch's global optimizer-step hook marks every 10th, where both loops read their loss anyway), so
set-up and warm-up are out and every tuner, old or new, is timed the same way.

`--baseline FILE` adds the tuner of an older revision's `tuning.py` (its `LoRATuner`) or
`backends/wan.py` (its `WanLoRATuner`, on its own `WanVideoGenerator` over the same pipeline), for a
before/after in the same process.

Syncs per step come from `harness.WaitingOps` (ops that make a GPU step wait), counted over two runs
that differ only in their step count.

`cpu-small` has the 1.3B's 30 blocks and 300 LoRA linears at a narrow width: on a CPU its step costs
dispatching ops more than arithmetic, the regime a 1.3B step is in on a GPU. The figures are a CPU's.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from harness import PRESETS, WaitingOps, build_pipeline, environment, spread, sync

LOG_EVERY = 10


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["cpu-tiny", "cpu-small", "wan2.1-1.3b"], default="cpu-small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=60, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--baseline", type=Path, default=None, help="an older tuning.py or wan.py to time too")
    parser.add_argument("--levers", action="store_true", help="time batch_size, fused AdamW and compile")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--out", type=Path, default=None, help="write step_overhead.json here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
    from vchain.testing import draw_image

    preset = PRESETS[args.preset]
    env = environment(args.device, __file__, argv)
    print(
        f"# {env['command']}\n# {env['device']}, torch {env['torch']}, diffusers {env['diffusers']}, "
        f"peft {env['peft']}, {env['cpu_threads']} threads, {env['date']}\n# {preset.note}",
        flush=True,
    )
    pipe = build_pipeline(preset, args.device)
    generator = WanVideoGenerator(
        pipe,
        height=preset.height,
        width=preset.width,
        num_frames=preset.num_frames,
        max_sequence_length=preset.text_tokens,
    )
    pairs = [
        (draw_image(f"keyframe {i}", preset.width, preset.height), f"keyframe {i} of the chain")
        for i in range(preset.keyframes)
    ]
    common = dict(log_every=LOG_EVERY, fused_adamw=args.device.startswith("cuda"))
    images, captions = zip(*pairs, strict=True)
    latents = generator.encode_keyframes(images, height=preset.height, width=preset.width).float()
    context = generator.encode_captions(captions)

    def tune(tuner_class=WanLoRATuner, on=generator, **fields):
        known = _field_names(getattr(tuner_class, "config_class", None) or sys.modules["baseline"].WanLoRAConfig)
        return lambda steps, **read: tuner_class(
            **{k: v for k, v in {**common, **fields, **read, "steps": steps}.items() if k in known}
        ).tune(on, pairs)

    # Each loop runs `steps` steps, reading the loss every 10 (or as `log_every=` says).
    loops = {
        "reference loop": lambda steps, **read: _reference_loop(
            generator, latents, context, steps=steps, **{**common, **read}
        )
    }
    loops["vchain"] = tune()
    if args.baseline:
        tuner_class, baseline_generator = _baseline(args.baseline, generator)
        loops[f"baseline {args.baseline.name}"] = tune(tuner_class, baseline_generator)
    divide = {}
    if args.levers:
        loops["vchain fused AdamW"] = tune(fused_adamw=True)
        loops["vchain unfused AdamW"] = tune(fused_adamw=False)
        batch = f"vchain batch {preset.keyframes} (per keyframe visit)"
        loops[batch], divide[batch] = tune(batch_size=preset.keyframes), preset.keyframes
        loops[f"vchain compile ({args.compile_backend})"] = tune(compile=True, compile_backend=args.compile_backend)
        loops["vchain gradient checkpointing"] = tune(gradient_checkpointing=True)

    def timed(name):
        with _StepClock(args.device) as clock:
            loops[name](args.steps)
        return clock.per_100_steps() / divide.get(name, 1)

    per_100 = {name: [] for name in loops}
    for r in range(args.rounds):
        for name in list(loops) if r % 2 == 0 else list(reversed(loops)):
            per_100[name].append(timed(name))
            print(f"round {r + 1}: {name}: {per_100[name][-1]:.3f} s per 100 steps", flush=True)

    results = {
        "environment": env,
        "preset": args.preset,
        "steps": args.steps,
        "log_every": LOG_EVERY,
        "per_100_steps_s": {name: spread(values) for name, values in per_100.items()},
    }
    reference = per_100["reference loop"]
    results["over_reference"] = {
        name: spread([v / ref for v, ref in zip(values, reference, strict=True)], 3)
        for name, values in per_100.items()
        if name != "reference loop"
    }
    counted = [name for name in loops if "compile" not in name]  # dispatch modes and dynamo do not mix
    results["per_step_ops"] = {name: _per_step_ops(loops[name], divide.get(name, 1)) for name in counted}

    print("\n| figure | median | min | max | n |\n|---|---|---|---|---|")
    for name, v in results["per_100_steps_s"].items():
        print(f"| {name}: seconds per 100 steps | {v['median']} | {v['min']} | {v['max']} | {v['n']} |")
    for name, v in results["over_reference"].items():
        print(f"| {name} / reference loop | {v['median']} | {v['min']} | {v['max']} | {v['n']} |")
    for name, counts in results["per_step_ops"].items():
        print(f"| {name}: ATen ops per step | {counts['ops']} | | | |")
        print(f"| {name}: ops per step that wait for the device | {counts['waiting']} | | | |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "step_overhead.json").write_text(json.dumps(results, indent=2))
    return results


class _StepClock:
    """The time after every `LOG_EVERY`-th optimizer step of any optimizer (torch's global step hook), where
    the loops read their loss anyway: a GPU is synchronised there, and only there."""

    def __init__(self, device: str):
        self.device, self.marks, self.steps = device, [], 0

    def __enter__(self) -> _StepClock:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(self._step)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _step(self, *_) -> None:
        self.steps += 1
        if self.steps % LOG_EVERY == 0:
            sync(self.device)
            self.marks.append((self.steps, time.perf_counter()))

    def per_100_steps(self) -> float:
        """Seconds per 100 steps from the first mark to the last: set-up and the first steps left out."""
        (s0, t0), (s1, t1) = self.marks[0], self.marks[-1]
        return 100 * (t1 - t0) / (s1 - s0)


def _reference_loop(generator, latents, context, *, steps: int, log_every: int, fused_adamw: bool) -> None:
    """LoRA with peft, AdamW and clipping, written plainly, reading the loss every `log_every` steps."""
    from peft import LoraConfig, inject_adapter_in_model

    from vchain.backends.wan import WAN_LORA_TARGETS
    from vchain.tuning import input_dtype

    transformer = generator.pipeline.transformer
    dtype = input_dtype(transformer)  # the compute dtype, as the tuner reads it
    shift = generator.training_objective().shift
    rng = torch.Generator().manual_seed(0)
    u = torch.sigmoid(torch.randn(steps, generator=rng))
    sigmas = (shift * u / (1 + (shift - 1) * u)).tolist()
    noise_rng = torch.Generator(device=latents.device).manual_seed(0)
    flags = {name: param.requires_grad for name, param in transformer.named_parameters()}
    inject_adapter_in_model(
        LoraConfig(r=16, lora_alpha=16, target_modules=list(WAN_LORA_TARGETS)), transformer, adapter_name="reference"
    )
    params = []
    for name, param in transformer.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            params.append(param)
        else:
            param.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=fused_adamw)  # vchain's defaults
    transformer.train()
    try:
        for step in range(steps):
            i = step % len(latents)
            x0 = latents[i : i + 1]
            noise = torch.randn(x0.shape, generator=noise_rng, device=x0.device)
            sigma = sigmas[step]
            noisy = (1 - sigma) * x0 + sigma * noise
            timestep = torch.full((1,), sigma * 1000, device=x0.device)
            text = context[i : i + 1].to(dtype)
            prediction = transformer(noisy.to(dtype), timestep, text, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(prediction.float(), (noise - x0).float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if (step + 1) % log_every == 0:
                loss.item()
    finally:
        from diffusers.utils.peft_utils import recurse_remove_peft_layers

        recurse_remove_peft_layers(transformer)
        del transformer.peft_config
        transformer.eval()
        for name, param in transformer.named_parameters():
            param.requires_grad_(flags[name])


def _per_step_ops(loop, keyframes_per_step: int = 1) -> dict:
    """ATen ops per step (per keyframe visit with several per step), and those that wait for the device,
    from two runs of 10 and 20 steps (each reads its loss once): set-up cancels. The unfused AdamW's
    reads of its step counters are left out: torch keeps those on the host, also for CUDA parameters,
    so they make no GPU wait."""
    counts = []
    for steps in (10, 20):
        with WaitingOps() as mode:
            loop(steps, log_every=steps)
        waiting = [e for e in mode.events if not ("/torch/optim/" in e[1] and e[2] == "_get_value")]
        counts.append((mode.ops, len(waiting)))
    (ops_10, waits_10), (ops_20, waits_20) = counts
    per = 10 * keyframes_per_step
    return {"ops": (ops_20 - ops_10) / per, "waiting": (waits_20 - waits_10) / per}


def _baseline(path: Path, generator):
    """The tuner of an older `tuning.py` (with Wan's targets) or `backends/wan.py` (with its own generator
    over `generator`'s pipeline)."""
    spec = importlib.util.spec_from_file_location("baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline"] = module  # dataclasses and pydantic look their module up
    spec.loader.exec_module(module)
    if hasattr(module, "WanVideoGenerator"):
        c = generator.config
        sizes = dict(height=c.height, width=c.width, num_frames=c.num_frames)
        sizes["max_sequence_length"] = c.max_sequence_length
        return module.WanLoRATuner, module.WanVideoGenerator(generator.pipeline, **sizes)
    from vchain.backends.wan import WAN_LORA_TARGETS

    class BaselineTuner(module.LoRATuner):
        config_class = module.LoRAConfig

        def __init__(self, **fields):
            super().__init__(target_modules=WAN_LORA_TARGETS, **fields)

    return BaselineTuner, generator


def _field_names(config_class) -> set[str]:
    """A config's fields: a pydantic model's, or an older revision's dataclass's."""
    if hasattr(config_class, "model_fields"):
        return set(config_class.model_fields)
    return {f.name for f in dataclasses.fields(config_class)}


if __name__ == "__main__":
    main()
