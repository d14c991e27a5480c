"""The `vchain` command line: a thin layer over the library. `vchain COMMAND --help` for each command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vchain.errors import ConfigurationError, StageError, VChainError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_output(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=required,
        metavar="DIR",
        help="run folder: artifacts are written here, and a re-run resumes from it",
    )


def _add_openai(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reasoning backends (OpenAI or any OpenAI-compatible server)")
    group.add_argument("--reasoner-model", default="gpt-4o", help="chat model for planning and perception")
    group.add_argument("--image-model", default="gpt-image-1", help="image model for generate and edit")
    group.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible server URL (default: OPENAI_BASE_URL, else api.openai.com)",
    )
    group.add_argument("--max-keyframes", type=int, default=8, help="cap on images per chain (default 8)")
    group.add_argument(
        "--edit-inputs",
        choices=("chain", "last"),
        default="chain",
        help="images sent to each edit call: the whole chain (default) or the last one",
    )


def _openai_backends(args):
    from vchain.backends.openai import OpenAIImageBackend, OpenAIReasoner

    return (
        OpenAIReasoner(args.reasoner_model, base_url=args.base_url),
        OpenAIImageBackend(args.image_model, base_url=args.base_url),
    )


def _reasoning_config(args, **frame):
    from vchain.reasoning import ReasoningConfig

    return ReasoningConfig(max_keyframes=args.max_keyframes, edit_inputs=args.edit_inputs, **frame)


def cmd_think(args) -> int:
    from vchain.pipeline import VChainPipeline

    reasoner, image_backend = _openai_backends(args)
    pipe = VChainPipeline(reasoner, image_backend, reasoning=_reasoning_config(args))
    chain = pipe.think(args.prompt, output_dir=args.output)
    print(f"{len(chain.images)} keyframes in {args.output}")
    for i, caption in enumerate(chain.captions):
        print(f"  {i}. {caption}")
    return EXIT_OK


def _add_wan(parser: argparse.ArgumentParser, tuning: bool = True) -> None:
    group = parser.add_argument_group("video generator (Wan through diffusers)")
    group.add_argument(
        "--model", default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", help="Diffusers-format Wan id or folder"
    )
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    group.add_argument("--height", type=int, default=480)
    group.add_argument("--width", type=int, default=832)
    group.add_argument("--frames", type=int, default=81, help="4k+1 frames (default 81, 5 s at 16 fps)")
    group.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    group.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (default 5.0)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--cache", choices=("first-block",), default=None, help="step caching (off by default)"
    )
    if tuning:
        group = parser.add_argument_group("sparse tuning (LoRA)")
        group.add_argument("--tune-steps", type=int, default=300, help="optimizer steps (default 300)")
        group.add_argument("--rank", type=int, default=16)
        group.add_argument("--alpha", type=float, default=16)
        group.add_argument("--lr", type=float, default=1e-4)
        group.add_argument("--gradient-checkpointing", action="store_true", help="less memory (14B), slower")


def _wan(args, tuning: bool = True):
    """Generator and tuner from the arguments; settings are checked before the model loads."""
    import torch

    from vchain.backends.wan import WanLoRAConfig, WanLoRATuner, WanSamplingConfig, WanVideoGenerator

    sampling = {
        "height": args.height,
        "width": args.width,
        "num_frames": args.frames,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "cache": args.cache,
    }
    WanSamplingConfig(**sampling).check()
    tuner = None
    if tuning:
        config = WanLoRAConfig(
            rank=args.rank,
            alpha=args.alpha,
            learning_rate=args.lr,
            steps=args.tune_steps,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        tuner = WanLoRATuner(config)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = WanVideoGenerator.from_pretrained(
        args.model, torch_dtype=getattr(torch, args.dtype), **sampling
    )
    return generator.to(device), tuner


def _stored_prompt(output: Path) -> str:
    from vchain.run import MANIFEST_FILE, Manifest

    path = output / MANIFEST_FILE
    if not path.is_file():
        raise ConfigurationError(f"no run in {str(output)!r}: run `vchain think PROMPT -o {output}` first")
    return Manifest.model_validate_json(path.read_text()).prompt


def cmd_generate(args) -> int:
    from vchain.pipeline import _STAGES_OF, VChainPipeline

    stages = _STAGES_OF[args.variant]
    reasoner = image_backend = None
    if {"think", "augment"} & set(stages):  # the key is checked before the model loads
        reasoner, image_backend = _openai_backends(args)
    generator, tuner = (
        _wan(args, tuning="tune" in stages) if {"sample", "tune"} & set(stages) else (None, None)
    )
    pipe = VChainPipeline(reasoner, image_backend, generator, tuner, reasoning=_reasoning_config(args))
    out = pipe(args.prompt, output_dir=args.output, variant=args.variant, seed=args.seed)
    print(f"{args.variant}: {len(out.frames)} frames -> {out.video_path}")
    return EXIT_OK


def cmd_tune(args) -> int:
    from vchain.pipeline import VChainPipeline

    prompt = _stored_prompt(args.output)
    generator, tuner = _wan(args)
    VChainPipeline(generator=generator, tuner=tuner)(prompt, args.output, stop_after="tune")
    print(f"adapter saved in {args.output / 'lora'}")
    return EXIT_OK


def cmd_sample(args) -> int:
    from vchain.pipeline import VChainPipeline

    prompt = _stored_prompt(args.output)
    generator, tuner = _wan(args)
    out = VChainPipeline(generator=generator, tuner=tuner)(prompt, args.output, seed=args.seed)
    print(f"{len(out.frames)} frames -> {out.video_path}")
    return EXIT_OK


def cmd_demo(args) -> int:
    from vchain.testing import DEMO_PROMPT, demo_pipeline

    print(
        "vchain demo: every stage on tiny RANDOM models and a scripted reasoner, offline. The video is noise "
        "from untrained weights; it shows the machinery and the run folder, not the method's quality."
    )
    out = demo_pipeline(args.seed)(DEMO_PROMPT, output_dir=args.output, seed=args.seed)
    stages = out.manifest["stages"]
    for name, record in stages.items():
        print(f"  {name:<10} {record['status']:<8} {record['total_seconds']:.2f} s  {record['seconds']}")
    print(f"{len(out.chain.images)} keyframes, {len(out.frames)} frames -> {out.video_path}")
    return EXIT_OK


def cmd_suite(args) -> int:
    from vchain.suite import PAPER_CASES, run_suite

    cases = PAPER_CASES if args.cases is None else [PAPER_CASES[i] for i in _indices(args.cases)]
    if args.demo:
        from vchain.testing import demo_pipeline

        def make_pipeline():
            return demo_pipeline(args.seed, steps=10)
    else:
        from vchain.pipeline import VChainPipeline

        def make_pipeline():
            reasoner, image_backend = _openai_backends(args)
            generator, tuner = _wan(args)
            return VChainPipeline(
                reasoner, image_backend, generator, tuner, reasoning=_reasoning_config(args)
            )

    runs = run_suite(make_pipeline, args.output, cases, args.variants, seed=args.seed)
    print(f"this process ran {len(runs)} run(s); summary in {args.output / 'summary.md'}")
    return EXIT_OK


def _indices(text: str) -> list[int]:
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigurationError(f"--cases must be comma-separated case numbers 0-19, got {text!r}") from None
    if not indices or any(not 0 <= i < 20 for i in indices):
        raise ConfigurationError(f"--cases must be comma-separated case numbers 0-19, got {text!r}")
    return indices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vchain",
        description="Chain-of-visual-thought video generation: reason keyframes with a multimodal model, "
        "LoRA-tune a video generator on them, sample the video.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    think = commands.add_parser(
        "think",
        help="stage 1: reason a prompt into keyframes (needs OPENAI_API_KEY)",
        description="Reason PROMPT into a chain of visual thoughts: chain.json, "
        "metadata.csv and keyframe PNGs in the output folder.",
    )
    think.add_argument("prompt", help="what the video should show")
    _add_output(think)
    _add_openai(think)
    think.set_defaults(run=cmd_think)

    from vchain.pipeline import VARIANTS

    variants_help = "; ".join(f"{name}: {what}" for name, what in VARIANTS.items())
    generate = commands.add_parser(
        "generate",
        help="the whole pipeline: reason, tune, sample (needs a GPU and a key)",
        description="Run one of the paper's variants on PROMPT into the output folder. "
        "Re-running resumes: finished stages are not redone.",
    )
    generate.add_argument("prompt", help="what the video should show")
    _add_output(generate)
    generate.add_argument("--variant", choices=list(VARIANTS), default="vchain", help=variants_help)
    _add_openai(generate)
    _add_wan(generate)
    generate.set_defaults(run=cmd_generate)

    tune = commands.add_parser(
        "tune",
        help="stage 2: tune the generator on a folder's keyframes, save lora/",
        description="LoRA-tune Wan on the chain in the output folder (from `vchain think`).",
    )
    _add_output(tune)
    _add_wan(tune)
    tune.set_defaults(run=cmd_tune)

    sample = commands.add_parser(
        "sample",
        help="stage 3: sample the video of a folder (tunes first if needed)",
        description="Sample video.mp4 from the folder's composite prompt with its lora/.",
    )
    _add_output(sample)
    _add_wan(sample)
    sample.set_defaults(run=cmd_sample)

    suite = commands.add_parser(
        "suite",
        help="the paper's 20 cases x variants; shards under `accelerate launch`",
        description="Run cases x variants into one tree and write summary.csv/.md. "
        "Under `accelerate launch --num_processes N` each process takes its share.",
    )
    _add_output(suite)
    suite.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=["vchain"], help=variants_help
    )
    suite.add_argument("--cases", default=None, help="comma-separated case numbers 0-19 (default: all 20)")
    suite.add_argument("--demo", action="store_true", help="use the offline tiny random models (a dry run)")
    _add_openai(suite)
    _add_wan(suite)
    suite.set_defaults(run=cmd_suite)

    demo = commands.add_parser(
        "demo",
        help="every stage offline on tiny random models, in seconds",
        description="Run the whole pipeline on tiny random models and a scripted reasoner.",
    )
    _add_output(demo)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except ConfigurationError as e:
        print(f"vchain {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (StageError, VChainError) as e:
        print(f"vchain {args.command} failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
