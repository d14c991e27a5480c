"""Evaluation: a vision-language model scores finished runs on the six dimensions of the paper's study.

The paper asked people to rate each video from 1 to 5 on frame quality, temporal quality, text
alignment, physics, commonsense and causality. `judge_runs` asks a `vchain.interfaces.Judge` instead:
it samples frames evenly from every finished run's `video.mp4`, sends them with the run's prompt, and
keeps the structured answer (a score and a short reason per dimension) in the run folder:

- `scores.json` holds one entry per judge: the judge's description and frame count (its identity),
  the sha256 of the video it scored, the `VideoScores`, and every request attempt it cost. A judge
  whose entry matches the video on disk is not asked again; another judge adds its own entry; a
  changed video is scored again.
- `judge-summary.csv` / `judge-summary.md` in the root: per judge and variant, each dimension's mean
  with a 95% percentile-bootstrap confidence interval over runs, the number of runs, and what the judge
  cost (requests, tokens). A suite's own `summary.csv` is left as it is.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vchain import _io
from vchain.accounting import CallRecord, UsageMeter, UsageSummary
from vchain.chain import _Answer
from vchain.config import Config, describe_errors
from vchain.errors import ConfigurationError, MalformedResponseError, StageError, VChainError
from vchain.images import stitch
from vchain.interfaces import Judge, check_description
from vchain.prompts import image_part, text_part
from vchain.run import VIDEO_FILE, Manifest, file_digest, fingerprint, hold, iter_runs, read_manifest

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.json"
SUMMARY_CSV = "judge-summary.csv"
SUMMARY_MD = "judge-summary.md"
DIMENSIONS = ("frame_quality", "temporal_quality", "text_alignment", "physics", "commonsense", "causality")
# A grid keeps the image bill of a call fixed however many frames it tiles (as for perception).
GRID_MAX_PIXELS = 1024 * 1024

DEFINITIONS = {
    "frame_quality": "how good each frame looks on its own: sharp, well exposed, free of noise, smears, "
    "warped shapes and malformed objects",
    "temporal_quality": "how well the frames hold together over time: objects keep their identity, shape, "
    "size and colour, nothing flickers, pops in or vanishes without a reason, and motion is continuous",
    "text_alignment": "how fully the video shows what the prompt asks for: its objects, setting, actions and outcome",
    "physics": "whether motion and contact obey physical law: gravity, momentum, collisions, the flow of "
    "liquids, and materials bending, breaking or melting as their properties imply",
    "commonsense": "whether what happens matches everyday knowledge of the world, what an ordinary "
    "observer would expect to see in this situation",
    "causality": "whether events follow from their causes in the right order: each effect appears after "
    "what causes it, and every cause the video shows has its effect",
}

JUDGE_SYSTEM = """\
You rate generated videos for a research study. You see frames sampled evenly from one video, first to \
last, and the prompt the video was made from. Rate the video on six dimensions, each on its own:

{definitions}

Use the whole scale, the same way for every video:
5: excellent, no visible flaw on this dimension.
4: good, minor flaws only.
3: acceptable, with clear flaws.
2: poor, the flaws dominate.
1: fails entirely on this dimension.

For each dimension first give the reason, one or two sentences naming what in the frames decides the \
score, then the score as an integer from 1 to 5. Judge only what the frames show; the frames are a \
sample, so rate temporal quality from how consistent consecutive frames are.

Answer in the requested JSON structure."""

JUDGE_USER = """\
Video prompt: {prompt}

The {count} images are frames sampled evenly from the video, in playing order."""

JUDGE_GRID_USER = """\
Video prompt: {prompt}

