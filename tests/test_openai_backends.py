import base64
import io
import json

import openai
import pytest
from PIL import Image

from vchain import VChainPipeline, prompts
from vchain.backends.openai import OpenAIImageBackend, OpenAIReasoner
from vchain.errors import ConfigurationError, StageError
from vchain.reasoning import ReasoningConfig
from vchain.testing import Fault, Reply, draw_image

from .conftest import API_KEY

CONFIG = ReasoningConfig(width=64, height=32)
PROMPT = "A rubber duck and a rock fall into a water tank."


def pipe_for(client, **config):
    return VChainPipeline(
        OpenAIReasoner(client=client),
        OpenAIImageBackend(client=client),
        reasoning=ReasoningConfig(**{"width": 64, "height": 32, **config}),
    )


def test_requests_carry_prompts_consequences_and_the_composite(server, client):
    chain = pipe_for(client).think(PROMPT)
    chats = server.requests_to("chat")
    assert len(chats) == 3  # plan + two keyframes

    plan = chats[0].body
    assert plan["model"] == "gpt-4o"
    assert plan["messages"][0] == {"role": "system", "content": prompts.PLAN_SYSTEM}
    assert PROMPT in plan["messages"][1]["content"]
    assert plan["response_format"]["type"] == "json_schema"
    assert plan["response_format"]["json_schema"]["name"] == "ScenePlan"
    assert plan["response_format"]["json_schema"]["strict"] is True

    perception = chats[2].body
    assert perception["messages"][0]["content"] == prompts.NEXT_KEYFRAME_SYSTEM
    parts = perception["messages"][1]["content"]
    text = parts[0]["text"]
    assert PROMPT in text and chain.consequences in text and chain.key_frames[0] in text
    assert perception["response_format"]["json_schema"]["name"] == "NextKeyframe"
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    composite = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert composite.size == (128, 32)  # two 64x32 keyframes side by side


def test_generate_and_edit_return_decoded_images_and_send_the_chain(server, client):
    chain = pipe_for(client).think(PROMPT)
    assert len(chain.images) == 3 and all(im.size == (64, 32) for im in chain.images)
    generate = server.requests_to("generate")[0].body
    assert generate["model"] == "gpt-image-1" and generate["size"] == "1536x1024"
    assert generate["prompt"] == chain.context_frame
    edits = server.requests_to("edit")
    assert [len(e.files) for e in edits] == [1, 2]
    assert all(name == "image[]" for e in edits for name, _ in e.files)
    sent = Image.open(io.BytesIO(edits[1].files[1][1]))
    assert sent.convert("RGB").tobytes() == chain.images[1].tobytes()
    assert chain.key_frames[1] in edits[1].body["prompt"]


def test_scripted_image_is_what_the_chain_gets(server, client):
    server.queue("generate", draw_image("exact", 96, 64))
    chain = pipe_for(client).think(PROMPT)
    expected = draw_image("exact", 96, 64).resize((64, 43)).crop((0, 5, 64, 37))
    assert chain.images[0].size == expected.size


@pytest.mark.parametrize("status", [429, 500])
def test_transient_errors_are_retried_by_the_client(server, client, status):
    server.queue("chat", Fault.http(status))
    server.queue("edit", Fault.http(status))
    chain = pipe_for(client).think(PROMPT)
    assert len(chain.images) == 3
    assert len(server.requests_to("chat")) == 4 and len(server.requests_to("edit")) == 3


def test_timeouts_are_retried(server):
    client = openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=2, timeout=0.5)
    server.queue("chat", Fault.timeout(1.5))
    chain = pipe_for(client).think(PROMPT)
    assert len(chain.images) == 3


def test_persistent_server_errors_fail_naming_the_stage(server, client, tmp_path):
    server.queue("edit", *[Fault.http(500)] * 3)
    with pytest.raises(StageError, match=r"reasoning/edit \(keyframe 1\)"):
        pipe_for(client).think(PROMPT, output_dir=tmp_path)
    assert len(list(tmp_path.glob("*_0.png"))) == 1


