"""TransformersReasoner on tiny random Qwen2.5-VL, Qwen3-VL and Gemma 3 checkpoints loaded from folders.

The weights are random, so every valid answer below is owed to the grammar-constrained decoding.
"""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import BaseModel, Field

from vchain import VChainPipeline
from vchain.accounting import UsageMeter
from vchain.backends.transformers import TransformersReasoner, constrained_schema
from vchain.chain import KeyframeVerdict, NextKeyframe, ScenePlan, ThoughtChain
from vchain.errors import ConfigurationError, MalformedResponseError, StageError
from vchain.reasoning import ReasoningConfig, reason
from vchain.testing import DrawingImageBackend, draw_image, example_plan
from vchain.testing.tiny_vlm import FAMILIES, tiny_vlm

# Short strings keep a random model's answers a few dozen tokens long.
SMALL = {"max_new_tokens": 256, "max_string_length": 12}
# What each family needs besides the token ids to place the image tokens (Qwen3-VL's positions are
# silently wrong without its mm_token_type_ids).
POSITION_INPUT = {"qwen2_5_vl": "mm_token_type_ids", "qwen3_vl": "mm_token_type_ids", "gemma3": "token_type_ids"}
# Control tokens of both chat formats: typed in a prompt they must stay plain text.
PROMPT = "A rock <|image_pad|> and a feather <start_of_image> fall <|im_end|> to the ground."
CONFIG = ReasoningConfig(max_keyframes=3, width=64, height=32)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def reasoner(family) -> TransformersReasoner:
    return TransformersReasoner.from_pretrained(tiny_vlm(family), **SMALL)


@pytest.fixture(scope="module")
def qwen() -> TransformersReasoner:
    return TransformersReasoner.from_pretrained(tiny_vlm("qwen2_5_vl"), **SMALL)


def started_chain() -> ThoughtChain:
    chain = ThoughtChain.from_plan(PROMPT, example_plan(PROMPT))
    chain.images = [draw_image(chain.concise_prompt, 64, 32)]
    return chain


def test_random_weights_answer_every_call_in_schema(reasoner, family, monkeypatch):
    calls = []
    generate = reasoner.model.generate

    def recording_generate(**kwargs):
        calls.append(set(kwargs))
        return generate(**kwargs)

    monkeypatch.setattr(reasoner.model, "generate", recording_generate)
    chain = started_chain()

    plan = reasoner.plan(PROMPT)
    keyframe = reasoner.next_keyframe(chain, draw_image("composite", 128, 32))
    verdict = reasoner.verify_keyframe(chain, draw_image("candidate", 64, 32), "The rock on the ground.")
    augmented = reasoner.augment_prompt(PROMPT)

    assert isinstance(plan, ScenePlan) and isinstance(keyframe, NextKeyframe)
    assert isinstance(verdict, KeyframeVerdict)
    texts = [*plan.model_dump().values(), keyframe.caption, augmented]
    assert all(isinstance(text, str) and 0 < len(text) <= SMALL["max_string_length"] for text in texts)
    assert len(verdict.problem) <= SMALL["max_string_length"]
    assert len(calls) == 4 and all(POSITION_INPUT[family] in kwargs for kwargs in calls[1:3])


def test_greedy_answers_repeat_and_sampling_is_seeded_without_touching_the_global_rng(qwen):
    assert qwen.plan(PROMPT) == qwen.plan(PROMPT)
    sampler = TransformersReasoner(qwen.model, qwen.processor, temperature=1.0, seed=3, **SMALL)
    state = torch.random.get_rng_state()
    assert sampler.plan(PROMPT) == sampler.plan(PROMPT)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_every_generate_call_is_reported_with_its_tokens_and_images(qwen):
    meter = UsageMeter()
    with meter.call("perception", 1):
        qwen.next_keyframe(started_chain(), draw_image("composite", 128, 32))
    (record,) = meter.records
    assert record.outcome == "ok" and record.model == qwen.model_id
    assert record.input_tokens > 0 and record.output_tokens > 0 and record.images_in == 1


