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

A judge may score fewer dimensions (the VideoScore2 judge, `vchain.backends.videoscore2`, scores three;
`judge_dimensions` says which): the others are None in its `VideoScores`, and every summary leaves them
blank rather than averaging what is not there.
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vchain import _io, stats
from vchain.accounting import CallRecord, UsageMeter, UsageSummary
from vchain.config import Config, describe_errors
from vchain.errors import ConfigurationError, MalformedResponseError, StageError, VChainError
from vchain.images import stitch
from vchain.interfaces import ChatModel, Judge, check_description
from vchain.prompts import image_part, text_part
from vchain.reasoning import ChatAsker, chat_description, check_chat
from vchain.run import VIDEO_FILE, Manifest, file_digest, fingerprint, hold, iter_runs, read_manifest
from vchain.scores import DIMENSIONS, VideoScores, dimension_title

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.json"
SUMMARY_CSV = "judge-summary.csv"
SUMMARY_MD = "judge-summary.md"
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


def _instruction() -> str:
    definitions = "\n".join(f"- {dimension_title(d)}: {DEFINITIONS[d]}." for d in DIMENSIONS)
    return JUDGE_SYSTEM.format(definitions=definitions)


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


class ChatJudge(Judge):
    """The judge written once over any `ChatModel`: the frames and the prompt in, `VideoScores` out.

    Args:
        chat: the model that scores.
        grid: send the frames tiled into one image instead of one image per frame.
    """

    def __init__(self, chat: ChatModel, *, grid: bool = False):
        if not isinstance(grid, bool):
            raise ConfigurationError(f"grid must be True or False, got {grid!r}")
        self.chat, self.grid = check_chat(chat), grid
        self._asker = ChatAsker()

    def score(self, prompt: str, frames: Sequence[Image.Image]) -> VideoScores:
        answer = self._asker(self.chat, judge_messages(prompt, frames, grid=self.grid), VideoScores)
        # The schema asks for all six; a score left out (a null from a server that reads the schema loosely)
        # is a malformed answer, not a partly scored video.
        missing = [d for d in DIMENSIONS if answer.score(d) is None]
        if missing:
            raise MalformedResponseError(f"the judge's answer leaves {missing} without a score")
        return answer

    def describe(self) -> dict[str, Any]:
        return {**chat_description(self, self.chat), "grid": self.grid}

    def release(self) -> None:
        if self.chat is not self:  # a preset is its own chat model, whose release comes first
            self.chat.release()


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
            logger.warning(
                "Skipping %s: its %s %s; vchain judges only plain files inside a run", folder, VIDEO_FILE, problem
            )
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
    """What `judge_runs` did: a `JudgedRun` per finished run, the summary rows and the files written.

    `paired` holds the rows of `judge-paired.csv`; `calibration` those of `judge-calibration.json` when
    labels were given (else it is empty and the calibration paths are None).
    """

    runs: list[JudgedRun]
    summary: list[SummaryRow]
    summary_csv: Path
    summary_md: Path
    paired: list = field(default_factory=list)
    paired_csv: Path | None = None
    paired_md: Path | None = None
    calibration: list = field(default_factory=list)
    calibration_json: Path | None = None
    calibration_md: Path | None = None

    @property
    def usage(self) -> UsageSummary:
        """The requests this call sent (cached runs sent none)."""
        return UsageMeter([call for run in self.runs for call in run.calls]).summary()


def judge_dimensions(judge: object) -> tuple[str, ...]:
    """The dimensions `judge` scores: its `dimensions` attribute where it has one (the VideoScore2 judge
    scores three), else all six."""
    dimensions = getattr(judge, "dimensions", DIMENSIONS)
    return tuple(d for d in DIMENSIONS if d in dimensions)


def judge_identity(judge: Judge, config: JudgingConfig) -> dict[str, Any]:
    """What decides a judge's scores: its description and the frames it sees (the cache key's input)."""
    return {"judge": judge.describe(), "frames": config.frames}


