import base64
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image
from pydantic import ValidationError

from vchain import _io
from vchain.backends.openai import OpenAIJudge
from vchain.errors import ConfigurationError, StageError
from vchain.judging import (
    DEFINITIONS,
    DIMENSIONS,
    GRID_MAX_PIXELS,
    SCORES_FILE,
    SUMMARY_CSV,
    SUMMARY_MD,
    JudgingConfig,
    VideoScores,
    bootstrap_ci,
    frame_indices,
    judge_messages,
    judge_runs,
    read_scores,
    sample_frames,
)
from vchain.run import MANIFEST_FILE, VIDEO_FILE, Manifest, ReasoningRecord, SamplingRecord, Stages, TuningRecord
from vchain.testing import FakeOpenAIServer, Fault, Reply
from vchain.video import write_video

from .conftest import SCHEMA

# Brightness of a run's video frames -> the score the test judge gives on every dimension.
LEVELS = {1: 0, 2: 64, 3: 128, 4: 191, 5: 255}


class LookingJudge:
    """A chat responder that really looks at the frames: every score is the first image's brightness
    (its median, which the numbers `stitch` draws on a grid's tiles do not move)."""

    def __init__(self):
        self.replies: list[str] = []

    def __call__(self, body: dict) -> Reply:
        parts = body["messages"][1]["content"]
        first = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        image = Image.open(io.BytesIO(base64.b64decode(first.split(",", 1)[1])))
        level = float(np.median(np.asarray(image.convert("L"))))
        score = 1 + round(level / 255 * 4)
        fields = {d: score for d in DIMENSIONS} | {f"{d}_reason": f"Brightness {level:.0f}." for d in DIMENSIONS}
        reply = Reply.json(fields)
        self.replies.append(reply.content)
        return reply


@pytest.fixture
def looking():
    return LookingJudge()


@pytest.fixture
def server(looking):
    with FakeOpenAIServer(looking, schema_path=SCHEMA) as fake:
        yield fake
    assert all(not r.schema_errors for r in fake.requests), [r.schema_errors for r in fake.requests]


@pytest.fixture
def client(server):
    return openai.OpenAI(api_key="test", base_url=server.base_url, max_retries=2, timeout=5.0)


def make_run(folder, prompt, variant="vchain", score=3, *, sampling="done", video=True):
    """A run folder as a finished run leaves it: manifest, and a video of frames at the score's level."""
    folder.mkdir(parents=True)
    if video:
        level = LEVELS[score]
        write_video([Image.new("RGB", (32, 32), (level,) * 3) for _ in range(12)], folder / VIDEO_FILE, fps=8)
    skipped = "skipped" if variant == "t2v" else "done"
    stages = Stages(
        reasoning=ReasoningRecord(status=skipped),
        tuning=TuningRecord(status=skipped),
        sampling=SamplingRecord(status=sampling, prompt=prompt),
    )
    manifest = Manifest(prompt=prompt, variant=variant, stages=stages)
    _io.write_json(folder / MANIFEST_FILE, manifest.model_dump(mode="json"))
    return folder


# The finished runs of the tree below, in path order, and each one's score.
FINISHED = {
    "00_rock/t2v": 2,
    "00_rock/vchain": 5,
    "01_egg/t2v": 3,
    "01_egg/vchain": 4,
    "02_ice/vchain": 4,
}


@pytest.fixture(scope="module")
def pristine_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine") / "suite"
    for name, score in FINISHED.items():
        case, variant = name.split("/")
        make_run(root / case / variant, f"Prompt of {case}.", variant, score)
    make_run(root / "03_duck" / "vchain", "Prompt of 03_duck.", sampling="running")
    make_run(root / "03_duck" / "t2v", "Prompt of 03_duck.", "t2v", sampling="failed")
    make_run(root / "04_milk" / "t2v", "Prompt of 04_milk.", "t2v", video=False)
    (root / "summary.csv").write_text("run,variant,status\n")
    return root


@pytest.fixture
def tree(pristine_tree, tmp_path):
    """A suite of finished runs (`FINISHED`), a running, a failed and a video-less one, never judged."""
    return Path(shutil.copytree(pristine_tree, tmp_path / "suite"))


