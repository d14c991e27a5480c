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