def judge_runs(
    root: str | Path,
    judge: Judge,
    config: JudgingConfig | None = None,
    *,
    baseline: str = "t2v",
    by: str | None = None,
    labels: str | Path | None = None,
) -> JudgingResult:
    """Score every finished run below `root` into its `scores.json`, then write the summaries into `root`.

    Besides `judge-summary.csv/.md`, `judge-paired.csv/.md` compares each variant with `baseline` on the
    same cases and seeds (with rows per value of the case meta key `by` too), and with `labels` (a CSV of
    people's 1-5 scores, see `vchain.evaluation.read_labels`) `judge-calibration.json/.md` measures each
    judge's agreement with people. `baseline`, `by` and `labels` are checked before any request.

    A run this judge already scored with the same video is not asked again. A run the judge fails on
    (a refusal, a server error, malformed answers `max_attempts` times) keeps its failed attempts in
    `scores.json` and is tried again next time; the other runs go on, and once the summaries of the
    others are written a `StageError` names the failures.

    Raises:
        ConfigurationError: `root` does not exist or holds no finished run, `judge` is not a `Judge`,
            `baseline` is not a variant, no finished run's case has the meta key `by`, or `labels` is
            malformed (naming the line and the value).
    """
    from vchain import evaluation

    if not isinstance(judge, Judge):
        raise ConfigurationError(f"judge must be a vchain.interfaces.Judge, got {type(judge).__name__}")
    check_description(judge, "judge")
    config = config or JudgingConfig()
    runs = finished_runs(root)
    people = evaluation.check_options(root, runs, baseline=baseline, by=by, labels=labels)
    identity = judge_identity(judge, config)
    root = check_root(root)
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"root {str(root)!r} is not writable, so the judge summary could not be "
            "written; nothing was sent: make it writable or judge a copy"
        )
    # One judge per tree, and none on a run another vchain process is writing: two judges would pay
    # twice for every video and each overwrite the other's answers.
    with hold(root):
        judged = [_judge_locked(run, judge, config, identity) for run in runs]
        scored = evaluation.scored_runs(runs)
        result = JudgingResult(judged, [], Path(root) / SUMMARY_CSV, Path(root) / SUMMARY_MD)
        if people is not None:
            result.calibration = evaluation.calibrate(scored, people, config)
            result.calibration_json, result.calibration_md = evaluation.write_calibration(
                root, result.calibration, people, config
            )
        result.summary = summarize(runs, config, by, scored=scored)
        result.summary_csv, result.summary_md = write_judge_summary(root, result.summary, config)
        result.paired = evaluation.paired_comparison(scored, baseline, by, config)
        result.paired_csv, result.paired_md = evaluation.write_paired(root, result.paired, baseline, config)
    failed = [run for run in judged if run.error]
    if failed:
        raise StageError(
            f"{len(failed)} of {len(judged)} runs could not be judged ({failed[0].path}: {failed[0].error}); "
            f"their attempts are in their {SCORES_FILE}, and the summaries cover the others",
            stage="judging",
        )
    return result


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
        scores = ask_judge(judge, run.manifest.prompt, run.video, config, meter)
    except StageError as e:
        error = str(e)
        logger.error("Judging %s failed: %s", run.path, e)
    entry = ScoreEntry(
        key=key,
        judge=identity["judge"],
        frames=config.frames,
        video_sha256=digest,
        scores=scores,
        error=error,
        judged=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        usage=meter.summary(),
        calls=meter.records,
    )
    # A judge keeps its place in the file: a re-judged entry replaces its old one where it was.
    scores_file.entries = [entry if e.key == key else e for e in scores_file.entries]
    if previous is None:
        scores_file.entries.append(entry)
    _io.write_json(run.path / SCORES_FILE, scores_file.model_dump(mode="json"))
    logger.info("%s: %s (%d request(s))", run.path, "scored" if scores else "not scored", len(meter.records) - before)
    return JudgedRun(run.path, variant, scores, cached=False, calls=meter.records[before:], error=error)


