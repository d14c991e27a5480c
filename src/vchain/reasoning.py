"""Stage 1, visual thought reasoning: the prompt becomes a chain of keyframes with captions.

plan -> first image from the context frame -> repeat (stitch the chain, predict the next caption, edit
the chain into the next image) until the reasoner flags the last keyframe or `max_keyframes` is reached.

Every paid answer is handed to a `ReasoningLog` as soon as it arrives, so a run folder can keep it:
a caption whose edit then failed is not paid for again, and the last-keyframe flag is known on resume.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from vchain import prompts
from vchain.accounting import UsageMeter
from vchain.chain import KeyframeVerdict, NextKeyframe, ScenePlan, ThoughtChain, check_prompt
from vchain.config import Config, describe_errors
from vchain.errors import (
    BackendError,
    ConfigurationError,
    MalformedResponseError,
    RefusalError,
    StageError,
    VChainError,
)
from vchain.images import UnreadableImageError, fit_to_frame, read_image, stitch
from vchain.interfaces import ChatModel, ImageBackend, Reasoner

if TYPE_CHECKING:
    from vchain.color import ColorCorrection

logger = logging.getLogger(__name__)
T = TypeVar("T")

StopReason = Literal["model", "cap"]
# The colour correction compares keyframes in blocks of this many pixels (see vchain.color).
COLOR_BLOCK = 16
# The keyframe size when nothing else sets it: Wan2.1's 480p frame.
DEFAULT_FRAME = (832, 480)


class ReasoningConfig(Config):
    """Settings of the reasoning loop."""

    max_keyframes: int = Field(
        8, ge=2, le=64, description="most images in a chain, the first included (the paper's hold 3 to 6)"
    )
    max_attempts: int = Field(3, ge=1, le=20, description="tries per reasoner call when the answer is malformed")
    composite_max_pixels: int = Field(
        1024 * 1024, ge=64 * 64, description="pixel budget of the stitched chain sent to the reasoner"
    )
    edit_inputs: Literal["chain", "last"] = Field(
        "chain",
        description="images sent to each edit: the whole chain (consistency, as in the paper) or the last",
    )
    width: int | None = Field(None, gt=0, le=8192, description="keyframe width; None takes the generator's, else 832")
    height: int | None = Field(
        None, gt=0, le=8192, description="keyframe height; None takes the generator's, else 480"
    )
    color_correction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the editor's accumulated colour cast removed from each keyframe: 0 keeps images "
        "exactly as the editor returned them, 1 (recommended when on) removes all of it",
    )
    verify_keyframes: bool = Field(
        False, description="have the reasoner check each new keyframe against its caption, and redraw a rejected one"
    )
    max_redos: int = Field(2, ge=0, le=10, description="most redraws of one rejected keyframe; then the last is kept")


class KeyframeAnswer(BaseModel):
    """A paid perception answer, kept by index so a resume can use it instead of asking again."""

    index: int = Field(ge=1)
    caption: str
    is_last: bool
    image_sha256: str | None = Field(
        None, description="sha256 of the keyframe's PNG once drawn: a resume adopts that file instead of paying again"
    )
    time: float | None = Field(
        None, ge=0, le=1, description="the keyframe's moment in the clip, if the reasoner gave it"
    )


class KeyframeCheck(BaseModel):
    """A paid verdict on one draw of a keyframe (the draw itself is kept only if it was accepted)."""

    index: int = Field(ge=0)
    matches: bool
    problem: str = ""


@dataclass
class ReasoningLog:
    """Where the loop reports progress; a run folder persists it, the default keeps it in memory.

    Attributes:
        answers: perception answers by keyframe index, those of an earlier run included.
        checks: the verifier's verdicts, in order, those of an earlier run included.
        corrections: the colour correction applied to each keyframe, by index.
    """

    answers: dict[int, KeyframeAnswer] = field(default_factory=dict)
    checks: list[KeyframeCheck] = field(default_factory=list)
    corrections: dict[int, ColorCorrection] = field(default_factory=dict)

    def record_answer(self, answer: KeyframeAnswer) -> None:
        """A caption was paid for; called before the image edit that uses it."""
        self.answers[answer.index] = answer

    def record_check(self, check: KeyframeCheck) -> None:
        """A verdict was paid for; called before the keyframe is kept or drawn again."""
        self.checks.append(check)

    def record_correction(self, index: int, correction: ColorCorrection) -> None:
        """The colour correction of keyframe `index` (a redraw replaces the earlier one)."""
        self.corrections[index] = correction

    def record_drawn(self, answer: KeyframeAnswer, image: Image.Image) -> None:
        """Keyframe `answer.index` is drawn (and checked); called before the commit that writes it."""

    def commit(self, chain: ThoughtChain) -> None:
        """The chain grew (plan, or a finished keyframe); everything in it is final."""


@dataclass
class ReasoningResult:
    chain: ThoughtChain
    stop_reason: StopReason


def keyframe_frame(config: ReasoningConfig, generator: Any = None) -> tuple[int, int]:
    """(width, height) of the keyframes: the config's, else the generator's, else `DEFAULT_FRAME`."""
    if generator is not None:
        frame = (generator.width, generator.height)
        if (config.width or frame[0], config.height or frame[1]) != frame:
            raise ConfigurationError(
                f"ReasoningConfig asks for {config.width}x{config.height} keyframes, the generator renders "
                f"{frame[0]}x{frame[1]}: keyframes are tuned on at the generator's size; leave width and "
                "height unset"
            )
        return frame
    return (config.width or DEFAULT_FRAME[0], config.height or DEFAULT_FRAME[1])


def reason(
    prompt: str,
    reasoner: Reasoner,
    image_backend: ImageBackend,
    config: ReasoningConfig | None = None,
    *,
    frame: tuple[int, int] | None = None,
    chain: ThoughtChain | None = None,
    log: ReasoningLog | None = None,
    meter: UsageMeter | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReasoningResult:
    """Run the reasoning loop, continuing `chain` if one is given (resume).

    Args:
        frame: (width, height) every keyframe is brought to; default from `config`.
        chain: a chain from an earlier run to continue.
        log: receives every paid answer and every committed step; its `answers` are reused.
        meter: counts every request.
        progress: called with the number of images after each new one.

    A failure raises `StageError` naming the step and keyframe; everything committed stays committed.
    """
    config = config or ReasoningConfig()
    width, height = frame or keyframe_frame(config)
    check_reasoning(config, reasoner, (width, height))
    loop = _Loop(config, reasoner, image_backend, (width, height), log or ReasoningLog(), meter or UsageMeter())
    prompt = check_prompt(prompt)

    if chain is None:
        plan = loop.call(ScenePlan, "plan", None, reasoner, "plan", prompt)
        chain = ThoughtChain.from_plan(prompt, plan)
        loop.log.commit(chain)
        logger.info("Planned %r: %s", chain.name, plan.consequences)

    if not chain.images:
        chain.images.append(loop.keyframe(chain, 0, chain.context_frame))
        loop.log.commit(chain)
        if progress:
            progress(1)

    last = loop.log.answers.get(len(chain.images) - 1)
    if last is not None and last.is_last and last.caption == chain.key_frames[-1]:
        return ReasoningResult(chain, "model")  # finished before a crash could record it
    while len(chain.images) < config.max_keyframes:
        index = len(chain.images)
        answer = loop.log.answers.get(index)
        if answer is None:
            composite = stitch(chain.images, config.composite_max_pixels)
            reply = loop.call(
                NextKeyframe,
                "perception",
                index,
                reasoner,
                "next_keyframe",
                chain,
                composite,
                accept=functools.partial(_check_time, chain),
            )
            answer = KeyframeAnswer(index=index, caption=reply.caption, is_last=reply.is_last, time=reply.time)
            loop.log.record_answer(answer)
        else:
            logger.info("Keyframe %d: using the caption paid for earlier", index)
        image = loop.keyframe(chain, index, answer.caption)
        loop.log.record_drawn(answer, image)
        chain.append(answer.caption, image, answer.time)
        loop.log.commit(chain)
        if progress:
            progress(len(chain.images))
        logger.info("Keyframe %d%s: %s", index, " (last)" if answer.is_last else "", answer.caption)
        if answer.is_last:
            return ReasoningResult(chain, "model")

    logger.warning(
        "Reasoning for %r stopped at max_keyframes=%d before the model flagged a last keyframe.",
        chain.name,
        config.max_keyframes,
    )
    return ReasoningResult(chain, "cap")


def check_reasoning(config: ReasoningConfig, reasoner: Reasoner, frame: tuple[int, int]) -> None:
    """Settings that cannot work with this reasoner or frame, refused before any call."""
    if config.verify_keyframes and not reasoner.supports("verify_keyframe"):
        raise ConfigurationError(
            f"verify_keyframes=True needs a reasoner with verify_keyframe(); {type(reasoner).__name__} has none"
        )
    if config.color_correction > 0 and min(frame) < COLOR_BLOCK:
        raise ConfigurationError(
            f"color_correction={config.color_correction} needs keyframes of at least {COLOR_BLOCK} pixels a "
            f"side, got {frame[0]}x{frame[1]}"
        )


def _check_time(chain: ThoughtChain, reply: NextKeyframe) -> None:
    """A keyframe's time must not come before the chain's latest: an answer out of order is asked again."""
    given = [t for t in chain.key_times if t is not None]
    if reply.time is not None and given and reply.time < given[-1]:
        raise MalformedResponseError(
            f"time {reply.time!r} of keyframe {len(chain.images)} comes before the previous keyframe's {given[-1]!r}"
        )


class _Loop:
    """The parts of one reasoning run that every keyframe uses: calls, the log, the colour corrector."""

    def __init__(self, config, reasoner, image_backend, frame, log: ReasoningLog, meter: UsageMeter):
        self.config, self.reasoner, self.image_backend, self.frame, self.log = (
            config,
            reasoner,
            image_backend,
            frame,
            log,
        )
        self.call = _Caller(config, meter)
        self.corrector = None
        if config.color_correction > 0:
            from vchain.color import ColorCorrector

            self.corrector = ColorCorrector(config.color_correction, records=log.corrections, block_size=COLOR_BLOCK)

    def keyframe(self, chain: ThoughtChain, index: int, caption: str) -> Image.Image:
        """Keyframe `index`: drawn, fitted to the frame, colour-corrected and, when asked, verified.

        A rejected draw is drawn again with the verifier's objection in its prompt, at most `max_redos`
        times; then the last draw is kept. Verdicts paid in an earlier run count towards the limit.
        """
        earlier = [c for c in self.log.checks if c.index == index]
        redos = sum(not c.matches for c in earlier)
        problem = earlier[-1].problem if earlier and not earlier[-1].matches else None
        while True:
            image = fit_to_frame(self._draw(chain, index, caption, problem), *self.frame)
            if self.corrector is not None:
                image, correction = self.corrector(chain.images, image)
                self.log.record_correction(index, correction)
            if not self.config.verify_keyframes:
                return image
            verdict = self.call(
                KeyframeVerdict, "verify", index, self.reasoner, "verify_keyframe", chain, image, caption
            )
            self.log.record_check(KeyframeCheck(index=index, matches=verdict.matches, problem=verdict.problem))
            if verdict.matches:
                return image
            if redos >= self.config.max_redos:
                logger.warning(
                    "Keyframe %d kept after %d redraw(s); the verifier still says: %s", index, redos, verdict.problem
                )
                return image
            redos += 1
            problem = verdict.problem or "it does not show what the caption describes"
            logger.info(
                "Keyframe %d rejected (%s); drawing it again (%d/%d)", index, problem, redos, self.config.max_redos
            )

    def _draw(self, chain: ThoughtChain, index: int, caption: str, problem: str | None) -> Image.Image:
        width, height = self.frame
        backend = self.image_backend
        if index == 0:
            prompt = prompts.redraw_prompt(chain.context_frame, problem)
            return self.call(Image.Image, "generate", 0, backend, "generate", prompt, width=width, height=height)
        references = edit_references(chain.images, backend.max_references, self.config.edit_inputs)
        instruction = backend.instruction(caption, problem)
        return self.call(
            Image.Image, "edit", index, backend, "edit", references, instruction, width=width, height=height
        )


class ChatReasoner(Reasoner):
    """The reasoning tasks written once over any `ChatModel`: each is messages (`vchain.prompts`) and a schema.

    A new reasoning backend is then one class with one method, `ChatModel.complete`; the plan, the next
    keyframe, the prompt rewrite and the keyframe check come from here, their re-asks and accounting
    from the reasoning loop. `OpenAIReasoner` and `TransformersReasoner` are this class on their own chat
    models.

    Args:
        chat: the model that answers.
    """

    def __init__(self, chat: ChatModel):
        self.chat = check_chat(chat)
        self._asker = ChatAsker()

    def plan(self, prompt: str) -> ScenePlan:
        return self._asker(self.chat, prompts.plan_messages(prompt), ScenePlan)

    def next_keyframe(self, chain: ThoughtChain, composite: Image.Image) -> NextKeyframe:
        return self._asker(self.chat, prompts.next_keyframe_messages(chain, composite), NextKeyframe)

    def augment_prompt(self, prompt: str) -> str:
        return self._asker(self.chat, prompts.augment_messages(prompt), str)

    def verify_keyframe(self, chain: ThoughtChain, image: Image.Image, caption: str) -> KeyframeVerdict:
        return self._asker(self.chat, prompts.verify_messages(chain, image, caption), KeyframeVerdict)

    def revise(self, chain: ThoughtChain, critique: str) -> ScenePlan:
        return self._asker(self.chat, prompts.revise_messages(chain, critique), ScenePlan)

    def describe(self) -> dict[str, Any]:
        return chat_description(self, self.chat)

    def release(self) -> None:
        if self.chat is not self:  # a preset is its own chat model, whose release comes first
            self.chat.release()


def check_chat(chat: object) -> ChatModel:
    if not isinstance(chat, ChatModel):
        raise ConfigurationError(f"chat must be a vchain.interfaces.ChatModel, got {type(chat).__name__}")
    return chat


class ChatAsker:
    """Asks a `ChatModel`, and tells it what was wrong when the same request comes again after a malformed
    answer: a re-ask is then a new request that names the problem, never the same body sent again (a model
    at temperature 0 would give the same bad answer)."""

    def __init__(self):
        self._problems: dict[str, list[str]] = {}

    def __call__(self, chat: ChatModel, messages: list[dict], schema: type[T]) -> T:
        key = _request_key(messages, schema)
        problems = self._problems.pop(key, [])
        try:
            return chat.complete(prompts.correction_messages(messages, problems) if problems else messages, schema)
        except (MalformedResponseError, ValidationError) as e:
            problem = describe_errors(e) if isinstance(e, ValidationError) else str(e)
            self._problems[key] = [*problems, problem[:300]]
            raise


def _request_key(messages: list[dict], schema: type) -> str:
    digest = hashlib.sha256(schema.__name__.encode())
    for message in messages:
        parts = message["content"] if isinstance(message["content"], list) else [message["content"]]
        for part in parts:
            if isinstance(part, dict) and part.get("type") == "image":
                digest.update(part["image"].tobytes())
            else:
                digest.update(str(part.get("text", "") if isinstance(part, dict) else part).encode())
    return digest.hexdigest()


def chat_description(component: Any, chat: ChatModel) -> dict[str, Any]:
    """What a manifest records of a reasoner or judge built on `chat`: the chat model's description, under
    the component's class, with the chat model's class beside it (a preset is its own chat model)."""
    info = chat.describe()
    return {**info, "class": type(component).__name__, **({} if chat is component else {"chat": info["class"]})}


def augment(
    prompt: str, reasoner: Reasoner, config: ReasoningConfig | None = None, *, meter: UsageMeter | None = None
) -> str:
    """The `t2v-prompt-aug` baseline: `prompt` rewritten richer by the reasoner (re-asked if blank)."""
    call = _Caller(config or ReasoningConfig(), meter or UsageMeter())
    return call(str, "augment", None, reasoner, "augment_prompt", check_prompt(prompt))


def revise(
    chain: ThoughtChain,
    critique: str,
    reasoner: Reasoner,
    config: ReasoningConfig | None = None,
    *,
    meter: UsageMeter | None = None,
    index: int | None = None,
) -> ScenePlan:
    """A new plan for `chain`'s prompt from the reasoner, given a judge's `critique` (re-asked if malformed).

    Counted as step `revise`, `index` (the search round it opens).
    """
    call = _Caller(config or ReasoningConfig(), meter or UsageMeter())
    return call(ScenePlan, "revise", index, reasoner, "revise", chain, critique)


def edit_references(images: Sequence[Image.Image], limit: int | None, edit_inputs: str = "chain") -> list[Image.Image]:
    """The reference images of the next edit: the chain (or its last image), within the editor's limit.

    When some must go, keyframe 0 stays (it fixes the scene's identity) with the most recent ones; with
    room for one only, the latest.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigurationError(f"max_references must be a positive integer or None, got {limit!r}")
    chosen = list(images) if edit_inputs == "chain" else list(images[-1:])
    if limit is None or len(chosen) <= limit:
        return chosen
    if limit == 1:
        return chosen[-1:]
    return [chosen[0], *chosen[len(chosen) - (limit - 1) :]]


class _Caller:
    """One backend call, timed and counted; malformed answers are asked again up to `max_attempts`.

    What the backend returns is checked against what the loop needs, so a wrong answer fails here,
    naming the backend method, not three stages later.
    """

    def __init__(self, config: ReasoningConfig, meter: UsageMeter):
        self.config, self.meter = config, meter

    def __call__(
        self, expected: type[T], step: str, index: int | None, backend, method: str, *args, accept=None, **kwargs
    ) -> T:
        """`backend.method(*args, **kwargs)` checked as `expected`; `accept(answer)` may raise
        `MalformedResponseError` for an answer that is valid alone but not here (asked again too)."""
        where = f"{type(backend).__name__}.{method}()"
        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                with self.meter.call(step, index):
                    try:
                        answer = getattr(backend, method)(*args, **kwargs)
                    except ValidationError as e:
                        raise MalformedResponseError(f"{where} built an invalid answer: {describe_errors(e)}") from e
                    answer = _checked(expected, answer, where)
                    if accept is not None:
                        accept(answer)
                    return answer
            except MalformedResponseError as e:
                if attempt == attempts:
                    raise StageError(
                        f"malformed answer {attempt} times in a row, giving up: {e}",
                        stage="reasoning",
                        step=step,
                        index=index,
                    ) from e
                logger.warning("Malformed answer at %s (attempt %d/%d): %s", step, attempt, attempts, e)
            except (RefusalError, BackendError, _WrongAnswer) as e:
                raise StageError(str(e), stage="reasoning", step=step, index=index) from e
            except VChainError:
                raise
            except Exception as e:
                raise StageError(
                    f"{where} raised {type(e).__name__}: {e}", stage="reasoning", step=step, index=index
                ) from e
        raise AssertionError("unreachable")


class _WrongAnswer(Exception):
    """A backend returned something of the wrong kind: not worth asking again."""


def _checked(expected: type, answer: object, where: str):
    if expected is Image.Image:
        return _as_image(answer, where)
    if expected is str and isinstance(answer, str) and not answer.strip():
        raise MalformedResponseError(f"{where} returned a blank text")
    if expected is str and isinstance(answer, str):
        return answer.strip()
    if not isinstance(answer, expected):
        raise _WrongAnswer(f"{where} must return a {expected.__name__}, got {type(answer).__name__}: {answer!r:.120}")
    if isinstance(answer, BaseModel):  # an instance built without validation is checked now
        try:
            return expected.model_validate(answer)
        except ValidationError as e:
            raise MalformedResponseError(
                f"{where} returned an invalid {expected.__name__}: {describe_errors(e)}"
            ) from e
    return answer


def _as_image(value: object, where: str) -> Image.Image:
    """A backend's image answer as a PIL image: PIL as is, a uint8 or [0, 1] float array or encoded
    bytes converted; anything else a `MalformedResponseError` naming `where` and what it returned."""
    if isinstance(value, Image.Image):
        if not value.width or not value.height:
            raise MalformedResponseError(f"{where} returned an empty {value.width}x{value.height} image")
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return read_image(bytes(value))
        except UnreadableImageError as e:
            raise MalformedResponseError(f"{where} returned bytes that are not an image: {e}") from e
    if isinstance(value, np.ndarray) and value.ndim in (2, 3) and value.size:
        array = value
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
                raise MalformedResponseError(f"{where} returned a {array.dtype} array; want uint8 or finite floats")
            array = (array.clip(0, 1) * 255).round().astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
            raise MalformedResponseError(f"{where} returned an array of shape {value.shape}; want H x W x 3")
        return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    raise _WrongAnswer(f"{where} must return a PIL image, got {type(value).__name__}: {value!r:.80}")
