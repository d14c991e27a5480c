"""Test doubles: a scripted reasoner, a scripted judge and a drawing image backend."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from vchain.chain import KeyframeVerdict, NextKeyframe, ScenePlan, ThoughtChain
from vchain.interfaces import ImageBackend, Judge, Reasoner


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
        revisions: what `revise` answers, in order; then a plan that names the revision and its critique.
        times: each caption's moment in the clip (answered with it); None gives no times.
    """

    def __init__(
        self,
        captions: Sequence[str] = ("The event at its peak.", "The outcome, at rest."),
        *,
        plan: ScenePlan | None = None,
        flag_last: bool = True,
        augmented: str = "{prompt}, in rich physical detail.",
        verdicts: Sequence[KeyframeVerdict] = (),
        revisions: Sequence[ScenePlan] = (),
        times: Sequence[float | None] | None = None,
    ):
        if not captions:
            raise ValueError("captions must hold at least one keyframe caption, got none")
        self.captions = list(captions)
        self.fixed_plan = plan
        self.flag_last = flag_last
        self.augmented = augmented
        self.verdicts = list(verdicts)
        self.revisions = list(revisions)
        self.times = None if times is None else list(times)
        self.calls: list[tuple[str, Any]] = []

    def plan(self, prompt: str) -> ScenePlan:
        self.calls.append(("plan", prompt))
        return self.fixed_plan or example_plan(prompt)

    def answer(self, index: int) -> NextKeyframe:
        """The script's answer for keyframe `index + 1` (the caption after `index` keyframe captions)."""
        position = min(index, len(self.captions) - 1)
        time = None if self.times is None else self.times[min(index, len(self.times) - 1)]
        return NextKeyframe(
            caption=self.captions[position], is_last=self.flag_last and index >= len(self.captions) - 1, time=time
        )

    def next_keyframe(self, chain: ThoughtChain, composite: Image.Image) -> NextKeyframe:
        self.calls.append(("next_keyframe", len(chain.key_frames)))
        return self.answer(len(chain.key_frames))

    def augment_prompt(self, prompt: str) -> str:
        self.calls.append(("augment_prompt", prompt))
        return self.augmented.replace("{prompt}", prompt)

    def verify_keyframe(self, chain: ThoughtChain, image: Image.Image, caption: str) -> KeyframeVerdict:
        self.calls.append(("verify_keyframe", len(chain.images)))
        return self.verdicts.pop(0) if self.verdicts else KeyframeVerdict(matches=True, problem="")

    def revise(self, chain: ThoughtChain, critique: str) -> ScenePlan:
        self.calls.append(("revise", critique))
        if self.revisions:
            return self.revisions.pop(0)
        count = sum(call[0] == "revise" for call in self.calls)
        plan = example_plan(chain.input_prompt)
        return plan.model_copy(
            update={
                "thoughts": f"{plan.thoughts} Revision {count}, answering: {critique}",
                "concise_prompt": f"Revision {count} of the initial state of: {chain.input_prompt}",
            }
        )


class ScriptedJudge(Judge):
    """A judge that answers from a script, one entry per call in order (then the last entry again).

    Args:
        script: per call, one score for every dimension (an int from 1 to 5) or a dict of dimension ->
            score (dimensions left out score 3).
        reason: each dimension's reason; `{dimension}`, `{score}` and `{call}` (from 1) are filled in.

    `calls` records each call as (prompt, number of frames).
    """

    def __init__(
        self,
        script: Sequence[int | dict[str, int]] = (3,),
        *,
        reason: str = "{dimension} scored {score} on call {call}.",
    ):
        if not script:
            raise ValueError("script must hold at least one entry, got none")
        self.script = list(script)
        self.reason = reason
        self.calls: list[tuple[str, int]] = []

    def score(self, prompt: str, frames: Sequence[Image.Image]):
        from vchain.judging import DIMENSIONS, VideoScores

        self.calls.append((prompt, len(frames)))
        entry = self.script[min(len(self.calls), len(self.script)) - 1]
        scores = (
            dict.fromkeys(DIMENSIONS, entry) if isinstance(entry, int) else {**dict.fromkeys(DIMENSIONS, 3), **entry}
        )
        fields: dict[str, Any] = {}
        for dimension, value in scores.items():
            fields[f"{dimension}_reason"] = self.reason.format(dimension=dimension, score=value, call=len(self.calls))
            fields[dimension] = value
        return VideoScores(**fields)


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