def test_max_pixels_bounds_the_vision_tokens_of_a_wide_composite(qwen):
    composite = draw_image("a wide stitched chain", 832 * 3, 480)
    tokens = {}
    for max_pixels in (28 * 28 * 16, 28 * 28 * 256):
        meter = UsageMeter()
        bounded = TransformersReasoner(qwen.model, qwen.processor, max_pixels=max_pixels, **SMALL)
        with meter.call("perception", 1):
            bounded.next_keyframe(started_chain(), composite)
        tokens[max_pixels] = meter.records[0].input_tokens
    # Qwen2.5-VL spends one token per 28x28 pixels: the image costs at most max_pixels / 784 tokens.
    assert tokens[28 * 28 * 256] - tokens[28 * 28 * 16] > 200


def test_an_answer_cut_off_by_max_new_tokens_is_malformed_and_asked_again(qwen):
    truncating = TransformersReasoner(qwen.model, qwen.processor, max_new_tokens=4, max_string_length=12)
    meter = UsageMeter()
    with pytest.raises(MalformedResponseError, match="max_new_tokens=4"), meter.call("plan"):
        truncating.plan(PROMPT)
    assert [(r.outcome, r.output_tokens) for r in meter.records] == [("malformed", 4)]

    meter = UsageMeter()
    with pytest.raises(StageError, match="malformed answer 2 times"):
        reason(PROMPT, truncating, DrawingImageBackend(), CONFIG.replace(max_attempts=2), meter=meter)
    assert [r.outcome for r in meter.records] == ["malformed", "malformed"]


def test_a_reasoning_run_respects_the_keyframe_cap(qwen):
    result = reason(PROMPT, qwen, DrawingImageBackend(), CONFIG)
    images = result.chain.images
    assert 2 <= len(images) <= CONFIG.max_keyframes
    assert result.stop_reason == ("cap" if len(images) == CONFIG.max_keyframes else "model")
    assert all(image.size == (64, 32) for image in images)


def test_think_writes_a_chain_that_loads_and_a_manifest_without_paths(qwen, tmp_path):
    pipe = VChainPipeline(qwen, DrawingImageBackend(), reasoning=CONFIG)
    chain = pipe.think(PROMPT, output_dir=tmp_path / "run")

    loaded = ThoughtChain.load(tmp_path / "run")
    assert loaded.captions == chain.captions and len(loaded.images) == len(chain.images)
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert "TransformersReasoner" in manifest and qwen.model_id in manifest
    assert str(tiny_vlm("qwen2_5_vl").parent) not in manifest


def test_describe_names_the_model_and_the_decoding_settings_only(qwen):
    description = qwen.describe()
    assert description["class"] == "TransformersReasoner"
    assert description["model"] == tiny_vlm("qwen2_5_vl").name and description["dtype"] == "float32"
    assert description["temperature"] is None and description["max_new_tokens"] == SMALL["max_new_tokens"]
    assert "/" not in json.dumps(description) and description["checkpoint"].startswith("folder:")


def test_the_older_torch_dtype_name_is_accepted_but_not_with_dtype():
    folder = tiny_vlm("qwen3_vl")
    loaded = TransformersReasoner.from_pretrained(folder, torch_dtype=torch.bfloat16, device="cpu")
    assert loaded.describe()["dtype"] == "bfloat16" and loaded.model.device.type == "cpu"
    with pytest.raises(ConfigurationError, match="not both"):
        TransformersReasoner.from_pretrained(folder, dtype=torch.float32, torch_dtype=torch.bfloat16)


def test_release_moves_the_weights_off_the_accelerator_and_the_reasoner_still_answers():
    reasoner = TransformersReasoner.from_pretrained(tiny_vlm("gemma3"), **SMALL)
    reasoner.release()
    assert reasoner.model.device.type == "cpu"
    assert isinstance(reasoner.plan(PROMPT), ScenePlan)


class Score(BaseModel):
    reason: str
    value: int = Field(ge=1, le=5)


class Scores(BaseModel):
    """A judge-like answer: nested objects, a list and ranged integers."""

    physics: Score
    causality: Score
    notes: list[str] = Field(max_length=2)
    frames_seen: int


