"""The `vchain` command line: a thin layer over the library. `vchain COMMAND --help` for each command.

Settings flags take their defaults and help from the config classes (`ReasoningConfig`, `LoRAConfig`,
`WanSamplingConfig`): a flag left out means the config's default, so there is one default for each.
Every setting is checked before any model loads or any request is sent.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import types
from pathlib import Path
from typing import Any

from vchain._redact import redact
from vchain.errors import ConfigurationError, VChainError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Commands whose -o is one run folder (the suite's is a tree of them, each locked on its own).
RUN_FOLDER_COMMANDS = ("think", "generate", "tune", "sample", "demo")

# (flag, config field) per settings class; the class is imported when the parser is built.
REASONING_FLAGS = (("--max-keyframes", "max_keyframes"), ("--edit-inputs", "edit_inputs"))
SAMPLING_FLAGS = (
    ("--height", "height"), ("--width", "width"), ("--frames", "num_frames"), ("--steps", "num_inference_steps"),
    ("--guidance", "guidance_scale"), ("--cache", "cache"),
)  # fmt: skip
TUNING_FLAGS = (
    ("--tune-steps", "steps"), ("--rank", "rank"), ("--alpha", "alpha"), ("--lr", "learning_rate"),
    ("--gradient-checkpointing", "gradient_checkpointing"),
)  # fmt: skip


def _add_config_flags(group, config: type, flags) -> None:
    """One flag per config field, typed from the field, its help and default from the field."""
    import typing

    for flag, name in flags:
        field = config.model_fields[name]
        kind = field.annotation
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `X | None`: the flag takes X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        options: dict[str, Any] = {"default": None, "dest": name, "help": config.help(name)}
        if kind is bool:
            options["action"] = "store_true"
        elif typing.get_origin(kind) is typing.Literal:
            options["choices"] = list(typing.get_args(kind))
        else:
            options["type"] = kind
        group.add_argument(flag, **options)


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"output_dir must be a folder path, got {text!r}")
    return Path(text)


def _given(args, flags) -> dict[str, Any]:
    """The settings the user gave on the command line (the others keep the config's defaults)."""
    return {name: getattr(args, name) for _, name in flags if getattr(args, name, None) is not None}


# ------------------------------------------------------------------------------------ components


def _add_reasoning(parser: argparse.ArgumentParser) -> None:
    from vchain.reasoning import ReasoningConfig

    group = parser.add_argument_group("reasoning (OpenAI or any OpenAI-compatible server)")
    group.add_argument("--reasoner-model", default="gpt-4o", help="chat model for planning and perception")
    group.add_argument("--image-model", default="gpt-image-1", help="image model for generate and edit")
    group.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible server URL (default: OPENAI_BASE_URL, else api.openai.com)",
    )
    _add_config_flags(group, ReasoningConfig, REASONING_FLAGS)


def _reasoning_backends(args):
    from vchain.backends.openai import OpenAIImageBackend, OpenAIReasoner

    return (
        OpenAIReasoner(args.reasoner_model, base_url=args.base_url),
        OpenAIImageBackend(args.image_model, base_url=args.base_url),
    )


def _reasoning_config(args, **extra):
    from vchain.reasoning import ReasoningConfig

    return ReasoningConfig(**_given(args, REASONING_FLAGS), **extra)