The image tiles {count} frames sampled evenly from the video, numbered from 0 in playing order, left to \
right and top to bottom."""


def _title(dimension: str) -> str:
    return dimension.replace("_", " ")


def _instruction() -> str:
    definitions = "\n".join(f"- {_title(d)}: {DEFINITIONS[d]}." for d in DIMENSIONS)
    return JUDGE_SYSTEM.format(definitions=definitions)


def _reason(dimension: str) -> Any:
    return Field(description=f"One or two sentences on what in the frames decides the {_title(dimension)} score.")


def _score(dimension: str) -> Any:
    # The scale travels in the schema as an enum, which OpenAI's strict mode and local grammars both
    # honour (a local model could otherwise write digits forever); the validator below checks it too.
    return Field(
        description=f"{_title(dimension).capitalize()}: an integer from 1 (fails) to 5 (excellent).",
        json_schema_extra={"enum": [1, 2, 3, 4, 5]},
    )


class VideoScores(_Answer):
    """A judge's answer: each of the six dimensions scored 1 to 5, with the reason written first.

    This is also the structured-output schema sent to the judge, so it stays flat with every field
    required; the scale is an enum in the schema and is checked here as well. The
    reason comes before its score so that a model writing in order reasons before it commits to a number.
    """

    # Strict: a score is an integer as sent, never a coerced `true` or `"4"`.
    model_config = ConfigDict(strict=True)

    frame_quality_reason: str = _reason("frame_quality")
    frame_quality: int = _score("frame_quality")
    temporal_quality_reason: str = _reason("temporal_quality")
    temporal_quality: int = _score("temporal_quality")
    text_alignment_reason: str = _reason("text_alignment")
    text_alignment: int = _score("text_alignment")
    physics_reason: str = _reason("physics")
    physics: int = _score("physics")
    commonsense_reason: str = _reason("commonsense")
    commonsense: int = _score("commonsense")
    causality_reason: str = _reason("causality")
    causality: int = _score("causality")

    @field_validator(*DIMENSIONS)
    @classmethod
    def _on_the_scale(cls, value: int, info) -> int:
        if not 1 <= value <= 5:
            raise ValueError(f"{info.field_name} must be an integer from 1 to 5, got {value}")
        return value

    def score(self, dimension: str) -> int:
        return getattr(self, _check_dimension(dimension))

    def reason(self, dimension: str) -> str:
        return getattr(self, f"{_check_dimension(dimension)}_reason")


def _check_dimension(dimension: str) -> str:
    if dimension not in DIMENSIONS:
        raise ConfigurationError(f"dimension must be one of {list(DIMENSIONS)}, got {dimension!r}")
    return dimension


class JudgingConfig(Config):
    """Settings of `judge_runs`."""

    frames: int = Field(
        8,
        ge=1,
        le=64,
        description="frames sampled evenly from each video, first and last included (8 show a 5 s clip "
        "at about 1.5 frames a second: enough to see an event's outcome at the image cost of 8 images)",
    )
    max_attempts: int = Field(3, ge=1, le=20, description="tries per video when the judge's answer is malformed")
    bootstrap_resamples: int = Field(
        10_000, ge=100, le=1_000_000, description="resamples of the bootstrap confidence intervals"
    )
    seed: int = Field(0, ge=0, description="seed of the bootstrap resampling (summaries are repeatable)")


# -- frames and messages


def frame_indices(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` frames, first and last included (all if fewer)."""
    if total < 1 or count < 1:
        raise ConfigurationError(f"total and count must be positive, got total={total}, count={count}")
    if count == 1:
        return [(total - 1) // 2]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def sample_frames(video: str | Path, count: int = 8) -> list[Image.Image]:
    """`count` frames of the video file, evenly spaced, in order (see `frame_indices`)."""
    from vchain.video import read_video

    frames = read_video(video)
    if not frames:
        raise VChainError(f"the video {str(video)!r} holds no frame")
    return [frames[i] for i in frame_indices(len(frames), count)]


def judge_messages(prompt: str, frames: Sequence[Image.Image], *, grid: bool = False) -> list[dict]:
    """The judging request in vchain's neutral message layout: each frame an image part, or one grid."""
    if not frames:
        raise ConfigurationError("frames must hold at least one frame to judge, got none")
    if grid:
        text = JUDGE_GRID_USER.format(prompt=prompt, count=len(frames))
        images = [image_part(stitch(list(frames), GRID_MAX_PIXELS))]
    else:
        text = JUDGE_USER.format(prompt=prompt, count=len(frames))
        images = [image_part(frame) for frame in frames]
    return [
        {"role": "system", "content": _instruction()},
        {"role": "user", "content": [text_part(text), *images]},
    ]


# -- scores.json


class ScoreEntry(BaseModel):
    """One judge's scores of a run's video, and every request they cost (retries and failures too).

    `scores` is None while the judge has not answered (its last try failed: `error` says why).
    """

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="fingerprint of the judge's description and the frame count")
    judge: dict[str, Any]
    frames: int
    video_sha256: str
    scores: VideoScores | None = None
    error: str | None = None
    judged: str
    usage: UsageSummary = UsageSummary()
    calls: list[CallRecord] = []


