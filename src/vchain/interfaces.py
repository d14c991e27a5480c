"""The interfaces vchain composes. Subclass one to plug in your own model.

Each has one or two required methods; everything else has a default. A custom reasoner, for example::

    from vchain.chain import NextKeyframe, ScenePlan
    from vchain.interfaces import Reasoner

    class MyReasoner(Reasoner):
        def plan(self, prompt):
            return ScenePlan(thoughts=..., consequences=..., context_frame=..., concise_prompt=...)

        def next_keyframe(self, chain, composite):
            return NextKeyframe(caption=..., is_last=len(chain.images) >= 3)

The pipeline does the rest (the loop, stitching, fitting images to the frame, retries, accounting):
behaviour lives in vchain's stage modules, not in backends. Backends that know their token usage can
report it with `vchain.accounting.report_request`.

A reasoner or judge built on a chat model needs only `ChatModel.complete` (messages and a schema in,
a validated answer out); `vchain.reasoning.ChatReasoner` and `vchain.judging.ChatJudge` do the rest.

`TunableGenerator` is the generator side of stage 2: what the model-agnostic `vchain.tuning.LoRATuner`
needs from a video model (encoders, denoisers, the training objective). A generator that implements it
is tuned like Wan; see `docs/generators.md`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from PIL import Image
from pydantic import BaseModel

from vchain import prompts
from vchain.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

    from vchain.chain import KeyframeVerdict, NextKeyframe, ScenePlan, ThoughtChain
    from vchain.scores import VideoScores

T = TypeVar("T")


class Component(ABC):  # noqa: B024 - a mixin of defaults, not an interface of its own
    """What every component shares: how a run folder records it."""

    def describe(self) -> dict[str, Any]:
        """What a manifest records of this component: its class and whatever decides its outputs.

        Run folders compare descriptions to decide whether a finished stage can be reused, so include
        every setting that changes results (model id, sampling settings, seed) and nothing that does
        not (timeouts, clients, keys: a key must never appear here). Values must be JSON (strings,
        numbers, booleans, None, lists and dicts of them) and stable from run to run: never a memory
        address or an object's default repr. The pipeline checks this when it is given the component.

        The default is the class name, `code`: the qualified class name and a hash of the source of the
        class and of its own base classes (so an edited component is a changed input, and a re-run does
        not reuse what the old code made), and `model` / `model_id` when the component has them as
        strings. Override it to record the settings that decide your component's results.
        """
        info: dict[str, Any] = {"class": type(self).__name__, "code": code_identity(type(self))}
        for attribute in ("model", "model_id"):
            value = getattr(self, attribute, None)
            if isinstance(value, str):
                info[attribute] = value
        return info

    def release(self) -> None:  # noqa: B027 - an optional hook; most components hold no accelerator memory
        """Free the accelerator memory this component holds, so that the next stage's model fits.

        The default holds none. Local models move their weights off the GPU; the component stays usable
        (slower) and its `to(device)`, where it has one, brings it back.
        """


_MEMORY_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


@functools.cache
def code_identity(cls: type) -> str:
    """`module.QualifiedName@<sha256 of the source>` of a class and its bases outside vchain's interfaces.

    Source that cannot be read (a class made in an interactive session) is hashed from its methods'
    compiled code instead, which is as stable from run to run.
    """
    digest = hashlib.sha256()
    for klass in cls.__mro__:
        if klass in (object, ABC) or klass.__module__ == __name__:
            continue
        try:
            digest.update(inspect.getsource(klass).encode())
        except (OSError, TypeError):
            for name, value in sorted(vars(klass).items()):
                code = getattr(getattr(value, "__func__", value), "__code__", None)
                if code is not None:
                    digest.update(name.encode() + code.co_code + repr(code.co_consts).encode())
    return f"{cls.__module__}.{cls.__qualname__}@{digest.hexdigest()[:16]}"


def check_description(component: Component, keyword: str) -> dict[str, Any]:
    """`component.describe()`, checked to be a JSON dict without memory addresses; a `ConfigurationError` naming
    `keyword`, the key and the value otherwise (it goes into manifests and fingerprints)."""
    name = type(component).__name__
    try:
        info = component.describe()
    except Exception as e:
        raise ConfigurationError(f"{keyword}: {name}.describe() raised {type(e).__name__}: {e}") from e
    if not isinstance(info, dict):
        raise ConfigurationError(f"{keyword}: {name}.describe() must return a dict, got {type(info).__name__}")
    problem = _json_problem(info, "")
    if problem is not None:
        where, what = problem
        raise ConfigurationError(
            f"{keyword}: {name}.describe() holds {what} at {where or 'the top'}; manifests and fingerprints need "
            "JSON values (str, int, finite float, bool, None, lists and dicts with str keys) that are the same "
            "every run: record a setting as such (e.g. str(dtype)), or override describe()"
        )
    return info


def _json_problem(value: Any, where: str) -> tuple[str, str] | None:
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, f"the non-finite number {value!r}")
    if isinstance(value, str):
        if _MEMORY_ADDRESS.search(value):
            return where, f"a memory address ({value[:80]!r}), which changes every run"
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if (problem := _json_problem(item, f"{where}[{i}]")) is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return where, f"the non-string key {key!r}"
            if (problem := _json_problem(item, f"{where}.{key}" if where else key)) is not None:
                return problem
        return None
    return where, f"{type(value).__module__}.{type(value).__qualname__} {value!r:.60}, which is not JSON"


class ChatModel(Component):
    """A chat model with vision that answers in a given structure: the one method a reasoning backend writes.

    `vchain.reasoning.ChatReasoner` and `vchain.judging.ChatJudge` write vchain's tasks (the plan, the
    next keyframe, the prompt rewrite, the keyframe check, the scores) as messages and a schema, once, over
    any `ChatModel`; `OpenAIChatModel` and `TransformersChatModel` are the two built in.
    """

    @abstractmethod
    def complete(self, messages: list[dict], schema: type[T]) -> T:
        """Answer chat `messages` with a validated instance of `schema`.

        Args:
            messages: vchain's neutral layout (`vchain.prompts`): dicts with a `role` (`"system"` or
                `"user"`) and a `content` that is a string or a list of parts, `{"type": "text", "text": ...}`
                or `{"type": "image", "image": PIL.Image}`.
            schema: a pydantic model class (the answer), or `str` for a plain-text answer.

        Raise `vchain.errors.MalformedResponseError` for an answer worth asking again (invalid, cut off),
        `RefusalError` for a refusal, `BackendError` when the model could not be reached or failed.
        """


class Reasoner(Component):
    """A multimodal model that plans the scene and predicts the chain's keyframes."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("augment_prompt", "verify_keyframe", "revise")

    @abstractmethod
    def plan(self, prompt: str) -> ScenePlan:
        """Infer the scene, its consequences, the context frame and a concise prompt from `prompt`."""

    @abstractmethod
    def next_keyframe(self, chain: ThoughtChain, composite: Image.Image) -> NextKeyframe:
        """Predict the next keyframe's caption, and whether it is the last, from the chain so far.

        `composite` is the chain's images stitched into one (see `vchain.images.stitch`).
        Raise `vchain.errors.MalformedResponseError` for an answer worth asking again.
        """

    def augment_prompt(self, prompt: str) -> str:
        """Rewrite `prompt` into a richer one (the `t2v-prompt-aug` baseline). Optional."""
        raise self._unsupported("augment_prompt")

    def verify_keyframe(self, chain: ThoughtChain, image: Image.Image, caption: str) -> KeyframeVerdict:
        """Judge whether `image` shows `caption` and continues `chain` (the keyframes accepted so far).

        Optional; used when `ReasoningConfig(verify_keyframes=True)`.
        """
        raise self._unsupported("verify_keyframe")

    def revise(self, chain: ThoughtChain, critique: str) -> ScenePlan:
        """Plan the scene again, given the finished `chain` and a judge's `critique` of the video sampled from it.

        Optional; a search with `rounds` > 0 draws, tunes and searches the new plan's chain.
        """
        raise self._unsupported("revise")

    def supports(self, method: str) -> bool:
        """Whether this reasoner implements the optional `method`, known before any call."""
        if method not in self.OPTIONAL:
            raise ConfigurationError(f"method must be one of {list(self.OPTIONAL)}, got {method!r}")
        return getattr(type(self), method) is not getattr(Reasoner, method)

    def _unsupported(self, method: str) -> ConfigurationError:
        return ConfigurationError(f"{type(self).__name__} does not implement the optional {method}()")