def judged(root) -> dict[str, int]:
    """Each run's frame-quality score from its scores.json (the first entry's)."""
    return {
        str(path.parent.relative_to(root)): read_scores(path.parent).entries[0].scores.frame_quality
        for path in sorted(root.rglob(SCORES_FILE))
    }


def keys(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from keys(value)


def test_video_scores_are_checked_on_the_scale():
    valid = {d: 3 for d in DIMENSIONS} | {f"{d}_reason": " Fine. " for d in DIMENSIONS}
    scores = VideoScores(**valid)
    assert scores.score("physics") == 3 and scores.reason("physics") == "Fine."
    for bad in ({"physics": 0}, {"physics": 6}, {"physics": True}, {"physics": "4"}, {"physics_reason": " "}):
        with pytest.raises(ValidationError):
            VideoScores(**(valid | bad))
    with pytest.raises(ConfigurationError, match="dimension must be one of"):
        scores.score("beauty")


def test_frames_are_sampled_evenly_first_and_last_included(tmp_path):
    assert frame_indices(81, 8) == [0, 11, 23, 34, 46, 57, 69, 80]
    assert frame_indices(5, 8) == [0, 1, 2, 3, 4]
    assert frame_indices(9, 1) == [4]
    path = write_video([Image.new("RGB", (32, 32), (20 * i,) * 3) for i in range(10)], tmp_path / "v.mp4")
    levels = [np.asarray(frame.convert("L")).mean() for frame in sample_frames(path, 4)]
    assert levels == sorted(levels)
    assert levels[0] == pytest.approx(0, abs=4) and levels[-1] == pytest.approx(180, abs=4)


def test_messages_define_every_dimension_and_carry_the_frames():
    frames = [Image.new("RGB", (832, 480), "gray")] * 8
    system, user = judge_messages("An egg is dropped.", frames)
    assert all(d.replace("_", " ") in system["content"] and DEFINITIONS[d] in system["content"] for d in DIMENSIONS)
    assert "An egg is dropped." in user["content"][0]["text"]
    assert [p["type"] for p in user["content"]] == ["text"] + ["image"] * 8
    _, grid = judge_messages("An egg is dropped.", frames, grid=True)
    (tiled,) = [p["image"] for p in grid["content"] if p["type"] == "image"]
    assert tiled.width * tiled.height <= GRID_MAX_PIXELS and tiled.width > tiled.height
    assert "tiles 8 frames" in grid["content"][0]["text"]


def test_every_finished_run_is_scored_and_the_usage_is_what_the_server_saw(tree, server, client, looking):
    suite_summary = (tree / "summary.csv").read_bytes()
    result = judge_runs(tree, OpenAIJudge(client=client))

    assert judged(tree) == FINISHED  # unfinished, failed and video-less runs are left alone
    assert [str(r.path.relative_to(tree)) for r in result.runs] == list(FINISHED)
    chats = server.requests_to("chat")
    assert len(chats) == len(FINISHED) == result.usage.requests
    for request in chats:
        body = request.body
        assert body["response_format"]["json_schema"]["name"] == "VideoScores"
        assert body["response_format"]["json_schema"]["strict"] is True
        # Flat and strict-mode friendly: every field required, no range or nesting keywords.
        schema = body["response_format"]["json_schema"]["schema"]
        assert (
            set(schema["required"]) == set(schema["properties"]) == {*DIMENSIONS, *(f"{d}_reason" for d in DIMENSIONS)}
        )
        assert schema["additionalProperties"] is False
        assert all(schema["properties"][d]["type"] == "integer" for d in DIMENSIONS)
        assert not {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "$ref", "anyOf"} & set(keys(schema))
        assert body["temperature"] == 0.0
        assert sum(p["type"] == "image_url" for p in body["messages"][1]["content"]) == 8
    # The stand-in bills a quarter token per character sent and answered; the records match exactly.
    entries = [read_scores(path.parent).entries[0] for path in sorted(tree.rglob(SCORES_FILE))]
    assert [e.usage.requests for e in entries] == [1] * len(FINISHED)
    assert sum(e.usage.input_tokens for e in entries) == sum(len(json.dumps(r.body["messages"])) // 4 for r in chats)
    assert sum(e.usage.output_tokens for e in entries) == sum(len(c) // 4 for c in looking.replies)
    assert entries[0].judge == {
        "class": "OpenAIJudge",
        "model": "gpt-4o",
        "server": server.base_url.rstrip("/"),
        "temperature": 0.0,
        "image_detail": "auto",
        "grid": False,
    }
    assert (tree / "summary.csv").read_bytes() == suite_summary
    assert result.summary_csv == tree / SUMMARY_CSV and result.summary_md.is_file()


def test_the_cache_asks_again_only_for_a_new_judge_or_a_changed_video(tree, server, client):
    judge_runs(tree, OpenAIJudge(client=client))
    assert len(server.requests) == 5

    again = judge_runs(tree, OpenAIJudge(client=client))
    assert len(server.requests) == 5 and again.usage.requests == 0
    assert all(run.cached for run in again.runs) and judged(tree) == FINISHED

    judge_runs(tree, OpenAIJudge("gpt-4o-mini", client=client))
    assert len(server.requests) == 10
    assert server.requests[-1].body["model"] == "gpt-4o-mini"
    scores = read_scores(tree / "00_rock" / "vchain")
    assert [e.judge["model"] for e in scores.entries] == ["gpt-4o", "gpt-4o-mini"]

    rock = tree / "00_rock" / "vchain"
    write_video([Image.new("RGB", (32, 32), (LEVELS[1],) * 3)] * 12, rock / VIDEO_FILE, fps=8)
    changed = judge_runs(tree, OpenAIJudge(client=client))
    assert len(server.requests) == 11 and changed.usage.requests == 1
    assert [run.cached for run in changed.runs] == [True, False, True, True, True]
    entries = read_scores(rock).entries
    assert entries[0].scores.frame_quality == 1 and entries[1].scores.frame_quality == 5  # mini's is stale
    rows = {(row.judge, row.variant): row for row in changed.summary}
    assert rows["gpt-4o (8 frames)", "vchain"].estimates["physics"].mean == pytest.approx(3.0)
    assert rows["gpt-4o-mini (8 frames)", "vchain"].n == 2  # its score of the old video is left out

    judge_runs(tree, OpenAIJudge(client=client), JudgingConfig(frames=4))  # other frames, other scores
    assert len(server.requests) == 16
    assert sum(p["type"] == "image_url" for p in server.requests[-1].body["messages"][1]["content"]) == 4


def test_summary_gives_means_bootstrap_intervals_n_and_cost(tree, server, client):
    judge_runs(tree, OpenAIJudge(client=client))
    rows = list(csv.DictReader((tree / SUMMARY_CSV).open()))
    assert [(r["judge"], r["variant"], r["n"]) for r in rows] == [
        ("gpt-4o (8 frames)", "t2v", "2"),
        ("gpt-4o (8 frames)", "vchain", "3"),
    ]
    t2v, vchain = rows
    # Scores t2v (2, 3) and vchain (5, 4, 4). Resampled means of (2, 3) are 2, 2.5, 3 with chances
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are 2 and 3; those of (5, 4, 4) are 4 (8/27)
    # and 5 (1/27): the interval is [4, 5].
    for dimension in DIMENSIONS:
        assert float(t2v[f"{dimension}_mean"]) == 2.5
        assert (float(t2v[f"{dimension}_ci_low"]), float(t2v[f"{dimension}_ci_high"])) == (2.0, 3.0)
        assert float(vchain[f"{dimension}_mean"]) == pytest.approx(13 / 3, abs=1e-3)
        assert (float(vchain[f"{dimension}_ci_low"]), float(vchain[f"{dimension}_ci_high"])) == (4.0, 5.0)
    assert (t2v["requests"], vchain["requests"]) == ("2", "3")
    assert int(t2v["input_tokens"]) > 0 and int(vchain["output_tokens"]) > 0
    markdown = (tree / SUMMARY_MD).read_text()
    assert "| vchain | 3 | 3 | 1 | 4.33 [4.00, 5.00] |" in markdown and "10000 resamples" in markdown


def test_bootstrap_interval_is_seeded_and_matches_the_normal_approximation():
    assert bootstrap_ci([4, 4, 4]) == (4.0, 4.0) and bootstrap_ci([4]) is None
    values = np.random.default_rng(1).integers(1, 6, 200)
    low, high = bootstrap_ci(values)
    assert bootstrap_ci(values) == (low, high) and bootstrap_ci(values, seed=1) != (low, high)
    assert low < values.mean() < high
    normal = 2 * 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert high - low == pytest.approx(normal, rel=0.1)


def test_malformed_and_off_scale_answers_are_asked_again_and_counted(tree, server, client):
    off_scale = {d: 7 for d in DIMENSIONS} | {f"{d}_reason": "Too good." for d in DIMENSIONS}
    server.queue("chat", Reply.malformed(), Reply.json(off_scale), Fault.http(500))
    judge_runs(tree, OpenAIJudge(client=client))
    assert len(server.requests) == len(FINISHED) + 3
    entry = read_scores(tree / "00_rock" / "t2v").entries[0]
    assert [c.outcome for c in entry.calls] == ["malformed", "malformed", "failed", "ok"]
    assert entry.usage.requests == 4 and entry.usage.calls == 3 and entry.usage.failed_requests == 3
    assert entry.scores.frame_quality == 2


def test_a_run_the_judge_fails_on_keeps_its_attempts_and_is_tried_next_time(tree, server, client):
    server.queue("chat", Reply.malformed(), Reply.malformed())
    with pytest.raises(StageError, match=r"\[judging\] 1 of 5 runs could not be judged.*00_rock/t2v"):
        judge_runs(tree, OpenAIJudge(client=client), JudgingConfig(max_attempts=2))
    failed = read_scores(tree / "00_rock" / "t2v").entries[0]
    assert failed.scores is None and "malformed answer 2 times" in failed.error and len(failed.calls) == 2
    scored = [read_scores(path.parent).entries[0].scores is not None for path in tree.rglob(SCORES_FILE)]
    assert scored.count(True) == 4 and (tree / SUMMARY_CSV).is_file()

    result = judge_runs(tree, OpenAIJudge(client=client))
    assert result.usage.requests == 1 and len(server.requests) == 4 + 2 + 1
    entry = read_scores(tree / "00_rock" / "t2v").entries[0]
    assert entry.scores.frame_quality == 2 and entry.error is None and entry.usage.requests == 3


def test_a_refusal_is_not_asked_again(tree, server, client):
    server.queue("chat", Reply(refusal="I cannot rate this."))
    with pytest.raises(StageError, match="refused: I cannot rate this"):
        judge_runs(tree, OpenAIJudge(client=client))
    assert len(server.requests) == len(FINISHED)


def test_a_missing_folder_or_one_without_finished_runs_is_a_configuration_error(tmp_path, client):
    judge = OpenAIJudge(client=client)
    make_run(tmp_path / "busy", "A prompt.", sampling="running")
    (tmp_path / "file").write_text("x")
    for root, message in (
        (tmp_path / "nowhere", "does not exist"),
        (tmp_path / "file", "is a file"),
        (tmp_path / "busy", "holds no finished run"),
        ("", "must be a folder path"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            judge_runs(root, judge)
    with pytest.raises(ConfigurationError, match=r"judge must be a vchain\.interfaces\.Judge"):
        judge_runs(tmp_path, object())
    with pytest.raises(ConfigurationError, match="frames"):
        JudgingConfig(frames=0)
    with pytest.raises(ConfigurationError, match="grid must be True or False"):
        OpenAIJudge(client=client, grid="yes")


def test_grid_sends_one_tiled_image(tree, server, client):
    judge = OpenAIJudge(client=client, grid=True)
    assert judge.describe()["grid"] is True
    judge_runs(tree, judge)
    parts = server.requests[0].body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    assert judged(tree) == FINISHED
