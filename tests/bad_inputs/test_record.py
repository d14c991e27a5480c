"""Class 8, the record: `manifest.json` counts every request attempt with its outcome, so under injected 429s,
5xx, timeouts and non-JSON 200s its counts equal what the server saw; a paid answer is kept when the call
after it fails, and the re-run pays for nothing twice."""

from __future__ import annotations

import socket

import pytest

from tests.bad_inputs import (
    CAPTIONS,
    CLEAN_REQUESTS,
    PROMPT,
    assert_names,
    assert_stage_failure,
    openai_backends,
    read_manifest,
    server_flags,
)
from vchain import ThoughtChain, VChainPipeline
from vchain.errors import MalformedResponseError, StageError
from vchain.reasoning import ReasoningConfig
from vchain.testing import DrawingImageBackend, Fault, HtmlPage, RawImage, Reply, ScriptedReasoner, example_plan

FRAME = ReasoningConfig(width=16, height=16)
TIMEOUT = 0.3


def _think(server, folder, timeout: float = 10.0):
    reasoner, images = openai_backends(server.base_url, timeout=timeout, max_retries=2)
    return VChainPipeline(reasoner, images, reasoning=FRAME).think(PROMPT, folder)


def _queue_at(server, position: str, entries: list) -> None:
    """Put `entries` where `position` asks: the plan, the first image, the first perception or the first edit."""
    if position == "perception":
        server.queue("chat", Reply.json(example_plan(PROMPT)), *entries)
    else:
        server.queue({"plan": "chat", "generate": "generate", "edit": "edit"}[position], *entries)


def _malformed(position):
    return [Reply.malformed()] if position in ("plan", "perception") else [RawImage(b"not an image")]


# (entries for a position, whether the run gets through them)
FAULTS = {
    "429": (lambda p: [Fault.http(429)], True),
    "429-beyond-the-retries": (lambda p: [Fault.http(429)] * 3, False),
    "500-twice": (lambda p: [Fault.http(500)] * 2, True),
    "503-beyond-the-retries": (lambda p: [Fault.http(503)] * 3, False),
    "400": (lambda p: [Fault.http(400)], False),
    "a-200-web-page": (lambda p: [HtmlPage()], True),
    "a-200-web-page-every-time": (lambda p: [HtmlPage()] * 3, False),
    "malformed": (lambda p: _malformed(p), True),
    "malformed-every-time": (lambda p: _malformed(p) * 3, False),
    "timeout": (lambda p: [Fault.timeout(3 * TIMEOUT)], True),
    "timeout-beyond-the-retries": (lambda p: [Fault.timeout(3 * TIMEOUT)] * 3, False),
}
# Each fault where it matters: chat and image routes, the first call and one after a paid answer. A web page
# with status 200 goes everywhere (the chat and the image clients parse differently); timeouts cost seconds.
WHERE = {
    "429": ("plan", "edit"),
    "429-beyond-the-retries": ("generate", "perception"),
    "500-twice": ("generate", "perception"),
    "503-beyond-the-retries": ("plan", "edit"),
    "400": ("edit",),
    "a-200-web-page": ("plan", "generate", "perception", "edit"),
    "a-200-web-page-every-time": ("plan", "edit"),
    "malformed": ("perception", "generate"),
    "malformed-every-time": ("plan", "edit"),
    "timeout": ("perception",),
    "timeout-beyond-the-retries": ("edit",),
}
CASES = [pytest.param(f, p, id=f"{f}-at-{p}") for f, positions in WHERE.items() for p in positions]


def assert_counts_match(server, folder) -> dict:
    manifest = read_manifest(folder)
    assert manifest["usage"]["requests"] == len(manifest["calls"]) == len(server.requests), (
        manifest["usage"]["requests"],
        len(manifest["calls"]),
        [r.path for r in server.requests],
    )
    return manifest


@pytest.mark.parametrize(("fault", "position"), CASES)
def test_the_record_counts_what_the_server_saw_and_nothing_is_paid_twice(
    faulty_server, no_backoff, tmp_path, fault, position
):
    entries, recovers = FAULTS[fault]
    _queue_at(faulty_server, position, entries(position))
    folder = tmp_path / "run"
    timeout = TIMEOUT if fault.startswith("timeout") else 10.0  # a short one only where it is the fault
    try:
        _think(faulty_server, folder, timeout)
        failed = False
    except StageError:
        failed = True
    assert failed is not recovers, f"{fault} at {position}: failed={failed}"
    assert_counts_match(faulty_server, folder)
    if failed:
        assert read_manifest(folder)["stages"]["reasoning"]["status"] == "failed"
        _think(faulty_server, folder, timeout)
    manifest = assert_counts_match(faulty_server, folder)
    assert len(ThoughtChain.load(folder).images) == 1 + len(CAPTIONS)
    ok = [c for c in manifest["calls"] if c["outcome"] == "ok"]
    assert len(ok) == CLEAN_REQUESTS, [(c["step"], c["index"], c["outcome"]) for c in manifest["calls"]]
    assert manifest["usage"]["failed_requests"] == len(manifest["calls"]) - CLEAN_REQUESTS


