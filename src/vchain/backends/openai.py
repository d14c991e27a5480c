"""OpenAI backends: `OpenAIReasoner` (chat + vision, structured output) and `OpenAIImageBackend`.

Both work with any OpenAI-compatible server: pass `base_url=` (or set `OPENAI_BASE_URL`), or inject a
ready `openai.OpenAI` client. Transient failures (429, 5xx, timeouts) are retried by the client
(`max_retries`); malformed answers raise `MalformedResponseError`, which the reasoning loop re-asks.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence

from PIL import Image
from pydantic import BaseModel, ValidationError

from vchain import prompts
from vchain.accounting import report_usage
from vchain.chain import NextKeyframe, ScenePlan, ThoughtChain
from vchain.errors import BackendError, ConfigurationError, MalformedResponseError, RefusalError
from vchain.interfaces import ImageBackend, Reasoner

GPT_IMAGE_SIZES = {"1024x1024": 1.0, "1536x1024": 1.5, "1024x1536": 2 / 3}


def make_client(
    api_key: str | None = None, base_url: str | None = None, *, timeout: float = 120.0, max_retries: int = 2
):
    """An `openai.OpenAI` client from arguments or `OPENAI_API_KEY` / `OPENAI_BASE_URL`.

    Raises `ConfigurationError` naming `OPENAI_API_KEY` when no key can be found. A server reached
    through a base URL (vLLM, Ollama, a local stand-in) may need no key; one is then not required.
    """
    try:
        import openai
    except ImportError as e:  # pragma: no cover - openai is a core dependency
        raise ConfigurationError("the OpenAI backends need the openai package: pip install openai") from e
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    if not api_key:
        if base_url is None:
            raise ConfigurationError(
                "no OpenAI API key: set the OPENAI_API_KEY environment variable, pass api_key=..., "
                "or pass base_url=... for an OpenAI-compatible server that needs none"
            )
        api_key = "not-needed"
    return openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)


def image_to_data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png_bytes(image)).decode("ascii")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class OpenAIReasoner(Reasoner):
    """A chat model with vision (default `gpt-4o`) answering in JSON-schema structured output.

    Args:
        model: chat model name.
        client: a ready `openai.OpenAI` client; when given, the key and URL arguments are ignored.
        api_key, base_url: default to `OPENAI_API_KEY` / `OPENAI_BASE_URL`.
        temperature: sampling temperature, or None for the server's default.
        image_detail: `"auto"`, `"low"` or `"high"` for the composite image.
        timeout, max_retries: the client's per-request timeout and transient-error retries.
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
        if image_detail not in ("auto", "low", "high"):
            raise ConfigurationError(f"image_detail must be 'auto', 'low' or 'high', got {image_detail!r}")
        self.model = model
        self.temperature = temperature
        self.image_detail = image_detail
        self.client = client or make_client(api_key, base_url, timeout=timeout, max_retries=max_retries)

    def plan(self, prompt: str) -> ScenePlan:
        messages = [
            {"role": "system", "content": prompts.PLAN_SYSTEM},
            {"role": "user", "content": f"Video prompt: {prompt}"},
        ]
        return self._parse(messages, ScenePlan)

    def next_keyframe(self, chain: ThoughtChain, composite: Image.Image) -> NextKeyframe:
        text = prompts.NEXT_KEYFRAME_USER.format(
            prompt=chain.input_prompt,
            consequences=chain.consequences,
            captions=prompts.format_captions(chain.captions),
            count=len(chain.images),
            next_index=len(chain.images),
        )
        messages = [
            {"role": "system", "content": prompts.NEXT_KEYFRAME_SYSTEM},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {
                        "type": "image_url",
                        "image_url": {"url": image_to_data_url(composite), "detail": self.image_detail},
                    },
                ],
            },
        ]
        return self._parse(messages, NextKeyframe, images_in=1)

    def augment_prompt(self, prompt: str) -> str:
        messages = [
            {"role": "system", "content": prompts.AUGMENT_SYSTEM},
            {"role": "user", "content": prompt},
        ]
        completion = self._request(
            lambda: self.client.chat.completions.create(
                model=self.model, messages=messages, **self._sampling()
            )
        )
        self._report(completion)
        choice = completion.choices[0]
        if choice.message.refusal:
            raise RefusalError(f"{self.model} refused to rewrite the prompt: {choice.message.refusal}")
        text = (choice.message.content or "").strip()
        if not text:
            raise MalformedResponseError(f"{self.model} returned an empty rewrite")
        return text

    def _sampling(self) -> dict:
        return {} if self.temperature is None else {"temperature": self.temperature}

    def _parse(self, messages: list, schema: type[BaseModel], images_in: int = 0):
        import openai

        try:
            completion = self._request(
                lambda: self.client.chat.completions.parse(
                    model=self.model, messages=messages, response_format=schema, **self._sampling()
                )
            )
        except openai.ContentFilterFinishReasonError as e:
            raise RefusalError(f"{self.model}'s content filter stopped the answer") from e
        except (ValidationError, openai.LengthFinishReasonError, ValueError) as e:
            report_usage(model=self.model, images_in=images_in)
            raise MalformedResponseError(f"{self.model} did not return a valid {schema.__name__}: {e}") from e
        self._report(completion, images_in=images_in)
        message = completion.choices[0].message
        if message.refusal:
            raise RefusalError(f"{self.model} refused: {message.refusal}")
        if message.parsed is None:
            raise MalformedResponseError(f"{self.model} returned no {schema.__name__}")
        return message.parsed

    def _request(self, send):
        import openai

        try:
            return send()
        except openai.APIError as e:
            raise BackendError(f"{self.model} request failed after retries: {type(e).__name__}: {e}") from e

    def _report(self, completion, images_in: int = 0) -> None:
        usage = completion.usage
        report_usage(
            model=self.model,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            images_in=images_in,
        )


