"""Colour-drift correction on a synthetic chain whose true colours are known (`benchmarks/color_drift.py`).

The scene: a textured background, a plate that rusts over six edits and a ball that crosses the frame;
the editor redraws each state in the colours of the image it is given and adds b* +2.5 per edit.
"""

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from vchain.color import Cast, ColorCorrection, ColorCorrector, correct, estimate_cast
from vchain.errors import ConfigurationError

spec = importlib.util.spec_from_file_location(
    "color_drift", Path(__file__).parents[1] / "benchmarks" / "color_drift.py"
)
drift = importlib.util.module_from_spec(spec)
sys.modules["color_drift"] = drift  # dataclasses look their module up
spec.loader.exec_module(drift)

SCENE = drift.Scene(width=320, height=192, edits=6)


@functools.cache
def figures(strength: float | str, cast: Cast = drift.EDITOR_CAST):
    return drift.run_chain(SCENE, strength, cast=cast)


def build_chain(corrector: ColorCorrector, cast: Cast = drift.EDITOR_CAST):
    """(raw, corrected, record) per keyframe, each edit given the previous corrected keyframe."""
    editor, chain, steps = drift.DriftingEditor(SCENE, cast=cast), [], []
    for k in range(SCENE.edits + 1):
        raw = editor.generate() if k == 0 else editor.edit(chain[-1], k)
        image, record = corrector(chain, raw)
        chain.append(image)
        steps.append((raw, image, record))
    return steps


def tinted(image: Image.Image, **offset: float) -> Image.Image:
    """`image` with a global CIELAB offset added (removing the opposite cast)."""
    return correct(image, Cast(**{channel: -value for channel, value in offset.items()}))


def lab(image: Image.Image) -> np.ndarray:
    return rgb2lab(np.asarray(image, dtype=np.float64) / 255)


def test_correction_undoes_the_drift_and_keeps_the_legitimate_change():
    uncorrected, corrected = figures(0.0), figures(1.0)
    # Uncorrected, the background drifts by the editor's cast at every edit: 2.5 per edit, 15 by the end.
    assert uncorrected.background_delta_e[-1] > 6 * 1.5
    assert (np.diff(uncorrected.background_delta_e) > 0).all()
    assert max(corrected.background_delta_e) <= 1.5
    # The rust is kept; the cast does not ride on it either (uncorrected it shows far more than the truth).
    assert 0.8 <= corrected.plate_retained <= 1.2 and corrected.plate_error < 1.5
    assert uncorrected.plate_error > 10


def test_whole_histogram_matching_overcorrects_where_correction_does_not():
    # The reason for estimating on unchanged regions: matching to keyframe 0 erases part of the rust
    # and pushes the background off by a few ΔE.
    matched, corrected = figures("histogram"), figures(1.0)
    assert matched.plate_error > 3 * corrected.plate_error + 1
    assert matched.background_delta_e[-1] > 2 * corrected.background_delta_e[-1]


