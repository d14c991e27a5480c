"""Test doubles: a scripted reasoner and a drawing image backend."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from vchain.chain import KeyframeVerdict, NextKeyframe, ScenePlan, ThoughtChain
from vchain.interfaces import ImageBackend, Reasoner


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
        verdicts: what `verify_keyframe` answers, in order (then every keyframe matches).
    """

    def __init__(
        self,
        captions: Sequence[str] = ("The event at its peak.", "The outcome, at rest."),
        *,
        plan: ScenePlan | None = None,
        flag_last: bool = True,
        augmented: str = "{prompt}, in rich physical detail.",
        verdicts: Sequence[KeyframeVerdict] = (),
    ):
        if not captions:
            raise ValueError("captions must hold at least one keyframe caption, got none")
        self.captions = list(captions)
        self.fixed_plan = plan
        self.flag_last = flag_last
        self.augmented = augmented
        self.verdicts = list(verdicts)
        self.calls: list[tuple[str, Any]] = []

    def plan(self, prompt: str) -> ScenePlan:
        self.calls.append(("plan", prompt))
        return self.fixed_plan or example_plan(prompt)

    def answer(self, index: int) -> NextKeyframe:
        """The script's answer for keyframe `index + 1` (the caption after `index` keyframe captions)."""
        caption = self.captions[min(index, len(self.captions) - 1)]
        return NextKeyframe(caption=caption, is_last=self.flag_last and index >= len(self.captions) - 1)

    def next_keyframe(self, chain: ThoughtChain, composite: Image.Image) -> NextKeyframe:
        self.calls.append(("next_keyframe", len(chain.key_frames)))
        return self.answer(len(chain.key_frames))

    def augment_prompt(self, prompt: str) -> str:
        self.calls.append(("augment_prompt", prompt))
        return self.augmented.replace("{prompt}", prompt)

    def verify_keyframe(self, chain: ThoughtChain, image: Image.Image, caption: str) -> KeyframeVerdict:
        self.calls.append(("verify_keyframe", len(chain.images)))
        return self.verdicts.pop(0) if self.verdicts else KeyframeVerdict(matches=True, problem="")


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
