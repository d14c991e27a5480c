"""Class 12, caches keyed by what decides the result: the server (never its credentials), the model and the
component's code and settings. A result made for one of them is never handed back for another, and a
description that cannot be a stable record is refused when the component is given to the pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from tests.bad_inputs import CAPTIONS, NO_WORK, PROMPT, assert_names, openai_backends, toy_pipeline, work_done
from tests.conftest import SCHEMA
from vchain import VChainPipeline
from vchain._redact import server_identity
from vchain.errors import ConfigurationError
from vchain.interfaces import Reasoner, code_identity
from vchain.testing import DrawingImageBackend, FakeOpenAIServer, ScriptedReasoner, scripted_chat

IDENTITIES = [
    pytest.param("https://api.openai.com/v1/", "https://api.openai.com:443/v1", id="default-port"),
    pytest.param("http://user:pw@Host.Example:8000/v1?api-key=x#f", "http://host.example:8000/v1", id="credentials"),
    pytest.param("http://[::1]:9/v1", "http://[::1]:9/v1", id="ipv6"),
    pytest.param("http://127.0.0.1:8000", "http://127.0.0.1:8000", id="no-path"),
]


@pytest.mark.parametrize(("url", "identity"), IDENTITIES)
def test_a_servers_identity_is_scheme_host_port_and_path_without_credentials(url, identity):
    assert server_identity(url) == identity


def test_the_openai_components_describe_their_server_and_credentials_do_not_change_it():
    reasoner, backend = openai_backends("http://127.0.0.1:8001/v1")
    other, _ = openai_backends("http://127.0.0.1:8002/v1")
    keyed, _ = openai_backends("http://someone:pw-0123456789@127.0.0.1:8001/v1")
    assert reasoner.describe()["server"] == backend.describe()["server"] == "http://127.0.0.1:8001/v1"
    assert other.describe() != reasoner.describe() and keyed.describe() == reasoner.describe()
    assert "pw-0123456789" not in json.dumps(keyed.describe())


def test_a_chain_made_on_one_server_is_not_returned_for_another(tmp_path):
    script = scripted_chat(ScriptedReasoner(CAPTIONS))
    with FakeOpenAIServer(script, schema_path=SCHEMA) as first, FakeOpenAIServer(script, schema_path=SCHEMA) as second:
        VChainPipeline(*openai_backends(first.base_url)).think(PROMPT, tmp_path / "run")
        with pytest.raises(ConfigurationError) as error:
            VChainPipeline(*openai_backends(second.base_url)).think(PROMPT, tmp_path / "run")
        assert_names(str(error.value), "reasoner.server", first.base_url.rstrip("/"), "--overwrite")
        assert second.requests == []
        chain = VChainPipeline(*openai_backends(second.base_url)).think(PROMPT, tmp_path / "run", overwrite=True)
        assert len(chain.images) == len(CAPTIONS) + 1 and second.requests


def test_a_judges_cache_is_keyed_by_its_server(tmp_path):
    from tests.test_judging import LookingJudge, make_run
    from vchain.backends.openai import OpenAIJudge
    from vchain.judging import judge_runs

    make_run(tmp_path / "runs" / "a", "A prompt.", score=4)
    with FakeOpenAIServer(LookingJudge()) as first, FakeOpenAIServer(LookingJudge()) as second:
        judge_runs(tmp_path / "runs", OpenAIJudge(base_url=first.base_url))
        again = judge_runs(tmp_path / "runs", OpenAIJudge(base_url=first.base_url))
        other = judge_runs(tmp_path / "runs", OpenAIJudge(base_url=second.base_url))
    assert len(first.requests) == 1 and again.usage.requests == 0
    assert len(second.requests) == 1 and other.usage.requests == 1


# ----------------------------------------------------------------------------------- custom components


def _reasoner_class(caption: str) -> type:
    """A user's reasoner, its code made in a session (no source file), with one caption of its own."""
    namespace: dict = {}
    exec(
        "from vchain.testing import ScriptedReasoner\n"
        "class MyReasoner(ScriptedReasoner):\n"
        "    def answer(self, index):\n"
        f"        return super().answer(index).model_copy(update={{'caption': {caption!r}}})\n",
        namespace,
    )
    return namespace["MyReasoner"]


