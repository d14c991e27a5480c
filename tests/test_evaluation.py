"""Paired differences, seeds and calibration on a tree whose scores are known, checked against numpy/scipy."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from vchain import _io
from vchain.errors import ConfigurationError
from vchain.evaluation import CALIBRATION_JSON, CALIBRATION_MD, PAIRED_CSV, PAIRED_MD
from vchain.interfaces import Judge
from vchain.judging import (
    DIMENSIONS,
    SCORES_FILE,
    SUMMARY_CSV,
    SUMMARY_MD,
    JudgingConfig,
    RunScores,
    ScoreEntry,
    VideoScores,
    judge_identity,
    judge_runs,
)
from vchain.run import (
    MANIFEST_FILE,
    VIDEO_FILE,
    CaseRecord,
    Manifest,
    ReasoningRecord,
    SamplingRecord,
    Stages,
    TuningRecord,
    file_digest,
    fingerprint,
)

from .test_stats import kappa_by_the_book

CATEGORIES = ["Mechanics", "Mechanics", "Mechanics", "Thermal", "Thermal", "Optics"]
CASES, SEEDS, VARIANTS = range(len(CATEGORIES)), (0, 1), ("t2v", "vchain")
MISSING = ("t2v", 5, 1)  # a run whose vchain partner is left without a pair
RNG = np.random.default_rng(3)
SCORES = {
    (v, c, s): {d: int(RNG.integers(1, 6)) + (v == "vchain") for d in DIMENSIONS}
    for v in VARIANTS
    for c in CASES
    for s in SEEDS
}
SCORES = {k: {d: min(x, 5) for d, x in v.items()} for k, v in SCORES.items() if k != MISSING}


class CachedJudge(Judge):
    """The judge whose scores the tree already holds: asking it anything is a test failure."""

    def __init__(self):
        self.calls = 0

    def score(self, prompt, frames):
        self.calls += 1
        raise AssertionError("the judge was asked although every run holds its scores")


def folder(root, variant, case, seed) -> Path:
    return root / f"{case:02d}_case_{case}" / variant / f"seed-{seed}"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Finished runs with their case records and this judge's cached scores; the videos are never decoded."""
    root = tmp_path_factory.mktemp("evaluation") / "suite"
    key = fingerprint(judge_identity(CachedJudge(), JudgingConfig()))
    for (variant, case, seed), scores in SCORES.items():
        path = folder(root, variant, case, seed)
        path.mkdir(parents=True)
        (path / VIDEO_FILE).write_bytes(f"{variant} {case} {seed}".encode())
        record = CaseRecord(id=f"case-{case}", index=case, meta={"main_category": CATEGORIES[case]}, seed=seed)
        skipped = "skipped" if variant == "t2v" else "done"
        stages = Stages(
            reasoning=ReasoningRecord(status=skipped),
            tuning=TuningRecord(status=skipped),
            sampling=SamplingRecord(status="done", seed=seed),
        )
        manifest = Manifest(prompt=f"Prompt {case}.", variant=variant, case=record, stages=stages)
        _io.write_json(path / MANIFEST_FILE, manifest.model_dump(mode="json"))
        answer = VideoScores(**scores, **{f"{d}_reason": "Seen." for d in DIMENSIONS})
        digest = file_digest(path / VIDEO_FILE)
        entry = ScoreEntry(
            key=key,
            judge=CachedJudge().describe(),
            frames=8,
            video_sha256=digest,
            scores=answer,
            judged="2026-01-01T00:00:00+00:00",
        )
        _io.write_json(path / SCORES_FILE, RunScores(entries=[entry]).model_dump(mode="json"))
    return root


@pytest.fixture
def tree(pristine, tmp_path):
    return Path(shutil.copytree(pristine, tmp_path / "suite"))


def expected_pairs(dimension, cases=CASES):
    """(case, vchain - t2v) for every case and seed where both runs exist."""
    return [
        (c, SCORES["vchain", c, s][dimension] - SCORES["t2v", c, s][dimension])
        for c in cases
        for s in SEEDS
        if ("t2v", c, s) in SCORES
    ]


def case_means(pairs):
    cases = sorted({c for c, _ in pairs})
    return np.array([np.mean([d for c2, d in pairs if c2 == c]) for c in cases])


def rows_of(path):
    return list(csv.DictReader(path.open()))


