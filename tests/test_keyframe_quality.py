"""Keyframe quality through the public API: colour-drift correction, verification with redraws, limits."""

import json

import numpy as np
import pytest
from PIL import Image

from vchain import KeyframeVerdict, VChainPipeline
from vchain.errors import ConfigurationError
from vchain.interfaces import ImageBackend, Reasoner
from vchain.reasoning import ReasoningConfig
from vchain.testing import DrawingImageBackend, ScriptedReasoner, example_plan

W, H = 128, 96
CAPTIONS = [f"The plate is a shade {i} redder." for i in range(1, 7)]


def lab(image):
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(image, dtype=np.float64) / 255)


class DriftingEditor(ImageBackend):
    """An editor that tints its input: every edit adds b* +2.5 to the latest reference, and the plate in
    the middle turns redder step by step (the change the chain is about)."""

    def __init__(self):
        self.returned = []

    def generate(self, prompt, *, width, height):
        rng = np.random.default_rng(0)
        pixels = (rng.integers(60, 200, (height // 8, width // 8, 3)).repeat(8, 0).repeat(8, 1)).astype(np.uint8)
        pixels[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = (120, 120, 120)
        return self._keep(Image.fromarray(pixels))

    def edit(self, images, prompt, *, width, height):
        from skimage.color import lab2rgb

        values = lab(images[-1])
        values[..., 2] += 2.5  # the editor's cast, on top of whatever it was given
        values[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3, 1] += 6  # the story: redder
        rgb = (lab2rgb(values).clip(0, 1) * 255).round().astype(np.uint8)
        return self._keep(Image.fromarray(rgb))

    def _keep(self, image):
        self.returned.append(image)
        return image


def run(tmp_path, **config):
    reasoner = ScriptedReasoner(CAPTIONS)
    editor = DriftingEditor()
    pipe = VChainPipeline(reasoner, editor, reasoning=ReasoningConfig(width=W, height=H, max_keyframes=7, **config))
    return pipe.think("A plate slowly rusts red.", tmp_path), editor, reasoner


def background_shift(chain):
    """Mean CIE76 distance of the background (block means) from keyframe 0, per keyframe."""
    mask = np.ones((H, W), bool)
    mask[H // 3 - 8 : 2 * H // 3 + 8, W // 3 - 8 : 2 * W // 3 + 8] = False
    reference = lab(chain.images[0])
    return [float(np.linalg.norm((lab(im) - reference)[mask].mean(0))) for im in chain.images]


def plate_a(image):
    return float(lab(image)[H // 3 + 4 : 2 * H // 3 - 4, W // 3 + 4 : 2 * W // 3 - 4, 1].mean())


def test_without_correction_the_cast_accumulates_and_images_are_exactly_the_editors(tmp_path):
    chain, editor, _ = run(tmp_path)
    assert [im.tobytes() for im in chain.images] == [im.tobytes() for im in editor.returned]
    shift = background_shift(chain)
    assert shift[-1] > 12  # six edits of b* +2.5 each


def test_correction_removes_the_cast_and_keeps_the_change_the_chain_is_about(tmp_path):
    plain, _, _ = run(tmp_path / "plain")
    chain, _, _ = run(tmp_path / "corrected", color_correction=1.0)
    assert max(background_shift(chain)) < 1.5
    true_change = plate_a(plain.images[-1]) - plate_a(plain.images[0])  # +36, the editor's cast aside
    kept = (plate_a(chain.images[-1]) - plate_a(chain.images[0])) / true_change
    assert kept > 0.8, kept
    # The editor was given the corrected keyframes: its tint did not compound on its own output.
    assert background_shift(chain) != background_shift(plain)
    corrections = json.loads((tmp_path / "corrected" / "manifest.json").read_text())["stages"]["reasoning"][
        "corrections"
    ]
    assert sorted(int(k) for k in corrections) == list(range(7))
    assert all(abs(corrections[str(i)]["measured"]["b"] - 2.5) < 0.5 for i in range(1, 7))


def test_half_strength_removes_about_half(tmp_path):
    half, _, _ = run(tmp_path, color_correction=0.5)
    assert 1.5 < background_shift(half)[-1] < 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"color_correction": 1.5}, "color_correction must be less than or equal to 1, got 1.5"),
        ({"color_correction": -0.1}, "color_correction must be greater than or equal to 0, got -0.1"),
        ({"max_redos": -1}, "max_redos must be greater than or equal to 0, got -1"),
        ({"verify_keyframes": "yes"}, "verify_keyframes must be a valid boolean, got 'yes'"),
    ],
)
def test_quality_settings_are_checked(fields, message):
    with pytest.raises(ConfigurationError, match=message):
        ReasoningConfig(**fields)


def test_correction_on_keyframes_too_small_for_it_is_refused_before_any_call(tmp_path):
    reasoner = ScriptedReasoner()
    config = ReasoningConfig(width=8, height=8, color_correction=1.0)
    pipe = VChainPipeline(reasoner, DrawingImageBackend(), reasoning=config)
    with pytest.raises(ConfigurationError, match=r"color_correction=1\.0 needs keyframes of at least 16 pixels"):
        pipe.think("p", tmp_path)
    assert reasoner.calls == []


# ---------------------------------------------------------------------------------------- verification


def verdict(matches, problem=""):
    return KeyframeVerdict(matches=matches, problem=problem)


def test_a_rejected_keyframe_is_drawn_again_with_the_problem_in_its_instruction(tmp_path):
    verdicts = [verdict(True), verdict(False, "the egg is still whole"), verdict(True)]
    reasoner = ScriptedReasoner(["The egg lies cracked.", "The yolk spreads."], verdicts=verdicts)
    backend = DrawingImageBackend()
    pipe = VChainPipeline(reasoner, backend, reasoning=ReasoningConfig(width=32, height=32, verify_keyframes=True))
    chain = pipe.think("An egg falls.", tmp_path)
    edits = [prompt for kind, prompt, _ in backend.calls if kind == "edit"]
    assert len(edits) == 3  # keyframe 1 twice, keyframe 2 once
    assert "the egg is still whole" not in edits[0] and "the egg is still whole" in edits[1]
    assert chain.images[1].tobytes() == backend_image(backend, edits[1], 32)  # the redraw was kept
    checks = json.loads((tmp_path / "manifest.json").read_text())["stages"]["reasoning"]["checks"]
    assert [(c["index"], c["matches"]) for c in checks] == [(0, True), (1, False), (1, True), (2, True)]
    calls = json.loads((tmp_path / "manifest.json").read_text())["calls"]
    assert [c["step"] for c in calls].count("verify") == 4


def backend_image(backend, prompt, size):
    from vchain.images import fit_to_frame
    from vchain.testing import draw_image

    return fit_to_frame(draw_image(prompt, size, size), size, size).tobytes()


def test_the_first_keyframe_is_verified_and_redrawn_by_generating_again():
    reasoner = ScriptedReasoner(["The end."], verdicts=[verdict(False, "the table is missing")])
    backend = DrawingImageBackend()
    VChainPipeline(reasoner, backend, reasoning=ReasoningConfig(width=16, height=16, verify_keyframes=True)).think("p")
    generated = [prompt for kind, prompt, _ in backend.calls if kind == "generate"]
    assert len(generated) == 2 and "the table is missing" in generated[1]
    assert next(c for c in reasoner.calls if c[0] == "verify_keyframe") == ("verify_keyframe", 0)  # no images yet


def test_redraws_stop_at_max_redos_and_the_last_draw_is_kept(tmp_path, caplog):
    reasoner = ScriptedReasoner(["The end."], verdicts=[verdict(True)] + [verdict(False, "wrong")] * 10)
    backend = DrawingImageBackend()
    config = ReasoningConfig(width=16, height=16, verify_keyframes=True, max_redos=2)
    chain = VChainPipeline(reasoner, backend, reasoning=config).think("p", tmp_path)
    edits = [prompt for kind, prompt, _ in backend.calls if kind == "edit"]
    assert len(edits) == 3 and "kept after 2 redraw(s)" in caplog.text
    assert chain.images[1].tobytes() == backend_image(backend, edits[-1], 16)


def test_a_resumed_run_pays_no_verdict_twice(tmp_path):
    class Flaky(DrawingImageBackend):
        """Fails the edit right after keyframe 1's first draw was rejected."""

        down = True

        def edit(self, images, prompt, *, width, height):
            if self.down and "no" in prompt.split("because: ")[-1]:
                raise RuntimeError("editor down")
            return super().edit(images, prompt, width=width, height=height)

    reasoner = ScriptedReasoner(["a", "b"], verdicts=[verdict(True), verdict(False, "no")])
    config = ReasoningConfig(width=16, height=16, verify_keyframes=True, max_redos=1)
    with pytest.raises(Exception, match="editor down"):
        VChainPipeline(reasoner, Flaky(), reasoning=config).think("p", tmp_path)
    again, backend = ScriptedReasoner(["a", "b"]), Flaky()
    backend.down = False
    VChainPipeline(again, backend, reasoning=config).think("p", tmp_path)
    # keyframe 1 was rejected once and redrawn (the redraw is verified); keyframe 2 is new
    assert [c for c in again.calls if c[0] == "verify_keyframe"] == [("verify_keyframe", 1), ("verify_keyframe", 2)]
    checks = json.loads((tmp_path / "manifest.json").read_text())["stages"]["reasoning"]["checks"]
    assert [(c["index"], c["matches"]) for c in checks] == [(0, True), (1, False), (1, True), (2, True)]


def test_verification_with_a_reasoner_that_cannot_verify_is_refused_before_any_work(tmp_path):
    class Plain(Reasoner):
        def plan(self, prompt):
            return example_plan(prompt)

        def next_keyframe(self, chain, composite):
            raise AssertionError("never asked")

    backend = DrawingImageBackend()
    pipe = VChainPipeline(Plain(), backend, reasoning=ReasoningConfig(verify_keyframes=True))
    with pytest.raises(ConfigurationError, match="verify_keyframes=True needs a reasoner with verify_keyframe"):
        pipe.think("p", tmp_path / "run")
    assert backend.calls == [] and not (tmp_path / "run" / "manifest.json").exists()