class ImageBackend(Component):
    """An image model that draws the first keyframe and edits it into the next ones.

    Attributes:
        max_references: the most reference images one `edit` call takes (None: no limit). The reasoning
            loop never passes more: it keeps the first keyframe and the most recent ones.
    """

    max_references: int | None = None

    @abstractmethod
    def generate(self, prompt: str, *, width: int, height: int) -> Image.Image:
        """Draw an image of `prompt`, near the aspect ratio width:height (the pipeline crops exactly)."""

    @abstractmethod
    def edit(self, images: Sequence[Image.Image], prompt: str, *, width: int, height: int) -> Image.Image:
        """Draw the image `prompt` describes from the reference `images` (oldest first)."""

    def instruction(self, caption: str, problem: str | None = None) -> str:
        """The edit prompt for a keyframe `caption`; `problem` says what was wrong with a rejected draw.

        The default asks the editor to keep the references' look and change only what the caption
        says; override it for editors that want plain captions or a different phrasing.
        """
        return prompts.edit_instruction(caption, problem)


class VideoGenerator(Component):
    """A text-to-video model. `width`, `height`, `num_frames` and `fps` are its sampling defaults."""

    @property
    @abstractmethod
    def width(self) -> int: ...

    @property
    @abstractmethod
    def height(self) -> int: ...

    @property
    @abstractmethod
    def num_frames(self) -> int: ...

    @property
    @abstractmethod
    def fps(self) -> int: ...

    @abstractmethod
    def sample(self, prompt: str, *, seed: int | None = None, **overrides) -> list[Image.Image]:
        """Sample one video for `prompt`; `overrides` replace sampling settings for this call only.

        Raise `vchain.errors.NumericalError` when the result is not finite (a broken adapter, say).
        A generator that can split its time reports it with `vchain.accounting.report_timing`.
        """

    def prompt_tokens(self, prompt: str) -> tuple[int, int] | None:
        """(tokens in `prompt`, tokens the text encoder takes), or None if the generator cannot tell.

        The pipeline uses it to keep the composite prompt within the encoder's window.
        """
        return None


