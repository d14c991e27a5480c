"""Sampling on several processes of one launch (`torchrun --nproc_per_node N`, `accelerate launch
--num_processes N`).

- `cfg`: the two classifier-free-guidance branches on two ranks. Each step rank 0 runs the conditional and
  rank 1 the unconditional transformer forward (same latents, same timestep); the two predictions are
  gathered, and both ranks combine them as one process would, so their latents stay identical.
- `ulysses` / `ring`: diffusers' context parallelism: every attention is split along the sequence over the
  ranks (`diffusers.ContextParallelConfig(ulysses_degree=N)` or `(ring_degree=N)`). CUDA and NCCL only.

Only rank 0 writes the run folder (and holds its lock): the other ranks wait until rank 0 has done what
costs money or must happen once (reasoning, tuning), then work on a private copy of the folder, which is
deleted afterwards (`run_on_ranks`). The checks at the top import no torch, so the command line refuses a bad
launch before anything loads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from vchain._redact import redact
from vchain.errors import ConfigurationError, VChainError

PARALLEL_MODES = ("cfg", "ulysses", "ring")
# Pipelines whose __call__ runs the transformer once per guidance branch (cond, then uncond): the ones `cfg`
# can split. CogVideoX batches both branches into one call.
CFG_SPLIT_PIPELINES = ("WanPipeline", "WanVACEPipeline")
# Pipelines whose transformer has a context-parallel plan in diffusers (`_cp_plan`): Wan's, not VACE's or
# CogVideoX's.
CONTEXT_PARALLEL_PIPELINES = ("WanPipeline",)
LAUNCH = "torchrun --nproc_per_node {n} -m vchain.cli ... (or accelerate launch --num_processes {n} -m vchain.cli ...)"

T = TypeVar("T")


def check_mode(mode: object, *, argument: str = "parallel") -> str | None:
    if mode is not None and mode not in PARALLEL_MODES:
        raise ConfigurationError(f"{argument} must be None or one of {list(PARALLEL_MODES)}, got {mode!r}")
    return mode


def check_sampling(mode: str | None, *, guidance_scale: float, pipeline_class: str, argument: str = "parallel"):
    """`mode` checked against what it splits: cfg needs two guidance branches, run in two transformer calls;
    ulysses and ring a transformer that diffusers knows how to split."""
    if mode in ("ulysses", "ring") and pipeline_class not in CONTEXT_PARALLEL_PIPELINES:
        raise ConfigurationError(
            f"{_named(argument, mode)} is diffusers' context parallelism, which has a plan for the transformer of "
            f"{', '.join(CONTEXT_PARALLEL_PIPELINES)} only, not of {pipeline_class}; use --parallel cfg"
        )
    if mode != "cfg":
        return
    named = _named(argument, mode)
    if guidance_scale <= 1:
        raise ConfigurationError(
            f"{named} splits the two classifier-free-guidance branches over two processes, but the guidance is "
            f"{guidance_scale} (at 1 or below there is one branch): raise the guidance above 1, or leave "
            f"{argument} out"
        )
    if pipeline_class not in CFG_SPLIT_PIPELINES:
        raise ConfigurationError(
            f"{named} needs a pipeline that runs each guidance branch in its own transformer call "
            f"({', '.join(CFG_SPLIT_PIPELINES)}); {pipeline_class} batches them"
        )


def check_variant(
    mode: str, variant: str, search: object = None, *, argument: str = "parallel", variant_argument: str = "variant"
) -> None:
    """`mode` splits the generator's sampling: a run whose other stages would repeat on every rank (a search's
    judge and re-planning, a prompt rewrite) or that does not sample with the generator is refused."""
    from vchain.variants import get_variant

    spec = get_variant(variant)
    if search is not None:
        how = "--candidates, --rounds" if argument.startswith("--") else "search="
        raise ConfigurationError(
            f"{_named(argument, mode)} does not go with a search ({how}): its judge and re-planning would run on "
            f"every process; search without {argument}"
        )
    if spec.reasoning == "augment" or spec.render == "interpolator":
        what = "rewrites the prompt" if spec.reasoning == "augment" else "interpolates the keyframes"
        raise ConfigurationError(
            f"{_named(argument, mode)} does not apply to {_named(variant_argument, spec.name)}, which {what} (run "
            f"it without {argument})"
        )


def _named(argument: str, mode: str) -> str:
    """The setting as the caller wrote it: `--parallel cfg` on the command line, `parallel='cfg'` in Python."""
    return f"{argument} {mode}" if argument.startswith("--") else f"{argument}={mode!r}"


def check_launch(mode: str, *, device: str | None = None, argument: str = "--parallel") -> tuple[int, int]:
    """(rank, world size) of this process as the launcher set them; an error without a launcher, with a world
    size `mode` cannot use, or (`ulysses`, `ring`) on a CPU. Imports torch only for the CUDA check."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigurationError(
            f"{argument} {mode} runs on several processes, and this one was started alone (no RANK or WORLD_SIZE "
            f"in the environment): launch it with {LAUNCH.format(n=2)}"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if mode == "cfg" and world != 2:
        raise ConfigurationError(
            f"{argument} cfg runs the two guidance branches on exactly 2 processes, but the world size is {world}: "
            f"launch it with {LAUNCH.format(n=2)}"
        )
    if mode != "cfg":
        if world < 2:
            raise ConfigurationError(f"{argument} {mode} needs at least 2 processes, but the world size is {world}")
        check_cuda(mode, device=device, argument=argument)
    return rank, world