def test_the_schema_sent_to_the_decoder_is_closed_and_bounded():
    plan = constrained_schema(ScenePlan, 100)
    assert plan["additionalProperties"] is False
    assert all(field["minLength"] == 1 and field["maxLength"] == 100 for field in plan["properties"].values())
    verdict = constrained_schema(KeyframeVerdict, 100)["properties"]
    assert verdict["problem"]["minLength"] == 0 and verdict["matches"]["type"] == "boolean"
    scores = constrained_schema(Scores, 100)
    assert scores["additionalProperties"] is False and scores["$defs"]["Score"]["additionalProperties"] is False
    value = scores["$defs"]["Score"]["properties"]["value"]
    assert (value["minimum"], value["maximum"]) == (1, 5)  # the schema's own range is kept
    assert scores["properties"]["frames_seen"]["maximum"] == 2**53 - 1
    assert scores["properties"]["notes"]["items"]["maxLength"] == 100


def test_complete_answers_any_nested_schema(qwen):
    messages = [{"role": "system", "content": "Rate the video."}, {"role": "user", "content": PROMPT}]
    answer = qwen.complete(messages, Scores)
    assert isinstance(answer, Scores) and 1 <= answer.physics.value <= 5 and len(answer.notes) <= 2


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("folder", "without config.json"),
        ("not a model id", "neither an existing folder nor a hub id"),
        ("nobody/no-such-vlm", "HF_HUB_OFFLINE"),
    ],
)
def test_a_bad_id_or_folder_is_a_configuration_error_naming_it(model_id, expected, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if model_id == "folder":
        model_id = str(tmp_path)
        (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigurationError, match=expected) as error:
        TransformersReasoner.from_pretrained(model_id)
    assert model_id in str(error.value)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("max_new_tokens", 0), ("temperature", 0.0), ("max_pixels", -1), ("max_string_length", 1.5)],
)
def test_bad_settings_are_refused_naming_them(qwen, setting, value):
    with pytest.raises(ConfigurationError, match=setting):
        TransformersReasoner(qwen.model, qwen.processor, **{setting: value})


def test_a_string_in_place_of_a_model_points_to_from_pretrained(qwen):
    with pytest.raises(ConfigurationError, match="from_pretrained"):
        TransformersReasoner("Qwen/Qwen2.5-VL-7B-Instruct", qwen.processor)


def test_a_local_judge_scores_a_finished_run_on_the_scale(qwen, tmp_path):
    from vchain.backends.transformers import TransformersJudge
    from vchain.judging import DIMENSIONS, JudgingConfig, judge_runs
    from vchain.testing.toy import ToyGenerator

    VChainPipeline(generator=ToyGenerator())("A rock falls.", tmp_path / "run", variant="t2v")
    judge = TransformersJudge(qwen)
    result = judge_runs(tmp_path, judge, JudgingConfig(frames=1))
    (entry,) = json.loads((tmp_path / "run" / "scores.json").read_text())["entries"]
    answer = entry["scores"]
    assert all(answer[d] in (1, 2, 3, 4, 5) and answer[f"{d}_reason"] for d in DIMENSIONS)
    assert judge.describe()["class"] == "TransformersJudge" and result.usage.requests == 1


def test_two_checkpoints_with_one_folder_name_are_two_judges(qwen, tmp_path):
    import shutil

    from vchain.backends.transformers import TransformersJudge
    from vchain.judging import JudgingConfig, judge_identity
    from vchain.run import fingerprint

    first, second = (shutil.copytree(tiny_vlm("qwen2_5_vl"), tmp_path / side / "ckpt") for side in ("a", "b"))
    judges = [TransformersJudge(TransformersReasoner.from_pretrained(path, **SMALL)) for path in (first, second)]
    descriptions = [judge.describe() for judge in judges]
    assert descriptions[0]["model"] == descriptions[1]["model"] == "ckpt"
    assert descriptions[0]["checkpoint"] != descriptions[1]["checkpoint"] and str(tmp_path) not in str(descriptions)
    keys = {fingerprint(judge_identity(judge, JudgingConfig())) for judge in judges}
    assert len(keys) == 2