def test_malformed_twice_then_valid_completes(server, client):
    server.queue("chat", Reply.malformed(), Reply(content='{"thoughts": 1}'))
    chain = pipe_for(client).think(PROMPT)
    assert len(chain.images) == 3
    assert len(server.requests_to("chat")) == 5


def test_always_malformed_fails_with_the_stage_named(server, client, tmp_path):
    server.queue("chat", *[Reply.malformed()] * 3)
    with pytest.raises(StageError, match=r"reasoning/plan.*malformed answer 3 times"):
        pipe_for(client).think(PROMPT, output_dir=tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["reasoning"]["status"] == "failed"
    assert "reasoning/plan" in manifest["stages"]["reasoning"]["error"]


def test_truncated_answer_is_asked_again(server, client):
    server.queue("chat", Reply(content='{"thoughts": "', finish_reason="length"))
    assert len(pipe_for(client).think(PROMPT).images) == 3


def test_refusal_fails_clearly(server, client):
    server.queue("chat", Reply(refusal="I can't help with that."))
    with pytest.raises(StageError, match="refused: I can't help with that"):
        pipe_for(client).think(PROMPT)
    assert len(server.requests_to("chat")) == 1


def test_partial_run_resumes_with_no_repeated_requests(server, client, tmp_path):
    server.queue("edit", Fault.http(500), Fault.http(500), Fault.http(500))
    pipe = pipe_for(client)
    with pytest.raises(StageError):
        pipe.think(PROMPT, output_dir=tmp_path)
    counts = {route: len(server.requests_to(route)) for route in ("chat", "generate", "edit")}
    assert counts == {"chat": 2, "generate": 1, "edit": 3}

    chain = pipe.think(PROMPT, output_dir=tmp_path)
    assert len(chain.images) == 3
    # Nothing paid for was asked again: the plan, the first image, and the first keyframe's caption
    # (kept in the manifest when its edit failed); the failed edit was.
    assert len(server.requests_to("generate")) == 1
    assert len(server.requests_to("chat")) == 2 + 1
    assert len(server.requests_to("edit")) == 3 + 2
    pipe.think(PROMPT, output_dir=tmp_path)
    assert len(server.requests) == 3 + 1 + 5
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["usage"]["requests"] == len(manifest["calls"]) == len(server.requests)
    assert [c["outcome"] for c in manifest["calls"] if c["step"] == "edit"][:3] == ["failed"] * 3


def test_manifest_records_usage_and_never_the_key(server, client, tmp_path):
    pipe_for(client).think(PROMPT, output_dir=tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    usage = manifest["usage"]
    assert usage["calls"] == usage["requests"] == 6 and usage["input_tokens"] > 0 and usage["images_out"] == 3
    assert set(usage["seconds_by_step"]) == {"plan", "generate", "perception", "edit"}
    assert manifest["stages"]["reasoning"]["inputs"]["reasoner"] == {
        "class": "OpenAIReasoner",
        "model": "gpt-4o",
        "server": server.base_url.rstrip("/"),
        "temperature": None,
        "image_detail": "auto",
    }
    assert manifest["stages"]["reasoning"]["stop_reason"] == "model"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def test_augment_prompt_returns_the_rewrite(server, client):
    server.queue("chat", Reply(content="  A detailed rewrite.  "))
    assert OpenAIReasoner(client=client).augment_prompt("p") == "A detailed rewrite."
    assert server.requests_to("chat")[0].body["messages"][0]["content"] == prompts.AUGMENT_SYSTEM


def test_missing_key_fails_before_any_work_naming_the_variable():
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIReasoner()
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIImageBackend()


def test_key_and_base_url_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    OpenAIReasoner().plan(PROMPT)
    assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_image_size_follows_the_frame_aspect():
    backend = OpenAIImageBackend(api_key="x")
    assert backend.request_size(832, 480) == "1536x1024"
    assert backend.request_size(480, 832) == "1024x1536"
    assert backend.request_size(512, 512) == "1024x1024"
    assert OpenAIImageBackend(api_key="x", size="1024x1024").request_size(832, 480) == "1024x1024"


def test_the_fake_server_refuses_what_the_api_would(server, client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "wizard", "content": "hi"}])
    assert server.requests[-1].schema_errors
    server.requests.clear()  # the fixture asserts every other request was valid