def test_paired_differences_match_numpy_and_scipy(tree):
    judge = CachedJudge()
    result = judge_runs(tree, judge, by="main_category")
    assert judge.calls == 0 and result.usage.requests == 0
    rows = rows_of(tree / PAIRED_CSV)
    overall = {r["dimension"]: r for r in rows if r["group"] == ""}
    assert set(overall) == set(DIMENSIONS) and {r["variant"] for r in rows} == {"vchain"}
    for dimension, row in overall.items():
        pairs = expected_pairs(dimension)
        diffs = np.array([d for _, d in pairs])
        means = case_means(pairs)
        assert int(row["n"]) == len(pairs) == 11  # the vchain run without a t2v partner is left out
        assert float(row["mean_diff"]) == pytest.approx(means.mean(), abs=1e-12)
        assert (int(row["wins"]), int(row["ties"]), int(row["losses"])) == (
            (diffs > 0).sum(),
            (diffs == 0).sum(),
            (diffs < 0).sum(),
        )
        scipy_ci = scipy.stats.bootstrap(
            (means,), np.mean, method="percentile", n_resamples=10_000, rng=np.random.default_rng(5)
        ).confidence_interval
        assert float(row["ci_low"]) == pytest.approx(scipy_ci.low, abs=0.1)
        assert float(row["ci_high"]) == pytest.approx(scipy_ci.high, abs=0.1)
        assert row["baseline"] == "t2v" and row["note"] == ""

    thermal = {r["dimension"]: r for r in rows if r["group"] == "main_category=Thermal"}
    for dimension, row in thermal.items():
        # Two cases with mean differences a and b: resampled means are a, (a+b)/2 and b with chances 1/4,
        # 1/2 and 1/4, so the 2.5% and 97.5% quantiles are exactly min and max.
        means = case_means(expected_pairs(dimension, cases=(3, 4)))
        assert (float(row["ci_low"]), float(row["ci_high"])) == (means.min(), means.max())
    optics = {r["dimension"]: r for r in rows if r["group"] == "main_category=Optics"}
    for dimension, row in optics.items():
        # One case (its seed 1 has no partner): a mean, no interval, and a note that says why.
        assert int(row["n"]) == 1 and float(row["mean_diff"]) == expected_pairs(dimension, cases=(5,))[0][1]
        assert row["ci_low"] == row["ci_high"] == "" and row["note"] == "fewer than two cases: no interval"
    summary = {(r["variant"], r["group"]): r for r in rows_of(tree / SUMMARY_CSV)}
    thermal = [SCORES["vchain", c, s]["physics"] for c in (3, 4) for s in SEEDS]
    assert float(summary["vchain", "main_category=Thermal"]["physics_mean"]) == pytest.approx(np.mean(thermal))
    assert (summary["vchain", "main_category=Thermal"]["n"], summary["t2v", "main_category=Optics"]["n"]) == ("4", "1")
    assert "### main_category=Thermal" in (tree / SUMMARY_MD).read_text()
    markdown = (tree / PAIRED_MD).read_text()
    assert "### main_category=Optics" in markdown and "[—]" in markdown and "nan" not in markdown.lower()
    assert "Agreement with people: not measured" in markdown


def test_the_summary_averages_seeds_within_a_case_and_gives_the_spread_between_seeds(tree):
    judge_runs(tree, CachedJudge())
    rows = {r["variant"]: r for r in rows_of(tree / SUMMARY_CSV)}
    for variant in VARIANTS:
        row = rows[variant]
        present = [(c, s) for c in CASES for s in SEEDS if (variant, c, s) in SCORES]
        assert (int(row["n"]), int(row["cases"]), int(row["seeds"])) == (len(present), 6, 2)
        for dimension in DIMENSIONS:
            per_case = [
                np.mean([SCORES[variant, c, s][dimension] for s in SEEDS if (variant, c, s) in SCORES]) for c in CASES
            ]
            per_seed = [
                np.mean([SCORES[variant, c, s][dimension] for c in CASES if (variant, c, s) in SCORES]) for s in SEEDS
            ]
            assert float(row[f"{dimension}_mean"]) == pytest.approx(np.mean(per_case), abs=1e-12)
            assert float(row[f"{dimension}_seed_sd"]) == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
            assert float(row[f"{dimension}_ci_low"]) <= np.mean(per_case) <= float(row[f"{dimension}_ci_high"])
    assert "| vchain | 12 | 6 | 2 |" in (tree / SUMMARY_MD).read_text()


