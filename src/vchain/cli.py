"""The `vchain` command line: a thin layer over the library. `vchain COMMAND --help` for each command.

Settings flags take their defaults and help from the config classes (`ReasoningConfig`, `LoRAConfig`, the
generator family's sampling config): a flag left out means the config's default, so there is one default
for each. Every setting is checked before any model loads or any request is sent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any

from vchain._redact import protect_logs, redact, scrub_exception
from vchain.errors import ConfigurationError, VChainError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
COMMANDS = ("think", "generate", "tune", "sample", "suite", "demo", "judge", "report")
# Commands whose -o is one run folder (the suite's is a tree of them, each locked on its own).
RUN_FOLDER_COMMANDS = ("think", "generate", "tune", "sample", "demo")

# (flag, config field, extra argparse options) per settings class.
REASONING_FLAGS = (
    ("--max-keyframes", "max_keyframes", {}),
    ("--edit-inputs", "edit_inputs", {}),
    ("--color-correction", "color_correction", {"nargs": "?", "const": 1.0, "metavar": "STRENGTH"}),
    ("--verify-keyframes", "verify_keyframes", {}),
    ("--max-redos", "max_redos", {}),
)
FRAME_FLAGS = (("--width", "width", {}), ("--height", "height", {}))
SAMPLING_FLAGS = (
    ("--height", "height", {}),
    ("--width", "width", {}),
    ("--frames", "num_frames", {}),
    ("--steps", "num_inference_steps", {}),
    ("--guidance", "guidance_scale", {}),
)
ACCELERATION_FLAGS = (
    ("--compile", "compile", {}),
    ("--attention-backend", "attention_backend", {}),
    ("--cache", "cache", {}),
    ("--cache-threshold", "cache_threshold", {}),
    ("--cache-interval", "cache_interval", {}),
)
ACCELERATION_OPTIONS = ("compile", "attention_backend", "cache", "cache_threshold", "cache_interval")
# The chat model's request settings (OpenAI-compatible servers), on the reasoner and on the judge.
CHAT_OPTIONS = ("structured_output", "timeout", "max_tokens", "extra_body")
REASONER_OPTIONS = ("reasoner", "reasoner_model", "base_url", *CHAT_OPTIONS)
IMAGE_OPTIONS = ("image_backend", "image_model", "image_base_url")
GENERATOR_OPTIONS = ("model", "device", "dtype", "quantization", "offload", "vae_tiling")
KEYFRAME_OPTIONS = ("max_keyframes", "edit_inputs", "color_correction", "verify_keyframes", "max_redos")
SAMPLING_ONLY = ("num_frames", "num_inference_steps", "guidance_scale", "seed")
TUNING_OPTIONS = ("steps", "rank", "alpha", "learning_rate", "gradient_checkpointing")
SEARCH_FLAGS = (
    ("--candidates", "candidates", {}),
    ("--objective", "objective", {"nargs": "+", "metavar": "DIMENSION"}),
    ("--rounds", "rounds", {}),
    ("--accept", "accept", {}),
)
JUDGE_OPTIONS = ("judge", "judge_model", "judge_base_url")
TUNING_FLAGS = (
    ("--tune-steps", "steps", {}),
    ("--rank", "rank", {}),
    ("--alpha", "alpha", {}),
    ("--lr", "learning_rate", {}),
    ("--gradient-checkpointing", "gradient_checkpointing", {}),
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (plus where to look) instead of the whole usage."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_config_flags(group, configs: tuple[type, ...], flags) -> None:
    """One flag per config field, typed from the field; help and default from the field (the first config
    that has it), with the defaults of the other configs (families) beside it."""
    for flag, name, extra in flags:
        holders = [c for c in configs if name in c.model_fields]
        field = holders[0].model_fields[name]
        kind = field.annotation
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `X | None`: the flag takes X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        defaults = {c.__name__.removesuffix("SamplingConfig"): c.default(name) for c in holders}
        help_text = (
            holders[0].help(name)
            if len(set(map(repr, defaults.values()))) == 1
            else (f"{field.description} (default: " + ", ".join(f"{k} {v}" for k, v in defaults.items()) + ")")
        )
        options: dict[str, Any] = {"default": None, "dest": name, "help": help_text, **extra}
        if kind is bool:
            options["action"] = "store_true"
        elif typing.get_origin(kind) is tuple:  # a tuple of names: one or more values of the flag
            options["type"] = typing.get_args(kind)[0]
        elif typing.get_origin(kind) is typing.Literal:
            options["choices"] = list(typing.get_args(kind))
        else:
            options["type"] = kind
        group.add_argument(flag, **options)


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"output_dir must be a folder path, got {text!r}")
    return Path(text)


def _flag_names() -> dict[str, str]:
    flags = (*REASONING_FLAGS, *FRAME_FLAGS, *SAMPLING_FLAGS, *TUNING_FLAGS, *ACCELERATION_FLAGS, *SEARCH_FLAGS)
    named = (*REASONER_OPTIONS, *IMAGE_OPTIONS, *GENERATOR_OPTIONS, *JUDGE_OPTIONS, "seed", "offload_text_encoder")
    return {**{d: "--" + d.replace("_", "-") for d in named}, **{name: flag for flag, name, _ in flags}}


def _refuse_unused(args, dests, why: str) -> None:
    """Flags given that this command or variant would not use are refused, never silently ignored."""
    names = _flag_names()
    values = {d: getattr(args, d, None) for d in dests}
    given = list(dict.fromkeys(names[d] for d, v in values.items() if v is not None and v is not False))
    if given:
        raise ConfigurationError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}")


def _check_folder(output: Path, prompt: str, variant: str, *, finished: tuple[str, ...] = ()) -> None:
    """The run folder checked before any model loads: a folder vchain can use, of this prompt and variant,
    with the `finished` stages done and intact."""
    from vchain.run import RunDirectory

    with RunDirectory(output, prompt, variant=variant) as run:
        for stage in finished:
            if not run.finished(stage, None):
                problem = run.damaged(stage) or f"{stage} is not finished"
                raise ConfigurationError(
                    f"{problem} in {str(output)!r}: run `vchain think {prompt!r} -o {output}` first (with "
                    "--overwrite to redo a damaged chain)"
                )


def _given(args, flags) -> dict[str, Any]:
    """The settings the user gave on the command line (the others keep the config's defaults)."""
    return {name: getattr(args, name) for _, name, _ in flags if getattr(args, name, None) is not None}


def _forms(registry: dict) -> str:
    """The kinds a registry (`vchain.backends.REASONERS`, ...) holds, as the command line names them."""
    from vchain.backends import BackendKind

    return " or ".join(BackendKind.of(kind).form(name) for name, kind in registry.items())


def _extra_body(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"top_k\": 20}}', got {text!r}")
    return value


class _Choice:
    """A component named by a flag such as `--reasoner transformers:ID`, from its registry in `vchain.backends`.

    Checked at once: the kind, its model, the settings `given` (a flag the kind does not take is refused) and,
    for a kind that loads weights, the checkpoint; `ambient` settings (device, dtype, the server) go to the
    kinds that take them. `build()` makes it; the caller builds the cheap ones
    before, and the ones that load weights after, every other check.
    """

    def __init__(self, registry: dict, text: str | None, flag: str, *, what: str, model=None, given=(), ambient=None):
        name, _, spec_model = (text or next(iter(registry))).partition(":")  # the first kind is the default
        from vchain.backends import BackendKind

        self.kind = BackendKind.of(registry[name]) if name in registry else None
        if self.kind is None or bool(self.kind.model) != bool(spec_model):
            raise ConfigurationError(f"{flag} must be {_forms(registry)}, got {text!r}")
        self.model = spec_model or model
        takes = self.kind.settings()
        refused = [option for dest, option, value in given if value is not None and dest not in takes]
        if refused:
            verb = "does" if len(refused) == 1 else "do"
            raise ConfigurationError(f"{', '.join(refused)} {verb} not apply to {flag} {name}")
        self.settings = {dest: value for dest, _, value in given if value is not None}
        self.settings.update({k: v for k, v in (ambient or {}).items() if k in takes and v is not None})
        if self.kind.checkpoint:
            from vchain._hub import resolve_pretrained

            resolve_pretrained(self.model, what=what, marker=self.kind.checkpoint, argument=flag)
        self.component = None

    @property
    def loads_weights(self) -> bool:
        return self.kind.checkpoint is not None

    def build(self):
        if self.component is None:
            settings = dict(self.settings)
            if self.loads_weights and "device" in self.kind.settings():  # checked to exist as loading starts
                settings["device"] = _usable_device(settings.get("device"))
            self.component = self.kind.factory(*([] if self.model is None else [self.model]), **settings)
        return self.component


def _loads_weights(registry: dict, text: str | None) -> bool:
    """Whether the kind `text` names (`KIND` or `KIND:MODEL`) loads weights in process; False for an unknown kind,
    which `_Choice` then names."""
    from vchain.backends import BackendKind

    name = (text or next(iter(registry))).partition(":")[0]
    return name in registry and BackendKind.of(registry[name]).checkpoint is not None


def _chat_given(args) -> list[tuple[str, str, Any]]:
    """(setting, flag, value) of the chat model's request flags, for `_Choice`."""
    return [(dest, "--" + dest.replace("_", "-"), getattr(args, dest, None)) for dest in CHAT_OPTIONS]


# ------------------------------------------------------------------------------------ components


def _add_reasoning(parser: argparse.ArgumentParser, *, frame: bool = False) -> None:
    from vchain.backends import IMAGE_BACKENDS, REASONERS
    from vchain.reasoning import ReasoningConfig

    group = parser.add_argument_group("reasoning (OpenAI or any OpenAI-compatible server, or open weights in process)")
    group.add_argument("--reasoner", default=None, help=f"{_forms(REASONERS)} (default: {next(iter(REASONERS))})")
    group.add_argument("--reasoner-model", default=None, help="the OpenAI chat model (default: gpt-4o)")
    group.add_argument("--base-url", default=None, help="the chat model's server (default: OPENAI_BASE_URL)")
    _add_chat_options(group)
    group.add_argument(
        "--image-backend", default=None, help=f"{_forms(IMAGE_BACKENDS)} (default: {next(iter(IMAGE_BACKENDS))})"
    )
    group.add_argument("--image-model", default=None, help="the OpenAI image model (default: gpt-image-1)")
    group.add_argument("--image-base-url", default=None, help="the image model's server (default: OPENAI_BASE_URL)")
    _add_config_flags(group, (ReasoningConfig,), REASONING_FLAGS)
    if frame:
        _add_config_flags(group, (ReasoningConfig,), FRAME_FLAGS)
        _add_device(group, "the local models' device")


def _add_chat_options(group) -> None:
    group.add_argument(
        "--structured-output",
        choices=("auto", "json_schema", "prompt"),
        default=None,
        help="json_schema: the server enforces the answer's schema (OpenAI, vLLM, SGLang); prompt: the schema goes "
        "in the prompt and the JSON is read from the text (any server); auto (default): json_schema, then prompt "
        "for the rest of the run once the server answers without JSON",
    )
    group.add_argument("--timeout", type=float, default=None, help="seconds per request attempt (default: 120)")
    group.add_argument("--max-tokens", type=int, default=None, help="most tokens per answer (default: the server's)")
    group.add_argument(
        "--extra-body",
        type=_extra_body,
        default=None,
        metavar="JSON",
        help="more keys for every chat request, as a JSON object (e.g. '{\"top_k\": 20}')",
    )


def _add_device(group, what: str) -> None:
    group.add_argument("--device", default=None, help=f"{what} (default: cuda if available, else cpu)")
    group.add_argument(
        "--dtype", choices=("bfloat16", "float16", "float32"), default=None, help="weights' dtype (default: bfloat16)"
    )


class _Reasoning:
    """The reasoner and image backend the flags ask for: checked at once, local models loaded by `build()`."""

    def __init__(self, args):
        from vchain.reasoning import ReasoningConfig

        self.config = ReasoningConfig(**_given(args, REASONING_FLAGS), **_given(args, FRAME_FLAGS))
        self.device = _device(getattr(args, "device", None))
        from vchain.backends import IMAGE_BACKENDS, REASONERS

        if args.max_redos is not None and not args.verify_keyframes:
            raise ConfigurationError(
                "--max-redos does not apply without --verify-keyframes (redraws follow a failed "
                "verification): add --verify-keyframes, or leave --max-redos out"
            )
        # Flags the chosen kinds would ignore are refused before any checkpoint is looked up.
        local_reasoner = _loads_weights(REASONERS, args.reasoner)
        local_images = _loads_weights(IMAGE_BACKENDS, args.image_backend)
        if local_reasoner:
            _refuse_unused(
                args, ("reasoner_model", "base_url"), f"to --reasoner {args.reasoner}, which runs in process"
            )
        if local_images:
            _refuse_unused(
                args, ("image_model", "image_base_url"), f"to --image-backend {args.image_backend}, run in process"
            )
        if args.command == "think" and not (local_reasoner or local_images):
            _refuse_unused(args, ("device", "dtype"), "to OpenAI models, which run on their server")
        ambient = {"dtype": getattr(args, "dtype", None), "device": self.device, "base_url": args.base_url}
        # Local checkpoints are found first, then the clients made (both cheap): a bad id or a missing key
        # fails before any model loads.
        self.choices = (
            _Choice(
                REASONERS,
                args.reasoner,
                "--reasoner",
                what="reasoner weights",
                model=args.reasoner_model,
                given=_chat_given(args),
                ambient=ambient,
            ),
            _Choice(
                IMAGE_BACKENDS,
                args.image_backend,
                "--image-backend",
                what="image model weights",
                model=args.image_model,
                ambient={**ambient, "base_url": args.image_base_url},
            ),
        )
        for choice in self.choices:
            if not choice.loads_weights:
                choice.build()

    def build(self):
        """(reasoner, image_backend), loading the local ones."""
        return tuple(choice.build() for choice in self.choices)


def _add_generator(parser: argparse.ArgumentParser) -> None:
    from vchain.backends import GENERATOR_FAMILIES
    from vchain.backends._configs import OFFLOADS, QUANTIZATIONS, Acceleration
    from vchain.lora_config import LoRAConfig

    families = ", ".join(f"{f.name} ({f.pipeline_class})" for f in GENERATOR_FAMILIES.values())
    sampling = tuple(f.sampling_class() for f in GENERATOR_FAMILIES.values())
    group = parser.add_argument_group("video generator (Diffusers-format checkpoints)")
    group.add_argument(
        "--model",
        default=None,
        help=f"checkpoint id or folder; its model_index.json picks the family: {families} (default: the Wan 1.3B)",
    )
    _add_device(group, "torch device")
    group.add_argument("--seed", type=int, default=None, help="sampling seed (default: 0)")
    _add_config_flags(group, sampling, SAMPLING_FLAGS)
    speed = parser.add_argument_group("acceleration (sampling; off by default, quality cost at full size unmeasured)")
    _add_config_flags(speed, (Acceleration,), ACCELERATION_FLAGS)
    speed.add_argument(
        "--offload-text-encoder",
        action="store_true",
        default=None,
        help="keep the text encoder on the CPU except while it encodes (frees 11 GiB for Wan's UMT5-XXL)",
    )
    memory = parser.add_argument_group("memory (large models on small GPUs; the frames stay the same with offload)")
    memory.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default=None,
        help="store the denoiser quantized: int8 or fp8 (torchao, CPU or GPU), nf4 (bitsandbytes, CUDA only); "
        "the LoRA is tuned on top as layers (pip install 'vchain[quant]')",
    )
    memory.add_argument(
        "--offload",
        choices=OFFLOADS,
        default=None,
        help="keep weights on the CPU: model (one model at a time, needs a GPU) or group (one block at a time)",
    )
    memory.add_argument("--vae-tiling", action="store_true", default=None, help="decode the video in tiles")
    _add_config_flags(parser.add_argument_group("sparse tuning (LoRA)"), (LoRAConfig,), TUNING_FLAGS)


