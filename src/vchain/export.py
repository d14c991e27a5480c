"""Benchmark layouts: a suite's videos copied into the file names a benchmark's own evaluator reads.

A layout names where the video of the prompt at index `i` of the prompt file goes, per variant; adding a
benchmark is one entry in `LAYOUTS`. The index comes from each run's manifest (a suite run with
`--prompts FILE` records its case), so a suite run on a subset of the prompts exports that subset under
the benchmark's own numbers. Videos are copied byte for byte (no re-encoding, no links), each atomically,
and `vchain-export.json` beside them says which run each file came from.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from vchain import _io
from vchain.errors import ConfigurationError
from vchain.judging import finished_runs
from vchain.run import VIDEO_FILE, check_output_dir, file_digest

logger = logging.getLogger(__name__)

EXPORT_FILE = "vchain-export.json"


@dataclass(frozen=True)
class Layout:
    """A benchmark's naming: `pattern` formats `variant`, `index` (from 0), `number` (index + 1) and `case_id`."""

    name: str
    pattern: str
    description: str

    def path(self, variant: str, index: int, case_id: str) -> Path:
        return Path(self.pattern.format(variant=variant, index=index, number=index + 1, case_id=case_id))


LAYOUTS = {
    "phygenbench": Layout(
        "phygenbench",
        "{variant}/output_video_{number}.mp4",
        "PhyGenBench: one folder per model, output_video_<i+1>.mp4 for the i-th prompt of prompts.json",
    ),
}


@dataclass(frozen=True)
class ExportedVideo:
    """One copied video: where it went and which run it came from."""

    path: Path
    run: Path
    variant: str
    case_id: str
    index: int
    seed: int


def export_videos(
    root: str | Path, output: str | Path, layout: str = "phygenbench", *, seed: int | None = None
) -> list[ExportedVideo]:
    """Copy every finished run's video below `root` into `output` in `layout`'s naming.

    Raises:
        ConfigurationError: an unknown layout; a finished run that no suite case records (its index in the
            prompt file is unknown); several seeds and no `seed` (or a `seed` that no run has); two runs
            that would write one file. Nothing is copied then.
    """
    if layout not in LAYOUTS:
        raise ConfigurationError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    runs = finished_runs(root)
    unplaced = [run.path for run in runs if run.manifest.case is None]
    if unplaced:
        raise ConfigurationError(
            f"{len(unplaced)} finished run(s) below {str(root)!r} record no suite case, so their index in the "
            f"prompt file is unknown (first: {str(unplaced[0])!r}); export runs of `vchain suite --prompts FILE`"
        )
    seeds = sorted({run.manifest.case.seed for run in runs})
    if seed is None and len(seeds) > 1:
        raise ConfigurationError(f"the runs below {str(root)!r} hold several seeds {seeds}: choose one with seed")
    if seed is not None:
        if seed not in seeds:
            raise ConfigurationError(f"seed {seed!r} is not among the runs' seeds {seeds}")
        runs = [run for run in runs if run.manifest.case.seed == seed]
    chosen = LAYOUTS[layout]
    planned: dict[Path, ExportedVideo] = {}
    for run in runs:
        case = run.manifest.case
        target = chosen.path(run.manifest.variant, case.index, case.id)
        video = ExportedVideo(target, run.path, run.manifest.variant, case.id, case.index, case.seed)
        if target in planned:
            raise ConfigurationError(
                f"{str(planned[target].run)!r} and {str(run.path)!r} would both be {target.as_posix()}: "
                f"export the two suites separately"
            )
        planned[target] = video
    out = check_output_dir(output)
    exported = []
    for target, video in sorted(planned.items()):
        with (video.run / VIDEO_FILE).open("rb") as source:
            _io.atomic_write(out / target, lambda f, source=source: shutil.copyfileobj(source, f))
        exported.append(replace(video, path=out / target))
    _io.write_json(
        out / EXPORT_FILE,
        {
            "layout": layout,
            "root": str(Path(root).absolute()),
            "videos": [
                {
                    "file": v.path.relative_to(out).as_posix(),
                    "run": str(v.run.absolute()),
                    "variant": v.variant,
                    "case_id": v.case_id,
                    "index": v.index,
                    "seed": v.seed,
                    "sha256": file_digest(v.path),
                }
                for v in exported
            ],
        },
    )
    logger.info("Exported %d video(s) to %s in the %s layout", len(exported), out, layout)
    return exported