def test_another_baseline_and_a_single_case_tree(tree):
    judge_runs(tree, CachedJudge(), baseline="vchain")
    rows = rows_of(tree / PAIRED_CSV)
    assert {r["variant"] for r in rows} == {"t2v"}
    physics = next(r for r in rows if r["dimension"] == "physics")
    assert float(physics["mean_diff"]) == pytest.approx(-case_means(expected_pairs("physics")).mean())
    # Only case 0: one value per dimension in the summary, never a zero-width interval.
    for path in tree.iterdir():
        if path.is_dir() and not path.name.startswith("00_"):
            shutil.rmtree(path)
    judge_runs(tree, CachedJudge())
    for row in rows_of(tree / SUMMARY_CSV):
        assert row["physics_ci_low"] == row["physics_ci_high"] == "" and "no interval" in row["note"]
    assert "[—]" in (tree / SUMMARY_MD).read_text()


def labels_file(tree, rows, header=("run", *DIMENSIONS)):
    path = tree.parent / "labels.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def human(variant, case, seed, dimension):
    """People's score: the judge's, off by one on some runs, and blank on a few."""
    score = SCORES[variant, case, seed][dimension]
    if (case + seed + DIMENSIONS.index(dimension)) % 5 == 0:
        return ""
    return min(5, max(1, score + (1 if (case * 7 + seed) % 3 == 0 else 0) - (1 if case == 4 else 0)))


def test_calibration_matches_scipy_and_every_summary_names_the_agreement(tree):
    labelled = [key for key in SCORES if key[0] == "vchain" or key[1] < 3]
    rows = [
        [folder(tree, *key).relative_to(tree).as_posix(), *(human(*key, d) for d in DIMENSIONS)] for key in labelled
    ]
    result = judge_runs(tree, CachedJudge(), labels=labels_file(tree, rows))
    data = json.loads((tree / CALIBRATION_JSON).read_text())
    (entry,) = data["judges"].values()
    assert data["labelled_runs"] == len(labelled) and entry["judge"] == "CachedJudge (8 frames)"
    for dimension in DIMENSIONS:
        pairs = [(human(*key, dimension), SCORES[key][dimension]) for key in labelled if human(*key, dimension) != ""]
        people, judge = (np.array([p[i] for p in pairs], dtype=float) for i in (0, 1))
        measured = entry["dimensions"][dimension]
        assert measured["n"] == len(pairs)
        expected = {
            "pearson": scipy.stats.pearsonr(people, judge)[0],
            "spearman": scipy.stats.spearmanr(people, judge)[0],
            "kappa": kappa_by_the_book(people, judge),
        }
        for name, value in expected.items():
            assert measured[name]["value"] == pytest.approx(value, abs=1e-12)
            assert measured[name]["ci_low"] <= value <= measured[name]["ci_high"] <= 1
    assert result.calibration_md == tree / CALIBRATION_MD and "quadratic kappa" in result.calibration_md.read_text()
    for summary in (SUMMARY_MD, PAIRED_MD):
        assert "Agreement with people (labels.csv, quadratic kappa): frame quality" in (tree / summary).read_text()


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        (("run", "physics"), ["99_nowhere/vchain/seed-0", "3"], r"line 2: run '99_nowhere/vchain/seed-0' is not a"),
        (
            ("run", "physics"),
            ["00_case_0/vchain/seed-0", "7"],
            r"line 2, column physics: a score must be an integer "
            r"from 1 to 5 \(or blank\), got '7'",
        ),
        (("run", "physiqs"), ["00_case_0/vchain/seed-0", "3"], r"unknown: \['physiqs'\]"),
        (("case", "physics"), ["00_case_0/vchain/seed-0", "3"], r"must have a run column"),
    ],
)
def test_bad_labels_fail_before_any_request_and_nothing_judged_is_lost(tree, header, row, message):
    before = {p: p.read_bytes() for p in tree.rglob(SCORES_FILE)}
    judge = CachedJudge()
    (folder(tree, "t2v", 0, 0) / SCORES_FILE).unlink()  # a run the judge would have to score
    with pytest.raises(ConfigurationError, match=message):
        judge_runs(tree, judge, labels=labels_file(tree, [row], header))
    assert judge.calls == 0 and not (tree / CALIBRATION_JSON).exists() and not (tree / SUMMARY_CSV).exists()
    assert all(p.read_bytes() == data for p, data in before.items() if p.exists())