def _add_parallel(parser: argparse.ArgumentParser) -> None:
    from vchain.parallel import PARALLEL_MODES

    parser.add_argument(
        "--parallel",
        choices=PARALLEL_MODES,
        default=None,
        help="sample on the processes of `torchrun --nproc_per_node N` or `accelerate launch --num_processes N`: "
        "cfg (the two guidance branches on 2 processes), ulysses or ring (diffusers' context parallelism, CUDA); "
        "rank 0 alone writes the run folder (docs/parallel.md)",
    )


def _launch(args, generation) -> int | None:
    """This process's rank when `--parallel` is given (None otherwise), after every check of the launch; the
    process group is started here. Imports torch only for ulysses/ring's CUDA check."""
    if args.parallel is None:
        return None
    from vchain.parallel import check_launch, check_sampling, init_process_group

    check_sampling(
        args.parallel,
        guidance_scale=generation.sampling.guidance_scale,
        pipeline_class=generation.family.pipeline_class,
        argument="--parallel",
    )
    rank, _ = check_launch(args.parallel, device=generation.device)
    init_process_group(generation.device)
    generation.parallel = args.parallel
    if rank:  # rank 0 shows the progress; the others' log lines say whose they are
        os.environ["TQDM_DISABLE"] = "1"
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(name)s: %(message)s"))
    return rank


