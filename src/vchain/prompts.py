"""The instructions vchain gives the multimodal model. Each rule here exists for a reason noted beside it."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image
    from pydantic import BaseModel

    from vchain.chain import ThoughtChain

PLAN_SYSTEM = """\
You plan short videos so that what happens in them is physically and causally right.

You receive a prompt for a video of about five seconds. Work out, in this order:

1. thoughts: the full scene. Name every object and its material, the setting, the lighting, the camera \
position and framing, where each object sits in the frame, and any detail the prompt leaves unstated \
that a careful director would decide (sizes, colours, what surrounds the action).
2. consequences: what will actually happen once the scene starts, step by step, following physics and \
common sense. State outcomes plainly (the egg shatters, the ice melts into a puddle), not vague hopes.
3. context_frame: a rich description of the first frame only: the initial state, before any action has \
begun. It must not hint at what comes next: no motion blur, no cracks that have not happened yet, no \
words such as "about to", "will", "soon" or "poised".
4. concise_prompt: the context frame in one plain sentence.

Answer in the requested JSON structure."""

NEXT_KEYFRAME_SYSTEM = """\
You build a video one keyframe at a time. You see the keyframes so far tiled in one image, numbered in \
order, together with the video prompt and the consequences it must show. Describe the single next \
keyframe: the next important moment, at most about five seconds after the last keyframe shown.

Rules for the caption:
- Show exactly one of these: the start of an event, its peak, its end, or its consequence. Never mix \
two of them in one frame.
- If the next moment is a contact or collision, show the objects touching at that instant.
- Describe the frame as a still photograph: positions, shapes, states and materials as they are in \
that instant. Do not describe motion in progress or intention ("about to", "starting to fall", "moving").
- Use absolute positions and sizes ("in the lower third of the frame", "half the width of the table"), \
never relative movement words such as "towards", "away from", "closer" or "further".
- Keep the camera, setting, lighting and every object's identity the same as in the keyframes so far, \
unless the consequences change them.
- Write the caption so it can also serve as an instruction to edit the latest keyframe into the next one.

Set is_last to true when this keyframe completes the consequences, or when nothing significant \
would happen after it. Otherwise set it to false.

Set time to when in the clip this keyframe's state is reached, as a fraction of the clip's length: 0 is \
the first frame (keyframe 0), 1 the last. Pace it as the events would take in reality: a long fall puts \
the impact late, a quick splash follows the impact closely. A time is never earlier than the previous \
keyframe's.

Answer in the requested JSON structure."""

NEXT_KEYFRAME_USER = """\
Video prompt: {prompt}

Consequences the video must show: {consequences}

Keyframe captions so far, in order:
{captions}

Their times in the clip: {times}

The attached image tiles the {count} keyframe(s) so far, numbered from 0. Describe keyframe {next_index}."""

AUGMENT_SYSTEM = """\
You rewrite prompts for a text-to-video model. Expand the user's prompt into one detailed paragraph of \
at most 120 words that states the setting, the objects and their materials, the camera view, and what \
visibly happens from start to end, following physics and common sense. Keep every element of the \
original. Reply with the rewritten prompt only."""

# Image editors drift in colour and sharpness when fed their own output; the edit instruction asks the
# editor to hold the look of the references steady so the drift does not compound along the chain.
EDIT_INSTRUCTION = """\
The reference images are earlier keyframes of one video, oldest first. Draw the next keyframe: keep the \
camera, framing, setting, lighting, colour balance and sharpness of the latest reference exactly, and \
change only what this description requires:

{caption}"""

EDIT_RETRY = """

An earlier draw of this keyframe was rejected because: {problem}
Correct that in this draw."""

