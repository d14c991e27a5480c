"""OpenAI backends: `OpenAIReasoner` (chat + vision, structured output), `OpenAIImageBackend`, and
`OpenAIJudge` (the reasoner's structured call, scoring videos).

All work with any OpenAI-compatible server: pass `base_url=` (or set `OPENAI_BASE_URL`), or inject a
ready `openai.OpenAI` client. Transient failures (429, 5xx, timeouts, dropped connections) are retried
up to the client's `max_retries` with its backoff, honouring `Retry-After`; vchain sends each attempt
itself so that every one is counted in the run's manifest, as the server would bill it. Malformed
answers (invalid JSON, a truncated answer, a body that is not an API response, an image that does not
decode) raise `MalformedResponseError`, which the reasoning loop asks again.
"""

from __future__ import annotations

import base64
import io
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
from vchain.chain import KeyframeVerdict, NextKeyframe, ScenePlan, ThoughtChain
from vchain.config import describe_errors
from vchain.errors import BackendError, ConfigurationError, MalformedResponseError, RefusalError
from vchain.images import UnreadableImageError, read_image
from vchain.interfaces import ImageBackend, Judge, Reasoner
from vchain.judging import VideoScores, judge_messages

T = TypeVar("T")
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
                report_request(model=self.model, outcome="failed", seconds=seconds, images_in=images_in,
                               error=f"{type(e).__name__}: {e}")  # fmt: skip
                if not retryable or attempt == self.max_retries:
                    scrub_exception(e)  # it stays chained to vchain's error: its traceback must hold no key
                    where = f" at {self.base_url}" if isinstance(e, openai.APIConnectionError) else ""
                    raise BackendError(
                        redact(f"{self.model} request failed{where} after {attempt + 1} attempt(s): "
                               f"{type(e).__name__}: {e}")
                    ) from e  # fmt: skip
                time.sleep(_retry_delay(attempt, getattr(e, "response", None)))
        raise AssertionError("unreachable")

    def describe(self) -> dict[str, Any]:
        # The server decides the answers as much as the model name does (another host, another model).
        return {"class": type(self).__name__, "model": self.model, "server": server_identity(self.base_url),
                **self._settings()}  # fmt: skip

    def _settings(self) -> dict[str, Any]:
        return {}


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


class _OpenAIChat(_OpenAIBackend):
    """A vision chat model answering in structured output: the plumbing the reasoner and the judge share."""

    def __init__(
        self,
        model: str,
        *,
        client,
        api_key: str | None,
        base_url: str | None,
        temperature: float | None,
        image_detail: str,
        timeout: float,
        max_retries: int,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
        if image_detail not in ("auto", "low", "high"):
            raise ConfigurationError(f"image_detail must be 'auto', 'low' or 'high', got {image_detail!r}")
        if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
            raise ConfigurationError(f"temperature must be None or in [0, 2], got {temperature!r}")
        self.model = model
        self.temperature = temperature
        self.image_detail = image_detail
        self._connect(client, api_key, base_url, timeout, max_retries)

    def _settings(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "image_detail": self.image_detail}

    def _sampling(self) -> dict:
        return {} if self.temperature is None else {"temperature": self.temperature}

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
                        {"type": "image_url", "image_url": {"url": image_to_data_url(p["image"]),
                                                            "detail": self.image_detail}}
                        if p["type"] == "image" else p
                        for p in content
                    ]  # fmt: skip
            converted.append({**message, "content": content})
        return converted

    def _parse(self, messages: list[dict], schema: type[BaseModel]):
        import openai

        images_in = sum(p.get("type") == "image" for m in messages if isinstance(m["content"], list)
                        for p in m["content"])  # fmt: skip
        body = self._messages(messages)
        try:
            completion, seconds = self._send(
                lambda: self.client.chat.completions.parse(
                    model=self.model, messages=body, response_format=schema, **self._sampling()
                ),
                images_in=images_in,
            )
        except openai.ContentFilterFinishReasonError as e:
            report_request(model=self.model, outcome="refused", images_in=images_in, error="content filter")
            raise RefusalError(f"{self.model}'s content filter stopped the answer") from e
        except (AttributeError, TypeError) as e:
            # `parse` reads the body as a chat completion; a 200 that is not one (a proxy's HTML page, other
            # JSON) fails inside it. That is a malformed answer, worth asking again.
            report_request(model=self.model, outcome="malformed", images_in=images_in, error="not a chat completion")
            raise MalformedResponseError(
                f"{self.base_url} answered {self.model} with something that is not a chat completion "
                f"({type(e).__name__}: {e})"
            ) from e
        except (ValidationError, openai.LengthFinishReasonError, ValueError) as e:
            usage = getattr(getattr(e, "completion", None), "usage", None)
            report_request(model=self.model, outcome="malformed", images_in=images_in, error=type(e).__name__,
                           **_tokens(usage))  # fmt: skip
            detail = describe_errors(e) if isinstance(e, ValidationError) else str(e)
            raise MalformedResponseError(f"{self.model} did not return a valid {schema.__name__}: {detail}") from e
        message = self._message(completion, seconds, images_in=images_in)
        if message.parsed is None:
            raise MalformedResponseError(f"{self.model} returned no {schema.__name__}")
        return message.parsed

    def _message(self, completion, seconds: float, *, images_in: int):
        """The answer's message; the attempt is reported with its usage and outcome."""
        choices = getattr(completion, "choices", None)
        if not choices:
            report_request(model=self.model, outcome="malformed", seconds=seconds, images_in=images_in,
                           error="not a chat completion")  # fmt: skip
            raise MalformedResponseError(
                f"{self.base_url} answered {self.model} with something that is not a chat completion: "
                f"{str(completion)[:120]!r}"
            )
        message = choices[0].message
        outcome = "refused" if message.refusal else "ok"
        report_request(model=self.model, outcome=outcome, seconds=seconds, images_in=images_in,
                       **_tokens(completion.usage))  # fmt: skip
        if message.refusal:
            raise RefusalError(f"{self.model} refused: {message.refusal}")
        return message