def _add_search(parser: argparse.ArgumentParser) -> None:
    from vchain.backends import JUDGES
    from vchain.search import SearchConfig

    group = parser.add_argument_group(
        "test-time search (several seeds scored by a judge; rounds re-plan the keyframes from its critique)"
    )
    _add_config_flags(group, (SearchConfig,), SEARCH_FLAGS)
    group.add_argument(
        "--judge", default=None, help=f"{_forms(JUDGES)} (default when searching: {next(iter(JUDGES))})"
    )
    group.add_argument("--judge-model", default=None, help="the OpenAI judge model (default: gpt-4o)")
    group.add_argument("--judge-base-url", default=None, help="the judge's server (default: OPENAI_BASE_URL)")


class _Search:
    """The search the flags ask for and its judge (from `vchain.backends.JUDGES`): checked at once, a judge that
    loads weights built by `build()`."""

    def __init__(self, args):
        from vchain.backends import JUDGES
        from vchain.search import SearchConfig

        self.config = SearchConfig(**_given(args, SEARCH_FLAGS))
        self.choice = None
        if not self.config.searches:
            _refuse_unused(args, (*JUDGE_OPTIONS, "accept", "objective"), "without --candidates above 1 or --rounds")
            self.config = None
            return
        ambient = {"base_url": args.judge_base_url, "dtype": getattr(args, "dtype", None)}
        if args.judge is not None and ":" in args.judge:  # a local judge: its device
            ambient["device"] = _device(getattr(args, "device", None))
        local = _loads_weights(JUDGES, args.judge)
        if local:
            _refuse_unused(args, ("judge_model", "judge_base_url"), "to a local judge (--judge transformers:...)")
        self.choice = _Choice(
            JUDGES, args.judge, "--judge", what="judge weights", model=args.judge_model, ambient=ambient
        )
        if self.choice.kind.dimensions is not None:  # a judge of fewer dimensions: the objective checked now
            from vchain.search import check_objective

            check_objective(self.config.objective, self.choice.kind.dimensions, f"--judge {args.judge}")
        if not local:
            self.choice.build()  # a served judge is cheap to make, and a missing key shows before any work

    def build(self):
        """The judge (None without a search), loading a local one."""
        return None if self.choice is None else self.choice.build()


