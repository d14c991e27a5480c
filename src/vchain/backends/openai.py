"""OpenAI backends: `OpenAIChatModel` (chat + vision, structured output), `OpenAIImageBackend`, and the
presets on the chat model, `OpenAIReasoner` and `OpenAIJudge`.

All work with any OpenAI-compatible server: pass `base_url=` (or set `OPENAI_BASE_URL`), or inject a
ready `openai.OpenAI` client. Transient failures (429, 5xx, timeouts, dropped connections) are retried
up to the client's `max_retries` with its backoff, honouring `Retry-After`; vchain sends each attempt
itself so that every one is counted in the run's manifest, as the server would bill it. Malformed
answers (invalid JSON, a truncated answer, a body that is not an API response, an image that does not
decode) raise `MalformedResponseError`, which the reasoning loop asks again. A failed request's error
holds the server's own explanation (its error body: OpenAI's, FastAPI's `detail`, Ollama's `error`, or
plain text).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from PIL import Image
from pydantic import BaseModel, ValidationError

from vchain import prompts
from vchain._redact import (
    protect_logs,
    redact,
    register_secret,
    register_url_secrets,
    scrub_exception,
    server_identity,
)
from vchain.accounting import report_request
from vchain.backends._http import BoundedTransport, ResponseLimitError
from vchain.config import describe_errors
from vchain.errors import BackendError, ConfigurationError, MalformedResponseError, RefusalError
from vchain.images import UnreadableImageError, read_image
from vchain.interfaces import ChatModel, ImageBackend
from vchain.judging import ChatJudge
from vchain.reasoning import ChatReasoner

logger = logging.getLogger(__name__)
T = TypeVar("T")
STRUCTURED_OUTPUT = ("auto", "json_schema", "prompt")
# Request keys vchain sets itself, which `extra_body` may not replace.
_OWN_KEYS = ("model", "messages", "response_format", "temperature", "max_tokens")
GPT_IMAGE_SIZES = {"1024x1024": 1.0, "1536x1024": 1.5, "1024x1536": 2 / 3}
# gpt-image-1 takes at most 16 input images per edit.
GPT_IMAGE_MAX_REFERENCES = 16
_RETRY_STATUS = (408, 409, 429)


def make_client(
    api_key: str | None = None,
    base_url: str | None = None,
    *,
    timeout: float = 120.0,
    max_retries: int = 2,
    argument: str = "base_url",
):
    """An `openai.OpenAI` client from arguments or `OPENAI_API_KEY` / `OPENAI_BASE_URL`.

    Raises `ConfigurationError` naming `OPENAI_API_KEY` when no key can be found, or naming `argument`
    when the URL is not an http(s) URL. A server reached through a base URL (vLLM, Ollama, a local
    stand-in) may need no key; one is then not required.
    """
    import openai

    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    if base_url is not None and not _is_http_url(base_url):
        raise ConfigurationError(f"{argument} must be an http:// or https:// URL with a host, got {base_url!r}")
    if not api_key:
        if base_url is None:
            raise ConfigurationError(
                "no OpenAI API key: set the OPENAI_API_KEY environment variable, pass api_key=..., "
                "or pass base_url=... for an OpenAI-compatible server that needs none"
            )
        api_key = "not-needed"
    if not _is_number(timeout) or not timeout > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or not 0 <= max_retries <= 20:
        raise ConfigurationError(f"max_retries must be an integer from 0 to 20, got {max_retries!r}")
    register_secret(api_key)
    register_url_secrets(base_url)
    protect_logs()

    # `timeout` bounds each attempt in total, not each read; answers are read bounded in size.
    http_client = openai.DefaultHttpxClient(transport=BoundedTransport(timeout))
    return openai.OpenAI(
        api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries, http_client=http_client
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def image_to_data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png_bytes(image)).decode("ascii")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class _OpenAIBackend:
    """The client plumbing both backends share: one client, attempts sent and counted one by one."""

    model: str

    def _connect(self, client, api_key, base_url, timeout, max_retries) -> None:
        if client is not None and (api_key is not None or base_url is not None):
            raise ConfigurationError("pass either client= or api_key=/base_url=, not both")
        client = client or make_client(api_key, base_url, timeout=timeout, max_retries=max_retries)
        self.base_url = str(client.base_url)
        self.max_retries = int(client.max_retries)
        # One attempt per call: the retry loop is ours, so that each attempt is counted.
        self.client = client.with_options(max_retries=0)

    def _send(self, send: Callable[[], T], *, images_in: int = 0) -> tuple[T, float]:
        """`send()` with retries of transient failures; each failed attempt is reported as it happens."""
        import openai

        for attempt in range(self.max_retries + 1):
            start = time.perf_counter()
            try:
                return send(), time.perf_counter() - start
            except (openai.APIStatusError, openai.APIConnectionError, ResponseLimitError) as e:
                seconds = time.perf_counter() - start
                status = getattr(e, "status_code", None)
                if isinstance(e.__cause__, ResponseLimitError):
                    e = e.__cause__
                # An answer over a limit is not retried: the same request would bring it again.
                retryable = not isinstance(e, ResponseLimitError) and (
                    status is None or status in _RETRY_STATUS or status >= 500
                )
                report_request(
                    model=self.model,
                    outcome="failed",
                    seconds=seconds,
                    images_in=images_in,
                    error=f"{type(e).__name__}: {e}",
                )
                if not retryable or attempt == self.max_retries:
                    scrub_exception(e)  # it stays chained to vchain's error: its traceback must hold no key
                    if isinstance(e, openai.APIStatusError):
                        what = f"HTTP {status} from {self.base_url}: {server_message(e.response)}"
                    else:
                        what = f"at {self.base_url}: {e}"
                    message = f"{self.model} request failed after {attempt + 1} attempt(s): {type(e).__name__} {what}"
                    raise BackendError(redact(message)) from e
                time.sleep(_retry_delay(attempt, getattr(e, "response", None)))
        raise AssertionError("unreachable")

    def describe(self) -> dict[str, Any]:
        # The server decides the answers as much as the model name does (another host, another model).
        return {
            "class": type(self).__name__,
            "model": self.model,
            "server": server_identity(self.base_url),
            **self._settings(),
        }

    def _settings(self) -> dict[str, Any]:
        return {}


def server_message(response) -> str:
    """What a server said in an error response: the message of OpenAI's `{"error": {"message": ...}}`,
    FastAPI's `{"detail": ...}` (its validation list too), Ollama's `{"error": ...}`, or the plain text."""
    text = (getattr(response, "text", "") or "").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500] or "(an empty body)"
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("detail") or json.dumps(value)
            if isinstance(value, list):  # FastAPI's validation errors: [{"loc": [...], "msg": ...}, ...]
                value = "; ".join(
                    f"{'.'.join(map(str, item.get('loc', [])))}: {item.get('msg')}"
                    if isinstance(item, dict)
                    else str(item)
                    for item in value
                )
            if value:
                return str(value)[:500]
    return text[:500]


def _retry_delay(attempt: int, response) -> float:
    """The openai client's schedule: `Retry-After` when it is short, else 0.5 s doubling to 8 s, jittered."""
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name, "")) * scale
        except ValueError:
            continue
        if 0 < seconds <= 60:
            return seconds
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


