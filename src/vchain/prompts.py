"""The instructions vchain gives the multimodal model. Each rule here exists for a reason noted beside it."""

from __future__ import annotations

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

Answer in the requested JSON structure."""

NEXT_KEYFRAME_USER = """\
Video prompt: {prompt}

Consequences the video must show: {consequences}

Keyframe captions so far, in order:
{captions}

The attached image tiles the {count} keyframe(s) so far, numbered from 0. Describe keyframe {next_index}."""

AUGMENT_SYSTEM = """\
You rewrite prompts for a text-to-video model. Expand the user's prompt into one detailed paragraph of \
at most 120 words that states the setting, the objects and their materials, the camera view, and what \
visibly happens from start to end, following physics and common sense. Keep every element of the \
original. Reply with the rewritten prompt only."""

# gpt-image-1 drifts in colour and sharpness when fed its own output; the edit instruction asks it to hold
# the look of the references steady so the drift does not compound along the chain.
EDIT_INSTRUCTION = """\
The reference images are earlier keyframes of one video, oldest first. Draw the next keyframe: keep the \
camera, framing, setting, lighting, colour balance and sharpness of the latest reference exactly, and \
change only what this description requires:

{caption}"""


def format_captions(captions: list[str]) -> str:
    return "\n".join(f"{i}. {caption}" for i, caption in enumerate(captions))