def _device(name: str | None) -> str | None:
    """`--device` checked for its form only (no torch import); `_usable_device` checks it is here."""
    if name is not None and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ConfigurationError(f"--device must be cpu, cuda[:N] or mps, got {name!r}")
    return name


def _usable_device(name: str | None) -> str:
    """The device, checked to exist here (cuda by default when there is one): the first step of loading."""
    from vchain.config import check_device

    return check_device(name, "--device")


class _Generation:
    """Generator and tuner settings: recorded in a run folder, then overridden by the flags given."""

    def __init__(self, args, recorded: dict | None = None):
        from vchain.backends import family_of_generator, generator_family
        from vchain.pipeline import check_seed

        recorded = recorded or {}
        self.model = args.model if args.model is not None else recorded.get("model_id")
        if args.model is not None or not recorded:
            self.family = generator_family(self.model)
        else:
            self.family = family_of_generator(recorded.get("class"))
        sampling_class, tuning_class = self.family.sampling_class(), self.family.tuning_class()
        if recorded.get("class") not in (None, self.family.generator):
            # Another family's settings mean other things (or nothing) to this one: it starts from its own
            # defaults and keeps only the run's frame size.
            frame = {k: v for k, v in recorded.get("sampling", {}).items() if k in ("height", "width")}
            recorded = {k: v for k, v in recorded.items() if k in ("seed",)} | {"sampling": frame}
        self.dtype = args.dtype or recorded.get("dtype") or "bfloat16"
        self.device = _device(args.device)
        self.seed = check_seed(args.seed if args.seed is not None else recorded.get("seed", 0))
        given = _given(args, SAMPLING_FLAGS)
        foreign = [
            flag for flag, name, _ in SAMPLING_FLAGS if name in given and name not in sampling_class.model_fields
        ]
        if foreign:
            raise ConfigurationError(f"{', '.join(foreign)} does not apply to {self.family.name} checkpoints")
        self.sampling = sampling_class(**{**recorded.get("sampling", {}), **given}).check()
        self.tuning = tuning_class(**{**recorded.get("tuning", {}), **_given(args, TUNING_FLAGS)})
        from vchain.backends._configs import Acceleration

        switches = _given(args, ACCELERATION_FLAGS)
        if switches.get("attention_backend") and not self.family.dispatches_attention:
            raise ConfigurationError(
                f"--attention-backend does not apply to {self.family.name} checkpoints: their "
                "attention calls torch directly, not diffusers' dispatcher"
            )
        kept = dict(recorded.get("acceleration", {}))
        if kept.get("cache") is None or switches.get("cache", kept.get("cache")) != kept.get("cache"):
            # A cache's knobs carry over with it only (older runs recorded a threshold with no cache at all).
            for knob in ("cache_threshold", "cache_interval"):
                kept.pop(knob, None)
        self.acceleration = Acceleration(**{**kept, **switches})
        self.offload_text_encoder = bool(args.offload_text_encoder)
        # The quantization is the weights' storage, like the dtype: kept from the run unless given.
        self.quantization = args.quantization or recorded.get("quantization")
        self.offload, self.vae_tiling = args.offload, bool(args.vae_tiling)
        if self.offload and self.offload_text_encoder:
            raise ConfigurationError(
                "--offload already keeps the text encoder on the CPU; drop --offload-text-encoder"
            )
        self.parallel: str | None = None  # set by `_launch`

    def build(self):
        """Load the generator (and make the tuner): the one slow step, after every check passed."""
        generator_class, tuner_class = self.family.generator_class(), self.family.tuner_class()
        parallel = {}
        if self.parallel is not None:
            from vchain.parallel import rank_device

            parallel = {"parallel": self.parallel, "device": rank_device(self.device)}
        device = _usable_device(parallel.pop("device", self.device))
        generator = generator_class.from_pretrained(
            self.model,
            dtype=self.dtype,
            device=device,
            offload_text_encoder=self.offload_text_encoder,
            quantization=self.quantization,
            offload=self.offload,
            vae_tiling=self.vae_tiling,
            **parallel,
            **self.sampling.model_dump(),
            **self.acceleration.model_dump(),
        )
        return generator, tuner_class(self.tuning)


def _recorded(output: Path) -> tuple[str, str, dict]:
    """Prompt, variant and the generator/tuner settings a run folder recorded."""
    from vchain.chain import CHAIN_FILE, ThoughtChain
    from vchain.run import MANIFEST_FILE, read_manifest

    if not (output / MANIFEST_FILE).is_file():
        if (output / CHAIN_FILE).is_file():  # the paper's artifacts alone: a chain to tune and sample
            return ThoughtChain.load(output, with_images=False).input_prompt, "vchain", {}
        raise ConfigurationError(f"no run in {str(output)!r}: run `vchain think PROMPT -o {output}` first")
    manifest = read_manifest(output)
    stages = manifest.stages
    sampled = stages.sampling.inputs.get("generator") or {}
    tuned = stages.tuning.inputs.get("generator") or {}
    tuner = stages.tuning.inputs.get("tuner") or {}
    recorded = {
        "class": sampled.get("class") or tuned.get("class"),
        "model_id": sampled.get("model_id") or tuned.get("model_id"),
        "dtype": sampled.get("dtype") or tuned.get("dtype"),
        "quantization": sampled.get("quantization") or tuned.get("quantization"),
        "sampling": dict(sampled.get("config") or {}),
        "acceleration": dict(sampled.get("acceleration") or {}),
        "tuning": {k: v for k, v in (tuner.get("config") or {}).items() if k != "target_modules"},
    }
    if not recorded["sampling"] and stages.tuning.inputs.get("frame"):
        width, height = stages.tuning.inputs["frame"]
        recorded["sampling"] = {"width": width, "height": height}
    if stages.sampling.seed is not None:
        recorded["seed"] = stages.sampling.seed
    return manifest.prompt, manifest.variant, {k: v for k, v in recorded.items() if v is not None}


