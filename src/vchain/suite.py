"""The paper's 20 test cases, run as cases x variants into one tree, sharded across processes.

Under `accelerate launch --multi_gpu --num_processes N` (or `torchrun --nproc_per_node N`), the runs are
dealt by work (`shard`): the costliest first, each to the process with the least work so far, so the tuned
runs spread over all processes (one GPU each; on a machine without GPUs the processes run on the CPU);
the main process then writes `summary.csv` and `summary.md`. Runs resume like any run folder, so a suite that
was stopped picks up where it left off.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vchain import _io
from vchain._redact import redact
from vchain.chain import chain_name
from vchain.errors import ConfigurationError, VChainError
from vchain.run import MANIFEST_FILE, read_manifest
from vchain.variants import STAGES

logger = logging.getLogger(__name__)

PAPER_CASES = (
    "A rock and a feather are falling from the sky towards the ground.",
    "An egg falling from the sky towards concrete ground.",
    "An ice cream cone is left out in the sun.",
    "A rubber duck and a rock fall into a water tank.",
    "A steel ball is dropped into water.",
    "Milk is poured into a cup of black coffee.",
    "A man falls off a pile of bricks.",
    "A steel ball falling through the air onto ice.",
    "A ball is dropped onto a pillow.",
    "A sandwich rotting over time.",
    "An elderly blows out a cake filled with candles.",
    "Red and yellow paint are mixed together with a brush.",
    "Concentrated sulfuric acid is poured onto a wooden table.",
    "An egg is dropped onto a pillow.",
    "A mailbox rusting over time in broad daylight.",
    "A man blows into a deflated balloon.",
    "Oil is poured into a glass of milk.",
    "A chameleon eats a flying insect.",
    "Blue and yellow paint are mixed together with a brush.",
    "A cup of water is falling towards the ground on its side.",
)


@dataclass(frozen=True)
class SuiteRun:
    """One run of the suite: case `case` of `PAPER_CASES` (or of the given prompts) under `variant`."""

    case: int
    prompt: str
    variant: str
    path: Path

    @property
    def id(self) -> str:
        return f"{self.path.parent.name}/{self.variant}"


def parse_cases(text: str, count: int = len(PAPER_CASES)) -> list[int]:
    """Case numbers from `"0,4,13"`; each within 0..count-1, none twice."""
    parts = [part.strip() for part in str(text).split(",")]
    if not all(part.isdigit() for part in parts) or not parts:
        raise ConfigurationError(f"--cases must be comma-separated case numbers 0-{count - 1}, got {text!r}")
    cases = [int(part) for part in parts]
    if any(case >= count for case in cases):
        raise ConfigurationError(f"--cases must be case numbers 0-{count - 1}, got {text!r}")
    if len(set(cases)) != len(cases):
        raise ConfigurationError(f"--cases names a case twice: {text!r}")
    return cases


def plan_runs(
    root: str | Path,
    cases: Sequence[int],
    variants: Sequence[str],
    prompts: Sequence[str] = PAPER_CASES,
) -> list[SuiteRun]:
    """The runs of `cases` x `variants`; a case's folder is named by its number, whatever the selection."""
    from vchain.variants import VARIANTS

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise ConfigurationError(f"variants must be distinct names among {list(VARIANTS)}, got {list(variants)!r}")
    if not cases:
        raise ConfigurationError("the suite needs at least one case, got none")
    if len(set(cases)) != len(cases) or not all(isinstance(c, int) and 0 <= c < len(prompts) for c in cases):
        raise ConfigurationError(f"cases must be distinct numbers in 0..{len(prompts) - 1}, got {list(cases)!r}")
    root = Path(root)
    return [
        SuiteRun(case, prompts[case], variant, root / f"{case:02d}_{chain_name(prompts[case])}" / variant)
        for case in cases
        for variant in variants
    ]


# Minutes per stage for Wan2.1-1.3B on an A100 (the paper's Table 2); what matters is their ratio. A reasoning
# stage that only rewrites the prompt is one chat call; the interpolator renders without the generator.
STAGE_MINUTES = {"chain": 3.0, "augment": 0.25, "tuning": 5.6, "generator": 3.15, "interpolator": 0.1}


def run_cost(variant: str) -> float:
    """The relative work of one run of `variant`: the Table 2 minutes of the stages it runs."""
    from vchain.variants import get_variant

    spec = get_variant(variant)
    reasoning = STAGE_MINUTES[spec.reasoning] if spec.reasoning else 0.0
    return reasoning + (STAGE_MINUTES["tuning"] if spec.tuning else 0.0) + STAGE_MINUTES[spec.render]