VERIFY_SYSTEM = """\
You check keyframes of a video for a director. You see the keyframes accepted so far tiled in one \
image, numbered in order, then a candidate for the next keyframe and the caption it must show.

Say whether the candidate matches its caption: every object, state and position the caption names is \
visible as described, and the camera, setting, lighting and objects stay consistent with the accepted \
keyframes except where the caption changes them. Small differences of style or detail are fine; a \
missing object, a wrong state (intact instead of broken, dry instead of wet), a wrong position, or a \
changed scene is not.

Set matches to false only for a real mismatch, and then say in problem, in one sentence, what is \
wrong and what the image should show instead. When it matches, leave problem empty.

Answer in the requested JSON structure."""

VERIFY_USER = """\
Video prompt: {prompt}

Caption the candidate must show: {caption}

The first image tiles the {count} accepted keyframe(s), numbered from 0; the second image is the \
candidate for keyframe {index}."""

VERIFY_FIRST_USER = """\
Video prompt: {prompt}

Caption the candidate must show: {caption}

No keyframe has been accepted yet: the image is the candidate for the first keyframe, keyframe 0."""


# Re-planning: the judge's objections reach the planner with the chain they were made about, so it can keep
# what worked and change what the judge saw fail. The same rules as the first plan hold.
REVISE_SYSTEM = (
    PLAN_SYSTEM.removesuffix("Answer in the requested JSON structure.")
    + """\
You planned this video before. Its keyframes were drawn, the video was sampled from them, and a judge \
rated it and said what went wrong. Plan the scene again so that the new video fixes every objection: \
change the consequences, the scene or the first frame where the judge points to a mistake, and keep what \
the judge did not object to.

Answer in the requested JSON structure."""
)

REVISE_USER = """\
Video prompt: {prompt}

Your earlier plan:
- thoughts: {thoughts}
- consequences: {consequences}
- context frame: {context_frame}
- concise prompt: {concise_prompt}

The keyframe captions drawn from it, in order:
{captions}

The judge's critique of the video sampled from these keyframes:
{critique}"""


def format_captions(captions: list[str]) -> str:
    return "\n".join(f"{i}. {caption}" for i, caption in enumerate(captions))


REDRAW = """

An earlier image of this scene was rejected because: {problem}
Correct that in this image."""


def redraw_prompt(description: str, problem: str | None = None) -> str:
    """The prompt of the first keyframe, with the verifier's objection when it is drawn again."""
    return description + REDRAW.format(problem=problem) if problem else description


def edit_instruction(caption: str, problem: str | None = None) -> str:
    """The default edit prompt for a keyframe caption, with the verifier's objection on a redo."""
    text = EDIT_INSTRUCTION.format(caption=caption)
    return text + EDIT_RETRY.format(problem=problem) if problem else text


# Message builders. One place builds the messages every chat backend sends. Messages follow the OpenAI
# chat layout, which Hugging Face chat templates accept too; an image part is `{"type": "image",
# "image": PIL.Image}` and each backend turns it into what its API wants (a data URL for OpenAI).


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def image_part(image: Image.Image) -> dict:
    return {"type": "image", "image": image}


def plan_messages(prompt: str) -> list[dict]:
    return [
        {"role": "system", "content": PLAN_SYSTEM},
        {"role": "user", "content": [text_part(f"Video prompt: {prompt}")]},
    ]


def next_keyframe_messages(chain: ThoughtChain, composite: Image.Image) -> list[dict]:
    text = NEXT_KEYFRAME_USER.format(
        prompt=chain.input_prompt,
        consequences=chain.consequences,
        captions=format_captions(chain.captions),
        times=", ".join("?" if t is None else f"{t:.2f}" for t in [0.0, *chain.key_times]),
        count=len(chain.images),
        next_index=len(chain.images),
    )
    return [
        {"role": "system", "content": NEXT_KEYFRAME_SYSTEM},
        {"role": "user", "content": [text_part(text), image_part(composite)]},
    ]