# -------------------------------------------------------------------------------------- commands


def cmd_think(args) -> int:
    from vchain.chain import check_prompt
    from vchain.pipeline import VChainPipeline
    from vchain.run import check_output_dir

    check_prompt(args.prompt)
    check_output_dir(args.output, create=False)
    reasoning = _Reasoning(args)
    pipe = VChainPipeline(*reasoning.build(), reasoning=reasoning.config, release_between_stages=True)
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
    why = f"to the {spec.name} variant, which"
    if spec.reasoning is None:
        _refuse_unused(args, (*KEYFRAME_OPTIONS, *REASONER_OPTIONS, *IMAGE_OPTIONS), f"{why} does not reason")
    elif spec.reasoning == "augment":
        _refuse_unused(args, (*KEYFRAME_OPTIONS, *IMAGE_OPTIONS), f"{why} only rewrites the prompt")
    if not spec.tuning:
        _refuse_unused(args, TUNING_OPTIONS, f"{why} does not tune")
    if spec.render == "interpolator":
        sampling_only = ("num_inference_steps", "guidance_scale", "seed", *ACCELERATION_OPTIONS)
        _refuse_unused(args, sampling_only, f"{why} interpolates the keyframes")
    generation = _Generation(args)
    if spec.guided:
        from vchain.interfaces import KeyframeConditionedGenerator

        if not issubclass(generation.family.generator_class(), KeyframeConditionedGenerator):
            raise ConfigurationError(
                f"--variant {spec.name} places the keyframes in the video, which needs a keyframe-conditioned "
                f"model (a WanVACEPipeline checkpoint such as Wan-AI/Wan2.1-VACE-1.3B-diffusers); --model "
                f"{generation.model or generation.family.generator_class().default_model!r} is a "
                f"{generation.family.pipeline_class}"
            )
    search = _Search(args)
    if search.config is not None:
        from vchain.search import check_applies

        check_applies(search.config, spec, args.output)
    reasoning = _Reasoning(args) if spec.reasoning is not None else None  # keys are checked before any load
    if args.parallel is not None:
        from vchain.parallel import check_variant

        check_variant(args.parallel, spec.name, search.config, argument="--parallel", variant_argument="--variant")
    rank = _launch(args, generation)
    if not rank:
        _check_folder(args.output, args.prompt.strip(), args.variant)
    # Reasoning costs money: rank 0 alone reasons; the other ranks read its chain.
    reasoner, image_backend = reasoning.build() if reasoning and not rank else (None, None)
    judge = search.build()
    generator, tuner = generation.build()
    config = reasoning.config if reasoning else None
    pipe = VChainPipeline(
        reasoner,
        image_backend,
        generator,
        tuner if spec.tuning else None,
        reasoning=config,
        judge=judge,
        release_between_stages=True,
    )
    run = {"variant": args.variant, "seed": generation.seed, "search": search.config}
    if rank is None:
        out = pipe(args.prompt, args.output, overwrite=args.overwrite, **run)
    else:
        from vchain.parallel import pipeline_on_ranks

        out = pipeline_on_ranks(pipe, args.prompt, args.output, overwrite=args.overwrite, **run)
        if rank:
            return EXIT_OK
    print(f"{args.variant}: {len(out.frames)} frames -> {out.video_path}")
    found = out.manifest.stages.sampling.search if out.manifest is not None else None
    if found is not None and found.winner_round is not None:
        judged = sum(len(r.candidates) for r in found.rounds)
        print(f"search: round {found.winner_round}, seed {found.winner_seed} is the best of {judged} candidate(s)")
    return EXIT_OK


def cmd_tune(args) -> int:
    from vchain.pipeline import VChainPipeline
    from vchain.variants import get_variant

    prompt, variant, recorded = _recorded(args.output)
    if not get_variant(variant).tuning:
        raise ConfigurationError(f"{str(args.output)!r} holds a {variant!r} run, which does not tune")
    _refuse_unused(
        args,
        (*SAMPLING_ONLY, *ACCELERATION_OPTIONS),
        "to tune, which trains at the frame size only (give them to sample)",
    )
    generation = _Generation(args, recorded)
    _check_folder(args.output, prompt, variant, finished=("reasoning",))
    generator, tuner = generation.build()
    out = VChainPipeline(generator=generator, tuner=tuner)(prompt, args.output, variant=variant, stop_after="tuning")
    record = out.manifest.stages.tuning
    where = args.output / "lora" if record.outputs else "memory only (not saved)"
    if "tuning" in out.ran:
        print(f"tuned in {record.total_seconds:.1f} s; adapter in {where}")
    else:
        print(f"reused the adapter tuned earlier with these settings, in {where}")
    return EXIT_OK


def cmd_sample(args) -> int:
    from vchain.pipeline import VChainPipeline
    from vchain.variants import get_variant

    prompt, variant, recorded = _recorded(args.output)
    spec = get_variant(variant)
    if not spec.tuning:
        _refuse_unused(args, TUNING_OPTIONS, f"to this {variant} run, which does not tune")
    generation = _Generation(args, recorded)
    rank = _launch(args, generation)
    if not rank:
        _check_folder(args.output, prompt, variant, finished=("reasoning",) if spec.reasoning == "chain" else ())
    generator, tuner = generation.build()
    tuner = tuner if spec.tuning else None
    pipe = VChainPipeline(generator=generator, tuner=tuner)
    if rank is None:
        out = pipe(prompt, args.output, variant=variant, seed=generation.seed)
    else:
        from vchain.parallel import run_on_ranks

        # Rank 0 tunes (if the folder has no adapter yet); the others load its adapter.
        def prepare(folder: Path) -> None:
            pipe(prompt, folder, variant=variant, seed=generation.seed, stop_after="tuning")

        out = run_on_ranks(
            args.output,
            lambda folder, _: pipe(prompt, folder, variant=variant, seed=generation.seed),
            prepare=prepare if spec.tuning else None,
        )
        if rank:
            return EXIT_OK
    print(f"{len(out.frames)} frames -> {out.video_path}")
    return EXIT_OK