class RunScores(BaseModel):
    """What `scores.json` holds: an entry per judge."""

    model_config = ConfigDict(extra="forbid")

    entries: list[ScoreEntry] = []

    def entry(self, key: str) -> ScoreEntry | None:
        return next((e for e in self.entries if e.key == key), None)

    def current(self, video_sha256: str) -> list[ScoreEntry]:
        """The entries that scored this video (stale ones, of an earlier video, are left out)."""
        return [e for e in self.entries if e.scores is not None and e.video_sha256 == video_sha256]


def read_scores(folder: str | Path) -> RunScores:
    """The `scores.json` of a run folder (empty if there is none); a `VChainError` if it is unreadable."""
    path = Path(folder) / SCORES_FILE
    if _io.regular_file_error(path) == "does not exist":
        return RunScores()
    try:
        return RunScores.model_validate_json(_io.read_regular(path))
    except (OSError, ValidationError) as e:
        detail = describe_errors(e)[:300] if isinstance(e, ValidationError) else str(e)
        raise VChainError(f"{str(path)!r} is not a vchain scores file ({detail}); move it aside") from e


# -- judging runs


@dataclass(frozen=True)
class FinishedRun:
    """A run folder whose every stage is done and whose video is on disk."""

    path: Path
    manifest: Manifest

    @property
    def video(self) -> Path:
        return self.path / VIDEO_FILE


def finished_runs(root: str | Path) -> list[FinishedRun]:
    """The finished runs at or below `root`, in path order; a `ConfigurationError` if there are none."""
    root = check_root(root)
    runs = []
    for folder in iter_runs(root):
        try:
            manifest = read_manifest(folder)
        except VChainError as e:
            logger.warning("Skipping %s: %s", folder, e)
            continue
        if manifest.status() != "done":
            continue
        problem = _io.regular_file_error(folder / VIDEO_FILE)
        if problem is None:
            runs.append(FinishedRun(folder, manifest))
        elif problem != "does not exist":  # a link could send a file from outside the run to the judge
            logger.warning("Skipping %s: its %s %s; vchain judges only plain files inside a run", folder,
                           VIDEO_FILE, problem)  # fmt: skip
    if not runs:
        raise ConfigurationError(
            f"root {str(root)!r} holds no finished run (a folder whose manifest.json has every stage "
            f"done, with its {VIDEO_FILE}); run `vchain suite` or `vchain generate` into it first"
        )
    return runs


def check_root(root: object) -> Path:
    """`root` as an existing folder, or a `ConfigurationError` naming it."""
    if not isinstance(root, (str, Path)) or not str(root).strip():
        raise ConfigurationError(f"root must be a folder path, got {root!r}")
    path = Path(root).expanduser()
    if not path.is_dir():
        reason = "is a file, not a folder" if path.exists() else "does not exist"
        raise ConfigurationError(f"root {str(path)!r} {reason}; pass the folder of a suite or of run folders")
    return path


@dataclass
class JudgedRun:
    """What judging did for one run: its scores (None if the judge failed) and this call's requests."""

    path: Path
    variant: str
    scores: VideoScores | None
    cached: bool
    calls: list[CallRecord] = field(default_factory=list, repr=False)
    error: str | None = None

    @property
    def usage(self) -> UsageSummary:
        return UsageMeter(self.calls).summary()