def test_a_caption_paid_for_is_kept_when_its_edit_fails_and_the_rerun_asks_only_what_is_left(
    faulty_server, no_backoff, tmp_path
):
    faulty_server.queue("edit", *[Fault.http(500)] * 3)
    folder = tmp_path / "run"
    with pytest.raises(StageError) as error:
        _think(faulty_server, folder)
    assert (error.value.step, error.value.index) == ("edit", 1)
    answers = read_manifest(folder)["stages"]["reasoning"]["answers"]
    assert [a["index"] for a in answers] == [1] and answers[0]["caption"] == CAPTIONS[0]
    sent = len(faulty_server.requests)
    chain = _think(faulty_server, folder)
    rerun = [r.path.rsplit("/", 1)[-1] for r in faulty_server.requests[sent:]]
    assert rerun == ["edits", "completions", "edits"]  # edit 1, perception 2, edit 2: caption 1 was not asked again
    assert chain.key_frames[0] == CAPTIONS[0]
    assert_counts_match(faulty_server, folder)


def test_N12_a_server_that_is_down_is_named_and_every_attempt_is_recorded(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    reasoner, images = openai_backends(url, timeout=TIMEOUT, max_retries=1)
    with pytest.raises(StageError) as error:
        VChainPipeline(reasoner, images, reasoning=FRAME).think(PROMPT, tmp_path / "run")
    assert_names(str(error.value), "reasoning/plan", url, "2 attempt")
    calls = read_manifest(tmp_path / "run")["calls"]
    assert [(c["step"], c["outcome"]) for c in calls] == [("plan", "failed"), ("plan", "failed")]


def test_the_command_line_records_every_attempt_too(cli, faulty_server, no_backoff, tmp_path):
    folder = tmp_path / "run"
    faulty_server.queue("edit", Fault.http(429), *[Fault.http(503)] * 3)
    result = cli("think", PROMPT, "-o", folder, *server_flags(faulty_server))
    assert_stage_failure(result, "reasoning/edit (keyframe 1)", "503")
    assert_counts_match(faulty_server, folder)
    assert cli("think", PROMPT, "-o", folder, *server_flags(faulty_server)).code == 0
    manifest = assert_counts_match(faulty_server, folder)
    assert manifest["usage"]["failed_requests"] == 4


class Flaky(ScriptedReasoner):
    """Malformed answers for the first `bad` perception calls, then the script."""

    def __init__(self, bad):
        super().__init__(CAPTIONS)
        self.bad = bad

    def next_keyframe(self, chain, composite):
        self.calls.append(("next_keyframe", len(chain.key_frames)))
        if self.bad:
            self.bad -= 1
            raise MalformedResponseError("half an answer")
        return self.answer(len(chain.key_frames))


@pytest.mark.parametrize("bad", [1, 2])
def test_a_custom_backend_is_counted_call_by_call_with_its_outcomes(bad, tmp_path):
    reasoner, images = Flaky(bad), DrawingImageBackend()
    VChainPipeline(reasoner, images, reasoning=FRAME).think(PROMPT, tmp_path / "run")
    manifest = read_manifest(tmp_path / "run")
    assert len(manifest["calls"]) == len(reasoner.calls) + len(images.calls) == manifest["usage"]["requests"]
    assert [c["outcome"] for c in manifest["calls"] if c["step"] == "perception"][: bad + 1] == ["malformed"] * bad + [
        "ok"
    ]


class Interrupted(ScriptedReasoner):
    """Ctrl-C while keyframe 2 is being asked for, once."""

    interrupt = True

    def next_keyframe(self, chain, composite):
        if self.interrupt and len(chain.key_frames) == 1:
            raise KeyboardInterrupt
        return super().next_keyframe(chain, composite)


def test_an_interrupted_call_is_recorded_and_the_rerun_resumes(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        VChainPipeline(Interrupted(CAPTIONS), DrawingImageBackend(), reasoning=FRAME).think(PROMPT, folder)
    calls = read_manifest(folder)["calls"]
    assert [(c["step"], c["index"]) for c in calls][-1] == ("perception", 2) and calls[-1]["outcome"] == "failed"
    again = Interrupted(CAPTIONS)
    again.interrupt = False
    assert len(VChainPipeline(again, DrawingImageBackend(), reasoning=FRAME).think(PROMPT, folder).images) == 3
    assert again.calls == [("next_keyframe", 1)]
