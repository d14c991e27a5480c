"""The whole pipeline in bfloat16 on Wan2.1-1.3B's real shapes, loaded the way the real job loads it.

    python benchmarks/smoke_real_config.py                 # CPU: about 1.5 GiB of disk, a few minutes
    python benchmarks/smoke_real_config.py --device cuda   # the same on a GPU

The transformer is random-initialised from Wan2.1-T2V-1.3B's released configuration (1.42 B parameters),
the VAE is Wan2.1's, the text encoder is UMT5-XXL's width (d_model 4096, 64 heads, gated-GELU) with two of
its 24 layers and a small vocabulary. The text window is `--text-tokens` (default 128 rather than 512: on a
CPU without bfloat16 units the cross-attention over 512 tokens would dominate the run; pass 512 on a GPU).
It is saved as a Diffusers checkpoint and loaded back through
`WanVideoGenerator.from_pretrained(..., dtype=torch.bfloat16)`, which keeps Wan's float32 modules (norms,
the time embedder, `scale_shift_table`) as for the released weights.
Then `VChainPipeline` runs the three stages (scripted reasoning, the probe step of `Tuner.check`, LoRA
tuning, sampling with the adapter) at 96x96, and the script prints the wall time of each stage and the
peak memory. A dtype or device mismatch anywhere on the real path stops it with the error.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from harness import UMT5_XXL, WAN21_1_3B, PeakMemory, as_loaded, environment

SIZE = dict(height=96, width=96, num_frames=5, num_inference_steps=2)


def save_checkpoint(folder: Path, text_layers: int) -> int:
    """A random Wan2.1-1.3B-shaped checkpoint in `folder` (bfloat16 on disk); returns its parameter count."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vchain.testing import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    transformer = as_loaded(WanTransformer3DModel(**WAN21_1_3B), torch.bfloat16)
    encoder = UMT5Config(**{**UMT5_XXL, "num_layers": text_layers, "vocab_size": len(tokenizer)})
    pipeline = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(encoder).to(torch.bfloat16),
        vae=AutoencoderKLWan(),  # Wan2.1's VAE, float32
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        transformer=transformer,
    )
    pipeline.save_pretrained(folder)
    return sum(p.numel() for p in transformer.parameters())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tune-steps", type=int, default=2)
    parser.add_argument("--text-tokens", type=int, default=128, help="max_sequence_length, tuning and sampling")
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = parser.parse_args(argv)

    from vchain import VChainPipeline
    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
    from vchain.testing import DrawingImageBackend, ScriptedReasoner

    env = environment(args.device, __file__, argv)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, PeakMemory(args.device) as peak:
        start = time.perf_counter()
        parameters = save_checkpoint(Path(folder) / "wan", args.text_layers)
        seconds["build and save"] = time.perf_counter() - start

        start = time.perf_counter()
        generator = WanVideoGenerator.from_pretrained(
            Path(folder) / "wan",
            dtype=torch.bfloat16,
            device=args.device,
            max_sequence_length=args.text_tokens,
            **SIZE,
        )
        seconds["from_pretrained (bfloat16)"] = time.perf_counter() - start
        transformer = generator.pipeline.transformer
        kept = sorted({str(p.dtype) for p in transformer.parameters()})

        tuner = WanLoRATuner(steps=args.tune_steps, log_every=1)
        pipe = VChainPipeline(ScriptedReasoner(), DrawingImageBackend(), generator, tuner)
        start = time.perf_counter()
        tuner.check(generator)  # the probe step, as the pipeline takes it before reasoning
        seconds["check (probe step)"] = time.perf_counter() - start
        out = pipe("A steel ball is dropped into water.", output_dir=Path(folder) / "run")
        stages = out.manifest.stages
        for stage in ("reasoning", "tuning", "sampling"):
            for part, value in getattr(stages, stage).seconds.items():
                seconds[f"{stage}: {part}"] = value
        losses = [loss for _, loss in stages.tuning.losses]
        frames = len(out.frames)
    results = {
        "environment": env,
        "transformer_parameters": parameters,
        "transformer_dtypes": kept,
        "frames": frames,
        "tuning_losses": losses,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "peak_memory_gib": peak.gib,
        "peak_memory_kind": peak.kind,
    }
    print(f"# {env['command']}\n# {env['device']}, torch {env['torch']}, diffusers {env['diffusers']}, {env['date']}")
    print(f"transformer: {parameters / 1e9:.2f} B parameters, dtypes {kept}; {frames} frames sampled")
    for name, value in results["seconds"].items():
        print(f"  {name}: {value} s")
    print(f"peak memory: {peak.gib} GiB ({peak.kind})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