@dataclass
class JudgingResult:
    """What `judge_runs` did: a `JudgedRun` per finished run, the summary rows and the files written."""

    runs: list[JudgedRun]
    summary: list[SummaryRow]
    summary_csv: Path
    summary_md: Path

    @property
    def usage(self) -> UsageSummary:
        """The requests this call sent (cached runs sent none)."""
        return UsageMeter([call for run in self.runs for call in run.calls]).summary()


def judge_identity(judge: Judge, config: JudgingConfig) -> dict[str, Any]:
    """What decides a judge's scores: its description and the frames it sees (the cache key's input)."""
    return {"judge": judge.describe(), "frames": config.frames}


def judge_runs(root: str | Path, judge: Judge, config: JudgingConfig | None = None) -> JudgingResult:
    """Score every finished run below `root` into its `scores.json`, then write the summary into `root`.

    A run this judge already scored with the same video is not asked again. A run the judge fails on
    (a refusal, a server error, malformed answers `max_attempts` times) keeps its failed attempts in
    `scores.json` and is tried again next time; the other runs go on, and once the summary of the
    others is written a `StageError` names the failures.

    Raises:
        ConfigurationError: `root` does not exist or holds no finished run, or `judge` is not a `Judge`.
    """
    if not isinstance(judge, Judge):
        raise ConfigurationError(f"judge must be a vchain.interfaces.Judge, got {type(judge).__name__}")
    check_description(judge, "judge")
    config = config or JudgingConfig()
    runs = finished_runs(root)
    identity = judge_identity(judge, config)
    root = check_root(root)
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigurationError(f"root {str(root)!r} is not writable, so the judge summary could not be "
                                 "written; nothing was sent: make it writable or judge a copy")  # fmt: skip
    # One judge per tree, and none on a run another vchain process is writing: two judges would pay
    # twice for every video and each overwrite the other's answers.
    with hold(root):
        judged = [_judge_locked(run, judge, config, identity) for run in runs]
        summary = summarize(runs, config)
        csv_path, md_path = write_judge_summary(root, summary, config)
    failed = [run for run in judged if run.error]
    if failed:
        raise StageError(
            f"{len(failed)} of {len(judged)} runs could not be judged ({failed[0].path}: {failed[0].error}); "
            f"their attempts are in their {SCORES_FILE}, and the summary covers the others",
            stage="judging",
        )
    return JudgingResult(judged, summary, csv_path, md_path)


def _judge_locked(run: FinishedRun, judge: Judge, config: JudgingConfig, identity: dict) -> JudgedRun:
    """`_judge_run` under the run's lock; a busy or read-only run is reported before anything is paid."""
    if not os.access(run.path, os.W_OK | os.X_OK):
        error = f"{str(run.path)!r} is not writable, so its {SCORES_FILE} could not be kept; nothing was sent"
        return JudgedRun(run.path, run.manifest.variant, None, cached=False, error=error)
    try:
        with hold(run.path):
            return _judge_run(run, judge, config, identity)
    except ConfigurationError as e:
        return JudgedRun(run.path, run.manifest.variant, None, cached=False, error=str(e))


