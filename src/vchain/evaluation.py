"""Evaluation that counts: paired differences between variants, and a judge's agreement with people.

Both read the scores `vchain.judging.judge_runs` keeps in each run folder, paired by case and seed (a
suite's manifest records them; a run made outside a suite is its prompt's case, with its sampling seed):

- `paired_comparison`: each variant against a baseline (`t2v` by default) on the same cases and seeds:
  per dimension the mean of variant - baseline, a 95% paired-bootstrap interval, and wins / ties / losses
  (a win: the variant scored higher). With several seeds a case's differences are averaged over its seeds
  first and the cases are resampled, since the seeds of one case are not independent of each other.
  Runs without a partner are left out. Written as `judge-paired.csv` / `judge-paired.md`.
- `calibrate`: a judge's scores against people's (a labels CSV: a `run` column, the run folder relative
  to the root, and a column of 1-5 scores per dimension, blanks skipped): per dimension n, Pearson,
  Spearman and quadratic-weighted kappa, each with a 95% bootstrap interval over the labelled runs.
  Written as `judge-calibration.json` / `.md`; every summary names each judge's agreement from there.

A statistic over fewer than two values has no interval: its cells stay blank and a note says why. A
dimension the judge does not score (`rated_dimensions`) gets no paired or calibration row at all.
Resamples on which a statistic is undefined (a constant sample has no correlation) are skipped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vchain import _io, stats
from vchain.errors import ConfigurationError, VChainError
from vchain.judging import (
    DIMENSIONS,
    FinishedRun,
    JudgingConfig,
    VideoScores,
    _unique,
    bootstrap_ci,
    judge_label,
    read_scores,
)
from vchain.run import Manifest, file_digest
from vchain.scores import dimension_title

logger = logging.getLogger(__name__)

PAIRED_CSV = "judge-paired.csv"
PAIRED_MD = "judge-paired.md"
CALIBRATION_JSON = "judge-calibration.json"
CALIBRATION_MD = "judge-calibration.md"
AGREEMENTS = {"pearson": stats.pearson, "spearman": stats.spearman, "kappa": stats.quadratic_kappa}
NO_INTERVAL = "fewer than two {what}: no interval"


@dataclass(frozen=True)
class ScoredRun:
    """One judge's current scores of one run, with what pairs the run with others: its case and seed."""

    path: Path
    judge_key: str
    judge: str
    variant: str
    case: str
    seed: int | None
    meta: dict[str, Any]
    scores: VideoScores


def run_case(manifest: Manifest) -> tuple[str, int | None, dict[str, Any]]:
    """(case id, seed, meta) of a run: from its suite record, else its prompt and sampling seed."""
    if manifest.case is not None:
        return manifest.case.id, manifest.case.seed, manifest.case.meta
    return manifest.prompt, manifest.stages.sampling.seed, {}


def scored_runs(runs: Sequence[FinishedRun]) -> list[ScoredRun]:
    """Every judge's scores of each run's video as it is now (entries of an earlier video are left out)."""
    found: list[tuple[FinishedRun, Any]] = []
    labels: dict[str, str] = {}
    for run in runs:
        try:
            scores_file = read_scores(run.path)
        except VChainError as e:
            logger.warning("Leaving %s out: %s", run.path, e)
            continue
        for entry in scores_file.entries:
            labels.setdefault(entry.key, judge_label(entry))
        found += [(run, entry) for entry in scores_file.current(file_digest(run.video))]
    names = _unique(labels)
    scored = []
    for run, entry in found:
        case, seed, meta = run_case(run.manifest)
        scored.append(
            ScoredRun(run.path, entry.key, names[entry.key], run.manifest.variant, case, seed, meta, entry.scores)
        )
    return scored


@dataclass(frozen=True)
class Interval:
    """A statistic, its 95% bootstrap interval (None when there is none) and why there is none."""

    value: float | None
    low: float | None = None
    high: float | None = None
    note: str = ""


