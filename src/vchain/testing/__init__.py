"""Test doubles shipped with vchain: run the whole pipeline offline, in your tests or in `vchain demo`.

- `ScriptedReasoner`: a `Reasoner` that answers from a script and records what it was asked.
- `ScriptedJudge`: a `Judge` whose scores a test sets, call by call.
- `DrawingImageBackend`: an `ImageBackend` that draws recognisable, deterministic images.
- `FakeOpenAIServer`: a local OpenAI-compatible HTTP server (127.0.0.1, free port) for the real `openai`
  client: chat completions with structured output and image inputs, image generations and edits,
  served from scripts, with every request recorded and faults injectable.
- `tiny_wan_pipeline()`: a tiny random diffusers `WanPipeline`, built without any download;
  `tiny_wan_vace_pipeline()` the same for `WanVACEPipeline`.
- `demo_pipeline()`: all of the above composed into a `VChainPipeline` (what `vchain demo` runs).

More tiny models live in their own modules, imported when wanted (each pulls in diffusers or
transformers): `vchain.testing.tiny_cogvideox` (CogVideoX 2b / 5b / 1.5), `vchain.testing.tiny_vlm`
(Qwen2.5-VL, Qwen3-VL, Gemma 3), `vchain.testing.tiny_image` (QwenImageEditPlus, FLUX.2 klein, FLUX.1
Kontext), and `vchain.testing.toy` (`ToyGenerator`, a tunable generator with no diffusers at all).
"""

from vchain.testing.demo import DEMO_CAPTIONS, DEMO_PROMPT, demo_pipeline
from vchain.testing.fakes import DrawingImageBackend, ScriptedJudge, ScriptedReasoner, draw_image, example_plan
from vchain.testing.openai_server import (
    EchoAuthorization,
    FakeOpenAIServer,
    Fault,
    HtmlPage,
    RawImage,
    RecordedRequest,
    Reply,
    scripted_chat,
)
from vchain.testing.tiny import tiny_tokenizer, tiny_wan_pipeline, tiny_wan_vace_pipeline

__all__ = [
    "DEMO_CAPTIONS",
    "DEMO_PROMPT",
    "DrawingImageBackend",
    "EchoAuthorization",
    "FakeOpenAIServer",
    "Fault",
    "HtmlPage",
    "RawImage",
    "RecordedRequest",
    "Reply",
    "ScriptedJudge",
    "ScriptedReasoner",
    "demo_pipeline",
    "draw_image",
    "example_plan",
    "scripted_chat",
    "tiny_tokenizer",
    "tiny_wan_pipeline",
    "tiny_wan_vace_pipeline",
]
