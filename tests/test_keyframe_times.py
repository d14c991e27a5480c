"""Keyframes in time: the reasoner's moments, their checks, chain.json and the manifest record."""

import json

import pytest

from vchain import ThoughtChain, VChainPipeline
from vchain.chain import NextKeyframe
from vchain.errors import StageError, VChainError
from vchain.prompts import next_keyframe_messages
from vchain.reasoning import ReasoningConfig, reason
from vchain.testing import DrawingImageBackend, ScriptedReasoner

CONFIG = ReasoningConfig(width=64, height=32)


def test_the_reasoners_times_reach_the_chain_and_its_file(tmp_path):
    chain = reason(
        "An egg falls.", ScriptedReasoner(["impact", "splash"], times=[0.6, 0.7]), DrawingImageBackend(), CONFIG
    ).chain
    assert chain.times == [0.0, 0.6, 0.7] and chain.times_from == "reasoner"
    chain.save(tmp_path)
    entry = json.loads((tmp_path / "chain.json").read_text())[chain.name]
    assert (entry["times"], entry["times_from"]) == ([0.0, 0.6, 0.7], "reasoner")
    assert ThoughtChain.load(tmp_path).times == [0.0, 0.6, 0.7]


def test_a_reasoner_without_times_gets_even_ones_and_an_old_file_loads_with_them(tmp_path):
    chain = reason("An egg falls.", ScriptedReasoner(["a", "b", "c"]), DrawingImageBackend(), CONFIG).chain
    assert chain.times == [0.0, 1 / 3, 2 / 3, 1.0] and chain.times_from == "even"
    chain.save(tmp_path)
    path = tmp_path / "chain.json"
    data = json.loads(path.read_text())
    for key in ("times", "times_from"):
        del data[chain.name][key]
    path.write_text(json.dumps(data))
    loaded = ThoughtChain.load(tmp_path)
    assert loaded.times == [0.0, 1 / 3, 2 / 3, 1.0] and loaded.times_from == "even"


class Timed(ScriptedReasoner):
    """Answers each keyframe with the next time of a script, one answer per call."""

    def __init__(self, captions, answers):
        super().__init__(captions)
        self.script = list(answers)

    def next_keyframe(self, chain, composite):
        answer = super().next_keyframe(chain, composite)
        return NextKeyframe(caption=answer.caption, is_last=answer.is_last, time=self.script.pop(0))


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), float("inf")])
def test_a_time_outside_the_clip_is_asked_again(bad):
    reasoner = Timed(["impact"], [bad, 0.5])
    assert reason("p", reasoner, DrawingImageBackend(), CONFIG).chain.times == [0.0, 0.5]
    assert [c[0] for c in reasoner.calls].count("next_keyframe") == 2


def test_a_time_out_of_order_is_asked_again_then_fails_naming_time():
    reasoner = Timed(["impact", "splash"], [0.6, 0.3, 0.8])
    assert reason("p", reasoner, DrawingImageBackend(), CONFIG).chain.times == [0.0, 0.6, 0.8]
    stubborn = Timed(["impact", "splash"], [0.6, 0.3, 0.3, 0.3])
    with pytest.raises(StageError, match=r"time 0\.3 of keyframe 2 comes before the previous keyframe's 0\.6"):
        reason("p", stubborn, DrawingImageBackend(), CONFIG)


def test_a_chain_file_with_times_out_of_order_is_refused(tmp_path):
    chain = reason("p", ScriptedReasoner(["a", "b"], times=[0.4, 0.9]), DrawingImageBackend(), CONFIG).chain
    chain.save(tmp_path)
    path = tmp_path / "chain.json"
    data = json.loads(path.read_text())
    data[chain.name]["times"] = [0.0, 0.9, 0.4]
    path.write_text(json.dumps(data))
    with pytest.raises(VChainError, match=r"times must be non-decreasing, got times\[2\]=0\.4"):
        ThoughtChain.load(tmp_path)


def test_the_prompt_asks_for_the_time_and_shows_the_times_so_far():
    chain = reason("p", ScriptedReasoner(["a"], times=[0.4]), DrawingImageBackend(), CONFIG).chain
    system, user = next_keyframe_messages(chain, chain.images[0])
    assert "Set time to when in the clip" in system["content"]
    assert "Their times in the clip: 0.00, 0.40" in user["content"][0]["text"]
    assert "time" in NextKeyframe.model_json_schema()["properties"]


def test_the_manifest_records_the_times(tmp_path):
    reasoner = ScriptedReasoner(["a", "b"], times=[0.25, 1.0])
    pipe = VChainPipeline(reasoner=reasoner, image_backend=DrawingImageBackend(), reasoning=CONFIG)
    pipe.think("An egg falls.", output_dir=tmp_path)
    record = json.loads((tmp_path / "manifest.json").read_text())["stages"]["reasoning"]
    assert (record["times"], record["times_from"]) == ([0.0, 0.25, 1.0], "reasoner")


def test_an_openai_compatible_server_is_asked_for_times_and_they_reach_the_chain(server, client):
    from vchain.backends.openai import OpenAIReasoner
    from vchain.testing.openai_server import scripted_chat

    server.chat_responder = scripted_chat(ScriptedReasoner(["impact", "splash"], times=[0.55, 0.7]))
    chain = reason("An egg falls.", OpenAIReasoner(client=client), DrawingImageBackend(), CONFIG).chain
    assert chain.times == [0.0, 0.55, 0.7] and chain.times_from == "reasoner"
    keyframe_requests = [r for r in server.requests_to("chat") if "NextKeyframe" in json.dumps(r.body)]
    schema = keyframe_requests[0].body["response_format"]["json_schema"]["schema"]
    assert "time" in schema["properties"]