def case_mean_interval(values: Sequence[tuple[str, float]], config: JudgingConfig) -> Interval:
    """The mean over cases of each case's mean value, with a bootstrap interval over the cases."""
    by_case: dict[str, list[float]] = {}
    for case, value in values:
        by_case.setdefault(case, []).append(value)
    if not by_case:
        return Interval(None, note="no values")
    means = [float(np.mean(v)) for v in by_case.values()]
    ci = bootstrap_ci(means, resamples=config.bootstrap_resamples, seed=config.seed)
    if ci is None:
        return Interval(float(np.mean(means)), note=NO_INTERVAL.format(what="cases"))
    return Interval(float(np.mean(means)), *ci)


def check_options(
    root: str | Path, runs: Sequence[FinishedRun], *, baseline: str, by: str | None, labels: str | Path | None
) -> Labels | None:
    """`judge_runs`' evaluation options checked against the finished runs, before any request; the labels read."""
    from vchain.variants import VARIANTS

    if baseline not in VARIANTS:
        raise ConfigurationError(f"baseline must be one of the variants {list(VARIANTS)}, got {baseline!r}")
    if by is not None:
        keys = sorted({key for run in runs for key in run_case(run.manifest)[2]})
        if by not in keys:
            raise ConfigurationError(
                f"by must be a meta key of the runs' cases, got {by!r}; the finished runs' cases have "
                f"{keys or 'no meta (run a suite with --prompts FILE to record it)'}"
            )
    return None if labels is None else read_labels(labels, root, runs)


# -- paired differences


@dataclass(frozen=True)
class PairedRow:
    """A variant against the baseline on one dimension: n pairs, the mean difference and its interval."""

    judge: str
    variant: str
    baseline: str
    group: str
    dimension: str
    n: int
    difference: Interval
    wins: int
    ties: int
    losses: int


def paired_comparison(
    scored: Sequence[ScoredRun], baseline: str = "t2v", by: str | None = None, config: JudgingConfig | None = None
) -> list[PairedRow]:
    """Each variant minus `baseline` on the same case and seed, per judge and dimension.

    `group` is `""` for all the pairs; with `by` (a key of the cases' meta) there are also rows per value
    of that key (`"main_category=Mechanics"`), and cases without the key are left out of those rows.
    """
    config = config or JudgingConfig()
    rows = []
    for judge_key in dict.fromkeys(s.judge_key for s in scored):
        mine = [s for s in scored if s.judge_key == judge_key]
        dimensions = rated_dimensions(mine)
        partners = {(s.case, s.seed): s for s in mine if s.variant == baseline}
        variants = [v for v in dict.fromkeys(s.variant for s in mine) if v != baseline]
        for variant in variants:
            pairs = [
                (s, partners[s.case, s.seed]) for s in mine if s.variant == variant and (s.case, s.seed) in partners
            ]
            groups: dict[str, list] = {"": pairs}
            for pair in pairs:
                group = group_of(pair[0].meta, by)
                if group is not None:
                    groups.setdefault(group, []).append(pair)
            for group, members in groups.items():
                for dimension in dimensions:
                    rows.append(_paired_row(mine[0].judge, variant, baseline, group, dimension, members, config))
    return rows


def rated_dimensions(scored: Sequence[ScoredRun]) -> tuple[str, ...]:
    """The dimensions at least one of these scores rates: a judge's own (the others get no row at all)."""
    return tuple(d for d in DIMENSIONS if any(s.scores.score(d) is not None for s in scored))


def group_of(meta: dict[str, Any], by: str | None) -> str | None:
    """`"<by>=<value>"` for a case whose meta has the key `by`, else None."""
    if by is None or by not in meta:
        return None
    value = meta[by]
    return f"{by}={value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"