def ask_judge(
    judge: Judge, prompt: str, video: Path, config: JudgingConfig, meter: UsageMeter, index: int | None = None
) -> VideoScores:
    """One judge call on the video file, counted (as step `judge`, `index`); a malformed answer is asked again
    up to `max_attempts` times."""
    where = f"{type(judge).__name__}.score()"
    try:
        frames = sample_frames(video, config.frames)
    except VChainError as e:
        raise StageError(str(e), stage="judging", step="frames") from e
    for attempt in range(1, config.max_attempts + 1):
        try:
            with meter.call("judge", index):
                try:
                    answer = judge.score(prompt, frames)
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
            logger.warning("Malformed judge answer for %s (attempt %d/%d): %s", video, attempt, config.max_attempts, e)
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
) -> tuple[float, float] | None:
    """The percentile-bootstrap confidence interval of the mean of `values`, repeatable for a seed.

    None with a single value: one value has no interval (a zero-width one would claim certainty).
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ConfigurationError("values must hold at least one number, got none")
    return stats.bootstrap_interval(stats.mean, data, resamples=resamples, seed=seed, level=level)


@dataclass(frozen=True)
class Estimate:
    """A dimension's mean score over cases, its 95% bootstrap interval and the spread between seeds.

    `low`/`high` are None with fewer than two cases, `seed_sd` with fewer than two seeds.
    """

    mean: float
    low: float | None
    high: float | None
    seed_sd: float | None = None


@dataclass
class SummaryRow:
    """One judge's scores of one variant (n runs over `cases` cases and `seeds` seeds), and their cost.

    `group` is `""` for all the variant's runs, else `"<meta key>=<value>"` for those of one group.
    """

    judge: str
    variant: str
    n: int
    estimates: dict[str, Estimate]
    requests: int
    input_tokens: int
    output_tokens: int
    cases: int = 0
    seeds: int = 0
    group: str = ""

    @property
    def note(self) -> str:
        """Why an interval or a spread is missing."""
        if self.n == 0:
            return "no run scored"
        notes = ["fewer than two cases: no interval"] if self.cases < 2 else []
        notes += ["one seed: no spread between seeds"] if self.seeds < 2 else []
        unscored = [d for d in DIMENSIONS if d not in self.estimates]
        notes += [f"not scored by this judge: {', '.join(unscored)}"] if unscored else []
        return "; ".join(notes)


def summarize(
    runs: Sequence[FinishedRun], config: JudgingConfig | None = None, by: str | None = None, *, scored=None
) -> list[SummaryRow]:
    """Per judge and variant, each dimension's `Estimate` over the runs the judge scored as they are now.

    A case run with several seeds counts once: its seeds' scores are averaged, the mean is over cases and
    the interval resamples cases; the spread between seeds is the standard deviation of the per-seed
    means. Scores of an earlier video of a run are left out; the cost counts every request the judge's
    entries hold, those of earlier videos and failed tries included (they were paid for). With `by` (a
    key of the cases' meta) each judge and variant also gets a row per value of that key (`group`).
    `scored` (`vchain.evaluation.scored_runs(runs)`, when the caller has it) saves hashing the videos again.
    """
    from vchain.evaluation import group_of, run_case, scored_runs
    from vchain.variants import VARIANTS

    config = config or JudgingConfig()
    usage: dict[tuple[str, str], list[tuple[str | None, UsageSummary]]] = {}
    labels: dict[str, str] = {}
    for run in runs:
        try:
            entries = read_scores(run.path).entries
        except VChainError:
            continue  # scored_runs says why
        group = group_of(run_case(run.manifest)[2], by)
        for entry in entries:
            labels.setdefault(entry.key, judge_label(entry))
            usage.setdefault((entry.key, run.manifest.variant), []).append((group, entry.usage))
    scored = scored_runs(runs) if scored is None else scored
    names, judges, variants = _unique(labels), list(labels), list(VARIANTS)
    rows = []
    for key, variant in sorted(usage, key=lambda kv: (judges.index(kv[0]), _rank(kv[1], variants))):
        mine = [s for s in scored if s.judge_key == key and s.variant == variant]
        groups = ["", *sorted({g for g, _ in usage[key, variant] if g is not None})]
        for group in groups:
            members = [s for s in mine if not group or group_of(s.meta, by) == group]
            paid = [u for g, u in usage[(key, variant)] if not group or g == group]
            rows.append(_summary_row(names[key], variant, group, members, paid, config))
    return rows


def _summary_row(judge: str, variant: str, group: str, scored: list, paid: list[UsageSummary], config) -> SummaryRow:
    from vchain.evaluation import case_mean_interval

    estimates = {}
    for dimension in DIMENSIONS:
        # A dimension the judge leaves out has no estimate: the summaries show it blank, never as a number.
        rated = [s for s in scored if s.scores.score(dimension) is not None]
        if not rated:
            continue
        by_seed: dict[int | None, list[float]] = {}
        for s in rated:
            by_seed.setdefault(s.seed, []).append(s.scores.score(dimension))
        mean = case_mean_interval([(s.case, s.scores.score(dimension)) for s in rated], config)
        sd = stats.spread([np.mean(v) for v in by_seed.values()])
        estimates[dimension] = Estimate(mean.value, mean.low, mean.high, seed_sd=sd)
    return SummaryRow(
        judge,
        variant,
        len(scored),
        estimates,
        requests=sum(u.requests for u in paid),
        input_tokens=sum(u.input_tokens for u in paid),
        output_tokens=sum(u.output_tokens for u in paid),
        cases=len({s.case for s in scored}),
        seeds=len({s.seed for s in scored}),
        group=group,
    )


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
    "judge",
    "variant",
    "group",
    "n",
    "cases",
    "seeds",
    *(f"{d}_{stat}" for d in DIMENSIONS for stat in ("mean", "ci_low", "ci_high", "seed_sd")),
    "requests",
    "input_tokens",
    "output_tokens",
    "note",
)


def write_judge_summary(
    root: str | Path, rows: Sequence[SummaryRow], config: JudgingConfig | None = None
) -> tuple[Path, Path]:
    """`judge-summary.csv` (a row per judge and variant, full precision) and `judge-summary.md` (a table per
    judge, named with its agreement with people where `judge-calibration.json` measured it)."""
    from vchain.evaluation import agreement_line, read_calibration

    config = config or JudgingConfig()
    root = Path(root)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = {
            f"{d}_{stat}": getattr(e, attr)
            for d, e in row.estimates.items()
            for stat, attr in (("mean", "mean"), ("ci_low", "low"), ("ci_high", "high"), ("seed_sd", "seed_sd"))
        }
        writer.writerow(
            {
                "judge": row.judge,
                "variant": row.variant,
                "group": row.group,
                "n": row.n,
                "cases": row.cases,
                "seeds": row.seeds,
                **values,
                "requests": row.requests,
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "note": row.note,
            }
        )
    csv_path = _io.write_text(root / SUMMARY_CSV, buffer.getvalue())

    calibration = read_calibration(root)
    lines = [
        "# Judge summary",
        "",
        "Scores from 1 to 5 per variant: the mean over its cases (a case's seeds averaged first), in brackets "
        f"a 95% confidence interval (percentile bootstrap, {config.bootstrap_resamples} resamples of the "
        f"cases, seed {config.seed}; [—]: fewer than two cases, no interval), and with several seeds sd, the "
        "standard deviation between the seeds' means. The cost is every request the judge sent for those "
        "runs, retries included. —: the judge does not score that dimension.",
    ]
    header = [
        "variant",
        "n",
        "cases",
        "seeds",
        *(dimension_title(d) for d in DIMENSIONS),
        "requests",
        "input tokens",
        "output tokens",
    ]
    for judge in dict.fromkeys(row.judge for row in rows):
        lines += ["", f"## {judge}", "", agreement_line(judge, calibration)]
        mine = [r for r in rows if r.judge == judge]
        unscored = [d for d in DIMENSIONS if not any(d in r.estimates for r in mine)]
        if any(r.estimates for r in mine) and unscored:
            lines += ["", f"Not scored by this judge: {', '.join(dimension_title(d) for d in unscored)}."]
        for group in dict.fromkeys(r.group for r in mine):
            lines += ["", f"### {group}", ""] if group else [""]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for row in (r for r in mine if r.group == group):
                cells = [_summary_cell(row.estimates.get(d)) for d in DIMENSIONS]
                values = [
                    row.variant,
                    row.n,
                    row.cases,
                    row.seeds,
                    *cells,
                    row.requests,
                    row.input_tokens,
                    row.output_tokens,
                ]
                lines.append("| " + " | ".join(str(v) for v in values) + " |")
    md_path = _io.write_text(root / SUMMARY_MD, "\n".join(lines) + "\n")
    return csv_path, md_path


def _summary_cell(e: Estimate | None) -> str:
    if e is None:
        return "—"
    cell = f"{e.mean:.2f} " + ("[—]" if e.low is None else f"[{e.low:.2f}, {e.high:.2f}]")
    return cell if e.seed_sd is None else f"{cell} sd {e.seed_sd:.2f}"