class OpenAIChatModel(_OpenAIBackend, ChatModel):
    """A vision chat model behind the chat-completions API (default `gpt-4o`), answering in structure.

    Args:
        model: chat model name.
        client: a ready `openai.OpenAI` client (its `max_retries` and timeout are kept); not with
            `api_key`/`base_url`.
        api_key, base_url: default to `OPENAI_API_KEY` / `OPENAI_BASE_URL`.
        temperature: sampling temperature, or None for the server's default.
        image_detail: `"auto"`, `"low"` or `"high"` for the images sent.
        structured_output: how an answer is held to its schema. `"json_schema"` sends the schema as
            `response_format` (OpenAI, vLLM and SGLang decode under it). `"prompt"` writes the schema into
            the system message and reads the JSON out of the answer's text (any server). `"auto"` sends
            `response_format` and, the first time an answer holds no JSON (a server that ignores it),
            asks that call again in prompt mode and stays in prompt mode for the rest of the run.
        max_tokens: the most tokens one answer may take (sent as `max_tokens`); None: the server's limit.
        extra_body: more keys for every chat request, as the server documents them (e.g. `{"top_k": 20}`,
            vLLM's `{"chat_template_kwargs": {"enable_thinking": False}}`).
        timeout, max_retries: per-attempt timeout in seconds and retries of transient errors, for the
            client vchain makes.
    """

    def __init__(
        self,
        model: str = "gpt-4o",
        *,
        client=None,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        image_detail: str = "auto",
        structured_output: str = "auto",
        max_tokens: int | None = None,
        extra_body: dict[str, Any] | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
        if image_detail not in ("auto", "low", "high"):
            raise ConfigurationError(f"image_detail must be 'auto', 'low' or 'high', got {image_detail!r}")
        if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
            raise ConfigurationError(f"temperature must be None or in [0, 2], got {temperature!r}")
        if structured_output not in STRUCTURED_OUTPUT:
            raise ConfigurationError(
                f"structured_output must be one of {list(STRUCTURED_OUTPUT)}, got {structured_output!r}"
            )
        if max_tokens is not None and not (_is_number(max_tokens) and isinstance(max_tokens, int) and max_tokens > 0):
            raise ConfigurationError(f"max_tokens must be None or a positive integer, got {max_tokens!r}")
        self.model = model
        self.temperature = temperature
        self.image_detail = image_detail
        self.structured_output = structured_output
        self.max_tokens = max_tokens
        self.extra_body = check_extra_body(extra_body)
        # Where `auto` stands: it turns to "prompt" for good once the server has shown it ignores the schema.
        self._mode = "prompt" if structured_output == "prompt" else "json_schema"
        self._connect(client, api_key, base_url, timeout, max_retries)

    def _settings(self) -> dict[str, Any]:
        # Settings at their defaults are left out, so that run folders made before they existed still match.
        optional = {
            "structured_output": self.structured_output != "auto",
            "max_tokens": self.max_tokens is not None,
            "extra_body": bool(self.extra_body),
        }
        return {
            "temperature": self.temperature,
            "image_detail": self.image_detail,
            **{name: getattr(self, name) for name, given in optional.items() if given},
        }

    def complete(self, messages: list[dict], schema: type[T]) -> T:
        images_in = sum(
            p.get("type") == "image" for m in messages if isinstance(m["content"], list) for p in m["content"]
        )
        if schema is str:
            text, report = self._ask(messages, images_in)
            if not text.strip():
                report(outcome="malformed", error="empty answer")
                raise MalformedResponseError(f"{self.model} returned an empty answer")
            report()
            return text.strip()
        if self._mode == "json_schema":
            answer = self._structured(messages, schema, images_in, json_schema=True)
            if answer is not _NO_JSON:
                return answer
            if self.structured_output == "json_schema":  # asking the same again would get the same prose
                raise BackendError(
                    f"{self.base_url} returned no JSON for a structured request ({schema.__name__}): the server "
                    "seems to ignore response_format; use structured_output='prompt' (--structured-output "
                    "prompt) or 'auto'"
                )
            logger.warning(
                "%s at %s answered a structured request with no JSON, so it ignores response_format: asking "
                "with the schema in the prompt from now on (structured_output='prompt' starts there)",
                self.model,
                self.base_url,
            )
            self._mode = "prompt"
        answer = self._structured(prompts.schema_messages(messages, schema), schema, images_in, json_schema=False)
        if answer is _NO_JSON:
            tried = "with the schema in the prompt" if self.structured_output == "prompt" else "in either mode"
            raise BackendError(
                f"{self.base_url} returned no JSON for a structured request ({schema.__name__}) {tried}; use a "
                "model that follows JSON instructions, or a server that honours response_format (vLLM, SGLang) "
                "with structured_output='json_schema'"
            )
        return answer

    def _structured(self, messages: list[dict], schema: type[BaseModel], images_in: int, *, json_schema: bool):
        """One structured request: the validated answer, or `_NO_JSON` for an answer with no JSON in it."""
        from openai.lib._parsing._completions import type_to_response_format_param

        options = {"response_format": type_to_response_format_param(schema)} if json_schema else {}
        text, report = self._ask(messages, images_in, **options)
        value = prompts.read_json(text)
        if value is None and text.strip() and not text.lstrip().startswith(("{", "[")):  # prose, not broken JSON
            report(outcome="malformed", error="no JSON in the answer")
            return _NO_JSON
        try:
            answer = schema.model_validate_json(json.dumps(value)) if value is not None else None
        except ValidationError as e:
            report(outcome="malformed", error="ValidationError")
            # Fields missing under json_schema: the server may have ignored the schema (the model wrote JSON of
            # its own shape), which only prompt mode can fix.
            hint = ""
            if json_schema and any(error["type"] == "missing" for error in e.errors()):
                hint = " (a server that ignores response_format needs structured_output='prompt')"
            raise MalformedResponseError(
                f"{self.model} did not return a valid {schema.__name__}: {describe_errors(e)}{hint}"
            ) from e
        if answer is None:
            report(outcome="malformed", error="invalid JSON")
            raise MalformedResponseError(f"{self.model} did not return a valid {schema.__name__}: {text[:120]!r}")
        report()
        return answer

    def _ask(self, messages: list[dict], images_in: int, **options) -> tuple[str, Callable[..., None]]:
        """One chat request: the answer's text, and the function that reports the attempt with its outcome.

        A reply that is not a chat completion, a cut-off answer and a refusal are reported and raised here.
        """
        body = self._messages(messages)
        sampling = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        options.update({k: v for k, v in sampling.items() if v is not None})
        if self.extra_body:
            options["extra_body"] = self.extra_body
        completion, seconds = self._send(
            lambda: self.client.chat.completions.create(model=self.model, messages=body, **options),
            images_in=images_in,
        )
        report = functools.partial(
            report_request,
            model=self.model,
            seconds=seconds,
            images_in=images_in,
            **_tokens(getattr(completion, "usage", None)),
        )
        choices = getattr(completion, "choices", None)
        if not choices:
            report(outcome="malformed", error="not a chat completion")
            raise MalformedResponseError(
                f"{self.base_url} answered {self.model} with something that is not a chat completion: "
                f"{str(completion)[:120]!r}"
            )
        choice = choices[0]
        if choice.message.refusal or choice.finish_reason == "content_filter":
            reason = choice.message.refusal or "its content filter stopped the answer"
            report(outcome="refused", error=reason[:200])
            raise RefusalError(f"{self.model} refused: {reason}")
        if choice.finish_reason == "length":
            report(outcome="malformed", error="cut off")
            limit = f"max_tokens={self.max_tokens}" if self.max_tokens else "the server's token limit"
            raise MalformedResponseError(f"{self.model}'s answer was cut off at {limit}")
        return choice.message.content or "", report

    def _messages(self, messages: list[dict]) -> list[dict]:
        """vchain's neutral messages in the chat-completions layout (images as data URLs)."""
        converted = []
        for message in messages:
            content = message["content"]
            if isinstance(content, list):
                if len(content) == 1 and content[0]["type"] == "text":
                    content = content[0]["text"]
                else:
                    content = [
                        {
                            "type": "image_url",
                            "image_url": {"url": image_to_data_url(p["image"]), "detail": self.image_detail},
                        }
                        if p["type"] == "image"
                        else p
                        for p in content
                    ]
            converted.append({**message, "content": content})
        return converted


# An answer that holds no JSON at all: the server did not apply the schema.
_NO_JSON = object()


def check_extra_body(extra_body: object) -> dict[str, Any]:
    """`extra_body` as a JSON-ready dict of keys vchain does not set itself, or a `ConfigurationError`."""
    if extra_body is None:
        return {}
    if not isinstance(extra_body, dict) or not all(isinstance(key, str) for key in extra_body):
        raise ConfigurationError(f"extra_body must be a dict with string keys, got {extra_body!r:.200}")
    try:
        json.dumps(extra_body, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(f"extra_body must hold JSON values only ({e}), got {extra_body!r:.200}") from e
    own = sorted(set(extra_body) & set(_OWN_KEYS))
    if own:
        raise ConfigurationError(
            f"extra_body must not set {', '.join(map(repr, own))}: vchain sets it (model, messages and "
            "response_format are the request itself; temperature and max_tokens have options of their own)"
        )
    return dict(extra_body)


class OpenAIReasoner(OpenAIChatModel, ChatReasoner):
    """`ChatReasoner` on an `OpenAIChatModel`: the reasoner for OpenAI and any OpenAI-compatible server.

    Takes the arguments of `OpenAIChatModel` (default model `gpt-4o`, the server's temperature).
    """

    def __init__(self, model: str = "gpt-4o", **options: Any):
        ChatReasoner.__init__(self, self)
        OpenAIChatModel.__init__(self, model, **options)


def _tokens(usage) -> dict[str, int]:
    return {
        "input_tokens": getattr(usage, "prompt_tokens", None) or getattr(usage, "input_tokens", None) or 0,
        "output_tokens": getattr(usage, "completion_tokens", None) or getattr(usage, "output_tokens", None) or 0,
    }


class OpenAIImageBackend(_OpenAIBackend, ImageBackend):
    """An OpenAI image model (default `gpt-image-1`) for `images.generate` and `images.edit`.

    Args:
        model: image model name.
        size: a fixed request size such as `"1536x1024"`; by default the supported size nearest the
            video frame's aspect ratio is chosen per call.
        quality: `"low"`, `"medium"`, `"high"` or `"auto"`.
        client, api_key, base_url, timeout, max_retries: as for `OpenAIReasoner`.
    """

    max_references = GPT_IMAGE_MAX_REFERENCES

    def __init__(
        self,
        model: str = "gpt-image-1",
        *,
        size: str | None = None,
        quality: str = "high",
        client=None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 2,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
        if quality not in ("low", "medium", "high", "auto"):
            raise ConfigurationError(f"quality must be 'low', 'medium', 'high' or 'auto', got {quality!r}")
        if size is not None and size not in GPT_IMAGE_SIZES:
            raise ConfigurationError(f"size must be None or one of {list(GPT_IMAGE_SIZES)}, got {size!r}")
        self.model = model
        self.size = size
        self.quality = quality
        self._connect(client, api_key, base_url, timeout, max_retries)

    def _settings(self) -> dict[str, Any]:
        return {"size": self.size, "quality": self.quality}

    def request_size(self, width: int, height: int) -> str:
        """The size to request for a width x height frame: fixed, or the nearest supported aspect."""
        if self.size:
            return self.size
        aspect = width / height
        return min(GPT_IMAGE_SIZES, key=lambda size: abs(GPT_IMAGE_SIZES[size] - aspect))

    def generate(self, prompt: str, *, width: int, height: int) -> Image.Image:
        size = self.request_size(width, height)
        return self._image(
            lambda: self.client.images.generate(model=self.model, prompt=prompt, size=size, quality=self.quality, n=1)
        )

    def edit(self, images: Sequence[Image.Image], prompt: str, *, width: int, height: int) -> Image.Image:
        if not images:
            raise ConfigurationError("images must hold at least one reference image to edit, got none")
        files = [(f"keyframe_{i}.png", _png_bytes(image), "image/png") for i, image in enumerate(images)]
        size = self.request_size(width, height)
        return self._image(
            lambda: self.client.images.edit(
                model=self.model, image=files, prompt=prompt, size=size, quality=self.quality, n=1
            ),
            images_in=len(files),
        )

    def _image(self, send, images_in: int = 0) -> Image.Image:
        response, seconds = self._send(send, images_in=images_in)
        data = getattr(response, "data", None)
        usage = getattr(response, "usage", None)
        if not isinstance(data, list) or not data or not getattr(data[0], "b64_json", None):
            report_request(
                model=self.model,
                outcome="malformed",
                seconds=seconds,
                images_in=images_in,
                error="no image data",
                **_tokens(usage),
            )
            raise MalformedResponseError(
                f"{self.base_url} answered {self.model} without base64 image data: {str(response)[:120]!r}"
            )
        try:
            image = read_image(base64.b64decode(data[0].b64_json))
        except (UnreadableImageError, ValueError) as e:
            report_request(
                model=self.model,
                outcome="malformed",
                seconds=seconds,
                images_in=images_in,
                images_out=len(data),
                error=str(e),
                **_tokens(usage),
            )
            raise MalformedResponseError(f"{self.model} returned image data that does not decode: {e}") from e
        report_request(model=self.model, seconds=seconds, images_in=images_in, images_out=len(data), **_tokens(usage))
        return image


class OpenAIJudge(OpenAIChatModel, ChatJudge):
    """`ChatJudge` on an `OpenAIChatModel` (default `gpt-4o`): scores videos in the `VideoScores` structure.

    Args:
        model: chat model name.
        grid: send the frames tiled into one image (`vchain.judging.GRID_MAX_PIXELS`) instead of one
            image each: a fixed image bill per video, at a lower resolution per frame.
        temperature: sampling temperature; 0 by default so a judge repeats its scores as far as the
            server allows (None for models that take no temperature).
        **options: the other arguments of `OpenAIChatModel` (client, base_url, structured_output, ...).
    """

    def __init__(self, model: str = "gpt-4o", *, grid: bool = False, temperature: float | None = 0.0, **options: Any):
        ChatJudge.__init__(self, self, grid=grid)
        OpenAIChatModel.__init__(self, model, temperature=temperature, **options)

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "grid": self.grid}