def _paired_row(judge, variant, baseline, group, dimension, pairs, config) -> PairedRow:
    pairs = [
        (a, b) for a, b in pairs if a.scores.score(dimension) is not None and b.scores.score(dimension) is not None
    ]
    diffs = [(a.case, a.scores.score(dimension) - b.scores.score(dimension)) for a, b in pairs]
    signs = np.sign([d for _, d in diffs])
    difference = case_mean_interval(diffs, config)
    if not diffs:
        difference = Interval(None, note=f"no {variant} run has a {baseline} partner on the same case and seed")
    wins, ties, losses = (int(count) for count in ((signs > 0).sum(), (signs == 0).sum(), (signs < 0).sum()))
    return PairedRow(judge, variant, baseline, group, dimension, len(diffs), difference, wins, ties, losses)


PAIRED_COLUMNS = (
    "judge",
    "variant",
    "baseline",
    "group",
    "dimension",
    "n",
    "mean_diff",
    "ci_low",
    "ci_high",
    "wins",
    "ties",
    "losses",
    "note",
)


def write_paired(
    root: str | Path, rows: Sequence[PairedRow], baseline: str, config: JudgingConfig | None = None
) -> tuple[Path, Path]:
    """`judge-paired.csv` (a row per judge, variant, group and dimension, full precision) and `.md`."""
    config = config or JudgingConfig()
    root = Path(root)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, PAIRED_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        d = row.difference
        writer.writerow(
            {
                "judge": row.judge,
                "variant": row.variant,
                "baseline": row.baseline,
                "group": row.group,
                "dimension": row.dimension,
                "n": row.n,
                "mean_diff": d.value,
                "ci_low": d.low,
                "ci_high": d.high,
                "wins": row.wins,
                "ties": row.ties,
                "losses": row.losses,
                "note": d.note,
            }
        )
    csv_path = _io.write_text(root / PAIRED_CSV, buffer.getvalue())
    calibration = read_calibration(root)
    lines = [
        "# Paired differences",
        "",
        f"Each variant minus {baseline} on the same case and seed, scores 1 to 5: the mean difference over "
        "cases (a case's seeds averaged first), in brackets a 95% paired-bootstrap interval "
        f"({config.bootstrap_resamples} resamples of the cases, seed {config.seed}), then wins / ties / "
        "losses over the n pairs (a win: the variant scored higher). [—]: fewer than two cases, no interval; "
        "—: no pair, or a dimension the judge does not score.",
    ]
    if not rows:
        lines += ["", f"No variant has a {baseline} run to pair with on the same case and seed."]
    for judge in dict.fromkeys(row.judge for row in rows):
        lines += ["", f"## {judge}", "", agreement_line(judge, calibration)]
        mine = [row for row in rows if row.judge == judge]
        for group in dict.fromkeys(row.group for row in mine):
            header = ["variant", "n pairs", *(dimension_title(d) for d in DIMENSIONS)]
            lines += [
                "",
                f"### {group or 'all cases'}",
                "",
                "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header),
            ]
            for variant in dict.fromkeys(row.variant for row in mine if row.group == group):
                cells = {r.dimension: r for r in mine if r.group == group and r.variant == variant}
                n = max(r.n for r in cells.values())
                lines.append(
                    "| " + " | ".join([variant, str(n), *(_paired_cell(cells.get(d)) for d in DIMENSIONS)]) + " |"
                )
    md_path = _io.write_text(root / PAIRED_MD, "\n".join(lines) + "\n")
    return csv_path, md_path


def _paired_cell(row: PairedRow | None) -> str:
    if row is None or row.difference.value is None:  # a dimension the judge does not score, or no pair
        return "—"
    d = row.difference
    return f"{d.value:+.2f} {_brackets(d, '+.2f')} · {row.wins}/{row.ties}/{row.losses}"


def _brackets(interval: Interval, spec: str = ".2f") -> str:
    if interval.low is None:
        return "[—]"
    return f"[{interval.low:{spec}}, {interval.high:{spec}}]"


