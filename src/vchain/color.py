"""Colour-drift correction: remove the colour cast an image editor adds to every keyframe it edits.

Editors such as gpt-image-1 tint their output slightly on every edit. Each keyframe is edited from the
ones before it, so the tints add up along the chain (a yellow shift by the sixth keyframe), and the video
model is then tuned on that shift. Matching every keyframe's colours to keyframe 0 removes it, but it also
erases the colour changes the story is about (paint mixing, rust spreading).

The correction works in CIELAB, where a global cast is close to a constant offset and the CIE76 colour
difference ΔE is plain Euclidean distance. It rests on one observation: where the content did not change
between two consecutive keyframes, any colour difference is the editor's. `estimate_cast` finds those
regions and measures the offset on them:

1. Both keyframes are averaged over blocks of `block_size` pixels, which averages out redraw noise and
   makes a redraw that moves a texture by a pixel or two hardly count.
2. The per-block difference is the cast, plus the content change wherever the content changed. Most of a
   keyframe shows the same scene as the one before, so the median difference is a first estimate.
3. A block whose difference lies within a threshold of the estimate counts as unchanged; the threshold is
   three times the median distance of all blocks to the estimate (the spread of the unchanged blocks,
   which are the majority), never below `min_threshold`. The estimate becomes the mean difference of the
   unchanged blocks, and step 3 repeats until the set of unchanged blocks stops changing. An object that
   changed colour falls outside the threshold and does not pull the estimate.

`ColorCorrector` applies this along a chain. It compares each new raw keyframe with the previous
*corrected* one (the one the editor was given), so it measures the cast of that one edit; it adds the cast
that the previous keyframe still carried (none at strength 1) and removes `strength` times that total. The
corrected keyframe is the one the next edit sees, so the casts do not compound.

What it cannot tell apart: a change that affects the whole image alike (lights dimming everywhere, a
colour grade) looks exactly like a cast. `ColorCorrector` leaves alone a per-edit change larger than its
`max_cast` (no editor tints that much in one edit), or measured on too little of the image; a gradual one
is removed like a cast.

The sRGB <-> CIELAB conversions are scikit-image's rather than vchain's own: they involve the sRGB
transfer curve, the D65 white point, CIE's piecewise cube root and gamut clipping on the way back, all
easy to get subtly wrong, and scikit-image's are tested, widely used and vectorised.
It is imported on the first conversion, since it loads scipy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from vchain.errors import ConfigurationError


class Cast(BaseModel):
    """A global colour offset in CIELAB: L* (lightness), a* (green to red), b* (blue to yellow)."""

    model_config = ConfigDict(frozen=True)

    L: float = 0.0
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def from_array(cls, values: np.ndarray) -> Cast:
        L, a, b = (float(v) for v in values)
        return cls(L=L, a=a, b=b)

    def to_array(self) -> np.ndarray:
        return np.array([self.L, self.a, self.b])

    @property
    def magnitude(self) -> float:
        """The size of the offset as a CIE76 ΔE."""
        return math.hypot(self.L, self.a, self.b)

    def __add__(self, other: Cast) -> Cast:
        return Cast(L=self.L + other.L, a=self.a + other.a, b=self.b + other.b)

    def __sub__(self, other: Cast) -> Cast:
        return Cast(L=self.L - other.L, a=self.a - other.a, b=self.b - other.b)

    def __mul__(self, factor: float) -> Cast:
        return Cast(L=self.L * factor, a=self.a * factor, b=self.b * factor)

    __rmul__ = __mul__


@dataclass(frozen=True)
class CastEstimate:
    """What `estimate_cast` found.

    Attributes:
        cast: the colour offset of the current image over the previous one, on the unchanged blocks.
        matched: one flag per block (rows x columns): True where the content was judged unchanged.
    """

    cast: Cast
    matched: np.ndarray

    @property
    def matched_fraction(self) -> float:
        """The share of the image the cast was measured on."""
        return float(self.matched.mean())


class ColorCorrection(BaseModel):
    """What the colour correction measured and did for one keyframe (the manifest keeps one per keyframe).

    Attributes:
        measured: the offset of the raw keyframe over the previous corrected one, on unchanged blocks.
        matched_fraction: the share of the keyframe `measured` comes from (1 for keyframe 0, its own
            reference).
        accepted: whether `measured` was taken as the editor's cast; it is not when too little of the image
            matched or when it is larger than any editor's tint.
        cast: the editor's cast the raw keyframe carries in all: what the previous keyframe still had plus
            `measured` (if accepted).
        removed: `strength` times `cast`, subtracted from the whole keyframe.
    """

    model_config = ConfigDict(frozen=True)

    measured: Cast = Cast()
    matched_fraction: float = 1.0
    accepted: bool = True
    cast: Cast = Cast()
    removed: Cast = Cast()

    @property
    def residual(self) -> Cast:
        """The cast left in the corrected keyframe, which the next edit inherits."""
        return self.cast - self.removed


def estimate_cast(
    previous: Image.Image, current: Image.Image, *, block_size: int = 16, min_threshold: float = 1.5
) -> CastEstimate:
    """The global colour offset that an edit added to `previous` to give `current` (see the module docs).

    Args:
        previous: the image the editor was given.
        current: the image it returned; brought to `previous`'s size if it differs.
        block_size: side in pixels of the blocks whose mean colours are compared.
        min_threshold: the smallest distance (ΔE) from the estimate at which a block counts as changed.
    """
    _check_estimate_settings(block_size, min_threshold)
    _check_image_size(block_size, previous)
    if current.size != previous.size:
        current = _resized(current, previous.size)
    return _estimate(_to_lab(previous), _to_lab(current), block_size, min_threshold)


def correct(image: Image.Image, cast: Cast, strength: float = 1.0) -> Image.Image:
    """`image` with `strength` times `cast` removed from every pixel; `image` itself when that is nothing."""
    _check_strength(strength)
    if strength == 0 or cast.magnitude == 0:
        return image
    return _to_image(_to_lab(image) - (strength * cast).to_array())


class ColorCorrector:
    """Removes the editor's accumulated colour cast from each new keyframe of a chain.

    Called once per keyframe, keyframe 0 included (it is the colour reference and comes back unchanged),
    with the chain's keyframes so far, already corrected. `records` maps each keyframe's index to its
    `ColorCorrection`; when a keyframe is drawn again (a rejected edit redone), the new record replaces
    the old one, and the next keyframe builds on the new.

    >>> corrector = ColorCorrector(strength=1.0)
    >>> first, _ = corrector([], generated)              # doctest: +SKIP
    >>> second, record = corrector([first], edited)      # doctest: +SKIP

    Args:
        strength: the share of the cast removed, from 0 (off: every image is returned as it came, though
            the drift is still measured and recorded) to 1.
        records: the records of an earlier run by keyframe index, to continue its chain. A keyframe
            without one is taken as carrying no cast.
        block_size: side in pixels of the compared blocks (see `estimate_cast`).
        min_threshold: see `estimate_cast`.
        max_cast: the largest per-edit offset (ΔE) taken for the editor's; a larger one is a change of the
            whole scene (lights going out) and is left alone. gpt-image-1 tints by about 2 per edit.
        min_matched_fraction: below this share of unchanged blocks (a new viewpoint, say) the content
            cannot be told from the cast, and the edit's offset is left alone.
    """

    def __init__(
        self,
        strength: float = 1.0,
        *,
        records: Mapping[int, ColorCorrection] | None = None,
        block_size: int = 16,
        min_threshold: float = 1.5,
        max_cast: float = 6.0,
        min_matched_fraction: float = 0.25,
    ):
        _check_strength(strength)
        _check_estimate_settings(block_size, min_threshold)
        if not max_cast > 0 or not math.isfinite(max_cast):
            raise ConfigurationError(f"max_cast must be a positive ΔE, got {max_cast!r}")
        if not 0 <= min_matched_fraction <= 1:
            raise ConfigurationError(f"min_matched_fraction must be between 0 and 1, got {min_matched_fraction!r}")
        self.strength, self.records = strength, dict(records or {})
        self.block_size, self.min_threshold = block_size, min_threshold
        self.max_cast, self.min_matched_fraction = max_cast, min_matched_fraction

    def __call__(self, chain: Sequence[Image.Image], image: Image.Image) -> tuple[Image.Image, ColorCorrection]:
        """Correct `image`, the keyframe that follows `chain`; returns it with its record."""
        index = len(chain)
        if index == 0:
            self.records[0] = ColorCorrection()
            return image, self.records[0]
        previous = chain[-1]
        _check_image_size(self.block_size, previous)
        lab = _to_lab(image)
        measured = lab if image.size == previous.size else _to_lab(_resized(image, previous.size))
        estimate = _estimate(_to_lab(previous), measured, self.block_size, self.min_threshold)
        accepted = estimate.matched_fraction >= self.min_matched_fraction and estimate.cast.magnitude <= self.max_cast
        inherited = self.records[index - 1].residual if index - 1 in self.records else Cast()
        cast = inherited + estimate.cast if accepted else inherited
        record = ColorCorrection(
            measured=estimate.cast,
            matched_fraction=estimate.matched_fraction,
            accepted=accepted,
            cast=cast,
            removed=self.strength * cast,
        )
        self.records[index] = record
        if self.strength == 0 or record.removed.magnitude == 0:
            return image, record
        return _to_image(lab - record.removed.to_array()), record


def _estimate(previous: np.ndarray, current: np.ndarray, block_size: int, min_threshold: float) -> CastEstimate:
    before, after = _block_means(previous, block_size), _block_means(current, block_size)
    difference = (after - before).reshape(-1, 3)
    offset = np.median(difference, axis=0)
    matched = np.zeros(len(difference), dtype=bool)
    # Each pass can only move the estimate towards the unchanged blocks' mean; a handful of passes
    # settles it, the cap guards against a set that alternates between two states.
    for _ in range(20):
        distance = np.linalg.norm(difference - offset, axis=1)
        now_matched = distance <= max(min_threshold, 3.0 * float(np.median(distance)))
        if (now_matched == matched).all():
            break
        matched = now_matched
        offset = difference[matched].mean(axis=0)
    return CastEstimate(Cast.from_array(offset), matched.reshape(before.shape[:2]))


def _block_means(lab: np.ndarray, block_size: int) -> np.ndarray:
    """Mean colour of each whole block (rows x columns x 3); a partial block at the edge is dropped."""
    rows, columns = lab.shape[0] // block_size, lab.shape[1] // block_size
    blocks = lab[: rows * block_size, : columns * block_size].reshape(rows, block_size, columns, block_size, 3)
    return blocks.mean(axis=(1, 3))


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at `size`, for measuring only: a box filter averages, as the blocks do."""
    return image.convert("RGB").resize(size, Image.Resampling.BOX)


