"""The diffusers image backend on tiny random QwenImageEditPlus, FLUX.2 klein and FLUX.1 Kontext pipelines."""

import functools
import json
from unittest import mock

import pytest
import torch
from PIL import Image, ImageOps

from vchain import prompts
from vchain.accounting import UsageMeter
from vchain.backends.diffusers_image import DiffusersImageBackend
from vchain.errors import ConfigurationError, NumericalError
from vchain.reasoning import ReasoningConfig, reason
from vchain.testing import ScriptedReasoner
from vchain.testing.tiny_image import (
    TINY_IMAGE_PIPELINES,
    small_references,
    tiny_image_checkpoint,
    tiny_image_pipeline,
)

LIMITS = {"QwenImageEditPlusPipeline": 3, "Flux2KleinPipeline": 4, "FluxKontextPipeline": 1}
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
FRAME = dict(width=64, height=32)
STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def _tiny_model_settings():
    """References at tiny-model sizes (the real ones resize every reference to about a megapixel)."""
    with small_references():
        yield


@functools.cache
def pipeline_of(name):
    """Each family's tiny pipeline, built once per session."""
    return tiny_image_pipeline(name)


@pytest.fixture(params=TINY_IMAGE_PIPELINES)
def tiny(request):
    """(class name, pipeline) of each family in turn."""
    return request.param, pipeline_of(request.param)


def references(count, size=(64, 32)):
    return [Image.new("RGB", size, colour) for colour in COLOURS[:count]]


def colours(image):
    return sorted(colour for _, colour in image.getcolors())


def spy_on(pipeline):
    """Records what the pipeline's `__call__` receives while still running it."""
    call = type(pipeline).__call__
    return mock.patch.object(type(pipeline), "__call__", autospec=True, side_effect=call)


def test_every_reference_reaches_the_edit_pipeline_and_shapes_the_result(tiny):
    name, pipeline = tiny
    backend = DiffusersImageBackend(pipeline, num_inference_steps=STEPS)
    sources = references(backend.max_references)
    with spy_on(pipeline) as spy:
        image = backend.edit(sources, "The egg lies cracked.", **FRAME)
    sent = spy.call_args.kwargs["image"]
    if name == "FluxKontextPipeline":
        assert isinstance(sent, Image.Image)  # one image; a list would be a batch of edits
        sent = [sent]
    assert [colours(s) for s in sent] == [colours(s) for s in sources]  # all of them, in order
    if name == "Flux2KleinPipeline":
        assert [s.size for s in sent] == [(128, 64)] * len(sources)  # enlarged to klein's 64-pixel minimum
    assert (image.size, image.mode) == ((64, 32), "RGB")
    for i in range(len(sources)):
        changed = [ImageOps.invert(s) if j == i else s for j, s in enumerate(sources)]
        assert backend.edit(changed, "The egg lies cracked.", **FRAME).tobytes() != image.tobytes(), i


def test_max_references_is_declared_per_family_and_enforced(tiny):
    name, pipeline = tiny
    backend = DiffusersImageBackend(pipeline)
    assert backend.max_references == LIMITS[name]
    with pytest.raises(ConfigurationError, match=f"at most {LIMITS[name]} reference"):
        backend.edit(references(1) * (LIMITS[name] + 1), "x", **FRAME)
    with pytest.raises(ConfigurationError, match="at least one reference"):
        backend.edit([], "x", **FRAME)