def _add_generator(parser: argparse.ArgumentParser, *, tuning: bool) -> None:
    from vchain.backends.wan import DEFAULT_MODEL, WanSamplingConfig
    from vchain.tuning import LoRAConfig

    group = parser.add_argument_group("video generator (Wan through diffusers)")
    group.add_argument("--model", default=None, help=f"Diffusers-format Wan id or folder (default: {DEFAULT_MODEL})")
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                       help="weights' dtype (default: bfloat16)")  # fmt: skip
    group.add_argument("--seed", type=int, default=None, help="sampling seed (default: 0)")
    _add_config_flags(group, WanSamplingConfig, SAMPLING_FLAGS)
    if tuning:
        _add_config_flags(parser.add_argument_group("sparse tuning (LoRA)"), LoRAConfig, TUNING_FLAGS)


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigurationError(f"--device must be a torch device such as cpu or cuda:0, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"--device {name}: this torch has no usable CUDA device (torch.cuda.is_available() "
                                 "is False)")  # fmt: skip
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigurationError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigurationError(f"--device {name}: MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigurationError(f"--device must be cpu, cuda[:N] or mps, got {name!r}")
    return str(device)


class _Settings:
    """Generator and tuner settings: recorded in a run folder, then overridden by the flags given."""

    def __init__(self, args, recorded: dict | None = None):
        from vchain.backends.wan import DEFAULT_MODEL, WanLoRAConfig, WanSamplingConfig
        from vchain.pipeline import check_seed

        recorded = recorded or {}
        self.model = getattr(args, "model", None) or recorded.get("model_id") or DEFAULT_MODEL
        self.dtype = getattr(args, "dtype", None) or recorded.get("dtype") or "bfloat16"
        self.device = _device(getattr(args, "device", None))
        self.seed = check_seed(args.seed if getattr(args, "seed", None) is not None else recorded.get("seed", 0))
        self.sampling = WanSamplingConfig(**{**recorded.get("sampling", {}), **_given(args, SAMPLING_FLAGS)}).check()
        self.tuning = WanLoRAConfig(**{**recorded.get("tuning", {}), **_given(args, TUNING_FLAGS)})

    def build(self):
        """Load the generator (and make the tuner): the one slow step, after every check passed."""
        from vchain.backends.wan import WanLoRATuner, WanVideoGenerator

        generator = WanVideoGenerator.from_pretrained(
            self.model, dtype=self.dtype, device=self.device, **self.sampling.model_dump()
        )
        return generator, WanLoRATuner(self.tuning)


def _recorded(output: Path) -> tuple[str, str, dict]:
    """Prompt, variant and the generator/tuner settings a run folder recorded."""
    from vchain.run import MANIFEST_FILE, read_manifest

    if not (output / MANIFEST_FILE).is_file():
        raise ConfigurationError(f"no run in {str(output)!r}: run `vchain think PROMPT -o {output}` first")
    manifest = read_manifest(output)
    stages = manifest.stages
    sampled = stages.sampling.inputs.get("generator") or {}
    tuned = stages.tuning.inputs.get("generator") or {}
    tuner = stages.tuning.inputs.get("tuner") or {}
    recorded = {
        "model_id": sampled.get("model_id") or tuned.get("model_id"),
        "dtype": sampled.get("dtype") or tuned.get("dtype"),
        "sampling": dict(sampled.get("config") or {}),
        "tuning": {k: v for k, v in (tuner.get("config") or {}).items() if k != "target_modules"},
    }
    if not recorded["sampling"] and stages.tuning.inputs.get("frame"):
        width, height = stages.tuning.inputs["frame"]
        recorded["sampling"] = {"width": width, "height": height}
    if stages.sampling.seed is not None:
        recorded["seed"] = stages.sampling.seed
    return manifest.prompt, manifest.variant, recorded


# -------------------------------------------------------------------------------------- commands


def cmd_think(args) -> int:
    from vchain.chain import check_prompt
    from vchain.pipeline import VChainPipeline
    from vchain.run import check_output_dir

    check_prompt(args.prompt)
    check_output_dir(args.output, create=False)
    config = _reasoning_config(args)
    reasoner, image_backend = _reasoning_backends(args)
    pipe = VChainPipeline(reasoner, image_backend, reasoning=config)
    chain = pipe.think(args.prompt, output_dir=args.output, overwrite=args.overwrite)
    print(f"{len(chain.images)} keyframes in {args.output}")
    for i, caption in enumerate(chain.captions):
        print(f"  {i}. {caption}")
    return EXIT_OK


def cmd_generate(args) -> int:
    from vchain.chain import check_prompt
    from vchain.pipeline import VChainPipeline
    from vchain.run import check_output_dir
    from vchain.variants import get_variant

    check_prompt(args.prompt)
    check_output_dir(args.output, create=False)
    spec = get_variant(args.variant)
    settings = _Settings(args)
    config = _reasoning_config(args)
    reasoner = image_backend = None
    if spec.reasoning is not None:  # the key is checked before the model loads
        reasoner, image_backend = _reasoning_backends(args)
    generator, tuner = settings.build()
    pipe = VChainPipeline(reasoner, image_backend, generator, tuner if spec.tuning else None, reasoning=config)
    out = pipe(
        args.prompt,
        output_dir=args.output,
        variant=args.variant,
        seed=settings.seed,
        overwrite=args.overwrite,
    )
    print(f"{args.variant}: {len(out.frames)} frames -> {out.video_path}")
    return EXIT_OK


def cmd_tune(args) -> int:
    from vchain.pipeline import VChainPipeline
    from vchain.variants import get_variant

    prompt, variant, recorded = _recorded(args.output)
    if not get_variant(variant).tuning:
        raise ConfigurationError(f"{str(args.output)!r} holds a {variant!r} run, which does not tune")
    generator, tuner = _Settings(args, recorded).build()
    out = VChainPipeline(generator=generator, tuner=tuner)(prompt, args.output, variant=variant, stop_after="tuning")
    record = out.manifest.stages.tuning
    where = args.output / "lora" if record.outputs else "memory only (not saved)"
    print(f"tuning {record.status} in {record.total_seconds:.1f} s; adapter in {where}")
    return EXIT_OK


def cmd_sample(args) -> int:
    from vchain.pipeline import VChainPipeline
    from vchain.variants import get_variant

    prompt, variant, recorded = _recorded(args.output)
    settings = _Settings(args, recorded)
    generator, tuner = settings.build()
    tuner = tuner if get_variant(variant).tuning else None
    out = VChainPipeline(generator=generator, tuner=tuner)(prompt, args.output, variant=variant, seed=settings.seed)
    print(f"{len(out.frames)} frames -> {out.video_path}")
    return EXIT_OK


def cmd_demo(args) -> int:
    from vchain.run import check_output_dir
    from vchain.testing import DEMO_PROMPT, demo_pipeline

    check_output_dir(args.output, create=False)
    print(
        "vchain demo: every stage on tiny RANDOM models and a scripted reasoner, offline. The video is noise "
        "from untrained weights; it shows the machinery and the run folder, not the method's quality."
    )
    seed = 0 if args.seed is None else args.seed
    out = demo_pipeline(seed)(DEMO_PROMPT, output_dir=args.output, seed=seed, overwrite=args.overwrite)
    for name, record in out.manifest.stages:
        print(f"  {name:<10} {record.status:<8} {record.total_seconds:.2f} s  {record.seconds}")
    print(f"{len(out.chain.images)} keyframes, {len(out.frames)} frames -> {out.video_path}")
    return EXIT_OK


def cmd_suite(args) -> int:
    from vchain.run import check_output_dir
    from vchain.suite import PAPER_CASES, parse_cases, run_suite

    check_output_dir(args.output, create=False)
    cases = parse_cases(args.cases) if args.cases is not None else list(range(len(PAPER_CASES)))
    if args.demo:
        given = [
            flag
            for flag, name in (*REASONING_FLAGS, *SAMPLING_FLAGS, *TUNING_FLAGS)
            if getattr(args, name) is not None
        ]
        given += [f"--{n.replace('_', '-')}" for n in ("model", "device", "dtype", "base_url") if getattr(args, n)]
        if given:
            raise ConfigurationError(f"--demo runs fixed tiny models; {', '.join(given)} do(es) not apply to it")
        from vchain.testing import demo_pipeline

        seed = 0 if args.seed is None else args.seed

        def make_pipeline():
            return demo_pipeline(seed, steps=10)
    else:
        from vchain.pipeline import VChainPipeline

        settings = _Settings(args)
        seed = settings.seed
        config = _reasoning_config(args)
        reasoner, image_backend = _reasoning_backends(args)

        def make_pipeline():
            generator, tuner = settings.build()
            return VChainPipeline(reasoner, image_backend, generator, tuner, reasoning=config)

    runs = run_suite(make_pipeline, args.output, cases, args.variants, seed=seed)
    print(f"this process ran {len(runs)} run(s); summary in {args.output / 'summary.md'}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from vchain.suite import PAPER_CASES
    from vchain.variants import VARIANTS

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand that is not given -v keeps `vchain -v COMMAND`'s.
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log debug messages (and tracebacks)",
    )
    common.add_argument(
        "-o", "--output", type=_folder, required=True, metavar="DIR",
        help="run folder: artifacts are written here, and a re-run resumes from it",
    )  # fmt: skip
    overwrite = argparse.ArgumentParser(add_help=False)
    overwrite.add_argument(
        "--overwrite", action="store_true",
        help="start the folder over (needed to redo paid reasoning with changed settings)",
    )  # fmt: skip

    parser = argparse.ArgumentParser(
        prog="vchain",
        description="Chain-of-visual-thought video generation: reason keyframes with a multimodal model, "
        "LoRA-tune a video generator on them, sample the video.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages (and tracebacks)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    think = commands.add_parser(
        "think", parents=[common, overwrite], help="stage 1: reason a prompt into keyframes (needs OPENAI_API_KEY)",
        description="Reason PROMPT into a chain of visual thoughts: chain.json, metadata.csv and keyframe PNGs.",
    )  # fmt: skip
    think.add_argument("prompt", help="what the video should show")
    _add_reasoning(think)
    think.set_defaults(run=cmd_think)

    variants_help = "; ".join(f"{name}: {v.description}" for name, v in VARIANTS.items())
    generate = commands.add_parser(
        "generate", parents=[common, overwrite], help="the whole pipeline: reason, tune, sample (GPU and a key)",
        description="Run one of the paper's variants on PROMPT into the output folder. Re-running resumes: "
        "finished stages whose settings are unchanged are not redone.",
    )  # fmt: skip
    generate.add_argument("prompt", help="what the video should show")
    generate.add_argument("--variant", choices=list(VARIANTS), default="vchain", help=variants_help)
    _add_reasoning(generate)
    _add_generator(generate, tuning=True)
    generate.set_defaults(run=cmd_generate)

    tune = commands.add_parser(
        "tune", parents=[common], help="stage 2: tune the generator on a folder's keyframes, save lora/",
        description="LoRA-tune the generator on the chain in the output folder (from `vchain think`). "
        "Settings not given are those the folder recorded; changed ones redo tuning.",
    )  # fmt: skip
    _add_generator(tune, tuning=True)
    tune.set_defaults(run=cmd_tune)

    sample = commands.add_parser(
        "sample", parents=[common], help="stage 3: sample a folder's video (tunes first if needed)",
        description="Sample video.mp4 from the folder's composite prompt with its lora/. Settings not given "
        "are those the folder recorded; a changed seed or size samples again.",
    )  # fmt: skip
    _add_generator(sample, tuning=True)
    sample.set_defaults(run=cmd_sample)

    suite = commands.add_parser(
        "suite", parents=[common], help="the paper's 20 cases x variants; shards under `accelerate launch`",
        description="Run cases x variants into one tree and write summary.csv/.md. Under `accelerate launch "
        "--num_processes N` each process takes its share.",
    )  # fmt: skip
    suite.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["vchain"], help=variants_help)
    suite.add_argument(
        "--cases", default=None, help=f"comma-separated case numbers 0-{len(PAPER_CASES) - 1} (default: all)"
    )
    suite.add_argument("--demo", action="store_true", help="use the offline tiny random models (a dry run)")
    _add_reasoning(suite)
    _add_generator(suite, tuning=True)
    suite.set_defaults(run=cmd_suite)

    demo = commands.add_parser(
        "demo", parents=[common, overwrite], help="every stage offline on tiny random models, in seconds",
        description="Run the whole pipeline on tiny random models and a scripted reasoner.",
    )  # fmt: skip
    demo.add_argument("--seed", type=int, default=None, help="seed of tuning and sampling (default: 0)")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        folder = _run_folder(argv)
        if folder is None:
            return _main(argv)
        from vchain.run import hold

        # Locked before the parser is built (it imports torch): a second process fails within a second.
        with hold(folder):
            return _main(argv)
    except ConfigurationError as e:
        if "-v" in argv or "--verbose" in argv:
            traceback.print_exc()
        print(redact(f"vchain: {e}"), file=sys.stderr)
        return EXIT_USAGE


def _run_folder(argv: list[str]) -> str | None:
    """The run folder a command will write, read from the arguments before anything slow happens."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("command", nargs="?")
    peek.add_argument("-o", "--output")
    known, _ = peek.parse_known_args([a for a in argv if a not in ("-v", "--verbose")])
    return known.output if known.command in RUN_FOLDER_COMMANDS and known.output else None


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except ConfigurationError as e:
        _report(args, f"vchain {args.command}: {e}")
        return EXIT_USAGE
    except VChainError as e:
        _report(args, f"vchain {args.command} failed: {e}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        _report(args, f"vchain {args.command}: unexpected {type(e).__name__}: {e} (run with -v for the traceback)")
        return EXIT_FAILED


def _report(args, message: str) -> None:
    if args.verbose:
        traceback.print_exc()
    print(redact(message), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
