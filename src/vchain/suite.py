"""The paper's 20 test cases, run as cases x variants into one tree, sharded across processes.

Under `accelerate launch --multi_gpu --num_processes N` (or `torchrun --nproc_per_node N`), process i takes
runs i, i+N, i+2N, ... (one GPU each; on a machine without GPUs the processes run on the CPU); the main
process then writes `summary.csv` and `summary.md`. Runs resume like any run folder, so a suite that
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
    from vchain.pipeline import check_seed
    from vchain.run import check_output_dir

    if not callable(make_pipeline):
        raise ConfigurationError(
            f"make_pipeline must be a callable that returns a VChainPipeline, got {make_pipeline!r}"
        )
    for name, value in (("cases", cases), ("variants", variants), ("prompts", prompts)):
        if isinstance(value, (str, bytes)) or not (value is None or isinstance(value, Sequence)):
            raise ConfigurationError(f"{name} must be a list, got {value!r}")
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigurationError(f"prompts must be a list of non-empty strings, got {list(prompts)!r:.200}")
    check_seed(seed)
    check_output_dir(root, create=False)
    import torch
    from accelerate import PartialState

    cases = list(range(len(prompts))) if cases is None else list(cases)
    runs = plan_runs(root, cases, variants, prompts)
    # cpu=True lets processes without a GPU form a gloo group (accelerate's MULTI_CPU) under torchrun.
    state = PartialState(cpu=not torch.cuda.is_available())
    mine = runs[state.process_index :: state.num_processes]
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
    unfinished = [f"{row['run']} ({row['status']})" for row in rows if row["status"] != "done"]
    if unfinished:
        lines += ["", f"Not finished ({len(unfinished)} of {len(rows)}): " + ", ".join(unfinished)]
    _io.write_text(root / "summary.md", "\n".join(lines) + "\n")
    return root / "summary.csv"


def unfinished_runs(runs: Sequence[SuiteRun]) -> list[str]:
    """`run (status)` for each run whose folder does not hold a finished run (failed, incomplete, missing)."""
    names = []
    for run in runs:
        try:
            status = read_manifest(run.path).status() if (run.path / MANIFEST_FILE).is_file() else "missing"
        except VChainError:
            status = "unreadable"
        if status != "done":
            names.append(f"{run.id} ({status})")
    return names