# -- agreement with people


@dataclass(frozen=True)
class Labels:
    """People's scores from a labels CSV: run folder -> {dimension: score}."""

    path: Path
    scores: dict[Path, dict[str, int]]


def read_labels(path: str | Path, root: str | Path, runs: Sequence[FinishedRun]) -> Labels:
    """People's 1-5 scores per run from `path`, every row checked against the finished runs below `root`.

    Raises:
        ConfigurationError: the file is unreadable, has no `run` column or an unknown column, or a row
            names a run that is not a finished run below `root`, names one twice, or holds a score that
            is not an integer from 1 to 5 (the message names the line and the value).
    """
    path, root = Path(path).expanduser(), Path(root)
    where = f"labels file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"{where} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    unknown = [c for c in columns if c != "run" and c not in DIMENSIONS]
    if "run" not in columns or unknown or len(columns) < 2:
        raise ConfigurationError(
            f"{where} must have a run column and one column per dimension among {list(DIMENSIONS)}; "
            f"got columns {columns}" + (f" (unknown: {unknown})" if unknown else "")
        )
    finished = {run.path.resolve(): run.path for run in runs}
    scores: dict[Path, dict[str, int]] = {}
    for row in reader:
        line = f"{where}, line {reader.line_num}"
        if None in row:
            raise ConfigurationError(f"{line}: more cells than the header's {len(columns)}")
        name = (row["run"] or "").strip()
        folder = finished.get((root / name).resolve()) if name else None
        if folder is None:
            raise ConfigurationError(
                f"{line}: run {name!r} is not a finished run folder below {str(root)!r} (a path relative to it, "
                f"e.g. {str(next(iter(finished.values())).relative_to(root))!r})"
            )
        if folder in scores:
            raise ConfigurationError(f"{line}: run {name!r} is labelled twice")
        scores[folder] = {}
        for dimension in (c for c in columns if c != "run"):
            cell = (row[dimension] or "").strip()
            if not cell:
                continue
            if not cell.isdigit() or not 1 <= int(cell) <= 5:
                raise ConfigurationError(
                    f"{line}, column {dimension}: a score must be an integer from 1 to 5 (or blank), got {cell!r}"
                )
            scores[folder][dimension] = int(cell)
    if not scores:
        raise ConfigurationError(f"{where} labels no run")
    return Labels(path, scores)


@dataclass(frozen=True)
class CalibrationRow:
    """A judge's agreement with people on one dimension over n labelled runs."""

    judge: str
    judge_key: str
    dimension: str
    n: int
    agreement: dict[str, Interval] = field(default_factory=dict)


def calibrate(
    scored: Sequence[ScoredRun], labels: Labels, config: JudgingConfig | None = None
) -> list[CalibrationRow]:
    """Per judge and dimension: Pearson, Spearman and quadratic kappa between people and the judge."""
    config = config or JudgingConfig()
    rows = []
    for judge_key in dict.fromkeys(s.judge_key for s in scored):
        mine = [s for s in scored if s.judge_key == judge_key and s.path in labels.scores]
        # A dimension the judge does not score has nothing to agree on: it gets no row.
        for dimension in rated_dimensions([s for s in scored if s.judge_key == judge_key]):
            pairs = [
                (labels.scores[s.path][dimension], s.scores.score(dimension))
                for s in mine
                if dimension in labels.scores[s.path] and s.scores.score(dimension) is not None
            ]
            people, judge = (np.array([p[i] for p in pairs], dtype=float) for i in (0, 1))
            agreement = {}
            for name, statistic in AGREEMENTS.items():
                value = stats.point(statistic, people, judge)
                ci = stats.bootstrap_interval(
                    statistic, people, judge, resamples=config.bootstrap_resamples, seed=config.seed
                )
                if len(pairs) < 2:
                    note = NO_INTERVAL.format(what="labelled runs")
                elif value is None or ci is None:
                    note = "undefined: the scores do not vary"
                else:
                    note = ""
                agreement[name] = Interval(value, *(ci if ci and value is not None else (None, None)), note=note)
            judge_name = next(s.judge for s in scored if s.judge_key == judge_key)
            rows.append(CalibrationRow(judge_name, judge_key, dimension, len(pairs), agreement))
    return rows