def cmd_export_lora(args) -> int:
    from vchain.lora_files import export_lora

    written = export_lora(args.run_dir, args.output, args.format)
    for path in written:
        print(f"{args.format} LoRA -> {path}")
    return EXIT_OK


def cmd_demo(args) -> int:
    from vchain.pipeline import check_seed
    from vchain.run import check_output_dir

    check_output_dir(args.output, create=False)
    seed = check_seed(0 if args.seed is None else args.seed)
    from vchain.testing import DEMO_PROMPT, demo_pipeline

    kind = "open-weight " if args.open_weights else ""
    print(
        f"vchain demo: every stage on tiny RANDOM {kind}models, offline. The video is noise from untrained "
        "weights; it shows the machinery and the run folder, not the method's quality."
    )
    _check_folder(args.output, DEMO_PROMPT, "vchain")
    if args.open_weights:
        from vchain.testing.demo import open_weights_demo_pipeline

        pipe = open_weights_demo_pipeline(seed)
    else:
        pipe = demo_pipeline(seed)
    out = pipe(DEMO_PROMPT, output_dir=args.output, seed=seed, overwrite=args.overwrite)
    for name, record in out.manifest.stages:
        when = "this time" if name in out.ran else "reused"
        steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in record.seconds.items())
        print(
            f"  {name:<10} {record.status:<8} {when:<9} {record.total_seconds:.2f} s" + (f"  ({steps})" * bool(steps))
        )
    print(f"{len(out.chain.images)} keyframes, {len(out.frames)} frames -> {out.video_path}")
    return EXIT_OK