class KeyframeConditionedGenerator(VideoGenerator):
    """A video generator that can be told what chosen frames show: keyframes placed at their moments.

    The `keyframe-guided` and `vchain-guided` variants sample through it.
    """

    @abstractmethod
    def sample(
        self,
        prompt: str,
        *,
        keyframes: Sequence[tuple[float, Image.Image]] = (),
        seed: int | None = None,
        **overrides,
    ) -> list[Image.Image]:
        """Sample one video for `prompt` that shows each `(time, image)` of `keyframes` at its moment.

        A time is a fraction of the clip (0 the first frame, 1 the last); with no keyframes this is plain
        text-to-video. `overrides` replace sampling settings for this call only.
        """


class TunableGenerator(VideoGenerator):
    """A video generator that a `vchain.tuning.LoRATuner` can tune: the generator side of stage 2.

    The tuner encodes the keyframes and captions once, then at every step draws noise levels, asks the
    objective for the noisy input and the target, and asks the generator for the denoiser's prediction.
    Everything model-specific (latent layout, text encoder, positional embeddings, expert routing,
    the objective) is answered here; the loop, the LoRA and its exact removal are the tuner's.

    Attributes:
        lora_targets: module-name suffixes of the denoiser's block linears that get the LoRA.
    """

    lora_targets: tuple[str, ...] = ()

    @abstractmethod
    def denoisers(self) -> list[torch.nn.Module]:
        """The modules that get LoRAs: one for most models, two experts for Wan2.2."""

    def denoiser_for(self, level: float) -> int:
        """Index into `denoisers()` of the one that denoises noise level `level` (0 clean, 1 noise)."""
        return 0

    @abstractmethod
    def training_objective(self) -> TrainingObjective:
        """How noisy inputs and targets are formed for this model (flow matching, v-prediction, ...)."""

    @abstractmethod
    def encode_keyframes(self, images: Sequence[Image.Image], *, height: int, width: int) -> torch.Tensor:
        """Latents `[N, ...]` of the images taken as one-frame videos, scaled as the denoiser expects."""

    @abstractmethod
    def encode_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """Text embeddings `[N, L, D]` exactly as sampling computes them (same length and padding)."""

    @abstractmethod
    def predict(
        self, denoiser: torch.nn.Module, noisy: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """The denoiser's output for a batch, in the layout of the objective's target."""

    def check_frame(self, height: int, width: int) -> None:
        """Raise `ConfigurationError` if the model cannot take height x width (used for tuning sizes)."""


class TrainingObjective(ABC):
    """How a model is trained: from a noise level, the noisy input, the timestep and the target.

    A noise level is a float in [0, 1] (0 clean, 1 pure noise) drawn on the host by the tuner; the
    objective maps it into the model's own terms.
    """

    @abstractmethod
    def levels(self, u: torch.Tensor) -> torch.Tensor:
        """Map draws `u` in (0, 1) (uniform or logit-normal) to this model's noise levels (host)."""

    @abstractmethod
    def corrupt(
        self, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy input, timestep, target) for clean latents `x0`, `noise` and per-sample `level`."""


class TuningReport(BaseModel):
    """What one tuning run did: losses at each read, where the time went, what was trained."""

    losses: list[tuple[int, float]] = []
    # Seconds since the first step began, at each loss read: a read waits for the device, so the time
    # between two reads is what those steps took (a benchmark's per-step time without the set-up).
    timeline: list[tuple[int, float]] = []
    seconds: dict[str, float] = {}
    trainable_parameters: int = 0
    steps: int = 0
    keyframes: int = 0


class Adapter(ABC):
    """What a tuner produces: a change to a generator that can be applied and removed.

    Attributes:
        report: what tuning did (losses, seconds, parameters), or None for an adapter loaded from disk.
    """

    report: TuningReport | None = None

    @abstractmethod
    def apply(self, generator: VideoGenerator) -> AbstractContextManager[None]:
        """Context manager: the adapter is active inside; on exit the generator is exactly as before."""

    def save(self, directory: str | Path) -> Path:
        """Write the adapter into `directory` so that `Tuner.load_adapter` reads it back. Optional."""
        raise ConfigurationError(f"{type(self).__name__} cannot be saved")


class Tuner(Component):
    """Turns (keyframe image, caption) pairs into an `Adapter` for a generator, in memory."""

    @abstractmethod
    def tune(self, generator: VideoGenerator, pairs: Sequence[tuple[Image.Image, str]]) -> Adapter:
        """Learn an adapter that makes `generator` render the keyframes for their captions."""

    def check(self, generator: VideoGenerator) -> None:
        """Raise `ConfigurationError` if this tuner cannot tune `generator` (targets, sizes). Optional.

        The pipeline calls it before any other work of a run that will tune, so a mistake in the
        tuner's settings is found before reasoning is paid for.
        """

    def load_adapter(self, directory: str | Path) -> Adapter:
        """Read back what `Adapter.save` wrote. Optional."""
        raise ConfigurationError(f"{type(self).__name__} cannot load saved adapters")


class Interpolator(Component):
    """Turns keyframes straight into video frames (the `no-sparse-tuning` ablation)."""

    @abstractmethod
    def interpolate(self, keyframes: Sequence[Image.Image], num_frames: int) -> list[Image.Image]:
        """Return `num_frames` frames that pass through the keyframes in order."""


class Judge(Component):
    """A vision-language model that scores a finished video the way the paper's raters did."""

    @abstractmethod
    def score(self, prompt: str, frames: Sequence[Image.Image]) -> VideoScores:
        """Score the video whose sampled `frames` (in order) should show `prompt`, on the dimensions it
        scores (all six of `vchain.scores`, or fewer: the others are left None)."""