def _judge_run(run: FinishedRun, judge: Judge, config: JudgingConfig, identity: dict) -> JudgedRun:
    key, variant = fingerprint(identity), run.manifest.variant
    try:
        scores_file = read_scores(run.path)
    except VChainError as e:
        return JudgedRun(run.path, variant, None, cached=False, error=str(e))
    digest = file_digest(run.video)
    previous = scores_file.entry(key)
    if previous is not None and previous.scores is not None and previous.video_sha256 == digest:
        logger.info("%s: already scored by this judge", run.path)
        return JudgedRun(run.path, variant, previous.scores, cached=True)
    # The entry's request records continue across calls, like a manifest's: all it ever cost is kept.
    meter = UsageMeter(previous.calls if previous else [])
    before = len(meter.records)
    scores, error = None, None
    try:
        scores = _ask(judge, run, config, meter)
    except StageError as e:
        error = str(e)
        logger.error("Judging %s failed: %s", run.path, e)
    entry = ScoreEntry(
        key=key, judge=identity["judge"], frames=config.frames, video_sha256=digest, scores=scores,
        error=error, judged=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        usage=meter.summary(), calls=meter.records,
    )  # fmt: skip
    # A judge keeps its place in the file: a re-judged entry replaces its old one where it was.
    scores_file.entries = [entry if e.key == key else e for e in scores_file.entries]
    if previous is None:
        scores_file.entries.append(entry)
    _io.write_json(run.path / SCORES_FILE, scores_file.model_dump(mode="json"))
    logger.info("%s: %s (%d request(s))", run.path, "scored" if scores else "not scored", len(meter.records) - before)
    return JudgedRun(run.path, variant, scores, cached=False, calls=meter.records[before:], error=error)


def _ask(judge: Judge, run: FinishedRun, config: JudgingConfig, meter: UsageMeter) -> VideoScores:
    """One judge call, counted; a malformed answer is asked again up to `max_attempts` times."""
    where = f"{type(judge).__name__}.score()"
    try:
        frames = sample_frames(run.video, config.frames)
    except VChainError as e:
        raise StageError(str(e), stage="judging", step="frames") from e
    for attempt in range(1, config.max_attempts + 1):
        try:
            with meter.call("judge"):
                try:
                    answer = judge.score(run.manifest.prompt, frames)
                except ValidationError as e:
                    raise MalformedResponseError(f"{where} built invalid scores: {describe_errors(e)}") from e
                if not isinstance(answer, VideoScores):
                    raise StageError(f"{where} must return VideoScores, got {type(answer).__name__}", stage="judging")
                return answer
        except MalformedResponseError as e:
            if attempt == config.max_attempts:
                raise StageError(
                    f"malformed answer {attempt} times in a row, giving up: {e}",
                    stage="judging",
                    step="judge",
                ) from e
            logger.warning("Malformed judge answer for %s (attempt %d/%d): %s", run.path, attempt,
                           config.max_attempts, e)  # fmt: skip
        except StageError:
            raise
        except VChainError as e:
            raise StageError(str(e), stage="judging", step="judge") from e
        except Exception as e:
            raise StageError(f"{where} raised {type(e).__name__}: {e}", stage="judging", step="judge") from e
    raise AssertionError("unreachable")


# -- summary


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """The percentile-bootstrap confidence interval of the mean of `values`, repeatable for a seed."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ConfigurationError("values must hold at least one number, got none")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """A dimension's mean score over runs and its 95% bootstrap confidence interval."""

    mean: float
    low: float
    high: float


@dataclass
class SummaryRow:
    """One judge's scores of one variant (n runs), and what the judge cost on those runs."""

    judge: str
    variant: str
    n: int
    estimates: dict[str, Estimate]
    requests: int
    input_tokens: int
    output_tokens: int


