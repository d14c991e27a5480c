"""A prompt set (the paper's 20 test cases by default) run as cases x variants x seeds into one tree, sharded.

Under `accelerate launch --multi_gpu --num_processes N` (or `torchrun --nproc_per_node N`), the runs are
dealt by work (`shard`): the costliest first, each to the process with the least work so far, so the tuned
runs spread over all processes (one GPU each; on a machine without GPUs the processes run on the CPU);
the main process then writes `summary.csv` and `summary.md`. Runs resume like any run folder, so a suite that
was stopped picks up where it left off.

With `parallel` (`vchain suite --parallel cfg|ulysses|ring`) the processes share each video instead: every rank
goes through every run, in plan order, and they sample it together (`vchain.parallel.pipeline_on_ranks`, as
`vchain generate --parallel` does): rank 0 alone reasons, tunes, writes the run folders and the summary.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vchain import _io
from vchain._redact import redact
from vchain.cases import Case, as_cases
from vchain.chain import chain_name
from vchain.errors import ConfigurationError, VChainError
from vchain.judging import DIMENSIONS
from vchain.run import MANIFEST_FILE, CaseRecord, RunDirectory, hold, read_manifest
from vchain.variants import STAGES

if TYPE_CHECKING:
    from vchain.search import SearchConfig

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
    """One run of the suite: case number `case` (its index in the prompt set) under `variant` and `seed`.

    `id` is the run's folder below the suite's root (`00_a_rock.../vchain`, or `.../vchain/seed-1` with seeds).
    """

    case: int
    prompt: str
    variant: str
    path: Path
    id: str
    case_id: str
    meta: dict
    seed: int

    def record(self) -> CaseRecord:
        return CaseRecord(id=self.case_id, index=self.case, meta=self.meta, seed=self.seed)


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


def parse_seeds(text: str) -> list[int]:
    """Seeds from `"0,1,2"`: distinct integers in [0, 2**63)."""
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or not all(part.isdigit() for part in parts) or any(int(part) >= 2**63 for part in parts):
        raise ConfigurationError(f"--seeds must be comma-separated integers in [0, 2**63), got {text!r}")
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):
        raise ConfigurationError(f"--seeds names a seed twice: {text!r}")
    return seeds


def plan_runs(
    root: str | Path,
    cases: Sequence[int],
    variants: Sequence[str],
    prompts: Sequence[str | Case] = PAPER_CASES,
    *,
    seeds: Sequence[int] | None = None,
    seed: int = 0,
) -> list[SuiteRun]:
    """The runs of `cases` x `variants` (x `seeds`); a case's folder is named by its number, whatever the selection.

    Without `seeds` each run samples with `seed` in `<case>/<variant>`; with `seeds` every seed has its
    own folder, `<case>/<variant>/seed-<s>`.
    """
    from vchain.pipeline import check_seed
    from vchain.variants import VARIANTS

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise ConfigurationError(f"variants must be distinct names among {list(VARIANTS)}, got {list(variants)!r}")
    if not cases:
        raise ConfigurationError("the suite needs at least one case, got none")
    if len(set(cases)) != len(cases) or not all(isinstance(c, int) and 0 <= c < len(prompts) for c in cases):
        raise ConfigurationError(f"cases must be distinct numbers in 0..{len(prompts) - 1}, got {list(cases)!r}")
    if seeds is not None:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigurationError(f"seeds must be distinct integers, at least one, got {list(seeds)!r}")
        for value in seeds:
            check_seed(value)
    check_seed(seed)
    all_cases = as_cases(prompts)
    width = max(2, len(str(len(all_cases) - 1)))
    root = Path(root)
    runs = []
    for number in cases:
        case = all_cases[number]
        folder = root / f"{number:0{width}d}_{chain_name(case.prompt)}"
        for variant in variants:
            for s in [seed] if seeds is None else seeds:
                path = folder / variant if seeds is None else folder / variant / f"seed-{s}"
                run_id = path.relative_to(root).as_posix()
                runs.append(SuiteRun(number, case.prompt, variant, path, run_id, case.id, case.meta, s))
    return runs


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
    prompts: Sequence[str | Case] = PAPER_CASES,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    search: SearchConfig | None = None,
    parallel: str | None = None,
) -> list[SuiteRun]:
    """Run this process's share of cases x variants (x seeds); the main process then writes the summary.

    `prompts` is the prompt set (`vchain.cases.load_cases` reads a benchmark's file); each run's
    manifest records its case (id, index, meta) and seed. `make_pipeline()` is called once per process,
    after the process knows its device. A failing run is logged and recorded in its manifest; the others
    go on. Returns the runs this process executed. With
    `search`, each variant searches as far as it can (`vchain.search.for_variant`; the pipeline needs a judge).

    With `parallel` (the mode the pipeline's generator samples with, on a started process group), every rank
    executes every run and rank 0 alone writes; the pipeline of the other ranks needs no reasoner. A run whose
    reasoning or tuning fails is recorded and every rank goes on to the next; a failure while sampling ends the
    launch (the ranks are out of step), and the same command resumes.
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
    if not prompts or not all(isinstance(p, Case) or (isinstance(p, str) and p.strip()) for p in prompts):
        raise ConfigurationError(
            f"prompts must be a list of non-empty strings or vchain.cases.Case, got {list(prompts)!r:.200}"
        )
    check_seed(seed)
    check_output_dir(root, create=False)
    import torch
    from accelerate import PartialState

    from vchain.search import for_variant
    from vchain.variants import VARIANTS

    cases = list(range(len(prompts))) if cases is None else list(cases)
    runs = plan_runs(root, cases, variants, prompts, seeds=seeds, seed=seed)
    if parallel is None:
        # cpu=True lets processes without a GPU form a gloo group (accelerate's MULTI_CPU) under torchrun.
        state = PartialState(cpu=not torch.cuda.is_available())
        rank, mine = state.process_index, shard(runs, state.num_processes)[state.process_index]
        logger.info("Process %d/%d takes %d of %d runs", rank, state.num_processes, len(mine), len(runs))
    else:
        import torch.distributed as dist

        from vchain.parallel import check_mode, check_variant, require_process_group

        check_mode(parallel)
        for variant in variants:
            check_variant(parallel, variant, search, variant_argument="variants")
        require_process_group(parallel)
        rank, mine = dist.get_rank(), runs
        logger.info("Rank %d of %d samples all %d runs (%s)", rank, dist.get_world_size(), len(runs), parallel)
    pipe = make_pipeline()
    if parallel is not None:
        from vchain.pipeline import check_keyframe_conditioned

        # Found at a guided run's sampling, this would end the launch: refused before any run instead.
        for variant in variants:
            if VARIANTS[variant].guided:
                check_keyframe_conditioned(pipe.generator, variant)
    outcomes = []
    for run in mine:
        error = None
        try:
            if parallel is None:
                with hold(run.path):
                    _record_case(run)
                    pipe(
                        run.prompt,
                        run.path,
                        variant=run.variant,
                        seed=run.seed,
                        search=for_variant(search, VARIANTS[run.variant]),
                    )
            else:
                error = _run_on_ranks(pipe, run)
        except Exception as e:  # one broken case must not stop the suite
            if parallel is not None:
                raise  # a failure while sampling: the other ranks may be waiting in a collective
            error = redact(str(e))
        if error is None:
            outcomes.append({"run": run.id, "status": "done"})
            continue
        if rank == 0:
            logger.error("Run %s failed: %s", run.id, error)
        outcomes.append({"run": run.id, "status": "failed", "error": error})
    if parallel is not None and rank != 0:
        return mine
    shards = Path(root) / ".shards"
    if shards.is_symlink():
        raise ConfigurationError(f"{str(shards)!r} is a symlink; vchain refuses to write through it")
    _io.write_json(shards / f"process_{rank}.json", outcomes)
    if parallel is None:
        state.wait_for_everyone()
    if rank == 0:
        write_summary(root, runs)
    return mine


def _record_case(run: SuiteRun) -> None:
    """The case recorded in the run's manifest first, so that even a run that fails says which case and seed
    it was."""
    with RunDirectory(run.path, run.prompt, variant=run.variant) as folder:
        if folder.manifest.case != run.record():
            folder.manifest.case = run.record()
            folder.save()


def _run_on_ranks(pipe, run: SuiteRun) -> str | None:
    """`run` on every rank of the launch, rank 0 holding its folder's lock and recording the case; the error
    (on every rank) if rank 0 failed before sampling, None once the run is done."""
    from vchain.parallel import pipeline_on_ranks

    failure: list[str] = []
    with contextlib.ExitStack() as held:

        def claim(folder: Path) -> None:
            held.enter_context(hold(folder))
            _record_case(run)

        pipeline_on_ranks(
            pipe, run.prompt, run.path, variant=run.variant, seed=run.seed, before=claim, prepare_failed=failure.append
        )
    return failure[0] if failure else None


SUMMARY_COLUMNS = (
    "run",
    "case_id",
    "variant",
    "seed",
    "status",
    "reasoning_s",
    "tuning_s",
    "sampling_s",
    "requests",
    "input_tokens",
    "output_tokens",
    "images",
    "keyframes",
)
# A searched run adds a `best-of-n` row: the chosen candidate's scores, the objective of the first candidate
# (the run's own seed: what no search would have kept) and the spread of the objective over all candidates.
SEARCH_COLUMNS = (
    "candidates",
    "chosen_round",
    "chosen_seed",
    "objective",
    "first_objective",
    "objective_min",
    "objective_max",
    *DIMENSIONS,
)


def write_summary(root: str | Path, runs: Sequence[SuiteRun]) -> Path:
    """`summary.csv` and `summary.md`: per run, its status, per-stage times and API usage; a searched run is
    followed by its `best-of-n` row (`SEARCH_COLUMNS`)."""
    from vchain.search import search_outcome

    columns = (*SUMMARY_COLUMNS, *SEARCH_COLUMNS)
    rows = []
    for run in runs:
        try:
            manifest = read_manifest(run.path) if (run.path / MANIFEST_FILE).is_file() else None
        except VChainError as e:
            logger.warning("Skipping %s in the summary: %s", run.id, e)
            manifest = None
        if manifest is None:
            rows.append(
                {
                    **dict.fromkeys(columns, ""),
                    "run": run.id,
                    "case_id": run.case_id,
                    "variant": run.variant,
                    "seed": run.seed,
                    "status": "missing",
                }
            )
            continue
        stages, usage = manifest.stages, manifest.usage
        rows.append(
            {
                "run": run.id,
                "case_id": run.case_id,
                "variant": run.variant,
                "seed": run.seed,
                "status": manifest.status(),
                **{f"{s}_s": getattr(stages, s).total_seconds for s in STAGES},
                "requests": usage.requests,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "images": usage.images_out,
                "keyframes": stages.reasoning.keyframes or "",
                **dict.fromkeys(SEARCH_COLUMNS, ""),
            }
        )
        outcome = search_outcome(manifest)
        if outcome is not None:
            rows.append(
                {
                    **dict.fromkeys(columns, ""),
                    "run": run.id,
                    "case_id": run.case_id,
                    "variant": "best-of-n",
                    "seed": run.seed,
                    "status": manifest.status(),
                    "candidates": outcome.candidates,
                    "chosen_round": outcome.winner_round,
                    "chosen_seed": outcome.winner_seed,
                    "objective": round(outcome.chosen.objective, 3),
                    "first_objective": round(outcome.first.objective, 3),
                    "objective_min": round(outcome.lowest, 3),
                    "objective_max": round(outcome.highest, 3),
                    **outcome.chosen.scores,
                }
            )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    root = Path(root)
    _io.write_text(root / "summary.csv", buffer.getvalue())
    # The markdown shows the search columns only when a run searched.
    shown = columns if any(row["variant"] == "best-of-n" for row in rows) else SUMMARY_COLUMNS
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(str(row[c]) for c in shown) + " |" for row in rows]
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