def check_cuda(mode: str, *, device: str | None = None, argument: str = "--parallel") -> None:
    """diffusers' context parallelism needs CUDA and NCCL (it places rank r on GPU r mod the GPU count)."""
    why = (
        f"{_named(argument, mode)} is diffusers' context parallelism, which needs CUDA GPUs and the NCCL backend; "
        "on CPUs use --parallel cfg (gloo) or no --parallel"
    )
    if device is not None and not device.startswith("cuda"):
        raise ConfigurationError(f"{why}, and the device is {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise ConfigurationError(f"{why}, and this torch sees no CUDA device")
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() != "nccl":
        raise ConfigurationError(f"{why}, and the process group's backend is {dist.get_backend()!r}")


def init_process_group(device: str | None = None) -> None:
    """The process group from the launcher's environment, unless there is one: NCCL with CUDA (each rank on
    GPU LOCAL_RANK), gloo otherwise (also for a `device` that is not CUDA)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def require_process_group(mode: str, *, argument: str = "parallel") -> None:
    """A library caller's process group, checked as `check_launch` checks the command line's."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ConfigurationError(
            f"{argument}={mode!r} needs torch.distributed's process group: launch with {LAUNCH.format(n=2)} and "
            "call torch.distributed.init_process_group() (or vchain.parallel.init_process_group()) first"
        )
    world = dist.get_world_size()
    if mode == "cfg" and world != 2:
        raise ConfigurationError(f"{argument}='cfg' needs a world size of exactly 2, got {world}")
    if mode != "cfg":
        check_cuda(mode, argument=argument)


def rank_device(device: str | None) -> str | None:
    """Each rank's own GPU under a launch: `cuda` (or no device, with CUDA here) means `cuda:LOCAL_RANK`."""
    import torch

    if device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def is_main_process() -> bool:
    """Rank 0, or a process outside any launch."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


# ----------------------------------------------------------------------------------------- sampling


@contextlib.contextmanager
def parallel_sampling(mode: str | None, denoisers, call: dict[str, Any]) -> Iterator[None]:
    """`mode` on the denoisers for one pipeline call (`call`: its keywords, with the prompt embeddings)."""
    if mode == "cfg":
        with contextlib.ExitStack() as stack:
            pending: list = []  # the unconditional prediction, gathered on the step's conditional call
            for denoiser in denoisers:
                stack.enter_context(_cfg_split(denoiser, call["negative_prompt_embeds"], pending))
            yield
        return
    if mode in ("ulysses", "ring"):
        enable_context_parallel(denoisers, mode)
    yield


def enable_context_parallel(denoisers, mode: str) -> None:
    """diffusers' context parallelism over every rank, as its docs set it up (once per transformer: diffusers
    refuses a second `enable_parallelism`)."""
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    degree = dist.get_world_size()
    config = ContextParallelConfig(**{f"{mode}_degree": degree})
    for denoiser in denoisers:
        if getattr(denoiser, "_parallel_config", None) is None:
            denoiser.enable_parallelism(config=config)


@contextlib.contextmanager
def _cfg_split(denoiser, negative, pending: list) -> Iterator[None]:
    """The denoiser's forward replaced for the duration: the pipeline's conditional call runs this rank's
    branch (rank 0 the conditional, rank 1 the unconditional, with `negative` as the text), gathers both
    predictions, returns the conditional one and keeps the other for the unconditional call that follows,
    which then runs nothing."""
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    original = denoiser.forward
    own = "forward" in vars(denoiser)  # a diffusers hook may have replaced forward already

    def forward(*args, **kwargs):
        if pending:
            return _like(pending.pop(), kwargs.get("return_dict", True))
        text = kwargs["encoder_hidden_states"]
        if rank == 1:
            kwargs["encoder_hidden_states"] = negative.to(device=text.device, dtype=text.dtype)
        result = original(*args, **{**kwargs, "return_dict": False})[0].contiguous()
        # gloo gathers no bfloat16; float32 carries it exactly.
        wire = result.float() if dist.get_backend() == "gloo" else result
        gathered = [torch.empty_like(wire) for _ in range(2)]
        dist.all_gather(gathered, wire)
        conditional, unconditional = (t.to(result.dtype) for t in gathered)
        pending.append(unconditional)
        return _like(conditional, kwargs.get("return_dict", True))

    denoiser.forward = forward
    try:
        yield
    finally:
        if own:
            denoiser.forward = original
        else:
            del denoiser.forward
        pending.clear()


def _like(sample, return_dict: bool):
    """A prediction as the transformer returns it."""
    if not return_dict:
        return (sample,)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)


# ----------------------------------------------------------------------------------------- run folders


class PrepareFailed(VChainError):
    """On a rank other than 0: rank 0's part of a run folder (`prepare` in `run_on_ranks`) failed."""