def cmd_suite(args) -> int:
    from vchain.cases import load_cases
    from vchain.run import check_output_dir
    from vchain.suite import PAPER_CASES, parse_cases, parse_seeds, run_suite, unfinished_runs

    check_output_dir(args.output, create=False)
    prompts = load_cases(args.prompts) if args.prompts is not None else PAPER_CASES
    cases = parse_cases(args.cases, len(prompts)) if args.cases is not None else list(range(len(prompts)))
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if seeds is not None and args.seed is not None:
        raise ConfigurationError("--seed and --seeds do not go together: give the one seed as --seeds N")
    search = _Search(args)
    if args.parallel is not None:
        if args.demo:
            raise ConfigurationError(
                f"--parallel {args.parallel} does not go with --demo, whose tiny models sample on one process; give "
                "--model (a Wan checkpoint) instead"
            )
        from vchain.parallel import check_variant

        for variant in args.variants:
            check_variant(args.parallel, variant, search.config, argument="--parallel", variant_argument="--variants")
    rank = None
    if args.demo:
        fixed = (*REASONING_FLAGS, *SAMPLING_FLAGS, *TUNING_FLAGS, *ACCELERATION_FLAGS)
        models = (*REASONER_OPTIONS, *IMAGE_OPTIONS, *GENERATOR_OPTIONS, "offload_text_encoder")
        _refuse_unused(args, (*(name for _, name, _ in fixed), *models), "to --demo, which runs fixed tiny models")
        from vchain.pipeline import check_seed

        seed = check_seed(0 if args.seed is None else args.seed)
        from vchain.testing import demo_pipeline

        def make_pipeline():
            # The tiny models' weights come from this seed; each run samples with its own (--seeds).
            pipe = demo_pipeline(seed, steps=10)
            pipe.judge = search.build()
            return pipe
    else:
        from vchain.pipeline import VChainPipeline

        generation, reasoning = _Generation(args), _Reasoning(args)
        seed = generation.seed
        rank = _launch(args, generation)  # with --parallel: every rank samples every run; rank 0 alone reasons

        def make_pipeline():
            generator, tuner = generation.build()
            return VChainPipeline(
                *(reasoning.build() if not rank else (None, None)),
                generator,
                tuner,
                reasoning=reasoning.config,
                judge=search.build(),
                release_between_stages=True,
            )

    runs = run_suite(
        make_pipeline,
        args.output,
        cases,
        args.variants,
        prompts=prompts,
        seed=seed,
        seeds=seeds,
        search=search.config,
        parallel=args.parallel,
    )
    if rank:
        return EXIT_OK  # rank 0 reports
    print(f"this process ran {len(runs)} run(s); summary in {args.output / 'summary.md'}")
    unfinished = unfinished_runs(runs)
    if unfinished:
        print(
            f"vchain suite: {len(unfinished)} of {len(runs)} run(s) did not finish: {', '.join(unfinished)}; "
            "re-run the same command to resume them",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def cmd_judge(args) -> int:
    from vchain.evaluation import check_options
    from vchain.judging import JudgingConfig, finished_runs, judge_runs

    # A bad folder, meta key or labels file fails before any key or model is needed.
    runs = finished_runs(args.runs_dir)
    check_options(args.runs_dir, runs, baseline=args.baseline, by=args.by, labels=args.calibrate)
    config = JudgingConfig(**({"frames": args.frames} if args.frames is not None else {}))
    from vchain.backends import JUDGES

    if _loads_weights(JUDGES, args.judge):
        _refuse_unused(args, ("judge_model", "base_url"), f"to --judge {args.judge}, run in process")
    else:
        _refuse_unused(args, ("device", "dtype"), "to an OpenAI judge, which runs on its server")
    ambient = {"grid": args.grid, "dtype": args.dtype, "device": _device(args.device), "base_url": args.base_url}
    choice = _Choice(
        JUDGES,
        args.judge,
        "--judge",
        what="judge weights",
        model=args.judge_model,
        given=_chat_given(args),
        ambient=ambient,
    )
    result = judge_runs(
        args.runs_dir, choice.build(), config, baseline=args.baseline, by=args.by, labels=args.calibrate
    )
    print(result.summary_md.read_text(encoding="utf-8").rstrip())
    written = [result.summary_md, result.paired_md, result.calibration_md]
    print(
        f"{result.usage.requests} request(s) this time; scores in each run's scores.json; "
        f"{', '.join(path.name for path in written if path)} in {args.runs_dir}"
    )
    return EXIT_OK


def cmd_export(args) -> int:
    from vchain.export import export_videos

    exported = export_videos(args.runs_dir, args.output, args.layout, seed=args.seed)
    variants = sorted({video.variant for video in exported})
    print(f"{len(exported)} video(s) of {', '.join(variants)} copied to {args.output} in the {args.layout} layout")
    return EXIT_OK


def cmd_report(args) -> int:
    from vchain.report import write_report

    path = write_report(args.runs_dir, args.output)
    print(f"report: {path}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ parser


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `vchain` parser; with `only`, the flags of that command alone (`""`: of none), so that reading the
    arguments of one command imports only the settings classes it needs."""

    def full(name: str) -> bool:
        return only is None or only == name

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand that is not given -v keeps `vchain -v COMMAND`'s.
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages (and tracebacks)"
    )
    output = argparse.ArgumentParser(add_help=False, parents=[common])
    output.add_argument(
        "-o",
        "--output",
        type=_folder,
        required=True,
        metavar="DIR",
        help="run folder: artifacts are written here, and a re-run resumes from it",
    )
    overwrite = argparse.ArgumentParser(add_help=False)
    overwrite.add_argument(
        "--overwrite",
        action="store_true",
        help="start the folder over (needed to redo paid reasoning with changed settings)",
    )

    parser = _Parser(
        prog="vchain",
        description="Chain-of-visual-thought video generation: reason keyframes with a multimodal model, "
        "LoRA-tune a video generator on them, sample the video.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages (and tracebacks)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    think = commands.add_parser(
        "think",
        parents=[output, overwrite],
        help="stage 1: reason a prompt into keyframes",
        description="Reason PROMPT into a chain of visual thoughts: chain.json, metadata.csv and keyframe PNGs.",
    )
    think.set_defaults(run=cmd_think)
    if full("think"):
        think.add_argument("prompt", help="what the video should show")
        _add_reasoning(think, frame=True)

    generate = commands.add_parser(
        "generate",
        parents=[output, overwrite],
        help="the whole pipeline: reason, tune, sample (GPU)",
        description="Run one of the paper's variants on PROMPT into the output folder. Re-running resumes: "
        "finished stages whose settings are unchanged are not redone.",
    )
    generate.set_defaults(run=cmd_generate)
    if full("generate"):
        generate.add_argument("prompt", help="what the video should show")
        generate.add_argument("--variant", choices=list(_variants()), default="vchain", help=_variants_help())
        _add_reasoning(generate)
        _add_generator(generate)
        _add_parallel(generate)
        _add_search(generate)

    tune = commands.add_parser(
        "tune",
        parents=[output],
        help="stage 2: tune the generator on a folder's keyframes, save lora/",
        description="LoRA-tune the generator on the chain in the output folder (from `vchain think`). "
        "Settings not given are those the folder recorded; changed ones redo tuning.",
    )
    tune.set_defaults(run=cmd_tune)
    if full("tune"):
        _add_generator(tune)

    sample = commands.add_parser(
        "sample",
        parents=[output],
        help="stage 3: sample a folder's video (tunes first if needed)",
        description="Sample video.mp4 from the folder's composite prompt with its lora/. Settings not given "
        "are those the folder recorded; a changed seed or size samples again.",
    )
    sample.set_defaults(run=cmd_sample)
    if full("sample"):
        _add_generator(sample)
        _add_parallel(sample)

    suite = commands.add_parser(
        "suite",
        parents=[output],
        help="a prompt set's cases x variants x seeds; shards under `accelerate launch`",
        description="Run cases x variants (x seeds) of a prompt set (the paper's 20 cases by default) into one "
        "tree and write summary.csv/.md. Under `accelerate launch --num_processes N` each process takes its share.",
    )
    suite.set_defaults(run=cmd_suite)
    if full("suite"):
        from vchain.suite import PAPER_CASES

        suite.add_argument(
            "--variants", nargs="+", choices=list(_variants()), default=["vchain"], help=_variants_help()
        )
        suite.add_argument(
            "--prompts",
            type=Path,
            default=None,
            metavar="FILE",
            help=f"the prompt set: .txt (a prompt a line), .json/.jsonl (strings, or objects with caption, prompt or "
            f"text: PhyGenBench's prompts.json as it is) or .csv (a caption or prompt column); other fields are kept "
            f"as each case's meta (default: the paper's {len(PAPER_CASES)} cases)",
        )
        suite.add_argument(
            "--cases", default=None, help="comma-separated case numbers, indices into the prompt set (default: all)"
        )
        suite.add_argument(
            "--seeds",
            default=None,
            metavar="S,S,...",
            help="run every case and variant once per seed, each in <case>/<variant>/seed-<s> (default: one run "
            "with --seed)",
        )
        suite.add_argument("--demo", action="store_true", help="use the offline tiny random models (a dry run)")
        _add_reasoning(suite)
        _add_generator(suite)
        _add_parallel(suite)
        _add_search(suite)

    export_lora = commands.add_parser(
        "export-lora",
        parents=[common],
        help="write a run folder's tuned LoRA for ComfyUI or diffusers",
        description="Write the LoRA tuned in RUN_DIR (its lora/) to FILE_OR_DIR. comfyui: the original Wan "
        "module names with lora_down/lora_up and alpha, what ComfyUI's LoRA loaders and diffusers' "
        "load_lora_weights read (Wan2.2: a _high_noise and a _low_noise file). diffusers: a folder with "
        "pytorch_lora_weights.safetensors. The run folder is not changed; existing files are not replaced.",
    )
    export_lora.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export_lora.add_argument(
        "--format", choices=["comfyui", "diffusers"], default="comfyui", help="comfyui (default) or diffusers"
    )
    export_lora.add_argument(
        "-o",
        "--output",
        type=_folder,
        required=True,
        metavar="FILE_OR_DIR",
        help="a .safetensors file (comfyui) or a folder",
    )
    export_lora.set_defaults(run=cmd_export_lora)

    demo = commands.add_parser(
        "demo",
        parents=[output, overwrite],
        help="every stage offline on tiny random models, in seconds",
        description="Run the whole pipeline on tiny random models: a scripted reasoner and drawn keyframes, "
        "or with --open-weights a local vision-language model and a diffusers image editor.",
    )
    demo.add_argument("--seed", type=int, default=None, help="seed of tuning and sampling (default: 0)")
    demo.add_argument(
        "--open-weights",
        action="store_true",
        help="reason with a tiny Qwen2.5-VL and edit with a tiny Qwen-Image-Edit-Plus, loaded from folders",
    )
    demo.set_defaults(run=cmd_demo)

    judge = commands.add_parser(
        "judge",
        parents=[common],
        help="score every finished run below a folder with a vision-language model",
        description="Score each finished run folder below RUNS_DIR on the six dimensions of the paper's study "
        "into its scores.json (cached by judge and video), and write judge-summary.csv/.md and "
        "judge-paired.csv/.md (each variant against --baseline) into RUNS_DIR.",
    )
    if full("judge"):
        from vchain.backends import JUDGES

        judge.add_argument("runs_dir", type=Path, metavar="RUNS_DIR")
        judge.add_argument("--judge", default=None, help=f"{_forms(JUDGES)} (default: {next(iter(JUDGES))})")
        judge.add_argument("--judge-model", default=None, help="the OpenAI judge model (default: gpt-4o)")
        judge.add_argument("--base-url", default=None, help="the judge's server (default: OPENAI_BASE_URL)")
        _add_chat_options(judge)
        judge.add_argument("--frames", type=int, default=None, help="frames sampled from each video (default: 8)")
        judge.add_argument("--grid", action="store_true", help="send the frames tiled into one image")
        judge.add_argument(
            "--baseline",
            default="t2v",
            choices=list(_variants()),
            help="the variant every other is compared with in judge-paired.csv/.md, on the same cases and seeds "
            "(default: t2v)",
        )
        judge.add_argument(
            "--by",
            default=None,
            metavar="KEY",
            help="also compare per value of this case meta key (a column of the --prompts file, e.g. main_category)",
        )
        judge.add_argument(
            "--calibrate",
            type=Path,
            default=None,
            metavar="LABELS.csv",
            help="people's 1-5 scores (a run column, relative to RUNS_DIR, and a column per dimension): measure each "
            "judge's agreement with them into judge-calibration.json/.md",
        )
        _add_device(judge, "the local judge's device")
    judge.set_defaults(run=cmd_judge)

    from vchain.export import LAYOUTS

    export = commands.add_parser(
        "export",
        parents=[common],
        help="copy a suite's videos into a benchmark's file layout",
        description="Copy every finished run's video below RUNS_DIR into OUT, named as the benchmark's own "
        "evaluator expects (" + "; ".join(layout.description for layout in LAYOUTS.values()) + "). Videos are "
        "copied as they are; OUT/vchain-export.json says which run each file came from.",
    )
    export.add_argument("runs_dir", type=Path, metavar="RUNS_DIR")
    export.add_argument("--layout", required=True, choices=list(LAYOUTS), help="the benchmark's file naming")
    export.add_argument("-o", "--output", type=_folder, required=True, metavar="OUT", help="the folder to fill")
    export.add_argument("--seed", type=int, default=None, help="the seed to export (required with several)")
    export.set_defaults(run=cmd_export)

    report = commands.add_parser(
        "report",
        parents=[common],
        help="one static HTML page comparing the variants of every case",
        description="Write one HTML page (relative links) with each case's variants side by side: video, "
        "keyframes with captions, scores.",
    )
    report.add_argument("runs_dir", type=Path, metavar="RUNS_DIR")
    report.add_argument("-o", "--output", type=_folder, required=True, metavar="FILE", help="the page to write")
    report.set_defaults(run=cmd_report)
    return parser


def _variants() -> dict:
    from vchain.variants import VARIANTS

    return VARIANTS


def _variants_help() -> str:
    return "; ".join(f"{name}: {v.description}" for name, v in _variants().items())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    protect_logs()
    try:
        folder = _run_folder(argv)
        if folder is None:
            return _main(argv)
        from vchain._lock import hold

        # Locked before anything slow: a second process fails within a second.
        with hold(folder):
            return _main(argv)
    except ConfigurationError as e:
        if "-v" in argv or "--verbose" in argv:
            _print_traceback(e)
        print(redact(f"vchain: {e}"), file=sys.stderr)
        return EXIT_USAGE


def _run_folder(argv: list[str]) -> str | None:
    """The run folder a command will write, read from the arguments before anything slow happens."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("command", nargs="?")
    peek.add_argument("-o", "--output")
    peek.add_argument("--parallel")
    known, _ = peek.parse_known_args([a for a in argv if a not in ("-v", "--verbose")])
    if known.parallel and os.environ.get("RANK", "0") != "0":
        return None  # only rank 0 of a launch writes the folder; the others work on a copy
    return known.output if known.command in RUN_FOLDER_COMMANDS and known.output else None


def _optional_values(argv: list[str]) -> list[str]:
    """`--color-correction` followed by something that is no strength is the bare flag: argparse would take
    the next argument (the prompt, say) as its value and fail on it."""
    fixed = list(argv)
    for i, token in enumerate(fixed[:-1]):
        if token == "--color-correction" and not _is_float(fixed[i + 1]):
            fixed[i] = "--color-correction=1.0"
    return fixed


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


QUIET_ON_IMPORT = ("torchao", "bitsandbytes", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


def _main(argv: list[str]) -> int:
    command = next((a for a in argv if a in COMMANDS), "")
    parser = build_parser(only=command)
    args = parser.parse_args(_optional_values(argv))
    # vchain says what it does; the libraries below it only speak up for warnings (or with -v).
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("vchain").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # import-time notes of the quantization packages: kernels for other hardware, old APIs
        for name in QUIET_ON_IMPORT:
            logging.getLogger(name).setLevel(logging.ERROR)
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # log lines go above the progress bars, never into them
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
        _print_traceback(sys.exc_info()[1])
    print(redact(message), file=sys.stderr)


def _print_traceback(error: BaseException | None) -> None:
    """The traceback of `error` and the exceptions chained to it, with every secret redacted."""
    if error is not None:
        scrub_exception(error)
        print(redact("".join(traceback.format_exception(error))), end="", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
