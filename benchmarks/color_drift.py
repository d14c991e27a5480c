"""Measure colour-drift correction on a synthetic keyframe chain whose true colours are known.

    python benchmarks/color_drift.py                      # 832x480, strengths 0, 0.5, 0.75 and 1
    python benchmarks/color_drift.py --strengths 0.9 1 --cast 4

The scene is a textured wall and floor, a metal plate that rusts over the chain (its true colour at every
keyframe is known) and a ball that crosses the frame. `DriftingEditor` stands in for an image editor: it
redraws the scene's next state in the colour balance of the image it is given, adds its own cast (b* +2.5
per edit by default), shifts the texture by up to a pixel and adds pixel noise. Each corrected keyframe is
what the next edit is given, as in vchain's reasoning loop. Printed per strength, as a markdown table:
the background's mean CIE76 ΔE to keyframe 0 at each keyframe (on 16-pixel block means, so that the redraw
noise averages out), and the share of the plate's true colour change that survives. Two rows compare: one
matches each keyframe's a*b* histogram to keyframe 0's instead, one has an editor without a cast, whose
ΔE is what the redraw alone (shift and noise) leaves: the floor of any correction.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage.color import lab2rgb, rgb2lab
from skimage.exposure import match_histograms

from vchain.color import Cast, ColorCorrector

MEASURE_BLOCK = 16
EDITOR_CAST = Cast(b=2.5)  # per edit: a little above gpt-image-1's measured b* +12.3 over 6 edits
PLATE_START = np.array([62.0, -3.0, -12.0])  # grey-blue steel
PLATE_END = np.array([46.0, 22.0, 34.0])  # rust


@dataclass(frozen=True)
class Scene:
    """The scene's true state over `edits` edits at `width` x `height` (colours in CIELAB)."""

    width: int = 832
    height: int = 480
    edits: int = 6

    def plate_colour(self, k: int) -> np.ndarray:
        return PLATE_START + (PLATE_END - PLATE_START) * k / self.edits

    @property
    def plate(self) -> tuple[slice, slice]:
        """The plate's rows and columns."""
        h, w = self.height, self.width
        return slice(int(0.30 * h), int(0.62 * h)), slice(int(0.08 * w), int(0.30 * w))

    def ball(self, k: int) -> tuple[float, float, float]:
        """Centre (x, y) and radius of the ball at keyframe `k`: it crosses the right half of the frame."""
        t = k / self.edits
        return self.width * (0.45 + 0.45 * t), self.height * (0.25 + 0.35 * t), 0.09 * self.height

    def render(self, k: int, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
        """Keyframe `k` as it truly is, in CIELAB (height x width x 3), moved by `shift` (rows, columns)
        of at most a pixel."""
        h, w = self.height, self.width
        y, x = np.mgrid[0 : h + 2, 0 : w + 2].astype(np.float64) - 1  # one pixel beyond each edge
        floor = y > 0.7 * h
        grain = _value_noise(h + 2, w + 2, cell=12, seed=1)
        lab = np.empty((h + 2, w + 2, 3))
        lab[..., 0] = np.where(floor, 48, 70) + 6 * np.sin(x / 19) * np.cos(y / 13) + 8 * grain
        lab[..., 1] = np.where(floor, 12, -4) + 4 * np.sin((x + y) / 41)
        lab[..., 2] = np.where(floor, 22, 6) + 5 * np.cos(x / 53) + 4 * grain
        rows, columns = self.plate
        plate = (y >= rows.start) & (y < rows.stop) & (x >= columns.start) & (x < columns.stop)
        lab[plate] = self.plate_colour(k) + np.array([5.0, 0, 0]) * grain[plate, None]
        cx, cy, r = self.ball(k)
        lab[(x - cx) ** 2 + (y - cy) ** 2 <= r**2] = (52.0, 58.0, 38.0)
        dy, dx = shift
        return lab[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    def background(self) -> np.ndarray:
        """Blocks (of `MEASURE_BLOCK` pixels) showing background in every keyframe, with a margin."""
        h, w = self.height, self.width
        y, x = np.mgrid[0:h, 0:w]
        mask = np.ones((h, w), dtype=bool)
        rows, columns = self.plate
        mask[rows.start - 4 : rows.stop + 4, columns.start - 4 : columns.stop + 4] = False
        for k in range(self.edits + 1):
            cx, cy, r = self.ball(k)
            mask &= (x - cx) ** 2 + (y - cy) ** 2 > (r + 4) ** 2
        b = MEASURE_BLOCK
        rows_, columns_ = h // b, w // b
        blocks = mask[: rows_ * b, : columns_ * b].reshape(rows_, b, columns_, b)
        return blocks.all(axis=(1, 3))


class DriftingEditor:
    """An image editor with a colour cast: it redraws the scene's next state in its input's colours.

    Where the image it is given differs in colour from the true scene (an earlier cast not removed),
    the redraw keeps that difference, then adds `cast`; so an uncorrected chain drifts by `cast` per edit.
    """

    def __init__(self, scene: Scene, cast: Cast = EDITOR_CAST, noise: float = 2.0, seed: int = 0):
        self.scene, self.cast, self.noise = scene, cast, noise
        self.rng = np.random.default_rng(seed)
        self.drawn: np.ndarray | None = None  # the true scene under the last image returned

    def generate(self) -> Image.Image:
        self.drawn = self.scene.render(0)
        return self._image(self.drawn)

    def edit(self, given: Image.Image, k: int) -> Image.Image:
        inherited = (_lab(given) - self.drawn).reshape(-1, 3).mean(axis=0)
        dy, dx = (int(s) for s in self.rng.integers(-1, 2, size=2))
        self.drawn = self.scene.render(k, shift=(dy, dx))
        return self._image(self.drawn + inherited + self.cast.to_array())

    def _image(self, lab: np.ndarray) -> Image.Image:
        rgb = lab2rgb(lab) * 255 + self.rng.normal(0, self.noise, size=lab.shape)
        return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))