def test_generate_shares_the_weights_and_is_deterministic_for_a_seed(tiny):
    name, pipeline = tiny
    backend = DiffusersImageBackend(pipeline, num_inference_steps=STEPS, seed=3)
    described = backend.describe()
    text_to_image = backend.generate_pipeline
    assert text_to_image.transformer is pipeline.transformer and text_to_image.vae is pipeline.vae
    if name == "QwenImageEditPlusPipeline":
        assert type(text_to_image).__name__ == "QwenImagePipeline"  # the edit pipeline needs an image
    first = backend.generate("A white egg on a wooden table.", **FRAME)
    again = backend.generate("A white egg on a wooden table.", **FRAME)
    other_seed = DiffusersImageBackend(pipeline, num_inference_steps=STEPS, seed=4)
    assert (first.size, first.mode) == ((64, 32), "RGB")
    assert first.tobytes() == again.tobytes()
    assert backend.describe() == described  # what a run folder records does not change with use
    assert other_seed.generate("A white egg on a wooden table.", **FRAME).tobytes() != first.tobytes()
    odd = backend.generate("A white egg on a wooden table.", width=100, height=36)
    multiple = pipeline.vae_scale_factor * 2
    assert odd.width % multiple == 0 and odd.height % multiple == 0
    assert abs(odd.width / odd.height - 100 / 36) < 0.6  # near the frame's aspect; the loop crops exactly


def test_save_pretrained_round_trip_picks_the_family_and_the_same_weights(tiny):
    name, pipeline = tiny
    folder = tiny_image_checkpoint(name)
    loaded = DiffusersImageBackend.from_pretrained(folder, dtype=torch.float32, num_inference_steps=STEPS, seed=1)
    loaded.set_progress_bar_config(disable=True)
    in_memory = DiffusersImageBackend(pipeline, num_inference_steps=STEPS, seed=1)
    assert type(loaded.pipeline) is type(pipeline)
    described = loaded.describe()
    assert described["model"] == str(folder) and described["pipeline"] == name
    assert described["family"] == in_memory.describe()["family"]
    assert (described["num_inference_steps"], described["seed"]) == (STEPS, 1)
    sources = references(loaded.max_references)
    edited = loaded.edit(sources, "The egg lies cracked.", **FRAME)
    assert edited.tobytes() == in_memory.edit(sources, "The egg lies cracked.", **FRAME).tobytes()
    loaded.release()  # on the CPU nothing moves; the backend still works afterwards
    assert loaded.edit(sources, "The egg lies cracked.", **FRAME).tobytes() == edited.tobytes()


def test_defaults_follow_the_family():
    qwen = DiffusersImageBackend(pipeline_of("QwenImageEditPlusPipeline")).describe()
    klein = DiffusersImageBackend(pipeline_of("Flux2KleinPipeline")).describe()
    assert (qwen["num_inference_steps"], qwen["guidance_scale"]) == (50, 4.0)  # diffusers' own defaults
    assert (klein["num_inference_steps"], klein["guidance_scale"]) == (4, 1.0)  # distilled klein


def test_the_reasoning_loop_builds_a_chain_through_the_backend(tiny):
    name, pipeline = tiny
    backend = DiffusersImageBackend(pipeline, num_inference_steps=STEPS)
    meter = UsageMeter()
    config = ReasoningConfig(max_keyframes=3, width=64, height=32)
    with spy_on(pipeline) as spy:
        result = reason("An egg falls.", ScriptedReasoner(), backend, config, meter=meter)
    chain = result.chain
    assert result.stop_reason == "model"
    assert len(chain.images) == 3 and {image.size for image in chain.images} == {(64, 32)}
    assert len(chain.key_frames) == 2
    edits = [call.kwargs for call in spy.call_args_list if "image" in call.kwargs]
    assert all(kwargs["prompt"].startswith(caption) for kwargs, caption in zip(edits, chain.key_frames, strict=True))
    images = [(r.step, r.images_in, r.images_out) for r in meter.records if r.step in ("generate", "edit")]
    assert images == [("generate", 0, 1), ("edit", 1, 1), ("edit", min(2, LIMITS[name]), 1)]


def test_a_non_finite_image_is_a_numerical_error():
    pipeline = pipeline_of("QwenImageEditPlusPipeline")
    backend = DiffusersImageBackend(pipeline, num_inference_steps=STEPS)
    weight = pipeline.transformer.proj_out.weight
    saved = weight.detach().clone()
    meter = UsageMeter()
    with torch.no_grad():
        weight.fill_(float("nan"))
    try:
        with pytest.raises(NumericalError, match="non-finite"), meter.call("generate", 0):
            backend.generate("A white egg.", **FRAME)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert [(r.outcome, r.images_out) for r in meter.records] == [("failed", 0)]