def test_the_estimate_ignores_what_changed():
    editor = drift.DriftingEditor(SCENE)
    first = editor.generate()
    estimate = estimate_cast(first, editor.edit(first, 1))
    assert np.allclose(estimate.cast.to_array(), [0, 0, 2.5], atol=0.1)
    rows, columns = SCENE.plate
    plate = estimate.matched[
        rows.start // 16 + 1 : rows.stop // 16 - 1, columns.start // 16 + 1 : columns.stop // 16 - 1
    ]
    assert plate.size and not plate.any()
    x, y, _ = SCENE.ball(1)
    assert not estimate.matched[int(y) // 16, int(x) // 16]
    assert estimate.matched_fraction > 0.7


def test_an_image_of_another_size_is_measured_at_the_previous_ones():
    editor = drift.DriftingEditor(SCENE)
    first = editor.generate()
    larger = editor.edit(first, 1).resize((480, 288), Image.Resampling.LANCZOS)
    assert np.allclose(estimate_cast(first, larger).cast.to_array(), [0, 0, 2.5], atol=0.15)
    image, record = ColorCorrector(1.0)([first], larger)
    assert image.size == larger.size and record.removed.b == pytest.approx(2.5, abs=0.15)


@pytest.mark.parametrize("cast", [Cast(b=2.5), Cast(L=-1.2, a=0.7, b=1.9)])
def test_the_removed_shift_is_exact_on_average(cast):
    # Every pixel moves by about the same fraction of a level: rounding alone would bias the mean by a
    # few hundredths of a ΔE per keyframe, and the chain would inherit and accumulate the bias.
    image = drift.DriftingEditor(SCENE, noise=0.0).generate()
    shifted = lab(correct(image, cast)) - lab(image)
    assert np.allclose(shifted.reshape(-1, 3).mean(axis=0), -cast.to_array(), atol=0.01)


def test_strength_zero_returns_every_image_as_it_came_and_still_measures_the_drift():
    for k, (raw, image, record) in enumerate(build_chain(ColorCorrector(0.0))):
        assert image is raw
        assert record.removed == Cast()
        assert record.cast.b == pytest.approx(2.5 * k, abs=0.3)
    image = Image.new("RGB", (32, 32), (120, 80, 40))
    assert correct(image, Cast(b=5), strength=0) is image


def test_strength_scales_the_correction():
    editor = drift.DriftingEditor(SCENE)
    first = editor.generate()
    edited = editor.edit(first, 1)
    half, full = (ColorCorrector(s)([first], edited)[1] for s in (0.5, 1.0))
    assert half.measured == full.measured and full.removed.b == pytest.approx(2.5, abs=0.1)
    assert half.removed.b == pytest.approx(full.removed.b / 2)
    final = [figures(s).background_delta_e[-1] for s in (0.0, 0.5, 0.75, 1.0)]
    assert final == sorted(final, reverse=True)
    # What a partial correction leaves settles at (1 - s) / s of one edit's cast instead of growing.
    assert figures(0.5).background_delta_e[-1] == pytest.approx(2.5, abs=0.6)


def test_a_scene_without_cast_is_left_almost_unchanged():
    for raw, image, record in build_chain(ColorCorrector(1.0), cast=Cast()):
        assert record.removed.magnitude < 0.1
        assert np.abs(np.asarray(image, dtype=int) - np.asarray(raw, dtype=int)).max() <= 1


def test_a_whole_scene_change_is_left_alone_when_abrupt_and_taken_for_a_cast_when_gradual():
    editor = drift.DriftingEditor(SCENE, cast=Cast())
    first = editor.generate()
    edited = editor.edit(first, 1)
    lights_out = tinted(edited, L=-20)
    image, record = ColorCorrector(1.0)([first], lights_out)
    assert image is lights_out and not record.accepted and record.removed == Cast()
    assert np.allclose(record.measured.to_array(), [-20, 0, 0], atol=0.5)
    # Dimming by 3 in an edit looks like an editor's cast, and is removed as one (the documented limit).
    image, record = ColorCorrector(1.0)([first], tinted(edited, L=-3))
    assert record.accepted and np.allclose(record.removed.to_array(), [-3, 0, 0], atol=0.3)
    assert estimate_cast(edited, image).cast.magnitude < 0.3


def test_a_redo_replaces_its_record_and_a_resumed_corrector_continues_the_chain():
    corrector = ColorCorrector(0.5)
    steps = build_chain(corrector)
    chain = [image for _, image, _ in steps]
    # Keyframe 3 drawn again, this time without the editor's cast: its record replaces the first one's.
    redo, redo_record = corrector(chain[:3], tinted(steps[3][0], b=-2.5))
    assert corrector.records[3] is redo_record
    assert redo_record.cast.b == pytest.approx(steps[2][2].residual.b, abs=0.2)
    # A corrector rebuilt from records that went through JSON (the manifest) gives the same keyframe 4.
    saved = {i: ColorCorrection.model_validate_json(r.model_dump_json()) for i, r in corrector.records.items()}
    resumed = ColorCorrector(0.5, records=saved)
    again, record = resumed([*chain[:3], redo], steps[4][0])
    expected, expected_record = corrector([*chain[:3], redo], steps[4][0])
    assert record == expected_record and again.tobytes() == expected.tobytes()
    assert record.cast.b == pytest.approx(redo_record.residual.b + record.measured.b)


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), True, "1"])
def test_strength_outside_0_to_1_is_refused(strength):
    with pytest.raises(ConfigurationError, match="strength"):
        ColorCorrector(strength)
    with pytest.raises(ConfigurationError, match="strength"):
        correct(Image.new("RGB", (16, 16)), Cast(b=1), strength)


def test_images_smaller_than_a_block_are_refused():
    with pytest.raises(ConfigurationError, match="block_size"):
        estimate_cast(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8)))