class OpenAIReasoner(_OpenAIChat, Reasoner):
    """A chat model with vision (default `gpt-4o`) answering in JSON-schema structured output.

    Args:
        model: chat model name.
        client: a ready `openai.OpenAI` client (its `max_retries` is kept); not with `api_key`/`base_url`.
        api_key, base_url: default to `OPENAI_API_KEY` / `OPENAI_BASE_URL`.
        temperature: sampling temperature, or None for the server's default.
        image_detail: `"auto"`, `"low"` or `"high"` for the images sent.
        timeout, max_retries: per-attempt timeout and transient-error retries.
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
        timeout: float = 120.0,
        max_retries: int = 2,
    ):
        super().__init__(
            model, client=client, api_key=api_key, base_url=base_url, temperature=temperature,
            image_detail=image_detail, timeout=timeout, max_retries=max_retries,
        )  # fmt: skip

    def plan(self, prompt: str) -> ScenePlan:
        return self._parse(prompts.plan_messages(prompt), ScenePlan)

    def next_keyframe(self, chain: ThoughtChain, composite: Image.Image) -> NextKeyframe:
        return self._parse(prompts.next_keyframe_messages(chain, composite), NextKeyframe)

    def verify_keyframe(self, chain: ThoughtChain, image: Image.Image, caption: str) -> KeyframeVerdict:
        return self._parse(prompts.verify_messages(chain, image, caption), KeyframeVerdict)

    def augment_prompt(self, prompt: str) -> str:
        messages = self._messages(prompts.augment_messages(prompt))
        completion, seconds = self._send(
            lambda: self.client.chat.completions.create(model=self.model, messages=messages, **self._sampling())
        )
        message = self._message(completion, seconds, images_in=0)
        text = (message.content or "").strip()
        if not text:
            raise MalformedResponseError(f"{self.model} returned an empty rewrite")
        return text


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
            report_request(model=self.model, outcome="malformed", seconds=seconds, images_in=images_in,
                           error="no image data", **_tokens(usage))  # fmt: skip
            raise MalformedResponseError(
                f"{self.base_url} answered {self.model} without base64 image data: {str(response)[:120]!r}"
            )
        try:
            image = read_image(base64.b64decode(data[0].b64_json))
        except (UnreadableImageError, ValueError) as e:
            report_request(model=self.model, outcome="malformed", seconds=seconds, images_in=images_in,
                           images_out=len(data), error=str(e), **_tokens(usage))  # fmt: skip
            raise MalformedResponseError(f"{self.model} returned image data that does not decode: {e}") from e
        report_request(model=self.model, seconds=seconds, images_in=images_in, images_out=len(data),
                       **_tokens(usage))  # fmt: skip
        return image


class OpenAIJudge(_OpenAIChat, Judge):
    """A vision chat model (default `gpt-4o`) scoring videos in the `VideoScores` structured output.

    Args:
        model: chat model name.
        grid: send the frames tiled into one image (`vchain.judging.GRID_MAX_PIXELS`) instead of one
            image each: a fixed image bill per video, at a lower resolution per frame.
        temperature: sampling temperature; 0 by default so a judge repeats its scores as far as the
            server allows (None for models that take no temperature).
        client, api_key, base_url, image_detail, timeout, max_retries: as for `OpenAIReasoner`.
    """

    def __init__(
        self,
        model: str = "gpt-4o",
        *,
        grid: bool = False,
        client=None,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = 0.0,
        image_detail: str = "auto",
        timeout: float = 120.0,
        max_retries: int = 2,
    ):
        if not isinstance(grid, bool):
            raise ConfigurationError(f"grid must be True or False, got {grid!r}")
        self.grid = grid
        super().__init__(
            model, client=client, api_key=api_key, base_url=base_url, temperature=temperature,
            image_detail=image_detail, timeout=timeout, max_retries=max_retries,
        )  # fmt: skip

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "grid": self.grid}

    def score(self, prompt: str, frames: Sequence[Image.Image]) -> VideoScores:
        return self._parse(judge_messages(prompt, frames, grid=self.grid), VideoScores)
