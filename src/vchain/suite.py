"""The paper's 20 test cases, run as cases x variants into one tree, sharded across processes.

Under `accelerate launch --multi_gpu --num_processes N` (or `torchrun --nproc_per_node N`), process i takes
runs i, i+N, i+2N, ... (one GPU each; on a machine without GPUs the processes run on the CPU); the main
process then writes `summary.csv` and `summary.md`. Runs resume like any run folder, so a suite that
was stopped picks up where it left off.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vchain import _io
from vchain.chain import chain_name
from vchain.errors import ConfigurationError
from vchain.run import MANIFEST_FILE, STAGES

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
    case: int
    prompt: str
    variant: str
    path: Path

    @property
    def id(self) -> str:
        return f"{self.path.parent.name}/{self.variant}"


def plan_runs(root: str | Path, prompts: Sequence[str], variants: Sequence[str]) -> list[SuiteRun]:
    from vchain.pipeline import VARIANTS

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigurationError(f"variants must be among {sorted(VARIANTS)}, got {list(variants)!r}")
    if not prompts:
        raise ConfigurationError("the suite needs at least one case, got none")
    root = Path(root)
    return [
        SuiteRun(i, prompt, variant, root / f"{i:02d}_{chain_name(prompt)}" / variant)
        for i, prompt in enumerate(prompts)
        for variant in variants
    ]


def run_suite(
    make_pipeline: Callable[[], object],
    root: str | Path,
    prompts: Sequence[str] = PAPER_CASES,
    variants: Sequence[str] = ("vchain",),
    *,
    seed: int = 0,
) -> list[SuiteRun]:
    """Run this process's share of cases x variants; the main process then writes the summary.

    `make_pipeline()` is called once per process, after the process knows its device. A failing run is
    logged and recorded in its manifest; the others go on. Returns the runs this process executed.
    """
    import torch
    from accelerate import PartialState

    # cpu=True lets processes without a GPU form a gloo group (accelerate's MULTI_CPU) under torchrun.
    state = PartialState(cpu=not torch.cuda.is_available())
    runs = plan_runs(root, prompts, variants)
    mine = runs[state.process_index :: state.num_processes]
    logger.info(
        "Process %d/%d takes %d of %d runs", state.process_index, state.num_processes, len(mine), len(runs)
    )
    pipe = make_pipeline()
    done = []
    for run in mine:
        try:
            pipe(run.prompt, run.path, variant=run.variant, seed=seed)
            done.append({"run": run.id, "status": "done"})
        except Exception as e:  # one broken case must not stop the suite
            logger.error("Run %s failed: %s", run.id, e)
            done.append({"run": run.id, "status": "failed", "error": str(e)})
    _io.write_json(Path(root) / ".shards" / f"process_{state.process_index}.json", done)
    state.wait_for_everyone()
    if state.is_main_process:
        write_summary(root, runs)
    return mine


SUMMARY_COLUMNS = (
    "run", "variant", "status", "reasoning_s", "tuning_s", "sampling_s", "api_calls", "input_tokens",
    "output_tokens", "images", "keyframes",
)  # fmt: skip


def write_summary(root: str | Path, runs: Sequence[SuiteRun]) -> Path:
    """`summary.csv` and `summary.md`: per run, its status, per-stage times and API usage."""
    rows = []
    for run in runs:
        path = run.path / MANIFEST_FILE
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        stages = manifest.get("stages", {})
        statuses = {s: r.get("status") for s, r in stages.items()}
        status = (
            "failed" if "failed" in statuses.values()
            else "done" if statuses and all(v in ("done", "skipped") for v in statuses.values())
            else "incomplete"
        )  # fmt: skip
        api = manifest.get("api", {})
        rows.append({
            "run": run.id, "variant": run.variant, "status": status,
            **{f"{s}_s": stages.get(s, {}).get("total_seconds", 0.0) for s in STAGES},
            "api_calls": api.get("calls", 0), "input_tokens": api.get("input_tokens", 0),
            "output_tokens": api.get("output_tokens", 0), "images": api.get("images_out", 0),
            "keyframes": stages.get("reasoning", {}).get("detail", {}).get("keyframes", ""),
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