def write_calibration(
    root: str | Path, rows: Sequence[CalibrationRow], labels: Labels, config: JudgingConfig | None = None
) -> tuple[Path, Path]:
    """`judge-calibration.json` (full precision, by judge) and `judge-calibration.md`."""
    config = config or JudgingConfig()
    root = Path(root)
    judges: dict[str, dict] = {}
    for row in rows:
        entry = judges.setdefault(row.judge_key, {"judge": row.judge, "dimensions": {}})
        entry["dimensions"][row.dimension] = {
            "n": row.n,
            **{
                name: {"value": a.value, "ci_low": a.low, "ci_high": a.high, "note": a.note}
                for name, a in row.agreement.items()
            },
        }
    data = {
        "labels": str(labels.path),
        "labelled_runs": len(labels.scores),
        "calibrated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bootstrap": {"resamples": config.bootstrap_resamples, "seed": config.seed, "level": 0.95},
        "judges": judges,
    }
    json_path = _io.write_json(root / CALIBRATION_JSON, data)
    lines = [
        "# Judge calibration",
        "",
        f"Agreement between each judge and people's scores in {labels.path.name} ({len(labels.scores)} labelled "
        "runs), per dimension over the n runs both scored: Pearson's r, Spearman's rho and Cohen's kappa with "
        f"quadratic weights over the 1-5 scale, each with a 95% bootstrap interval ({config.bootstrap_resamples} "
        "resamples of the runs; resamples where a statistic is undefined are skipped). 1 is perfect agreement, "
        "0 is what chance gives. —: undefined (fewer than two runs, or scores that do not vary).",
    ]
    header = ["dimension", "n", "Pearson", "Spearman", "quadratic kappa"]
    for key, entry in judges.items():
        lines += ["", f"## {entry['judge']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in (r for r in rows if r.judge_key == key):
            cells = [_agreement_cell(row.agreement[name]) for name in AGREEMENTS]
            lines.append("| " + " | ".join([dimension_title(row.dimension), str(row.n), *cells]) + " |")
    md_path = _io.write_text(root / CALIBRATION_MD, "\n".join(lines) + "\n")
    return json_path, md_path


def _agreement_cell(a: Interval) -> str:
    return "—" if a.value is None else f"{a.value:.2f} {_brackets(a)}"


def read_calibration(root: str | Path) -> dict[str, dict]:
    """The judges' calibrations in `root` (judge label -> its entry), or {} when there is none."""
    path = Path(root) / CALIBRATION_JSON
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {entry["judge"]: {**entry, "labels": data["labels"]} for entry in data["judges"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning("Ignoring %s, which is not a vchain calibration file: %s", path, e)
        return {}


def agreement_line(judge: str, calibration: dict[str, dict]) -> str:
    """One sentence on how far `judge`'s scores agree with people's, or that this was never measured."""
    entry = calibration.get(judge)
    if entry is None:
        return (
            "Agreement with people: not measured. This judge is uncalibrated until vchain judge --calibrate "
            "LABELS.csv measures it; read its scores as a model's opinion."
        )
    parts = []
    for dimension, values in entry["dimensions"].items():
        kappa = values["kappa"]
        value = "—" if kappa["value"] is None else f"{kappa['value']:.2f}"
        interval = Interval(kappa["value"], kappa["ci_low"], kappa["ci_high"])
        parts.append(f"{dimension_title(dimension)} {value} {_brackets(interval)} (n {values['n']})")
    return f"Agreement with people ({Path(entry['labels']).name}, quadratic kappa): " + "; ".join(parts) + "."
