"""Class 13, secrets: a key or a URL's credentials never reach a record, a log line (debug logging of
httpx, httpcore and openai included), an error, or the traceback of an exception chained to one."""

from __future__ import annotations

import json
import logging
import traceback

import pytest

from tests.bad_inputs import PROMPT, run_cli
from tests.conftest import API_KEY
from vchain import VChainPipeline
from vchain._redact import redact
from vchain.errors import StageError
from vchain.testing import DrawingImageBackend, EchoAuthorization

PASSWORD = "pw-SECRET-0123456789"

TEXTS = [
    pytest.param(f"at http://alice:{PASSWORD}@127.0.0.1:9/v1/ failed", [PASSWORD, "alice"], id="user-and-password"),
    pytest.param(f"GET https://h.example/v1?api-key={PASSWORD}&x=1", [PASSWORD], id="query-key"),
    pytest.param(f"url='https://h.example/v1?token={PASSWORD}'", [PASSWORD], id="quoted-token"),
    pytest.param(f"https://{PASSWORD}@h.example/v1", [PASSWORD], id="token-as-user"),
]


@pytest.mark.parametrize(("text", "hidden"), TEXTS)
def test_credentials_in_any_url_are_redacted(text, hidden):
    clean = redact(text)
    assert all(secret not in clean for secret in hidden) and "***" in clean


def test_a_base_url_with_credentials_reaches_no_record_and_no_output(faulty_server, tmp_path, capsys):
    port = faulty_server.base_url.split(":")[2].split("/")[0]
    url = f"http://alice:{PASSWORD}@127.0.0.1:{port}/v1"
    result = run_cli(capsys, "think", PROMPT, "-o", tmp_path / "run", "--base-url", url, "--image-base-url", url)
    assert result.code == 0, result.err[-2000:]
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert PASSWORD not in manifest + result.out + result.err
    assert json.loads(manifest)["stages"]["reasoning"]["inputs"]["reasoner"]["server"] == f"http://127.0.0.1:{port}/v1"


def test_debug_logging_never_shows_a_key_a_server_echoes(faulty_server, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    faulty_server.queue("chat", EchoAuthorization())
    args = ["-v", "think", PROMPT, "-o", tmp_path / "run", "--base-url", faulty_server.base_url]
    with caplog.at_level(logging.DEBUG):
        result = run_cli(capsys, *args, "--image-base-url", faulty_server.base_url)
    assert result.code == 1 and "invalid credentials" in result.err and "Traceback" in result.err, result.err[-2000:]
    assert "x-echo-authorization" in caplog.text.lower()  # openai logged the server's headers at debug level
    logged = result.err + result.out + caplog.text + (tmp_path / "run" / "manifest.json").read_text()
    assert API_KEY not in logged


def test_a_stage_errors_traceback_and_the_libraries_debug_logs_hold_no_key(faulty_server, tmp_path, caplog):
    from vchain.backends.openai import OpenAIReasoner

    faulty_server.queue("chat", EchoAuthorization())
    reasoner = OpenAIReasoner(api_key=API_KEY, base_url=faulty_server.base_url, max_retries=0)
    with caplog.at_level(logging.DEBUG), pytest.raises(StageError) as error:
        VChainPipeline(reasoner, DrawingImageBackend()).think(PROMPT, tmp_path / "run")
    printed = "".join(traceback.format_exception(error.value))
    assert ("invalid credentials" in printed and "APIStatusError" in printed) or "AuthenticationError" in printed
    assert API_KEY not in printed and API_KEY not in caplog.text
    assert "Bearer ***" in caplog.text or "Bearer ***" in printed