def test_a_labelled_run_twice_and_bad_options_are_refused(tree):
    run = "00_case_0/vchain/seed-0"
    with pytest.raises(ConfigurationError, match=r"line 3: run '00_case_0/vchain/seed-0' is labelled twice"):
        judge_runs(tree, CachedJudge(), labels=labels_file(tree, [[run, 3], [run, 4]], ("run", "physics")))
    with pytest.raises(ConfigurationError, match=r"baseline must be one of the variants .* got 'T2V'"):
        judge_runs(tree, CachedJudge(), baseline="T2V")
    with pytest.raises(ConfigurationError, match=r"by must be a meta key .* got 'category'.*\['main_category'\]"):
        judge_runs(tree, CachedJudge(), by="category")


def test_the_cli_judges_pairs_and_calibrates_a_suite_tree(tmp_path, capsys):
    from PIL import Image

    from vchain.cli import main
    from vchain.testing import FakeOpenAIServer
    from vchain.video import write_video

    from .conftest import SCHEMA
    from .test_judging import LEVELS, LookingJudge

    root = tmp_path / "suite"
    # The stand-in judge scores a video by its brightness: t2v 2 and 3, vchain 4 and 5 on the two cases.
    for case, category in enumerate(("Mechanics", "Thermal")):
        for variant, score in (("t2v", 2 + case), ("vchain", 4 + case)):
            path = folder(root, variant, case, 0)
            frames = [Image.new("RGB", (32, 32), (LEVELS[score],) * 3)] * 4
            write_video(frames, path / VIDEO_FILE, fps=4)
            record = CaseRecord(id=f"case-{case}", index=case, meta={"main_category": category}, seed=0)
            done = Stages(
                reasoning=ReasoningRecord(status="done"),
                tuning=TuningRecord(status="done"),
                sampling=SamplingRecord(status="done", seed=0),
            )
            manifest = Manifest(prompt=f"Prompt {case}.", variant=variant, case=record, stages=done)
            _io.write_json(path / MANIFEST_FILE, manifest.model_dump(mode="json"))
    labels = labels_file(root, [["00_case_0/t2v/seed-0", 2], ["00_case_0/vchain/seed-0", 7]], ("run", "physics"))
    with FakeOpenAIServer(LookingJudge(), schema_path=SCHEMA) as server:
        judge = ["judge", str(root), "--base-url", server.base_url, "--by", "main_category"]
        assert main([*judge, "--calibrate", str(labels)]) == 2
        assert "line 3, column physics: a score must be an integer from 1 to 5 (or blank), got '7'" in (
            capsys.readouterr().err
        )
        assert main([*judge, "--by", "category"]) == 2 and "by must be a meta key" in capsys.readouterr().err
        assert server.requests == []  # refused before any request
        rows = [
            ["00_case_0/t2v/seed-0", 2],
            ["00_case_0/vchain/seed-0", 5],
            ["01_case_1/t2v/seed-0", 3],
            ["01_case_1/vchain/seed-0", 4],
        ]
        labels = labels_file(root, rows, ("run", "physics"))
        assert main([*judge, "--calibrate", str(labels)]) == 0
        assert len(server.requests) == 4
    out = capsys.readouterr().out
    assert "judge-summary.md, judge-paired.md, judge-calibration.md in" in out
    physics = {r["group"]: r for r in rows_of(root / PAIRED_CSV) if r["dimension"] == "physics"}
    assert (physics[""]["mean_diff"], physics[""]["ci_low"], physics[""]["ci_high"]) == ("2.0", "2.0", "2.0")
    assert (physics[""]["wins"], physics[""]["ties"], physics[""]["losses"]) == ("2", "0", "0")
    assert physics["main_category=Thermal"]["note"] == "fewer than two cases: no interval"
    calibration = json.loads((root / CALIBRATION_JSON).read_text())
    (entry,) = calibration["judges"].values()
    people, judged = [2, 5, 3, 4], [2, 4, 3, 5]
    assert entry["dimensions"]["physics"]["pearson"]["value"] == pytest.approx(np.corrcoef(people, judged)[0, 1])
    assert entry["dimensions"]["physics"]["kappa"]["value"] == pytest.approx(
        kappa_by_the_book(np.array(people), np.array(judged))
    )
    assert entry["dimensions"]["causality"]["n"] == 0 and entry["dimensions"]["causality"]["pearson"]["value"] is None