@dataclass(frozen=True)
class ChainFigures:
    """What one corrected chain measured.

    Attributes:
        background_delta_e: per keyframe 1..edits, the background's mean ΔE to keyframe 0 (block means).
        plate_retained: the share of the plate's true colour change (keyframe 0 to the last) that the
            chain shows, projected on the true change (1: all of it, 0: erased).
        plate_error: ΔE between the plate's shown and true colour change at the last keyframe.
        seconds_per_keyframe: mean time of one correction.
    """

    background_delta_e: list[float]
    plate_retained: float
    plate_error: float
    seconds_per_keyframe: float


def run_chain(scene: Scene, strength: float | str, cast: Cast = EDITOR_CAST, seed: int = 0) -> ChainFigures:
    """Build the chain with `DriftingEditor`, correcting each keyframe at `strength` (or `"histogram"`)."""
    editor = DriftingEditor(scene, cast=cast, seed=seed)
    corrector = ColorCorrector(strength) if strength != "histogram" else None
    chain, seconds = [], 0.0
    for k in range(scene.edits + 1):
        raw = editor.generate() if k == 0 else editor.edit(chain[-1], k)
        start = time.perf_counter()
        if corrector is not None:
            image, _ = corrector(chain, raw)
        else:
            image = raw if k == 0 else _match_ab_histogram(raw, chain[0])
        seconds += time.perf_counter() - start if k else 0.0
        chain.append(image)
    return measure(scene, chain, seconds / scene.edits)


def measure(scene: Scene, chain: list[Image.Image], seconds_per_keyframe: float = 0.0) -> ChainFigures:
    """The figures of `chain` (keyframes 0..edits of `scene`)."""
    background = scene.background()
    labs = [_lab(image) for image in chain]
    reference = _block_means(labs[0])[background]
    delta_e = [float(np.linalg.norm(_block_means(lab)[background] - reference, axis=-1).mean()) for lab in labs[1:]]
    rows, columns = scene.plate
    inner = (slice(rows.start + 3, rows.stop - 3), slice(columns.start + 3, columns.stop - 3))
    shown = labs[-1][inner].reshape(-1, 3).mean(0) - labs[0][inner].reshape(-1, 3).mean(0)
    true = scene.plate_colour(scene.edits) - scene.plate_colour(0)
    return ChainFigures(
        background_delta_e=delta_e,
        plate_retained=float(shown @ true / (true @ true)),
        plate_error=float(np.linalg.norm(shown - true)),
        seconds_per_keyframe=seconds_per_keyframe,
    )


def _match_ab_histogram(image: Image.Image, reference: Image.Image) -> Image.Image:
    lab, target = _lab(image), _lab(reference)
    lab[..., 1:] = match_histograms(lab[..., 1:], target[..., 1:], channel_axis=-1)
    return Image.fromarray((lab2rgb(lab) * 255).round().astype(np.uint8))


def _lab(image: Image.Image) -> np.ndarray:
    return rgb2lab(np.asarray(image, dtype=np.float64) / 255)


def _block_means(lab: np.ndarray) -> np.ndarray:
    b = MEASURE_BLOCK
    rows, columns = lab.shape[0] // b, lab.shape[1] // b
    return lab[: rows * b, : columns * b].reshape(rows, b, columns, b, 3).mean(axis=(1, 3))


def _value_noise(height: int, width: int, cell: int, seed: int) -> np.ndarray:
    """Smooth deterministic noise in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = np.random.default_rng(seed).uniform(-1, 1, size=(height // cell + 2, width // cell + 2))
    image = Image.fromarray(coarse.astype(np.float32))
    return np.asarray(image.resize((width + 2 * cell, height + 2 * cell), Image.Resampling.BILINEAR))[
        cell : cell + height, cell : cell + width
    ]


def main(argv: list[str] | None = None) -> dict[str, ChainFigures]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 0.75, 1.0])
    parser.add_argument("--cast", type=float, default=2.5, help="the editor's b* cast per edit")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--edits", type=int, default=6)
    args = parser.parse_args(argv)

    scene = Scene(args.width, args.height, args.edits)
    cast = Cast(b=args.cast)
    cases = {f"strength {strength:g}": (strength, cast) for strength in args.strengths}
    cases["a*b* histogram matching to kf 0"] = ("histogram", cast)
    cases["editor without a cast, uncorrected (redraw floor)"] = (0.0, Cast())
    results = {name: run_chain(scene, strength, cast=c) for name, (strength, c) in cases.items()}
    header = [f"kf {k}" for k in range(1, scene.edits + 1)]
    print("| correction | " + " | ".join(header) + " | plate change kept | plate error | ms/keyframe |")
    print("|---" * (len(header) + 4) + "|")
    for name, figures in results.items():
        cells = [f"{value:.2f}" for value in figures.background_delta_e]
        print(
            f"| {name} | " + " | ".join(cells) + f" | {figures.plate_retained:.0%} | "
            f"{figures.plate_error:.2f} | {figures.seconds_per_keyframe * 1000:.0f} |"
        )
    return results


if __name__ == "__main__":
    main()
