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
report it with `vchain.accounting.report_usage`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from vchain.errors import VChainError

if TYPE_CHECKING:
    from vchain.chain import NextKeyframe, ScenePlan, ThoughtChain


class Reasoner(ABC):
    """A multimodal model that plans the scene and predicts the chain's keyframes."""

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
        raise VChainError(
            f"{type(self).__name__} does not implement augment_prompt(), needed by t2v-prompt-aug"
        )


class ImageBackend(ABC):
    """An image model that draws the first keyframe and edits it into the next ones."""

    @abstractmethod
    def generate(self, prompt: str, *, width: int, height: int) -> Image.Image:
        """Draw an image of `prompt`, near the aspect ratio width:height (the pipeline crops exactly)."""

    @abstractmethod
    def edit(self, images: Sequence[Image.Image], prompt: str, *, width: int, height: int) -> Image.Image:
        """Draw the image `prompt` describes from the reference `images` (oldest first)."""


class VideoGenerator(ABC):
    """A text-to-video model. `width`, `height`, `num_frames` and `fps` are its sampling defaults."""

    width: int = 832
    height: int = 480
    num_frames: int = 81
    fps: int = 16

    @abstractmethod
    def sample(self, prompt: str, *, seed: int | None = None, **overrides) -> list[Image.Image]:
        """Sample one video for `prompt`; `overrides` replace sampling settings for this call only."""

    def prompt_tokens(self, prompt: str) -> tuple[int, int] | None:
        """(tokens in `prompt`, tokens the text encoder takes), or None if the generator cannot tell.

        The pipeline uses it to keep the composite prompt within the encoder's window.
        """
        return None

    def save_video(self, frames: Sequence[Image.Image], path: str | Path) -> Path:
        """Write `frames` as an mp4 at this generator's frame rate."""
        from vchain.video import write_video

        return write_video(frames, path, fps=self.fps)


class Adapter(ABC):
    """What a tuner produces: a change to a generator that can be applied and removed."""

    @abstractmethod
    def apply(self, generator: VideoGenerator) -> AbstractContextManager[None]:
        """Context manager: the adapter is active inside; on exit the generator is exactly as before."""

    def save(self, directory: str | Path) -> Path:
        """Write the adapter into `directory` so that `Tuner.load_adapter` reads it back. Optional."""
        raise VChainError(f"{type(self).__name__} cannot be saved")


class Tuner(ABC):
    """Turns (keyframe image, caption) pairs into an `Adapter` for a generator, in memory."""

    @abstractmethod
    def tune(self, generator: VideoGenerator, pairs: Sequence[tuple[Image.Image, str]]) -> Adapter:
        """Learn an adapter that makes `generator` render the keyframes for their captions."""

    def load_adapter(self, directory: str | Path) -> Adapter:
        """Read back what `Adapter.save` wrote. Optional."""
        raise VChainError(f"{type(self).__name__} cannot load saved adapters")


class Interpolator(ABC):
    """Turns keyframes straight into video frames (the `no-sparse-tuning` ablation)."""

    @abstractmethod
    def interpolate(self, keyframes: Sequence[Image.Image], num_frames: int) -> list[Image.Image]:
        """Return `num_frames` frames that pass through the keyframes in order."""
