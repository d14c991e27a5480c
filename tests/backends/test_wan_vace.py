"""Wan2.1-VACE on a tiny random `WanVACEPipeline`: keyframes held at their frames, tuning, checkpoint checks."""

import numpy as np
import pytest
import torch
from PIL import Image

from vchain.backends import generator_family
from vchain.backends.wan import WanLoRATuner, WanVACEVideoGenerator, WanVideoGenerator
from vchain.errors import ConfigurationError
from vchain.images import fit_to_frame
from vchain.interfaces import KeyframeConditionedGenerator, TunableGenerator
from vchain.testing import draw_image, tiny_wan_pipeline, tiny_wan_vace_pipeline

SIZE = dict(height=32, width=32, num_frames=9, num_inference_steps=2, max_sequence_length=32)


@pytest.fixture(scope="module")
def vace():
    return WanVACEVideoGenerator(tiny_wan_vace_pipeline(), **SIZE)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    vace_folder, plain_folder = tmp_path_factory.mktemp("vace"), tmp_path_factory.mktemp("plain")
    tiny_wan_vace_pipeline().save_pretrained(vace_folder)
    tiny_wan_pipeline().save_pretrained(plain_folder)
    return vace_folder, plain_folder


def spy(generator):
    """Record the `video` and `mask` the pipeline receives, and the mask tensor it builds from them."""
    seen = {}
    real = generator.pipeline.preprocess_conditions

    def preprocess(video, mask, *args, **kwargs):
        seen["video"], seen["mask"] = video, mask
        result = real(video, mask, *args, **kwargs)
        seen["mask_tensor"] = result[1]
        return result

    generator.pipeline.preprocess_conditions = preprocess
    return seen


def test_it_is_keyframe_conditioned_and_tunable(vace):
    assert isinstance(vace, KeyframeConditionedGenerator) and isinstance(vace, TunableGenerator)


def test_the_pipeline_receives_each_keyframe_at_its_frame(vace):
    first, impact, end = (draw_image(text, 48, 40) for text in ("egg on top", "egg hits the ground", "shell"))
    seen = spy(vace)
    try:
        frames = vace.sample("an egg falls", keyframes=[(0.0, first), (0.6, impact), (1.0, end)], seed=0)
    finally:
        del vace.pipeline.preprocess_conditions
    assert len(frames) == 9
    placed = {0: first, 5: impact, 8: end}  # round(0.6 * 8) = 5
    for index, (frame, mask) in enumerate(zip(seen["video"], seen["mask"], strict=True)):
        assert frame.size == mask.size == (32, 32)
        if index in placed:
            assert np.array_equal(np.asarray(frame), np.asarray(fit_to_frame(placed[index], 32, 32)))
            assert np.asarray(mask).max() == 0
        else:
            assert (np.asarray(frame) == 128).all() and np.asarray(mask).min() == 255
    held = seen["mask_tensor"][0, 0, :, 0, 0].tolist()
    assert held == [0.0 if i in placed else 1.0 for i in range(9)]


def test_keyframes_change_the_video_and_none_is_text_to_video(vace):
    plain = vace.sample("an egg falls", seed=0, output_type="np")
    again = vace.sample("an egg falls", seed=0, output_type="np", keyframes=[])
    guided = vace.sample(
        "an egg falls", seed=0, output_type="np", keyframes=[(0.5, Image.new("RGB", (32, 32), (255, 0, 0)))]
    )
    assert np.array_equal(plain, again)
    assert np.abs(plain - guided).max() > 1e-3


@pytest.mark.parametrize(
    ("keyframes", "message"),
    [
        ([(1.5, "image")], r"keyframe times\[0\] must be between 0 and 1"),
        ([(float("nan"), "image")], r"keyframe times\[0\] must be a finite number"),
        ([(0.8, "image"), (0.2, "image")], r"keyframe times must be non-decreasing"),
        ([(0.5, "not an image")], "must be a PIL image"),
        (["image"], r"must be \(time, image\) pairs"),
    ],
)
def test_bad_keyframes_are_refused_naming_the_value(vace, keyframes, message):
    image = draw_image("x", 32, 32)
    keyframes = [
        tuple(image if part == "image" else part for part in k) if isinstance(k, tuple) else k for k in keyframes
    ]
    with pytest.raises(ConfigurationError, match=message):
        vace.sample("p", keyframes=keyframes)


def test_the_generic_tuner_tunes_it_and_the_base_is_restored_exactly(vace):
    pairs = [(draw_image(caption, 32, 32), caption) for caption in ("a red egg", "a blue ball")]
    before = vace.sample("a red egg", seed=1, output_type="latent")
    tuner = WanLoRATuner(rank=4, steps=4, learning_rate=1e-2)
    tuner.set_progress_bar_config(disable=True)
    adapter = tuner.tune(vace, pairs)
    assert adapter.report.trainable_parameters > 0
    with adapter.apply(vace):
        tuned = vace.sample("a red egg", seed=1, output_type="latent")
    after = vace.sample("a red egg", seed=1, output_type="latent")
    assert not torch.equal(before, tuned)
    assert torch.equal(before, after)


def test_checkpoints_pick_their_family_and_a_wrong_class_is_refused(checkpoints):
    vace_folder, plain_folder = checkpoints
    assert generator_family(vace_folder).generator == "WanVACEVideoGenerator"
    assert generator_family(plain_folder).generator == "WanVideoGenerator"
    with pytest.raises(ConfigurationError, match=r"is a 'WanVACEPipeline' checkpoint, but WanVideoGenerator wraps"):
        WanVideoGenerator.from_pretrained(vace_folder, dtype="float32", **SIZE)
    with pytest.raises(ConfigurationError, match=r"is a 'WanPipeline' checkpoint, but WanVACEVideoGenerator wraps"):
        WanVACEVideoGenerator.from_pretrained(plain_folder, dtype="float32", **SIZE)
    with pytest.raises(ConfigurationError, match="must be a diffusers WanPipeline, got WanVACEPipeline"):
        WanVideoGenerator(tiny_wan_vace_pipeline(), **SIZE)
    loaded = WanVACEVideoGenerator.from_pretrained(vace_folder, dtype="float32", **SIZE)
    assert loaded.describe()["class"] == "WanVACEVideoGenerator"