def revise_messages(chain: ThoughtChain, critique: str) -> list[dict]:
    text = REVISE_USER.format(
        prompt=chain.input_prompt,
        thoughts=chain.thoughts,
        consequences=chain.consequences,
        context_frame=chain.context_frame,
        concise_prompt=chain.concise_prompt,
        captions=format_captions(chain.captions),
        critique=critique,
    )
    return [{"role": "system", "content": REVISE_SYSTEM}, {"role": "user", "content": [text_part(text)]}]


def critique_text(scores: dict[str, int], reasons: dict[str, str], dimensions: tuple[str, ...]) -> str:
    """The judge's verdict on the objective's `dimensions`, weakest first: what the reasoner is asked to fix."""
    ranked = sorted(dimensions, key=lambda d: (scores[d], dimensions.index(d)))
    return "\n".join(f"- {d.replace('_', ' ')}: {scores[d]}/5. {reasons[d]}" for d in ranked)


def augment_messages(prompt: str) -> list[dict]:
    return [
        {"role": "system", "content": AUGMENT_SYSTEM},
        {"role": "user", "content": [text_part(prompt)]},
    ]


def verify_messages(
    chain: ThoughtChain, image: Image.Image, caption: str, *, max_pixels: int = 1024 * 1024
) -> list[dict]:
    """The accepted keyframes (tiled within `max_pixels`, as for perception), then the candidate."""
    from vchain.images import stitch

    if not chain.images:
        text = VERIFY_FIRST_USER.format(prompt=chain.input_prompt, caption=caption)
        parts = [text_part(text), image_part(image)]
    else:
        text = VERIFY_USER.format(
            prompt=chain.input_prompt, caption=caption, count=len(chain.images), index=len(chain.images)
        )
        parts = [text_part(text), image_part(stitch(chain.images, max_pixels)), image_part(image)]
    return [{"role": "system", "content": VERIFY_SYSTEM}, {"role": "user", "content": parts}]


# Structured answers without the server's help: for servers that ignore `response_format` (`transformers
# serve`, some proxies), the schema goes into the system message and the JSON is read out of the text.

SCHEMA_INSTRUCTION = """

Answer with one JSON object and nothing else: no text before or after it. The object follows this JSON \
schema, named {name}:
{schema}"""


def schema_messages(messages: list[dict], schema: type[BaseModel]) -> list[dict]:
    """`messages` with `schema` written into the system message (one is added if there is none)."""
    instruction = SCHEMA_INSTRUCTION.format(
        name=schema.__name__, schema=json.dumps(schema.model_json_schema(), separators=(",", ":"))
    )
    if messages and messages[0]["role"] == "system" and isinstance(messages[0]["content"], str):
        return [{**messages[0], "content": messages[0]["content"] + instruction}, *messages[1:]]
    return [{"role": "system", "content": instruction.lstrip()}, *messages]


def read_json(text: str) -> Any:
    """The JSON an answer's text holds: the whole text, else a fenced block, else the first object in it.

    Returns None when the text holds no JSON value at all (prose only).
    """
    text = text.strip()
    for candidate in (text, *re.findall(r"```[\w-]*\s*\n(.*?)```", text, flags=re.S)):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            return decoder.raw_decode(text, start)[0]
        except ValueError:
            continue
    return None


CORRECTION = """

Your earlier answer(s) to this request could not be used:
{problems}
Answer again, in the requested structure."""


def correction_messages(messages: list[dict], problems: list[str]) -> list[dict]:
    """`messages` with what was wrong with earlier answers added to the last user message (a separate
    message would break chat templates that insist on alternating roles)."""
    note = CORRECTION.format(problems="\n".join(f"- {problem}" for problem in problems))
    last = max(i for i, message in enumerate(messages) if message["role"] == "user")
    content = messages[last]["content"]
    content = content + note if isinstance(content, str) else [*content, text_part(note.lstrip())]
    return [*messages[:last], {**messages[last], "content": content}, *messages[last + 1 :]]
