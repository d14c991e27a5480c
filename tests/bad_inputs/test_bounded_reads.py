"""Class 16, bounded reads: a request has a total deadline (not one per read), an answer a cap on its size
once decompressed, a model's text a cap on its length; each is a clear error and what was paid for before
it stays recorded."""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.bad_inputs import PROMPT, assert_names, openai_backends, read_manifest
from vchain import VChainPipeline
from vchain.backends import _http
from vchain.chain import MAX_TEXT_LENGTH
from vchain.errors import BackendError, StageError
from vchain.testing import Reply

PLAN = {"thoughts": "T.", "consequences": "C.", "context_frame": "F.", "concise_prompt": "P."}


def _completion(content: dict) -> bytes:
    message = {"role": "assistant", "content": json.dumps(content)}
    return json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


class _Server:
    """A one-route HTTP server whose handler `answer(handler)` writes the whole response itself."""

    def __init__(self, answer):
        outer = self
        self.sent, self.requests = 0, 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests += 1
                answer(self, outer)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(answer):
        servers.append(_Server(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _headers(handler, length: int, encoding: str | None = None):
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(length))
    if encoding:
        handler.send_header("Content-Encoding", encoding)
    handler.end_headers()


def test_a_server_that_drips_its_answer_is_given_up_at_the_total_timeout(serve):
    from vchain.backends.openai import OpenAIReasoner

    body = _completion(PLAN)

    def drip(handler, server):  # a byte every 0.2 s: no read ever waits a whole second, the answer takes minutes
        _headers(handler, len(body))
        try:
            for byte in body:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                server.sent += 1
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass

    server = serve(drip)
    with pytest.raises(BackendError) as error:
        OpenAIReasoner(base_url=server.base_url, timeout=1.0, max_retries=0).plan(PROMPT)
    assert_names(str(error.value), "gpt-4o", "1 attempt", "Timeout")
    time.sleep(0.5)  # the server notices the closed connection at its next write
    assert server.requests == 1 and server.sent < len(body) // 4


def test_a_compressed_answer_is_read_and_a_decompression_bomb_is_refused_without_retrying(serve, monkeypatch):
    from vchain.backends.openai import OpenAIReasoner

    good = gzip.compress(_completion(PLAN))
    bomb = gzip.compress(b" " * (8 * 2**20))  # 8 KB on the wire, 8 MB decoded
    monkeypatch.setattr(_http, "MAX_RESPONSE_BYTES", 2**20)

    def answer(handler, server):
        data = good if server.requests == 1 else bomb
        _headers(handler, len(data), "gzip")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client stops reading a bomb
            handler.wfile.write(data)

    server = serve(answer)
    reasoner = OpenAIReasoner(base_url=server.base_url, max_retries=2)
    assert reasoner.plan(PROMPT).thoughts == "T."
    with pytest.raises(BackendError) as error:
        reasoner.plan(PROMPT)
    assert_names(str(error.value), "over vchain's limit of 1048576 bytes", "MAX_RESPONSE_BYTES")
    assert server.requests == 2  # a bomb is not asked for again


def test_an_unknown_content_encoding_is_a_clear_error(serve):
    from vchain.backends.openai import OpenAIReasoner

    def answer(handler, server):
        _headers(handler, 4, "br")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler.wfile.write(b"\x00\x00\x00\x00")

    server = serve(answer)
    with pytest.raises(BackendError, match="content-encoding 'br'"):
        OpenAIReasoner(base_url=server.base_url, max_retries=0).plan(PROMPT)


def test_an_overlong_caption_is_malformed_and_the_keyframes_before_it_are_kept(faulty_server, tmp_path):
    long = Reply.json({"caption": "x" * (MAX_TEXT_LENGTH + 1), "is_last": False})
    faulty_server.queue("chat", Reply.json(PLAN), long, long, long)
    with pytest.raises(StageError) as error:
        VChainPipeline(*openai_backends(faulty_server.base_url)).think(PROMPT, tmp_path / "run")
    assert_names(str(error.value), "caption", str(MAX_TEXT_LENGTH + 1), "MAX_TEXT_LENGTH")
    manifest = read_manifest(tmp_path / "run")
    assert (tmp_path / "run" / "chain.json").is_file() and manifest["usage"]["requests"] == 5


def test_a_video_larger_than_the_decoded_cap_is_refused_while_it_decodes(finished_run, monkeypatch):
    import imageio.v3 as iio

    from vchain import video
    from vchain.errors import VChainError

    frames = iio.imread(finished_run / "video.mp4")
    assert len(video.read_video(finished_run / "video.mp4")) == len(frames)
    monkeypatch.setattr(video, "MAX_VIDEO_BYTES", frames[0].nbytes - 1)
    with pytest.raises(VChainError) as error:
        video.read_video(finished_run / "video.mp4")
    assert_names(str(error.value), "video.mp4", "after 0 frames", "MAX_VIDEO_BYTES")