def run_on_ranks(
    output: Path,
    run: Callable[[Path, bool], T],
    *,
    prepare: Callable[[Path], Any] | None = None,
    prepare_failed: Callable[[str], T] | None = None,
) -> T:
    """A run-folder command on every rank, rank 0 alone writing `output`.

    Rank 0 first calls `prepare(output)`: the stages that cost money or must happen once (reasoning, tuning),
    which the other ranks then read rather than redo. Then each rank calls `run(folder, main)`: rank 0 on
    `output`, the others on a private copy of it made once `prepare` is done, deleted afterwards.

    Every rank learns that `prepare` failed: rank 0 raises the error and the others `PrepareFailed` naming it;
    with `prepare_failed`, none raises and each returns `prepare_failed(message)` instead. Either way the ranks
    are still in step and may go on to another folder together. A failure in `run` leaves them out of step (the
    others may wait in a collective that rank never reaches): it must end the launch.
    """
    import torch.distributed as dist

    if dist.get_rank() == 0:
        try:
            if prepare is not None:
                prepare(output)
        except Exception as e:
            message = redact(f"{type(e).__name__}: {e}")
            dist.broadcast_object_list([message], src=0)
            if prepare_failed is None:
                raise
            return prepare_failed(message)
        dist.broadcast_object_list([None], src=0)  # the folder holds what the others copy
        dist.barrier()  # they copied it
        return run(output, True)
    failure: list[str | None] = [None]
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        if prepare_failed is not None:
            return prepare_failed(failure[0])
        raise PrepareFailed(f"rank 0 failed on {str(output)!r} before sampling: {failure[0]}")
    with tempfile.TemporaryDirectory(prefix=f"vchain-rank{dist.get_rank()}-") as scratch:
        copy = Path(scratch) / "run"
        if output.is_dir():
            from vchain._lock import LOCK_FILE

            shutil.copytree(output, copy, symlinks=True, ignore=shutil.ignore_patterns(LOCK_FILE))
        dist.barrier()
        return run(copy, False)


def pipeline_on_ranks(
    pipe,
    prompt: str,
    output: Path,
    *,
    variant: str,
    overwrite: bool = False,
    before: Callable[[Path], Any] | None = None,
    prepare_failed: Callable[[str], Any] | None = None,
    **call: Any,
):
    """`pipe(prompt, output, variant=variant, **call)` on every rank of the launch, sharing the folder as
    `run_on_ranks` does: rank 0 first calls `before(output)` (if given) and runs alone the stages before sampling
    that the variant has (reasoning, tuning; with `overwrite`, the folder started over); then every rank runs
    the pipeline on its folder, which reuses those stages, and they sample together."""
    from vchain.run import RunDirectory
    from vchain.variants import get_variant

    spec = get_variant(variant)
    last = "tuning" if spec.tuning else "reasoning" if spec.reasoning == "chain" else None

    def prepare(folder: Path) -> None:
        if before is not None:
            before(folder)
        if last is not None:
            pipe(prompt, folder, variant=variant, stop_after=last, overwrite=overwrite, **call)
        elif overwrite:
            RunDirectory(folder, prompt, variant=variant, overwrite=True).close()

    return run_on_ranks(
        output,
        lambda folder, _: pipe(prompt, folder, variant=variant, **call),
        prepare=prepare,
        prepare_failed=prepare_failed,
    )
