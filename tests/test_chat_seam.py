"""The chat seam: the reasoning tasks and the judge written once over any `ChatModel`, and the OpenAI chat
model's structured output against servers that do not honour `response_format`."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import openai
import pytest
from PIL import Image
from pydantic import ValidationError

from vchain import VChainPipeline, prompts
from vchain.backends.openai import OpenAIChatModel, OpenAIJudge, OpenAIReasoner
from vchain.chain import NextKeyframe, ScenePlan
from vchain.errors import BackendError, ConfigurationError, MalformedResponseError, StageError
from vchain.interfaces import ChatModel
from vchain.judging import ChatJudge
from vchain.reasoning import ChatReasoner, ReasoningConfig
from vchain.scores import DIMENSIONS, VideoScores
from vchain.testing import DrawingImageBackend, FakeOpenAIServer, Fault, Reply, draw_image, example_plan

from .conftest import API_KEY, SCHEMA

PROMPT = "A glass of water is knocked off a table."
FRAME = ReasoningConfig(width=64, height=32, max_keyframes=3)


class ScriptedChat(ChatModel):
    """A chat model that records what it is asked and answers from `answers`, a list per schema name."""

    def __init__(self, answers: dict[str, list]):
        self.answers, self.asked = answers, []

    def complete(self, messages, schema):
        name = "str" if schema is str else schema.__name__
        self.asked.append((name, messages))
        answer = self.answers[name].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def keyframe(caption: str, is_last: bool) -> NextKeyframe:
    return NextKeyframe(caption=caption, is_last=is_last)


def test_a_chat_model_is_a_whole_reasoner_and_judge():
    chat = ScriptedChat(
        {
            "ScenePlan": [example_plan(PROMPT)],
            "NextKeyframe": [keyframe("The glass lies shattered on the floor.", True)],
            "str": ["A richer prompt."],
            "VideoScores": [VideoScores(**{d: 4 for d in DIMENSIONS}, **{f"{d}_reason": "Fine." for d in DIMENSIONS})],
        }
    )
    reasoner = ChatReasoner(chat)
    chain = VChainPipeline(reasoner, DrawingImageBackend(), reasoning=FRAME).think(PROMPT)
    assert chain.key_frames == ["The glass lies shattered on the floor."] and len(chain.images) == 2
    assert reasoner.augment_prompt(PROMPT) == "A richer prompt."
    assert [name for name, _ in chat.asked] == ["ScenePlan", "NextKeyframe", "str"]
    assert chat.asked[0][1] == prompts.plan_messages(PROMPT)
    assert reasoner.supports("verify_keyframe") and reasoner.supports("augment_prompt")

    judge = ChatJudge(chat, grid=True)
    assert judge.score(PROMPT, [draw_image("a", 32, 32), draw_image("b", 32, 32)]).physics == 4
    assert len([p for p in chat.asked[-1][1][1]["content"] if p["type"] == "image"]) == 1  # the grid
    code = reasoner.describe().pop("code")  # a custom chat model is known by its class and its source's hash
    assert code.startswith("tests.test_chat_seam.ScriptedChat@")
    assert reasoner.describe() == {"class": "ChatReasoner", "chat": "ScriptedChat", "code": code}
    assert judge.describe() == {"class": "ChatJudge", "chat": "ScriptedChat", "code": code, "grid": True}


def test_a_re_ask_after_a_malformed_answer_tells_the_model_what_was_wrong():
    plan = example_plan(PROMPT)
    chat = ScriptedChat({"ScenePlan": [MalformedResponseError("thoughts is missing"), plan, plan]})
    reasoner = ChatReasoner(chat)
    with pytest.raises(MalformedResponseError):
        reasoner.plan(PROMPT)
    reasoner.plan(PROMPT)
    first, second = (messages for _, messages in chat.asked)
    assert first == prompts.plan_messages(PROMPT) and second != first
    assert "thoughts is missing" in second[-1]["content"][-1]["text"]
    reasoner.plan(PROMPT)  # an answered request is asked plainly again
    assert chat.asked[-1][1] == first


def test_a_chat_model_may_raise_pydantics_error_and_is_told_it_on_the_re_ask():
    with pytest.raises(ValidationError) as invalid:
        ScenePlan.model_validate({"thoughts": "only this"})
    last = keyframe("The glass lies in pieces.", True)
    chat = ScriptedChat({"ScenePlan": [invalid.value, example_plan(PROMPT)], "NextKeyframe": [last]})
    chain = VChainPipeline(ChatReasoner(chat), DrawingImageBackend(), reasoning=FRAME.replace(max_keyframes=2))
    assert len(chain.think(PROMPT).images) == 2
    assert "consequences" in chat.asked[1][1][-1]["content"][-1]["text"]  # a missing field, named


def test_only_a_chat_model_makes_a_reasoner_or_judge():
    with pytest.raises(ConfigurationError, match=r"chat must be a vchain\.interfaces\.ChatModel, got str"):
        ChatReasoner("gpt-4o")
    with pytest.raises(ConfigurationError, match="grid must be True or False"):
        ChatJudge(ScriptedChat({}), grid="yes")


def test_the_presets_are_chat_models_with_their_records_unchanged():
    reasoner, judge = OpenAIReasoner(api_key="x"), OpenAIJudge(api_key="x", grid=True)
    assert isinstance(reasoner, (ChatModel, ChatReasoner)) and isinstance(judge, (ChatModel, ChatJudge))
    assert reasoner.describe() == {
        "class": "OpenAIReasoner",
        "model": "gpt-4o",
        "server": "https://api.openai.com:443/v1",
        "temperature": None,
        "image_detail": "auto",
    }
    assert judge.describe()["temperature"] == 0.0 and judge.describe()["grid"] is True
    # Settings that decide answers are recorded once they leave their defaults.
    tuned = OpenAIReasoner(api_key="x", structured_output="prompt", max_tokens=500, extra_body={"top_k": 20})
    assert {k: tuned.describe()[k] for k in ("structured_output", "max_tokens", "extra_body")} == {
        "structured_output": "prompt",
        "max_tokens": 500,
        "extra_body": {"top_k": 20},
    }


# -- structured output against a server that ignores response_format


@pytest.fixture
def prose_server():
    with FakeOpenAIServer(schema_path=SCHEMA, ignores_response_format=True) as fake:
        yield fake
    assert all(not r.schema_errors for r in fake.requests), [r.schema_errors for r in fake.requests]


def chat_requests(server) -> list[dict]:
    return [r.body for r in server.requests_to("chat")]


def test_auto_asks_once_more_with_the_schema_in_the_prompt_and_stays_there(prose_server, tmp_path):
    reasoner = OpenAIReasoner(api_key=API_KEY, base_url=prose_server.base_url)
    chain = VChainPipeline(reasoner, DrawingImageBackend(), reasoning=FRAME).think(PROMPT, output_dir=tmp_path)
    assert len(chain.images) == 3
    bodies = chat_requests(prose_server)
    # The plan: once with response_format (prose came back), once with the schema in the prompt; then the
    # two keyframes in prompt mode straight away.
    assert ["response_format" in b for b in bodies] == [True, False, False, False]
    assert '"title":"ScenePlan"' in bodies[1]["messages"][0]["content"]
    assert "named NextKeyframe" in bodies[2]["messages"][0]["content"]
    calls = json.loads((tmp_path / "manifest.json").read_text())["calls"]
    assert [c["outcome"] for c in calls if c["step"] == "plan"] == ["malformed", "ok"]


def test_json_schema_mode_fails_at_once_naming_the_way_out(prose_server):
    reasoner = OpenAIReasoner(api_key=API_KEY, base_url=prose_server.base_url, structured_output="json_schema")
    with pytest.raises(StageError) as error:
        VChainPipeline(reasoner, DrawingImageBackend(), reasoning=FRAME).think(PROMPT)
    assert "returned no JSON for a structured request (ScenePlan)" in str(error.value)
    assert "structured_output='prompt'" in str(error.value) and "--structured-output prompt" in str(error.value)
    assert len(chat_requests(prose_server)) == 1  # the same prose is not asked for again


def test_prompt_mode_never_sends_response_format_and_reads_a_fenced_answer(prose_server):
    chat = OpenAIChatModel(api_key=API_KEY, base_url=prose_server.base_url, structured_output="prompt")
    plan = chat.complete(prompts.plan_messages(PROMPT), ScenePlan)
    assert isinstance(plan, ScenePlan)
    (body,) = chat_requests(prose_server)
    assert "response_format" not in body and "named ScenePlan" in body["messages"][0]["content"]


def test_when_both_modes_get_prose_the_error_says_so(prose_server):
    chat = OpenAIChatModel(api_key=API_KEY, base_url=prose_server.base_url)
    prose = Reply(content="I would rather describe it in words.")
    prose_server.queue("chat", prose, prose)
    with pytest.raises(BackendError, match=r"no JSON for a structured request \(ScenePlan\) in either mode"):
        chat.complete(prompts.plan_messages(PROMPT), ScenePlan)
    assert len(chat_requests(prose_server)) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('Here you go:\n```json\n{"a": 1}\n```\nDone.', {"a": 1}),
        ('The answer is {"a": {"b": [1, 2]}} as asked.', {"a": {"b": [1, 2]}}),
        ("No braces at all.", None),
    ],
)
def test_json_is_read_out_of_an_answer(text, expected):
    assert prompts.read_json(text) == expected


# -- the other chat settings


def test_max_tokens_and_extra_body_reach_the_request(server):
    chat = OpenAIChatModel(api_key=API_KEY, base_url=server.base_url, max_tokens=300, extra_body={"top_k": 20})
    chat.complete(prompts.plan_messages(PROMPT), ScenePlan)
    body = server.requests_to("chat")[0].body
    assert body["max_tokens"] == 300 and body["top_k"] == 20


def test_an_answer_cut_off_names_max_tokens(server):
    chat = OpenAIChatModel(api_key=API_KEY, base_url=server.base_url, max_tokens=5)
    server.queue("chat", Reply(content='{"thoughts": "', finish_reason="length"))
    with pytest.raises(MalformedResponseError, match="cut off at max_tokens=5"):
        chat.complete(prompts.plan_messages(PROMPT), ScenePlan)


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("structured_output", "xml", "structured_output must be one of ['auto', 'json_schema', 'prompt'], got 'xml'"),
        ("max_tokens", 0, "max_tokens must be None or a positive integer, got 0"),
        ("extra_body", ["top_k"], "extra_body must be a dict with string keys, got ['top_k']"),
        ("extra_body", {"seed": float("nan")}, "extra_body must hold JSON values only"),
        ("extra_body", {"messages": []}, "extra_body must not set 'messages'"),
    ],
)
def test_bad_chat_settings_are_refused_naming_the_value(setting, value, named):
    with pytest.raises(ConfigurationError) as error:
        OpenAIChatModel(api_key="x", **{setting: value})
    assert named in str(error.value)


@pytest.mark.parametrize("style", ["openai", "fastapi", "ollama", "text"])
def test_the_servers_own_error_text_is_in_the_message(server, style):
    chat = OpenAIChatModel("no-such-model", api_key=API_KEY, base_url=server.base_url)
    server.queue("chat", Fault.http(404, "The model 'no-such-model' does not exist", style=style))
    with pytest.raises(BackendError) as error:
        chat.complete(prompts.plan_messages(PROMPT), ScenePlan)
    assert "HTTP 404" in str(error.value) and "The model 'no-such-model' does not exist" in str(error.value)
    assert len(server.requests_to("chat")) == 1  # a 4xx is not sent again


def test_a_fastapi_validation_list_is_read_too(server):
    chat = OpenAIChatModel(api_key=API_KEY, base_url=server.base_url)
    detail = [{"loc": ["body", "messages"], "msg": "field required", "type": "missing"}]
    server.queue("chat", Fault(status=422, body={"detail": detail}))
    with pytest.raises(BackendError, match=r"HTTP 422 .*body\.messages: field required"):
        chat.complete(prompts.plan_messages(PROMPT), ScenePlan)


def test_the_timeout_applies_to_each_attempt(server):
    chat = OpenAIChatModel(api_key=API_KEY, base_url=server.base_url, timeout=0.3, max_retries=0)
    server.queue("chat", Fault.timeout(1.0))
    with pytest.raises(BackendError, match="APITimeoutError"):
        chat.complete(prompts.plan_messages(PROMPT), ScenePlan)
    assert isinstance(chat.client, openai.OpenAI) and chat.client.timeout == 0.3


# -- the command line: the chat settings, and the registries it reads


def think(tmp_path, server, *flags):
    from vchain.cli import main

    base = ["think", PROMPT, "-o", str(tmp_path / "run"), "--width", "64", "--height", "32", "--max-keyframes", "3"]
    # A local reasoner takes no server (vchain refuses --base-url beside it).
    servers = [] if "transformers:x" in flags else ["--base-url", server.base_url]
    try:
        return main([*base, *servers, "--image-base-url", server.base_url, *flags])
    except SystemExit as e:  # argparse's own refusals
        return e.code


def test_the_cli_passes_the_chat_settings_and_records_them(prose_server, tmp_path):
    flags = ["--structured-output", "prompt", "--max-tokens", "400", "--extra-body", '{"top_k": 20}', "--timeout", "9"]
    assert think(tmp_path, prose_server, *flags) == 0
    bodies = chat_requests(prose_server)
    assert len(bodies) == 3 and all("response_format" not in b for b in bodies)
    assert all(b["max_tokens"] == 400 and b["top_k"] == 20 for b in bodies)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    record = manifest["stages"]["reasoning"]["inputs"]["reasoner"]
    assert record["structured_output"] == "prompt" and record["max_tokens"] == 400 and "timeout" not in record


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--extra-body", "{top_k: 20}"], "argument --extra-body: must be a JSON object, got '{top_k: 20}'"),
        (["--extra-body", "[1]"], "argument --extra-body: must be a JSON object"),
        (["--extra-body", '{"model": "x"}'], "extra_body must not set 'model'"),
        (["--structured-output", "xml"], "argument --structured-output: invalid choice: 'xml'"),
        (["--reasoner", "transformers:x", "--timeout", "5"], "--timeout does not apply to --reasoner transformers"),
        (["--reasoner", "nope"], "--reasoner must be openai or transformers:ID_OR_DIR, got 'nope'"),
    ],
)
def test_bad_chat_flags_are_one_clear_error_before_any_work(server, tmp_path, capsys, flags, named):
    assert think(tmp_path, server, *flags) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1
    assert not server.requests and not (tmp_path / "run").exists()


def test_a_reasoner_registered_by_its_user_is_listed_and_accepted(server, tmp_path, capsys, monkeypatch):
    from vchain.backends import REASONERS, BackendKind

    built = []

    def scripted(model: str, *, base_url: str | None = None):
        built.append((model, base_url))
        return ChatReasoner(
            ScriptedChat(
                {"ScenePlan": [example_plan(PROMPT)], "NextKeyframe": [keyframe("The glass lies in pieces.", True)]}
            )
        )

    monkeypatch.setitem(REASONERS, "scripted", BackendKind(scripted, model="NAME"))
    assert think(tmp_path, server, "--reasoner", "scripted") == 2
    assert "--reasoner must be openai or transformers:ID_OR_DIR or scripted:NAME" in capsys.readouterr().err
    assert think(tmp_path, server, "--reasoner", "scripted:v1") == 0
    assert built == [("v1", server.base_url)] and not server.requests_to("chat")
    assert len(server.requests_to("generate")) == 1
    assert think(tmp_path, server, "--reasoner", "scripted:v1", "--max-tokens", "9") == 2
    assert "--max-tokens does not apply to --reasoner scripted" in capsys.readouterr().err


def test_a_bare_factory_is_a_kind_too(server, tmp_path, capsys, monkeypatch):
    from vchain.backends import REASONERS, BackendKind

    def rules(model):  # no default: named as rules:MODEL
        return ChatReasoner(
            ScriptedChat({"ScenePlan": [example_plan(PROMPT)], "NextKeyframe": [keyframe(model, True)]})
        )

    monkeypatch.setitem(REASONERS, "rules", rules)
    assert BackendKind.of(rules).form("rules") == "rules:MODEL" and BackendKind.of(rules).settings() == ()
    assert think(tmp_path, server, "--reasoner", "rules:The glass is in pieces.") == 0
    assert json.loads((tmp_path / "run" / "chain.json").read_text()).popitem()[1]["key_frames"] == [
        "The glass is in pieces."
    ]
    assert think(tmp_path / "other", server, "--reasoner", "nope") == 2
    assert "or rules:MODEL, got 'nope'" in capsys.readouterr().err


# -- the backend example of docs/architecture.md, run against a stand-in for Ollama's chat API


class OllamaStandIn(BaseHTTPRequestHandler):
    """`POST /api/chat` as Ollama answers it, scripted: the schema's title in `format` picks the answer."""

    requests: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        answers = {
            "ScenePlan": example_plan(PROMPT).model_dump(),
            "NextKeyframe": {"caption": "The glass lies in pieces on the floor.", "is_last": True},
        }
        title = (body.get("format") or {}).get("title")
        content = json.dumps(answers[title]) if title else "A richer prompt."
        data = json.dumps({"model": body["model"], "message": {"role": "assistant", "content": content}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_the_architecture_pages_backend_example_runs():
    page = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    code = re.search(r"## A new reasoning backend.*?```python\n(.*?)```", page, flags=re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    OllamaStandIn.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), OllamaStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        reasoner = ChatReasoner(namespace["OllamaChat"]("qwen2.5vl:7b", url))
        chain = VChainPipeline(reasoner, DrawingImageBackend(), reasoning=FRAME).think(PROMPT)
        assert reasoner.augment_prompt(PROMPT) == "A richer prompt."
    finally:
        server.shutdown()
        server.server_close()
    assert chain.key_frames == ["The glass lies in pieces on the floor."]
    plan, perception, rewrite = OllamaStandIn.requests
    assert plan["format"]["title"] == "ScenePlan" and "format" not in rewrite
    (composite,) = perception["messages"][1]["images"]
    assert Image.open(io.BytesIO(base64.b64decode(composite))).size == (64, 32)
    described = namespace["reasoner"].describe()
    assert described.pop("code").split("@")[0].endswith("OllamaChat")
    assert described == {"class": "ChatReasoner", "chat": "OllamaChat", "model": "qwen2.5vl:7b"}


def test_vchain_judge_takes_the_chat_flags(server, tmp_path, capsys):
    from vchain.cli import main

    from .test_judging import make_run

    make_run(tmp_path / "run", PROMPT)
    flags = ["--base-url", server.base_url, "--frames", "2", "--structured-output", "prompt", "--max-tokens", "700"]
    assert main(["judge", str(tmp_path), *flags]) == 0
    (body,) = [r.body for r in server.requests_to("chat")]
    assert "response_format" not in body and body["max_tokens"] == 700
    assert "named VideoScores" in body["messages"][0]["content"]
    entry = json.loads((tmp_path / "run" / "scores.json").read_text())["entries"][0]
    assert entry["judge"]["structured_output"] == "prompt" and entry["scores"]["physics"] in range(1, 6)
    assert main(["judge", str(tmp_path), "--judge", "transformers:x", "--timeout", "5"]) == 2
    assert "--timeout does not apply to --judge transformers" in capsys.readouterr().err


def test_a_changed_chat_setting_is_a_changed_reasoning_input_and_the_timeout_is_not(server, tmp_path, capsys):
    assert think(tmp_path, server, "--max-tokens", "400") == 0
    paid = len(server.requests)
    assert think(tmp_path, server, "--max-tokens", "400", "--timeout", "30") == 0  # reused as it is
    assert think(tmp_path, server, "--max-tokens", "500") == 2
    assert "max_tokens" in capsys.readouterr().err and len(server.requests) == paid


def test_the_chat_flags_are_refused_where_nothing_reasons(tmp_path, capsys):
    from vchain.cli import main

    args = ["generate", PROMPT, "-o", str(tmp_path / "run"), "--variant", "t2v", "--structured-output", "prompt"]
    assert main(args) == 2
    assert "--structured-output does not apply to the t2v variant" in capsys.readouterr().err
