"""A local OpenAI-compatible HTTP server (127.0.0.1, free port) for the real `openai` client.

It speaks the subset vchain uses: chat completions with structured output and image inputs, image
generations and edits. Answers come from scripts, every request is recorded, faults are injectable.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import io
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from vchain.chain import KeyframeVerdict
from vchain.scores import DIMENSIONS, VideoScores
from vchain.testing.fakes import ScriptedReasoner, draw_image

# How servers word an error body: OpenAI (and vLLM, SGLang), FastAPI (`transformers serve`), Ollama, plain text.
ERROR_STYLES = ("openai", "fastapi", "ollama", "text")


@dataclass
class Fault:
    """A scripted failure: an HTTP error status, a delay longer than the client's timeout, etc.

    `body` is sent as JSON, `text` as plain text (when both are None, an empty JSON object).
    """

    status: int = 500
    delay: float = 0.0
    body: dict | None = None
    text: str | None = None

    @classmethod
    def http(cls, status: int, message: str | None = None, *, style: str = "openai") -> Fault:
        """An error status whose body says `message` the way a server of `style` (`ERROR_STYLES`) words it."""
        message = message or f"injected {status}"
        bodies = {
            "openai": {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request"}},
            "fastapi": {"detail": message},
            "ollama": {"error": message},
        }
        if style == "text":
            return cls(status=status, text=message)
        if style not in bodies:
            raise ValueError(f"style must be one of {list(ERROR_STYLES)}, got {style!r}")
        return cls(status=status, body=bodies[style])

    @classmethod
    def timeout(cls, seconds: float) -> Fault:
        """Answer correctly, but only after `seconds` (set the client's timeout below it)."""
        return cls(status=0, delay=seconds)


@dataclass
class HtmlPage:
    """A 200 answer whose body is a web page, as a misconfigured proxy sends: no API response at all."""

    body: str = "<html><body><h1>Welcome to nginx!</h1></body></html>"


@dataclass
class RawImage:
    """An image answer carrying `payload` (base64-encoded here) or `b64` (sent as is) instead of a PNG."""

    payload: bytes = b""
    b64: str | None = None


@dataclass
class EchoAuthorization:
    """An error answer that echoes the request's Authorization header in its body and in a response header,
    as a careless proxy does: whatever vchain records, prints or logs of it must hold no key."""

    status: int = 401


@dataclass
class Reply:
    """A scripted chat answer. `content` is sent verbatim (malformed JSON included)."""

    content: str | None = None
    refusal: str | None = None
    finish_reason: str = "stop"

    @classmethod
    def json(cls, model: Any) -> Reply:
        data = model.model_dump() if hasattr(model, "model_dump") else model
        return cls(content=json.dumps(data))

    @classmethod
    def malformed(cls) -> Reply:
        return cls(content='{"caption": "half an answer", ')


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict
    files: list[tuple[str, bytes]] = field(default_factory=list)
    schema_errors: list[str] = field(default_factory=list)


ChatResponder = Callable[[dict], Reply]


def scripted_chat(reasoner: ScriptedReasoner) -> ChatResponder:
    """A stateless chat responder that answers like `reasoner`: a plan, then captions in order.

    It tells request kinds apart by the requested schema's name, and reads which keyframe is asked for
    from the request, so it answers the same after a crash and a resume. A judge gets `scripted_scores`.
    """

    def respond(body: dict) -> Reply:
        name = requested_schema(body)
        text = _user_text(body)
        if name == "ScenePlan":
            return Reply.json(reasoner.plan(text))
        if name == "NextKeyframe":
            match = re.search(r"Describe keyframe (\d+)", text)
            return Reply.json(reasoner.answer(int(match.group(1)) - 1 if match else 0))
        if name == "KeyframeVerdict":
            return Reply.json(KeyframeVerdict(matches=True, problem=""))
        if name == "VideoScores":
            return Reply.json(scripted_scores(body))
        return Reply(content=reasoner.augment_prompt(text))

    return respond


def requested_schema(body: dict) -> str:
    """The name of the schema a chat request asks for: its `response_format`'s, or the one vchain's prompt mode
    writes into the system message (`vchain.prompts.SCHEMA_INSTRUCTION`); "" for a plain-text request."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"].get("name", "")
    system = next((m.get("content") for m in body.get("messages", []) if m.get("role") == "system"), None)
    match = re.search(r"JSON schema, named (\w+):", system) if isinstance(system, str) else None
    return match.group(1) if match else ""


def scripted_scores(body: dict) -> VideoScores:
    """Scores from a hash of the request's messages: each video its own, the same every time it is sent."""
    digest = hashlib.sha256(json.dumps(body.get("messages", []), sort_keys=True).encode()).digest()
    fields = {}
    for byte, dimension in zip(digest, DIMENSIONS, strict=False):
        fields[dimension] = 1 + byte % 5
        fields[f"{dimension}_reason"] = f"The test server's scripted {dimension.replace('_', ' ')} score."
    return VideoScores(**fields)


def _user_text(body: dict) -> str:
    for message in body.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content.removeprefix("Video prompt: ")
        return " ".join(part.get("text", "") for part in content if part.get("type") == "text")
    return ""


class FakeOpenAIServer:
    """A local stand-in for the OpenAI API, for the real `openai` client. Use as a context manager.

    Scripts are per route (`"chat"`, `"generate"`, `"edit"`): queue `Reply`, `Fault` or `PIL.Image`
    entries with `queue(route, *entries)`. When a route's queue is empty, chat falls back to
    `chat_responder` and images to `draw_image(prompt)`. With `ignores_response_format`, chat behaves
    like a server without structured output (`transformers serve`): the model never sees a
    `response_format`, so it answers in prose, and only a request that writes the schema into its
    prompt gets its JSON back, in a fenced block amid prose. Every request is recorded in `requests`
    (JSON body, or multipart fields and files for edits). With `schema_path` (the OpenAPI subset), each
    body is validated against the official request schema; invalid ones get a 400 and their errors
    are recorded.

    Example::

        with FakeOpenAIServer() as server:
            client = openai.OpenAI(api_key="test", base_url=server.base_url)
    """

    ROUTES: ClassVar[dict[str, str]] = {
        "/v1/chat/completions": "chat",
        "/v1/images/generations": "generate",
        "/v1/images/edits": "edit",
    }
    SCHEMAS: ClassVar[dict[str, str]] = {
        "chat": "CreateChatCompletionRequest",
        "generate": "CreateImageRequest",
        "edit": "CreateImageEditRequest",
    }

    def __init__(
        self,
        chat_responder: ChatResponder | None = None,
        *,
        schema_path: str | Path | None = None,
        ignores_response_format: bool = False,
    ):
        self.chat_responder = chat_responder or scripted_chat(ScriptedReasoner())
        self.ignores_response_format = ignores_response_format
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque] = {route: deque() for route in self.ROUTES.values()}
        self._lock = threading.Lock()
        self._validators = _load_validators(schema_path, self.SCHEMAS) if schema_path else {}
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        # A short poll: closing waits for the loop to notice, twice a second by default.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def queue(
        self, route: str, *entries: Reply | Fault | HtmlPage | RawImage | EchoAuthorization | Image.Image
    ) -> None:
        if route not in self._scripts:
            raise ValueError(f"route must be one of {sorted(self._scripts)}, got {route!r}")
        with self._lock:
            self._scripts[route].extend(entries)

    def requests_to(self, route: str) -> list[RecordedRequest]:
        path = {v: k for k, v in self.ROUTES.items()}[route]
        return [r for r in self.requests if r.path == path]

    # -- serving

    def _next(self, route: str):
        with self._lock:
            return self._scripts[route].popleft() if self._scripts[route] else None

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                route = server.ROUTES.get(self.path.split("?")[0])
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if route is None:
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                headers = {k.lower(): v for k, v in self.headers.items()}
                if route == "edit":
                    body, files = _parse_multipart(headers.get("content-type", ""), raw)
                else:
                    body, files = json.loads(raw or b"{}"), []
                record = RecordedRequest(self.path, headers, body, files)
                with server._lock:
                    server.requests.append(record)
                validator = server._validators.get(route)
                if validator is not None:
                    record.schema_errors = [e.message for e in validator.iter_errors(_schema_view(body, files))]
                    if record.schema_errors:
                        return self._send(400, {"error": {"message": "; ".join(record.schema_errors)}})
                entry = server._next(route)
                if isinstance(entry, HtmlPage):
                    return self._send_bytes(200, entry.body.encode(), "text/html")
                if isinstance(entry, RawImage):
                    b64 = entry.b64 if entry.b64 is not None else base64.b64encode(entry.payload).decode()
                    return self._send(200, {"created": int(time.time()), "data": [{"b64_json": b64}]})
                if isinstance(entry, EchoAuthorization):
                    echo = headers.get("authorization", "")
                    payload = {"error": {"message": f"invalid credentials: {echo}", "type": "auth_error"}}
                    return self._send(entry.status, payload, {"X-Echo-Authorization": echo})
                if isinstance(entry, Fault):
                    time.sleep(entry.delay)
                    if entry.status and entry.text is not None:
                        return self._send_bytes(entry.status, entry.text.encode(), "text/plain")
                    if entry.status:
                        return self._send(entry.status, entry.body or {})
                    entry = None
                if route == "chat":
                    reply = entry if isinstance(entry, Reply) else server.chat_responder(body)
                    if server.ignores_response_format:
                        reply = _in_prose(body, reply)
                    return self._send(200, _chat_completion(body, reply))
                image = entry if isinstance(entry, Image.Image) else _draw_for(body)
                return self._send(200, _image_response(image, len(raw)))

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None):
                self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None):
                try:
                    self.send_response(status)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        return Handler