def test_a_custom_components_default_identity_is_stable_and_names_its_code():
    first, second = ScriptedReasoner(CAPTIONS).describe(), ScriptedReasoner(["other"]).describe()
    assert first == second and first["code"].startswith("vchain.testing.fakes.ScriptedReasoner@")
    assert "0x" not in json.dumps(first)
    assert code_identity(_reasoner_class("A.")) == code_identity(_reasoner_class("A."))
    assert code_identity(_reasoner_class("A.")) != code_identity(_reasoner_class("B."))


def test_edited_reasoner_code_is_a_changed_input_not_a_stale_chain(tmp_path):
    old, new = _reasoner_class("The egg lands."), _reasoner_class("The egg bounces.")
    VChainPipeline(old(CAPTIONS), DrawingImageBackend()).think(PROMPT, tmp_path / "run")
    edited = new(CAPTIONS)
    with pytest.raises(ConfigurationError) as error:
        VChainPipeline(edited, DrawingImageBackend()).think(PROMPT, tmp_path / "run")
    assert_names(str(error.value), "reasoner.code", "--overwrite")
    assert edited.calls == []


class Described(Reasoner):
    """A reasoner whose description is set per test."""

    def __init__(self, info):
        self.info = info

    def describe(self):
        return self.info

    def plan(self, prompt):
        raise AssertionError("never called")

    def next_keyframe(self, chain, composite):
        raise AssertionError("never called")


BAD_DESCRIPTIONS = [
    pytest.param({"class": "R", "dtype": torch.bfloat16}, ["dtype", "torch.dtype", "str(dtype)"], id="a-torch-dtype"),
    pytest.param({"class": "R", "client": object()}, ["client", "object"], id="an-object"),
    pytest.param({"class": "R", "self": "<R object at 0x7f3a2b1c9d40>"}, ["self", "memory address"], id="an-address"),
    pytest.param({"class": "R", "temperature": float("nan")}, ["temperature", "nan"], id="nan"),
    pytest.param({"class": "R", "layers": [1, {"w": b"x"}]}, ["layers[1].w", "bytes"], id="nested-bytes"),
    pytest.param({1: "one"}, ["non-string key", "1"], id="an-int-key"),
    pytest.param(["class", "R"], ["must return a dict", "list"], id="a-list"),
]


@pytest.mark.parametrize(("info", "fragments"), BAD_DESCRIPTIONS)
def test_a_description_that_is_no_stable_json_is_refused_when_the_component_is_given(info, fragments):
    with pytest.raises(ConfigurationError) as error:
        VChainPipeline(Described(info), DrawingImageBackend())
    assert_names(str(error.value), "reasoner", "Described.describe()", *fragments)


def test_a_judge_with_a_bad_description_is_refused_before_judging(tmp_path):
    from tests.test_judging import make_run
    from vchain.interfaces import Judge
    from vchain.judging import judge_runs

    class DtypeJudge(Judge):
        def describe(self):
            return {"class": "DtypeJudge", "dtype": torch.float16}

        def score(self, prompt, frames):
            raise AssertionError("never called")

    make_run(tmp_path / "runs" / "a", "A prompt.")
    with pytest.raises(ConfigurationError, match=r"judge: DtypeJudge\.describe"):
        judge_runs(tmp_path / "runs", DtypeJudge())
    assert not (tmp_path / "runs" / "a" / "scores.json").exists()


def test_every_built_in_component_describes_itself_as_stable_json(wan):
    from vchain.interfaces import check_description

    pipe = toy_pipeline()
    for keyword in ("reasoner", "image_backend", "generator", "tuner", "interpolator"):
        check_description(getattr(pipe, keyword), keyword)
    check_description(wan, "generator")
    assert work_done(pipe) == NO_WORK
