"""The VideoScore2 judge on a tiny random Qwen2.5-VL: the video input it builds, what it scores, and how the
summaries, paired differences, calibration, report and search take a judge that scores three dimensions."""

import ast
import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vchain.backends import JUDGES
from vchain.backends.transformers import TransformersChatModel, TransformersJudge
from vchain.backends.videoscore2 import (
    DEFAULT_SAMPLED_FPS,
    VideoScore2ChatModel,
    VideoScore2Judge,
    video_part,
)
from vchain.cli import main
from vchain.errors import ConfigurationError, MalformedResponseError
from vchain.evaluation import CALIBRATION_JSON, PAIRED_CSV
from vchain.interfaces import ChatModel
from vchain.judging import SUMMARY_CSV, SUMMARY_MD, ChatJudge, judge_identity, read_scores
from vchain.run import fingerprint
from vchain.scores import VideoScores
from vchain.search import SearchConfig, check_search
from vchain.testing.tiny_vlm import tiny_vlm

from ..test_judging import make_run

SCORED = ("frame_quality", "text_alignment", "physics")
UNSCORED = ("temporal_quality", "commonsense", "causality")
SMALL = {"max_new_tokens": 256, "max_string_length": 12}


@pytest.fixture(scope="module")
def judge() -> VideoScore2Judge:
    return VideoScore2Judge.from_pretrained(tiny_vlm("qwen2_5_vl"), **SMALL)


