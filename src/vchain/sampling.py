"""Stage 3, video sampling: the composite prompt within the text window, sampled with the adapter applied."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from PIL import Image

from vchain.accounting import collect_timings
from vchain.chain import ThoughtChain
from vchain.errors import NumericalError, StageError, VChainError
from vchain.interfaces import Adapter, Interpolator, VideoGenerator

logger = logging.getLogger(__name__)


@dataclass
class Rendered:
    """Frames and where their time went (`denoise`, `decode`, ... as the generator reports them)."""

    frames: list[Image.Image]
    seconds: dict[str, float] = field(default_factory=dict)


def composite_prompt(chain: ThoughtChain, generator: VideoGenerator | None) -> str:
    """The chain's captions joined, kept within the generator's text window.

    Policy when the joined captions are too long for the text encoder (UMT5: 512 tokens): keep the
    first caption (the scene) and the last (the outcome) and drop captions from the middle of the
    chain until it fits, with a warning naming how many were dropped. If the first and last alone
    do not fit, the encoder truncates the end and a warning says so.
    """
    captions = chain.captions
    counted = generator.prompt_tokens(" ".join(captions)) if generator is not None else None
    if counted is None or counted[0] <= counted[1]:
        return chain.composite_prompt
    limit = counted[1]
    kept = list(captions)
    while len(kept) > 2 and generator.prompt_tokens(" ".join(kept))[0] > limit:
        del kept[len(kept) // 2]
    text = " ".join(kept)
    dropped = len(captions) - len(kept)
    still_long = generator.prompt_tokens(text)[0] > limit
    logger.warning(
        "The composite prompt of %r has %d tokens, over the text encoder's %d: dropped %d middle caption(s) to fit%s.",
        chain.name,
        counted[0],
        limit,
        dropped,
        "; still too long, the encoder will truncate the end" if still_long else "",
    )
    return text


def render(
    generator: VideoGenerator,
    prompt: str,
    adapter: Adapter | None = None,
    *,
    seed: int | None = 0,
    **overrides,
) -> Rendered:
    """Sample `prompt` with `adapter` active for this call only; the generator is exactly restored after.

    A non-finite video (a diverged adapter) is a `StageError`: it is never returned as frames.
    """
    with collect_timings() as seconds:
        start = time.perf_counter()
        try:
            if adapter is None:
                frames = generator.sample(prompt, seed=seed, **overrides)
            else:
                with adapter.apply(generator):
                    frames = generator.sample(prompt, seed=seed, **overrides)
        except NumericalError as e:
            raise StageError(str(e), stage="sampling") from e
        except VChainError:
            raise
        except Exception as e:
            raise StageError(
                f"{type(generator).__name__}.sample() raised {type(e).__name__}: {e}", stage="sampling"
            ) from e
        if not seconds:
            seconds["sample"] = round(time.perf_counter() - start, 3)
    return Rendered(_checked_frames(frames, f"{type(generator).__name__}.sample()"), dict(seconds))


def _checked_frames(frames: object, where: str, count: int | None = None) -> list[Image.Image]:
    """A backend's frames, refused (naming `where`) unless a non-empty list of same-size PIL images."""
    if not isinstance(frames, list) or not frames or not all(isinstance(f, Image.Image) for f in frames):
        raise StageError(
            f"{where} must return a non-empty list of PIL images, got {type(frames).__name__}: {frames!r:.80}",
            stage="sampling",
        )
    if len({frame.size for frame in frames}) != 1 or 0 in frames[0].size:
        raise StageError(
            f"{where} returned frames of sizes {sorted({f.size for f in frames})}; they must share one non-empty size",
            stage="sampling",
        )
    if count is not None and len(frames) != count:
        raise StageError(f"{where} returned {len(frames)} frames, {count} were asked for", stage="sampling")
    return frames


def interpolate(interpolator: Interpolator, chain: ThoughtChain, num_frames: int) -> Rendered:
    """The `no-sparse-tuning` ablation: the keyframes straight into `num_frames` frames."""
    start = time.perf_counter()
    where = f"{type(interpolator).__name__}.interpolate()"
    try:
        frames = interpolator.interpolate(chain.images, num_frames)
    except VChainError:
        raise
    except Exception as e:
        raise StageError(f"{where} raised {type(e).__name__}: {e}", stage="sampling") from e
    return Rendered(_checked_frames(frames, where, num_frames), {"interpolate": round(time.perf_counter() - start, 3)})
