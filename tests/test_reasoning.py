import logging

import pytest

from vchain import VChainPipeline
from vchain.accounting import UsageMeter
from vchain.chain import NextKeyframe
from vchain.errors import ConfigurationError, MalformedResponseError, RefusalError, StageError
from vchain.reasoning import ReasoningConfig, reason
from vchain.testing import DrawingImageBackend, ScriptedReasoner

CONFIG = ReasoningConfig(width=64, height=32)


def test_loop_stops_on_the_last_flag():
    reasoner = ScriptedReasoner(["peak", "end", "consequence"])
    backend = DrawingImageBackend()
    result = reason("An egg falls.", reasoner, backend, CONFIG)
    assert result.stop_reason == "model"
    assert result.chain.key_frames == ["peak", "end", "consequence"]
    assert len(result.chain.images) == 4
    assert [c[0] for c in reasoner.calls] == ["plan"] + ["next_keyframe"] * 3
    assert [c[0] for c in backend.calls] == ["generate", "edit", "edit", "edit"]
    assert all(image.size == (64, 32) for image in result.chain.images)


def test_loop_stops_at_the_cap_and_records_it(caplog):
    reasoner = ScriptedReasoner(["again"], flag_last=False)
    with caplog.at_level(logging.WARNING):
        result = reason(
            "p", reasoner, DrawingImageBackend(), ReasoningConfig(max_keyframes=4, width=8, height=8)
        )
    assert result.stop_reason == "cap"
    assert len(result.chain.images) == 4
    assert "max_keyframes=4" in caplog.text


def test_edit_inputs_setting_picks_the_references():
    for setting, expected in (("chain", [1, 2]), ("last", [1, 1])):
        backend = DrawingImageBackend()
        reason(
            "p",
            ScriptedReasoner(["a", "b"]),
            backend,
            ReasoningConfig(edit_inputs=setting, width=8, height=8),
        )
        assert [n for kind, _, n in backend.calls if kind == "edit"] == expected


def test_edit_instruction_carries_the_caption():
    backend = DrawingImageBackend()
    reason("p", ScriptedReasoner(["The egg lies shattered."]), backend, CONFIG)
    assert "The egg lies shattered." in backend.calls[1][1]


class Flaky(ScriptedReasoner):
    def __init__(self, failures, error=MalformedResponseError):
        super().__init__(["end"])
        self.failures, self.error = failures, error

    def next_keyframe(self, chain, composite):
        if self.failures:
            self.failures -= 1
            raise self.error("bad answer")
        return super().next_keyframe(chain, composite)


def test_malformed_answers_are_asked_again_within_the_bound():
    meter = UsageMeter()
    result = reason("p", Flaky(2), DrawingImageBackend(), CONFIG, meter=meter)
    assert result.chain.key_frames == ["end"]
    assert [r.step for r in meter.records].count("perception") == 3


def test_always_malformed_fails_naming_stage_step_and_keyframe():
    with pytest.raises(StageError, match=r"reasoning/perception \(keyframe 1\)") as e:
        reason("p", Flaky(10), DrawingImageBackend(), CONFIG)
    assert (e.value.stage, e.value.step, e.value.index) == ("reasoning", "perception", 1)


def test_refusal_is_not_retried():
    reasoner = Flaky(1, error=RefusalError)
    with pytest.raises(StageError, match="perception"):
        reason("p", reasoner, DrawingImageBackend(), CONFIG)
    assert reasoner.failures == 0 and [c[0] for c in reasoner.calls] == ["plan"]


@pytest.mark.parametrize("prompt", ["", "   \n", None, 3])
def test_empty_prompts_are_rejected(prompt):
    with pytest.raises(ConfigurationError, match="prompt"):
        reason(prompt, ScriptedReasoner(), DrawingImageBackend(), CONFIG)


def test_config_errors_are_collected_with_values():
    with pytest.raises(ConfigurationError) as e:
        ReasoningConfig(max_keyframes=1, max_attempts=0, edit_inputs="all")
    message = str(e.value)
    assert "max_keyframes must be at least 2, got 1" in message
    assert "max_attempts" in message and "'all'" in message


class CrashAfter(ScriptedReasoner):
    """Fails the perception call for keyframe `index` once: a crash mid-chain."""

    def __init__(self, captions, crash_at):
        super().__init__(captions)
        self.crash_at = crash_at

    def next_keyframe(self, chain, composite):
        if len(chain.images) == self.crash_at:
            self.crash_at = None
            raise RuntimeError("connection lost")
        return super().next_keyframe(chain, composite)


def test_pipeline_think_resumes_a_partial_chain_without_asking_again(tmp_path):
    reasoner = CrashAfter(["a", "b", "c"], crash_at=2)
    backend = DrawingImageBackend()
    pipe = VChainPipeline(reasoner, backend, reasoning=CONFIG)
    with pytest.raises(RuntimeError):
        pipe.think("An egg falls.", output_dir=tmp_path)
    assert len(list(tmp_path.glob("*.png"))) == 2  # what was produced is kept
    calls_before = len(reasoner.calls), len(backend.calls)

    chain = pipe.think("An egg falls.", output_dir=tmp_path)
    assert chain.key_frames == ["a", "b", "c"]
    new_reasoner_calls = reasoner.calls[calls_before[0] :]
    assert [c[0] for c in new_reasoner_calls] == ["next_keyframe", "next_keyframe"]  # no re-plan
    assert [c[0] for c in backend.calls[calls_before[1] :]] == ["edit", "edit"]  # no regenerated image

    # A finished chain is returned as is.
    n = len(reasoner.calls)
    assert pipe.think("An egg falls.", output_dir=tmp_path).key_frames == ["a", "b", "c"]
    assert len(reasoner.calls) == n


def test_think_refuses_a_folder_of_another_prompt(tmp_path):
    pipe = VChainPipeline(ScriptedReasoner(), DrawingImageBackend(), reasoning=CONFIG)
    pipe.think("first prompt", output_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="first prompt"):
        pipe.think("second prompt", output_dir=tmp_path)


def test_think_needs_reasoner_and_image_backend():
    with pytest.raises(ConfigurationError, match=r"image_backend \(needed to think\)"):
        VChainPipeline(reasoner=ScriptedReasoner()).think("p")


def test_next_keyframe_model_shape():
    assert set(NextKeyframe.model_json_schema()["properties"]) == {"caption", "is_last"}