def summarize(runs: Sequence[FinishedRun], config: JudgingConfig | None = None) -> list[SummaryRow]:
    """Per judge and variant, each dimension's `Estimate` over the runs the judge scored as they are now.

    Scores of an earlier video of a run are left out; the cost counts every request the judge's entries
    hold, those of earlier videos and failed tries included (they were paid for).
    """
    from vchain.variants import VARIANTS

    config = config or JudgingConfig()
    groups: dict[tuple[str, str], dict] = {}
    labels: dict[str, str] = {}
    for run in runs:
        try:
            scores_file = read_scores(run.path)
        except VChainError as e:
            logger.warning("Leaving %s out of the summary: %s", run.path, e)
            continue
        current = {entry.key for entry in scores_file.current(file_digest(run.video))}
        for entry in scores_file.entries:
            labels.setdefault(entry.key, judge_label(entry))
            group = groups.setdefault((entry.key, run.manifest.variant), {"scores": [], "usage": []})
            group["usage"].append(entry.usage)
            if entry.key in current:
                group["scores"].append(entry.scores)
    names, judges, variants = _unique(labels), list(labels), list(VARIANTS)
    rows = []
    for key, variant in sorted(groups, key=lambda kv: (judges.index(kv[0]), _rank(kv[1], variants))):
        group = groups[(key, variant)]
        scored: list[VideoScores] = group["scores"]
        estimates = {}
        for dimension in DIMENSIONS if scored else ():
            values = [s.score(dimension) for s in scored]
            low, high = bootstrap_ci(values, resamples=config.bootstrap_resamples, seed=config.seed)
            estimates[dimension] = Estimate(float(np.mean(values)), low, high)
        usage: list[UsageSummary] = group["usage"]
        rows.append(SummaryRow(
            names[key], variant, len(scored), estimates, requests=sum(u.requests for u in usage),
            input_tokens=sum(u.input_tokens for u in usage),
            output_tokens=sum(u.output_tokens for u in usage),
        ))  # fmt: skip
    return rows


def judge_label(entry: ScoreEntry) -> str:
    """A short name for the judge of an entry: its model (or class) and the frames it saw."""
    name = entry.judge.get("model") or entry.judge.get("class", "judge")
    return f"{name} ({entry.frames} frames)"


def _unique(labels: dict[str, str]) -> dict[str, str]:
    """Labels by key; two judges that read alike (same model, other settings) get their key's start."""
    seen = list(labels.values())
    return {key: label if seen.count(label) == 1 else f"{label} [{key[:8]}]" for key, label in labels.items()}


def _rank(variant: str, order: list[str]) -> tuple[int, str]:
    return (order.index(variant) if variant in order else len(order), variant)


SUMMARY_COLUMNS = (
    "judge", "variant", "n",
    *(f"{d}_{stat}" for d in DIMENSIONS for stat in ("mean", "ci_low", "ci_high")),
    "requests", "input_tokens", "output_tokens",
)  # fmt: skip


def write_judge_summary(
    root: str | Path, rows: Sequence[SummaryRow], config: JudgingConfig | None = None
) -> tuple[Path, Path]:
    """`judge-summary.csv` (a row per judge and variant) and `judge-summary.md` (a table per judge)."""
    config = config or JudgingConfig()
    root = Path(root)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = {f"{d}_{stat}": round(getattr(e, attr), 3) for d, e in row.estimates.items()
                  for stat, attr in (("mean", "mean"), ("ci_low", "low"), ("ci_high", "high"))}  # fmt: skip
        writer.writerow({
            "judge": row.judge, "variant": row.variant, "n": row.n, **values, "requests": row.requests,
            "input_tokens": row.input_tokens, "output_tokens": row.output_tokens,
        })  # fmt: skip
    csv_path = _io.write_text(root / SUMMARY_CSV, buffer.getvalue())

    lines = [
        "# Judge summary",
        "",
        "Scores from 1 to 5 per variant: the mean over its n runs, and in brackets a 95% confidence "
        f"interval (percentile bootstrap, {config.bootstrap_resamples} resamples of the runs, "
        f"seed {config.seed}). The cost is every request the judge sent for those runs, retries included.",
    ]
    header = ["variant", "n", *(_title(d) for d in DIMENSIONS), "requests", "input tokens", "output tokens"]
    for judge in dict.fromkeys(row.judge for row in rows):
        lines += ["", f"## {judge}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in (r for r in rows if r.judge == judge):
            cells = [
                f"{e.mean:.2f} [{e.low:.2f}, {e.high:.2f}]" if (e := row.estimates.get(d)) else "-" for d in DIMENSIONS
            ]
            values = [row.variant, row.n, *cells, row.requests, row.input_tokens, row.output_tokens]
            lines.append("| " + " | ".join(str(v) for v in values) + " |")
    md_path = _io.write_text(root / SUMMARY_MD, "\n".join(lines) + "\n")
    return csv_path, md_path