def _to_lab(image: Image.Image) -> np.ndarray:
    from skimage.color import rgb2lab  # here, not at the top: it loads scipy, more than `import vchain` costs

    return rgb2lab(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def _to_image(lab: np.ndarray) -> Image.Image:
    from skimage.color import lab2rgb

    with warnings.catch_warnings():
        # Colours pushed past the sRGB gamut are clipped to it, as intended; skimage warns about each.
        warnings.filterwarnings("ignore", message=".*negative Z values", category=UserWarning)
        rgb = lab2rgb(lab) * 255.0
    # A shift moves every pixel by about the same fraction of a level, so plain rounding errs the same
    # way everywhere: a bias of up to half a level that the next edit inherits and the chain accumulates.
    # Dithering before rounding makes the rounding unbiased; a fixed seed keeps the output deterministic.
    rgb += np.random.default_rng(0).uniform(-0.5, 0.5, size=rgb.shape)
    return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))


def _check_strength(strength: float) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ConfigurationError(f"strength must be a number from 0 (off) to 1, got {strength!r}")


def _check_estimate_settings(block_size: int, min_threshold: float) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ConfigurationError(f"block_size must be a positive integer, got {block_size!r}")
    if not min_threshold > 0 or not math.isfinite(min_threshold):
        raise ConfigurationError(f"min_threshold must be a positive ΔE, got {min_threshold!r}")


def _check_image_size(block_size: int, image: Image.Image) -> None:
    if min(image.size) < block_size:
        raise ConfigurationError(
            f"images must be at least block_size={block_size} pixels on each side, got {image.size}"
        )