def _load_validators(schema_path: str | Path, names: dict[str, str]) -> dict:
    import jsonschema
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    spec = json.loads(Path(schema_path).read_text())
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(spec))
    return {
        route: jsonschema.Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry)
        for route, name in names.items()
    }


def _schema_view(body: dict, files: list[tuple[str, bytes]]) -> dict:
    """The request as the schema sees it: multipart numbers as numbers, files as binary strings."""
    if not files:
        return body
    view = {k: int(v) if k == "n" and v.isdigit() else v for k, v in body.items()}
    images = [name for name, _ in files if name.startswith("image")]
    view["image"] = ["<binary>"] * len(images) if len(images) > 1 or any("[]" in n for n in images) else "<binary>"
    return view


def _parse_multipart(content_type: str, raw: bytes) -> tuple[dict, list[tuple[str, bytes]]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    fields, files = {}, []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files.append((name, payload))
        else:
            fields[name] = payload.decode("utf-8")
    return fields, files


def _chat_completion(body: dict, reply: Reply) -> dict:
    prompt_chars = len(json.dumps(body.get("messages", [])))
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": reply.refusal},
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": len(reply.content or reply.refusal or "") // 4,
            "total_tokens": prompt_chars // 4 + len(reply.content or "") // 4,
        },
    }


def _in_prose(body: dict, reply: Reply) -> Reply:
    """`reply` as a chat model answers when no server enforces the schema: prose only when the schema went in
    `response_format` (the model never saw it), the JSON in a fenced block amid prose when the prompt held it."""
    if body.get("response_format"):
        return Reply(content="I picture a calm scene at first; then the objects move as physics dictates.")
    if reply.content is None or not requested_schema(body):  # refusals and plain-text answers stay as they are
        return reply
    return Reply(content=f"Sure! Here is the answer:\n\n```json\n{reply.content}\n```\n\nAsk if you need more.")


def _draw_for(body: dict) -> Image.Image:
    width, height = (int(v) for v in str(body.get("size", "1536x1024")).replace("auto", "1024x1024").split("x"))
    return draw_image(str(body.get("prompt", "")), width // 8, height // 8)


def _image_response(image: Image.Image, request_bytes: int) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(buffer.getvalue()).decode("ascii")}],
        "usage": {
            "input_tokens": request_bytes // 64,
            "output_tokens": 1056,
            "total_tokens": request_bytes // 64 + 1056,
            "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
        },
    }
