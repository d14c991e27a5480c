"""Stage 1, visual thought reasoning: the prompt becomes a chain of keyframes with captions.

plan -> first image from the context frame -> repeat (stitch the chain, predict the next caption, edit
the chain into the next image) until the reasoner flags the last keyframe or `max_keyframes` is reached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

from vchain import prompts
from vchain.accounting import UsageMeter
from vchain.chain import ThoughtChain
from vchain.errors import BackendError, ConfigurationError, MalformedResponseError, RefusalError, StageError
from vchain.images import fit_to_frame, stitch
from vchain.interfaces import ImageBackend, Reasoner

logger = logging.getLogger(__name__)
T = TypeVar("T")

StopReason = Literal["model", "cap"]


@dataclass
class ReasoningConfig:
    """Settings of the reasoning loop.

    Args:
        max_keyframes: most images in a chain, the first included. Reaching it ends the loop; the
            result records `stop_reason="cap"`. The paper's chains hold 3 to 6 images.
        max_attempts: tries per reasoner call when the answer is malformed (transient HTTP errors are
            retried by the client below this).
        composite_max_pixels: pixel budget of the stitched chain sent to the reasoner each step.
        edit_inputs: `"chain"` sends every keyframe so far to the image editor (consistency across the
            chain, as in the paper); `"last"` sends only the latest (cheaper, less context).
        width, height: the video frame; every keyframe is brought to this size (`fit_to_frame`).
    """

    max_keyframes: int = 8
    max_attempts: int = 3
    composite_max_pixels: int = 1024 * 1024
    edit_inputs: Literal["chain", "last"] = "chain"
    width: int = 832
    height: int = 480

    def __post_init__(self):
        errors = []
        if self.max_keyframes < 2:
            errors.append(f"max_keyframes must be at least 2, got {self.max_keyframes}")
        if self.max_attempts < 1:
            errors.append(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.composite_max_pixels < 64 * 64:
            errors.append(f"composite_max_pixels must be at least 4096, got {self.composite_max_pixels}")
        if self.edit_inputs not in ("chain", "last"):
            errors.append(f"edit_inputs must be 'chain' or 'last', got {self.edit_inputs!r}")
        if self.width < 1 or self.height < 1:
            errors.append(f"width and height must be positive, got {self.width}x{self.height}")
        if errors:
            raise ConfigurationError("invalid ReasoningConfig: " + "; ".join(errors))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReasoningResult:
    chain: ThoughtChain
    stop_reason: StopReason


def check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigurationError(f"prompt must be a non-empty string, got {prompt!r}")
    return prompt.strip()


def reason(
    prompt: str,
    reasoner: Reasoner,
    image_backend: ImageBackend,
    config: ReasoningConfig | None = None,
    *,
    chain: ThoughtChain | None = None,
    meter: UsageMeter | None = None,
    on_progress: Callable[[ThoughtChain], None] | None = None,
) -> ReasoningResult:
    """Run the reasoning loop, continuing `chain` if one is given (resume).

    `on_progress(chain)` is called after the plan and after every new image, so a caller can save each
    step as it lands; a failure raises `StageError` and loses nothing that was reported.
    """
    config = config or ReasoningConfig()
    meter = meter or UsageMeter()
    prompt = check_prompt(prompt)
    notify = on_progress or (lambda _chain: None)

    if chain is None:
        plan = _call(meter, config, "plan", None, reasoner.plan, prompt)
        chain = ThoughtChain.from_plan(prompt, plan)
        notify(chain)
        logger.info("Planned %r: %s", chain.name, plan.consequences)

    frame = {"width": config.width, "height": config.height}
    if not chain.images:
        image = _call(meter, config, "generate", 0, image_backend.generate, chain.context_frame, **frame)
        chain.images.append(fit_to_frame(image, **frame))
        notify(chain)

    while len(chain.images) < config.max_keyframes:
        index = len(chain.images)
        composite = stitch(chain.images, config.composite_max_pixels)
        answer = _call(meter, config, "perception", index, reasoner.next_keyframe, chain, composite)
        references = chain.images if config.edit_inputs == "chain" else chain.images[-1:]
        instruction = prompts.EDIT_INSTRUCTION.format(caption=answer.caption)
        image = _call(meter, config, "edit", index, image_backend.edit, references, instruction, **frame)
        chain.append(answer.caption, fit_to_frame(image, **frame))
        notify(chain)
        logger.info("Keyframe %d%s: %s", index, " (last)" if answer.is_last else "", answer.caption)
        if answer.is_last:
            return ReasoningResult(chain, "model")

    logger.warning(
        "Reasoning for %r stopped at max_keyframes=%d before the model flagged a last keyframe.",
        chain.name,
        config.max_keyframes,
    )
    return ReasoningResult(chain, "cap")


def _call(
    meter: UsageMeter,
    config: ReasoningConfig,
    step: str,
    index: int | None,
    fn: Callable[..., T],
    *args,
    **kwargs,
) -> T:
    """One model call, timed; malformed answers are asked again up to `config.max_attempts` times."""
    for attempt in range(1, config.max_attempts + 1):
        try:
            with meter.call(step, index):
                return fn(*args, **kwargs)
        except MalformedResponseError as e:
            if attempt == config.max_attempts:
                raise StageError(
                    f"malformed answer {attempt} times in a row, giving up: {e}",
                    stage="reasoning",
                    step=step,
                    index=index,
                ) from e
            logger.warning(
                "Malformed answer at %s (attempt %d/%d): %s", step, attempt, config.max_attempts, e
            )
        except (RefusalError, BackendError) as e:
            raise StageError(str(e), stage="reasoning", step=step, index=index) from e
    raise AssertionError("unreachable")