def random_frames(count: int, size=(84, 56), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def transformers_video_patchify():
    """`Qwen2VLVideoProcessor.patchify` from transformers' own source (its module imports torchvision, which
    must not be installed here, so the function is compiled on its own)."""
    spec = importlib.util.find_spec("transformers.models.qwen2_vl.video_processing_qwen2_vl")
    tree = ast.parse(Path(spec.origin).read_text())
    processor = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
    function = next(n for n in processor.body if isinstance(n, ast.FunctionDef) and n.name == "patchify")
    namespace = {"torch": torch}
    exec(compile(ast.Module([function], type_ignores=[]), spec.origin, "exec"), namespace)
    return namespace["patchify"]


def test_the_video_input_is_what_transformers_video_processor_lays_out(judge):
    # Frames already whole 28x28 blocks are not resized, so the reference needs only CLIP's normalisation.
    frames = random_frames(5)
    images = judge.chat.processor.image_processor
    mean, std = (np.array(v, dtype=np.float32)[:, None, None] for v in (images.image_mean, images.image_std))
    normalised = [(np.asarray(f, dtype=np.float32).transpose(2, 0, 1) / 255 - mean) / std for f in frames]
    expected, *grid = transformers_video_patchify()(None, torch.from_numpy(np.stack(normalised))[None], 14, 2, 2)

    video = judge.chat.encode_video(frames)

    assert grid == [3, 4, 6]  # five frames: the last is repeated to make the third pair
    assert video["video_grid_thw"].tolist() == [grid]
    torch.testing.assert_close(video["pixel_values_videos"], expected[0], rtol=0, atol=1e-5)
    assert video["second_per_grid_ts"].tolist() == [2 / DEFAULT_SAMPLED_FPS]


def test_frames_beyond_max_frames_are_thinned_and_large_frames_scaled_down(judge):
    chat = VideoScore2ChatModel(judge.chat.model, judge.chat.processor, max_frames=4, max_frame_pixels=56 * 84)
    video = chat.encode_video(random_frames(9, size=(168, 112)))
    assert video["video_grid_thw"].tolist() == [[2, 4, 6]]
    with pytest.raises(ConfigurationError, match="one size"):
        chat.encode_video([*random_frames(2), *random_frames(1, size=(56, 56))])


def test_the_model_sees_one_video_with_its_tokens_positions_and_pixels(judge):
    frames, seen = random_frames(4), {}
    tokens_per_second = judge.chat.model.config.vision_config.tokens_per_second

    def on_visual(module, args, kwargs):
        seen["pixels"], seen["grid"] = args[0].clone(), kwargs["grid_thw"].tolist()

    def on_forward(module, args, kwargs):
        seen.setdefault("input_ids", kwargs["input_ids"])
        seen.setdefault("types", kwargs["mm_token_type_ids"])
        seen.setdefault("positions", kwargs["position_ids"])

    hooks = [
        judge.chat.model.model.visual.register_forward_pre_hook(on_visual, with_kwargs=True),
        judge.chat.model.register_forward_pre_hook(on_forward, with_kwargs=True),
    ]
    try:
        scores = judge.score("A ball falls onto the floor.", frames)
    finally:
        for hook in hooks:
            hook.remove()

    assert seen["grid"] == [[2, 4, 6]]
    torch.testing.assert_close(seen["pixels"], judge.chat.encode_video(frames)["pixel_values_videos"])
    ids, config = seen["input_ids"][0], judge.chat.model.config
    video = ids == config.video_token_id
    assert int(video.sum()) == 2 * 4 * 6 // 4 and not (ids == config.image_token_id).any()
    assert video.nonzero().flatten().diff().eq(1).all()  # one run of tokens, between the vision markers
    assert torch.equal(seen["types"][0], video.int() * 2)
    # The second pair of frames sits tokens_per_second * (2 frames / 2 fps) positions after the first in time.
    temporal = seen["positions"][1, 0][video]
    assert temporal[6] - temporal[0] == tokens_per_second * 1.0
    assert scores.dimensions == SCORED
    assert all(scores.score(d) is None and scores.reason(d) is None for d in UNSCORED)


def test_its_cache_key_differs_from_the_frame_judge_on_the_same_model(judge):
    frame_judge = TransformersJudge(TransformersChatModel(judge.chat.model, judge.chat.processor, **SMALL))
    config = type("Config", (), {"frames": 8})()
    keys = {fingerprint(judge_identity(j, config)) for j in (judge, frame_judge)}
    assert len(keys) == 2
    assert judge.describe()["class"] == "VideoScore2Judge" and judge.describe()["dimensions"] == list(SCORED)


def test_a_chat_judge_refuses_an_answer_that_leaves_a_dimension_out():
    class Partial(ChatModel):
        def complete(self, messages, schema):
            return VideoScores.partial({"physics": 3}, {"physics": "It falls."})

        def describe(self):
            return {"class": "Partial", "model": "partial"}

    with pytest.raises(MalformedResponseError, match="without a score"):
        ChatJudge(Partial()).score("A ball falls.", random_frames(1))
    assert "null" not in json.dumps(VideoScores.model_json_schema())  # the schema still asks for all six


def test_a_search_objective_the_judge_does_not_score_is_refused_up_front(judge):
    with pytest.raises(ConfigurationError, match=r"\['commonsense', 'causality'\].*--objective physics"):
        check_search(SearchConfig(candidates=2), judge, 0)
    assert check_search(SearchConfig(candidates=2, objective=("physics", "frame_quality")), judge, 0) is not None


@pytest.fixture(scope="module")
def pristine_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine") / "suite"
    for variant, score in (("t2v", 3), ("vchain", 5)):
        make_run(root / "00_rock" / variant, "Prompt of 00_rock.", variant, score)
    return root


@pytest.fixture
def suite(pristine_suite, tmp_path):
    """One case judged with and without vchain (a pair), never judged."""
    return Path(shutil.copytree(pristine_suite, tmp_path / "suite"))


def test_vchain_judge_leaves_the_unscored_dimensions_blank_everywhere(suite, capsys):
    from vchain.report import write_report

    labels = suite / "labels.csv"
    labels.write_text("run,frame_quality,commonsense\n00_rock/t2v,2,3\n00_rock/vchain,4,5\n")
    code = main(["judge", str(suite), "--judge", f"videoscore2:{tiny_vlm('qwen2_5_vl')}", "--frames", "4",
                 "--calibrate", str(labels)])  # fmt: skip
    assert code == 0
    entries = {p: read_scores(p).entries for p in sorted(suite.glob("*/*"))}
    for (entry,) in entries.values():
        assert entry.scores.dimensions == SCORED and entry.judge["class"] == "VideoScore2Judge"

    rows = list(csv.DictReader((suite / SUMMARY_CSV).open()))
    for row in rows:
        mine = [e[0].scores for p, e in entries.items() if p.name == row["variant"]]
        for d in SCORED:
            assert float(row[f"{d}_mean"]) == pytest.approx(np.mean([s.score(d) for s in mine]))
        assert all(row[f"{d}_{stat}"] == "" for d in UNSCORED for stat in ("mean", "ci_low", "ci_high"))
        assert row["note"].endswith("not scored by this judge: temporal_quality, commonsense, causality")
    summary = (suite / SUMMARY_MD).read_text()
    assert "Not scored by this judge: temporal quality, commonsense, causality." in summary
    assert summary.count(" | — | ") >= 2 and "nan" not in summary.lower()

    paired = list(csv.DictReader((suite / PAIRED_CSV).open()))
    assert [r["dimension"] for r in paired] == list(SCORED) and all(r["n"] == "1" for r in paired)
    calibration = json.loads((suite / CALIBRATION_JSON).read_text())
    (calibrated,) = calibration["judges"].values()
    assert list(calibrated["dimensions"]) == list(SCORED) and calibrated["dimensions"]["frame_quality"]["n"] == 2

    page = write_report(suite, suite / "report.html").read_text()
    assert page.count("not scored by this judge") == 2 * len(UNSCORED)
    chart = page[page.index('<svg class="chart"') : page.index("</svg>")]
    assert all(f">{d.replace('_', ' ')}</text>" in chart for d in SCORED)
    assert not any(f">{d.replace('_', ' ')}</text>" in chart for d in UNSCORED)


@pytest.mark.parametrize(
    "spec, named",
    [("videoscore2:", "got 'videoscore2:'"), ("videoscore2:{other}", "'gemma3_text' checkpoint"),
     ("videoscore2:{missing}", "nowhere")],
)  # fmt: skip
def test_a_bad_videoscore2_judge_is_one_clear_error_exiting_2(spec, named, suite, tmp_path, capsys):
    other = tmp_path / "not-qwen"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    spec = spec.format(other=other, missing=tmp_path / "nowhere")
    assert main(["judge", str(suite), "--judge", spec]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and named in error
    assert not list(suite.rglob("scores.json"))


def test_the_kind_is_registered_and_named_on_the_command_line():
    assert JUDGES["videoscore2"].form("videoscore2") == "videoscore2:ID_OR_DIR"
    assert JUDGES["videoscore2"].settings() == ("dtype", "device")


def test_a_video_part_beside_an_image_is_refused(judge):
    image = {"type": "image", "image": Image.new("RGB", (28, 28))}
    messages = [{"role": "user", "content": [video_part(random_frames(2)), image]}]
    with pytest.raises(ConfigurationError, match="one video part and no image part"):
        judge.chat.complete(messages, VideoScores)


def test_bad_video_settings_fail_before_any_weight_loads():
    for setting, value in (("sampled_fps", 0), ("max_frames", 1), ("max_frame_pixels", 100)):
        with pytest.raises(ConfigurationError, match=f"{setting} must be"):
            VideoScore2Judge.from_pretrained("no/such-model", **{setting: value})


def test_a_best_of_n_row_of_a_partly_scored_search_leaves_the_unscored_dimensions_blank():
    from vchain.report import _search_rows
    from vchain.run import CandidateRecord
    from vchain.search import SearchOutcome

    def outcome(physics: int) -> SearchOutcome:
        chosen = CandidateRecord(seed=1, video="v.mp4", scores=dict.fromkeys(SCORED, physics), objective=physics)
        first = CandidateRecord(seed=0, video="w.mp4", scores=dict.fromkeys(SCORED, 1), objective=1.0)
        return SearchOutcome("vchain", 2, 0, 1, chosen, first, 1.0, float(physics), ("physics",))

    (row,) = _search_rows([outcome(3), outcome(4)], ["vchain"])
    assert row.scores == {d: (3.5 if d in SCORED else None) for d in row.scores} and len(row.scores) == 6


def test_generate_refuses_an_objective_the_judge_does_not_score_before_loading_any_model(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("vchain.backends.wan.WanVideoGenerator.from_pretrained", lambda *a, **k: pytest.fail())
    monkeypatch.setattr(VideoScore2Judge, "from_pretrained", lambda *a, **k: pytest.fail())
    judge = f"videoscore2:{tiny_vlm('qwen2_5_vl')}"
    args = ["generate", "A ball falls.", "-o", str(tmp_path / "run"), "--candidates", "2", "--judge", judge]
    assert main(args) == 2
    assert "names ['commonsense', 'causality'], which the judge --judge videoscore2:" in capsys.readouterr().err
    assert main([*args, "--objective", "physics", "causality"]) == 2
    assert "(CLI: --objective physics)" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert JUDGES["videoscore2"].dimensions == VideoScore2Judge.dimensions == SCORED