def test_instruction_is_the_caption_first_with_a_short_request_to_keep_the_look():
    backend = DiffusersImageBackend(pipeline_of("FluxKontextPipeline"))
    text = backend.instruction("The egg lies cracked on the pillow.", "the egg is still whole")
    assert text.startswith("The egg lies cracked on the pillow.")
    assert "the egg is still whole" in text
    assert len(text) < len(prompts.edit_instruction("The egg lies cracked on the pillow."))


def test_small_references_restores_the_pipeline_constants():
    from diffusers.pipelines.flux import pipeline_flux_kontext as kontext
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as qwen

    def constants():
        return qwen.VAE_IMAGE_SIZE, qwen.CONDITION_IMAGE_SIZE, kontext.PREFERRED_KONTEXT_RESOLUTIONS[8]

    outside = constants()
    with small_references(pixels=32 * 32, condition_pixels=28 * 28):
        assert constants() == (32 * 32, 28 * 28, (32, 32))  # Kontext's 1024x1024 entry, scaled
    assert constants() == outside


@pytest.mark.parametrize("pipeline", [None, object(), "Qwen/Qwen-Image-Edit-2509"])
def test_what_is_not_a_supported_pipeline_is_a_configuration_error(pipeline):
    with pytest.raises(ConfigurationError, match="QwenImageEditPlusPipeline, Flux2KleinPipeline, FluxKontextPipeline"):
        DiffusersImageBackend(pipeline)


def test_a_text_to_image_pipeline_is_not_an_editor_but_can_be_the_one_that_generates():
    from diffusers import QwenImagePipeline

    edit = pipeline_of("QwenImageEditPlusPipeline")
    text_to_image = QwenImagePipeline.from_pipe(edit)
    with pytest.raises(ConfigurationError, match="got QwenImagePipeline"):
        DiffusersImageBackend(text_to_image)
    with pytest.raises(ConfigurationError, match="generate_pipeline"):
        DiffusersImageBackend(edit, generate_pipeline="Qwen/Qwen-Image")
    backend = DiffusersImageBackend(edit, generate_pipeline=text_to_image, num_inference_steps=STEPS)
    with spy_on(text_to_image) as spy:
        image = backend.generate("A white egg.", **FRAME)
    assert spy.call_args.kwargs["prompt"] == "A white egg." and image.size == (64, 32)
    assert backend.generate_pipeline is text_to_image
    assert backend.describe()["generate_pipeline"] == "QwenImagePipeline"


def test_from_pretrained_names_an_unsupported_checkpoint_class(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ConfigurationError, match=r"StableDiffusionPipeline.*supported: QwenImageEditPlusPipeline"):
        DiffusersImageBackend.from_pretrained(tmp_path)


def test_from_pretrained_refuses_bad_folders_ids_and_settings(tmp_path):
    with pytest.raises(ConfigurationError, match=r"without model_index\.json"):
        DiffusersImageBackend.from_pretrained(tmp_path)
    with pytest.raises(ConfigurationError, match="neither an existing folder nor a hub id"):
        DiffusersImageBackend.from_pretrained("not a model id")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline"}))
    with pytest.raises(ConfigurationError, match="cannot load"):
        DiffusersImageBackend.from_pretrained(tmp_path)
    with pytest.raises(ConfigurationError, match="num_inference_steps"):
        DiffusersImageBackend.from_pretrained(tmp_path, num_inference_steps=0)
    with pytest.raises(ConfigurationError, match="cpu_offload"):
        DiffusersImageBackend.from_pretrained(tmp_path, cpu_offload=True, device="cpu")
    with pytest.raises(ConfigurationError, match="not both"):
        DiffusersImageBackend.from_pretrained(tmp_path, dtype=torch.float32, torch_dtype=torch.float32)
