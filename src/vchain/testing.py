"""Test doubles shipped with vchain: run the whole pipeline offline, in your tests or in `vchain demo`.

- `ScriptedReasoner`: a `Reasoner` that answers from a script and records what it was asked.
- `DrawingImageBackend`: an `ImageBackend` that draws recognisable, deterministic images.
- `FakeOpenAIServer`: a local OpenAI-compatible HTTP server (127.0.0.1, free port) for the real `openai`
  client: chat completions with structured output and image inputs, image generations and edits,
  served from scripts, with every request recorded and faults injectable.
- `tiny_wan_pipeline()`: a tiny random diffusers `WanPipeline`, built without any download.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import functools
import hashlib
import io
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, ImageDraw

from vchain.chain import NextKeyframe, ScenePlan, ThoughtChain
from vchain.interfaces import ImageBackend, Reasoner

# ----------------------------------------------------------------------------------------------- fakes


def example_plan(prompt: str) -> ScenePlan:
    """A plausible plan for any prompt, for scripts that do not care about the words."""
    return ScenePlan(
        thoughts=f"The scene for: {prompt}. A plain studio, a fixed side camera, soft even light.",
        consequences=f"What the prompt describes happens, then the scene settles: {prompt}",
        context_frame=f"The initial, still state of the scene for: {prompt}. Nothing has happened yet.",
        concise_prompt=f"The initial state of: {prompt}",
    )


class ScriptedReasoner(Reasoner):
    """A reasoner that plays a script: a plan, then keyframe captions; the last caption is flagged last.

    Args:
        captions: keyframe captions (frames 1..N-1) to answer in order.
        plan: the plan to return; by default `example_plan(prompt)`.
        flag_last: flag the final caption as the last keyframe (set False to test the cap; the script
            then repeats its final caption).
        augmented: what `augment_prompt` returns (`"{prompt}"` is replaced by the prompt).
    """

    def __init__(
        self,
        captions: Sequence[str] = ("The event at its peak.", "The outcome, at rest."),
        *,
        plan: ScenePlan | None = None,
        flag_last: bool = True,
        augmented: str = "{prompt}, in rich physical detail.",
    ):
        if not captions:
            raise ValueError("captions must hold at least one keyframe caption, got none")
        self.captions = list(captions)
        self.fixed_plan = plan
        self.flag_last = flag_last
        self.augmented = augmented
        self.calls: list[tuple[str, Any]] = []

    def plan(self, prompt: str) -> ScenePlan:
        self.calls.append(("plan", prompt))
        return self.fixed_plan or example_plan(prompt)

    def next_keyframe(self, chain: ThoughtChain, composite: Image.Image) -> NextKeyframe:
        index = len(chain.key_frames)
        self.calls.append(("next_keyframe", index))
        caption = self.captions[min(index, len(self.captions) - 1)]
        return NextKeyframe(caption=caption, is_last=self.flag_last and index >= len(self.captions) - 1)

    def augment_prompt(self, prompt: str) -> str:
        self.calls.append(("augment_prompt", prompt))
        return self.augmented.replace("{prompt}", prompt)


def draw_image(text: str, width: int, height: int) -> Image.Image:
    """A deterministic picture of `text`: its colours and a disc's place come from the text's hash.

    Different texts give clearly different images (what a tuner test needs), equal texts equal images.
    """
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    background = tuple(40 + b % 176 for b in digest[:3])
    disc = tuple(255 - c for c in background)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    radius = max(2, min(width, height) // 4)
    cx = radius + digest[3] * max(1, width - 2 * radius) // 255
    cy = radius + digest[4] * max(1, height - 2 * radius) // 255
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=disc)
    draw.rectangle((0, height - max(2, height // 8), width * (1 + digest[5] % 4) // 4, height), fill=disc)
    return image


class DrawingImageBackend(ImageBackend):
    """An image backend that draws `draw_image(prompt)`; records each call as (kind, prompt, n_images)."""

    def __init__(self):
        self.calls: list[tuple[str, str, int]] = []

    def generate(self, prompt: str, *, width: int, height: int) -> Image.Image:
        self.calls.append(("generate", prompt, 0))
        return draw_image(prompt, width, height)

    def edit(self, images: Sequence[Image.Image], prompt: str, *, width: int, height: int) -> Image.Image:
        self.calls.append(("edit", prompt, len(images)))
        return draw_image(prompt, width, height)


# ------------------------------------------------------------------------------- OpenAI-compatible server


@dataclass
class Fault:
    """A scripted failure: an HTTP error status, a delay longer than the client's timeout, etc."""

    status: int = 500
    delay: float = 0.0
    body: dict | None = None

    @classmethod
    def http(cls, status: int) -> Fault:
        return cls(status=status, body={"error": {"message": f"injected {status}", "type": "server_error"}})

    @classmethod
    def timeout(cls, seconds: float) -> Fault:
        """Answer correctly, but only after `seconds` (set the client's timeout below it)."""
        return cls(status=0, delay=seconds)


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
    from the request, so it answers the same after a crash and a resume.
    """

    def respond(body: dict) -> Reply:
        fmt = body.get("response_format") or {}
        name = (fmt.get("json_schema") or {}).get("name", "")
        text = _user_text(body)
        if name == "ScenePlan":
            return Reply.json(reasoner.plan(text))
        if name == "NextKeyframe":
            match = re.search(r"Describe keyframe (\d+)", text)
            index = int(match.group(1)) - 1 if match else 0
            caption = reasoner.captions[min(index, len(reasoner.captions) - 1)]
            last = reasoner.flag_last and index >= len(reasoner.captions) - 1
            return Reply.json(NextKeyframe(caption=caption, is_last=last))
        return Reply(content=reasoner.augment_prompt(text))

    return respond


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
    `chat_responder` and images to `draw_image(prompt)`. Every request is recorded in `requests`
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

    def __init__(self, chat_responder: ChatResponder | None = None, *, schema_path: str | Path | None = None):
        self.chat_responder = chat_responder or scripted_chat(ScriptedReasoner())
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque] = {route: deque() for route in self.ROUTES.values()}
        self._lock = threading.Lock()
        self._validators = _load_validators(schema_path, self.SCHEMAS) if schema_path else {}
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

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

    def queue(self, route: str, *entries: Reply | Fault | Image.Image) -> None:
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
                    record.schema_errors = [
                        e.message for e in validator.iter_errors(_schema_view(body, files))
                    ]
                    if record.schema_errors:
                        return self._send(400, {"error": {"message": "; ".join(record.schema_errors)}})
                entry = server._next(route)
                if isinstance(entry, Fault):
                    time.sleep(entry.delay)
                    if entry.status:
                        return self._send(entry.status, entry.body or {})
                    entry = None
                if route == "chat":
                    reply = entry if isinstance(entry, Reply) else server.chat_responder(body)
                    return self._send(200, _chat_completion(body, reply))
                image = entry if isinstance(entry, Image.Image) else _draw_for(body)
                return self._send(200, _image_response(image, len(raw)))

            def _send(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
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
        route: jsonschema.Draft202012Validator(
            {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry
        )
        for route, name in names.items()
    }


def _schema_view(body: dict, files: list[tuple[str, bytes]]) -> dict:
    """The request as the schema sees it: multipart numbers as numbers, files as binary strings."""
    if not files:
        return body
    view = {k: int(v) if k == "n" and v.isdigit() else v for k, v in body.items()}
    images = [name for name, _ in files if name.startswith("image")]
    view["image"] = (
        ["<binary>"] * len(images) if len(images) > 1 or any("[]" in n for n in images) else "<binary>"
    )
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


def _draw_for(body: dict) -> Image.Image:
    width, height = (
        int(v) for v in str(body.get("size", "1536x1024")).replace("auto", "1024x1024").split("x")
    )
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


# ------------------------------------------------------------------------------------------ tiny Wan

_TINY_CORPUS = (
    "a the of and in on is are to with an egg rock feather duck ball water cup milk coffee paint ice "
    "falls falling dropped poured rises shatters melts breaks floats sinks table ground sky pillow "
    "red yellow blue white black green large small left right centre frame top bottom keyframe scene"
)


@functools.cache
def tiny_tokenizer():
    """A small BPE tokenizer trained in memory, with T5's conventions (pad=0, eos=1, `$A </s>`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=256,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_wan_pipeline(seed: int = 0, *, two_experts: bool = False):
    """A tiny random diffusers `WanPipeline`: real code paths, no download, CPU-fast, deterministic.

    Same architecture family as Wan2.1 (UMT5 text encoder, Wan VAE, Wan transformer, UniPC flow
    scheduler) with a few thousand parameters. `two_experts=True` adds a second transformer and a
    boundary, as in Wan2.2.
    """
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
            in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )  # fmt: skip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = UMT5EncoderModel(
            UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                       relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                       eos_token_id=1, decoder_start_token_id=0)
        )  # fmt: skip
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])  # fmt: skip
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        )
        main = transformer()
        second = transformer() if two_experts else None
    pipeline = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=main,
        transformer_2=second, boundary_ratio=0.875 if two_experts else None,
    )  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    for module in (text_encoder, vae, main, second):
        if module is not None:
            module.eval()
    return pipeline


DEMO_PROMPT = "An egg is dropped onto a pillow."
DEMO_CAPTIONS = (
    "The egg touches the centre of the white pillow, which dents slightly beneath it.",
    "The egg rests intact in a shallow dent in the centre of the pillow.",
)


def demo_pipeline(seed: int = 0, *, steps: int = 30):
    """The whole pipeline offline on tiny random models: a scripted reasoner, drawn keyframes, a tiny Wan.

    The video shows noise shaped by random weights; what it demonstrates is the machinery (every stage,
    the run folder, the manifest), not the method's quality.
    """
    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
    from vchain.pipeline import VChainPipeline

    generator = WanVideoGenerator(
        tiny_wan_pipeline(seed), height=64, width=64, num_frames=17, num_inference_steps=8,
        max_sequence_length=256, fps=8,
    )  # fmt: skip
    return VChainPipeline(
        reasoner=ScriptedReasoner(DEMO_CAPTIONS),
        image_backend=DrawingImageBackend(),
        generator=generator,
        tuner=WanLoRATuner(steps=steps, learning_rate=1e-3, seed=seed, log_every=5),
    )