def shard(runs: Sequence[SuiteRun], num_processes: int) -> list[list[SuiteRun]]:
    """`runs` dealt to `num_processes` processes by work, the same in every process.

    The costliest runs go first, each to the process with the least work so far (the lowest index on a
    tie), so the tuned runs spread over all processes instead of all landing on one (plain striding over
    cases x variants gives one process every `vchain` run when the variants divide the processes). Each
    process keeps its runs in plan order.
    """
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ConfigurationError(f"num_processes must be a positive number, got {num_processes!r}")
    order = sorted(range(len(runs)), key=lambda i: -run_cost(runs[i].variant))  # stable: plan order on ties
    loads, shares = [0.0] * num_processes, [[] for _ in range(num_processes)]
    for i in order:
        process = min(range(num_processes), key=lambda p: (loads[p], p))
        loads[process] += run_cost(runs[i].variant)
        shares[process].append(i)
    return [[runs[i] for i in sorted(share)] for share in shares]


def run_suite(
    make_pipeline: Callable[[], object],
    root: str | Path,
    cases: Sequence[int] | None = None,
    variants: Sequence[str] = ("vchain",),
    *,
    prompts: Sequence[str] = PAPER_CASES,
    seed: int = 0,
) -> list[SuiteRun]:
    """Run this process's share of cases x variants; the main process then writes the summary.

    `make_pipeline()` is called once per process, after the process knows its device. A failing run is
    logged and recorded in its manifest; the others go on. Returns the runs this process executed.
    """
    import torch
    from accelerate import PartialState

    cases = list(range(len(prompts))) if cases is None else list(cases)
    runs = plan_runs(root, cases, variants, prompts)
    # cpu=True lets processes without a GPU form a gloo group (accelerate's MULTI_CPU) under torchrun.
    state = PartialState(cpu=not torch.cuda.is_available())
    mine = shard(runs, state.num_processes)[state.process_index]
    logger.info("Process %d/%d takes %d of %d runs", state.process_index, state.num_processes, len(mine), len(runs))
    pipe = make_pipeline()
    outcomes = []
    for run in mine:
        try:
            pipe(run.prompt, run.path, variant=run.variant, seed=seed)
            outcomes.append({"run": run.id, "status": "done"})
        except Exception as e:  # one broken case must not stop the suite
            logger.error("Run %s failed: %s", run.id, e)
            outcomes.append({"run": run.id, "status": "failed", "error": redact(str(e))})
    shards = Path(root) / ".shards"
    if shards.is_symlink():
        raise ConfigurationError(f"{str(shards)!r} is a symlink; vchain refuses to write through it")
    _io.write_json(shards / f"process_{state.process_index}.json", outcomes)
    state.wait_for_everyone()
    if state.is_main_process:
        write_summary(root, runs)
    return mine


SUMMARY_COLUMNS = (
    "run", "variant", "status", "reasoning_s", "tuning_s", "sampling_s", "requests", "input_tokens",
    "output_tokens", "images", "keyframes",
)  # fmt: skip


def write_summary(root: str | Path, runs: Sequence[SuiteRun]) -> Path:
    """`summary.csv` and `summary.md`: per run, its status, per-stage times and API usage."""
    rows = []
    for run in runs:
        try:
            manifest = read_manifest(run.path) if (run.path / MANIFEST_FILE).is_file() else None
        except VChainError as e:
            logger.warning("Skipping %s in the summary: %s", run.id, e)
            manifest = None
        if manifest is None:
            rows.append({**dict.fromkeys(SUMMARY_COLUMNS, ""), "run": run.id, "variant": run.variant,
                         "status": "missing"})  # fmt: skip
            continue
        stages, usage = manifest.stages, manifest.usage
        rows.append({
            "run": run.id, "variant": run.variant, "status": manifest.status(),
            **{f"{s}_s": getattr(stages, s).total_seconds for s in STAGES},
            "requests": usage.requests, "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "images": usage.images_out, "keyframes": stages.reasoning.keyframes or "",
        })  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    root = Path(root)
    _io.write_text(root / "summary.csv", buffer.getvalue())
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in SUMMARY_COLUMNS) + " |" for row in rows]
    _io.write_text(root / "summary.md", "\n".join(lines) + "\n")
    return root / "summary.csv"