class OpenAIImageBackend(ImageBackend):
    """An OpenAI image model (default `gpt-image-1`) for `images.generate` and `images.edit`.

    Args:
        model: image model name.
        size: a fixed request size such as `"1536x1024"`; by default the supported size nearest the
            video frame's aspect ratio is chosen per call.
        quality: `"low"`, `"medium"`, `"high"` or `"auto"`.
        client, api_key, base_url, timeout, max_retries: as for `OpenAIReasoner`.
    """

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
        if quality not in ("low", "medium", "high", "auto"):
            raise ConfigurationError(f"quality must be 'low', 'medium', 'high' or 'auto', got {quality!r}")
        self.model = model
        self.size = size
        self.quality = quality
        self.client = client or make_client(api_key, base_url, timeout=timeout, max_retries=max_retries)

    def request_size(self, width: int, height: int) -> str:
        """The size to request for a width x height frame: fixed, or the nearest supported aspect."""
        if self.size:
            return self.size
        aspect = width / height
        return min(GPT_IMAGE_SIZES, key=lambda size: abs(GPT_IMAGE_SIZES[size] - aspect))

    def generate(self, prompt: str, *, width: int, height: int) -> Image.Image:
        return self._image(
            lambda: self.client.images.generate(
                model=self.model,
                prompt=prompt,
                size=self.request_size(width, height),
                quality=self.quality,
                n=1,
            )
        )

    def edit(self, images: Sequence[Image.Image], prompt: str, *, width: int, height: int) -> Image.Image:
        if not images:
            raise ConfigurationError("images must hold at least one reference image to edit, got none")
        files = [(f"keyframe_{i}.png", _png_bytes(image), "image/png") for i, image in enumerate(images)]
        return self._image(
            lambda: self.client.images.edit(
                model=self.model,
                image=files,
                prompt=prompt,
                size=self.request_size(width, height),
                quality=self.quality,
                n=1,
            ),
            images_in=len(files),
        )

    def _image(self, send, images_in: int = 0) -> Image.Image:
        import openai

        try:
            response = send()
        except openai.APIError as e:
            raise BackendError(f"{self.model} request failed after retries: {type(e).__name__}: {e}") from e
        usage = getattr(response, "usage", None)
        report_usage(
            model=self.model,
            input_tokens=getattr(usage, "input_tokens", 0) or 0,
            output_tokens=getattr(usage, "output_tokens", 0) or 0,
            images_in=images_in,
            images_out=len(response.data or []),
        )
        if not response.data or not response.data[0].b64_json:
            raise MalformedResponseError(f"{self.model} returned no base64 image data")
        try:
            with Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json))) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as e:
            raise MalformedResponseError(f"{self.model} returned image data that does not decode: {e}") from e
