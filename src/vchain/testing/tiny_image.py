"""Tiny random diffusers image-edit pipelines built offline, and checkpoints saved like the hub's.

`tiny_image_pipeline(name)` builds one of the pipelines `vchain.backends.diffusers_image.DiffusersImageBackend`
supports, with the component shapes of diffusers' own fast tests (a few million parameters at most) and
tokenizers trained in memory; `tiny_image_checkpoint(name)` saves one with `save_pretrained` into a folder
laid out like the family's hub checkpoint, so `DiffusersImageBackend.from_pretrained(folder)` runs the real
loading code. Nothing is downloaded.

Real Qwen-Image-Edit-Plus and FLUX.1 Kontext take every reference to about 1024² pixels whatever the output
size, which on a tiny model costs 25 to 45 s (Qwen) or a second (Kontext) an edit on a CPU: run tiny edits inside
`small_references()`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TINY_IMAGE_PIPELINES = ("QwenImageEditPlusPipeline", "Flux2KleinPipeline", "FluxKontextPipeline")


def tiny_image_pipeline(name: str, seed: int = 0):
    """A tiny random diffusers pipeline of class `name` (one of `TINY_IMAGE_PIPELINES`), on the CPU.

    The same `seed` gives the same weights (the global torch RNG is left as it was).
    """
    import torch

    builders = {"QwenImageEditPlusPipeline": _qwen_image_edit_plus, "Flux2KleinPipeline": _flux2_klein,
                "FluxKontextPipeline": _flux_kontext}  # fmt: skip
    if name not in builders:
        raise ValueError(f"name must be one of {list(TINY_IMAGE_PIPELINES)}, got {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline = builders[name]()
    pipeline.set_progress_bar_config(disable=True)
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipeline


def tiny_image_checkpoint(name: str, seed: int = 0) -> Path:
    """The folder of `tiny_image_pipeline(name, seed)` saved with `save_pretrained`, once per process.

    The folder lives in a temporary directory removed when the process exits.
    """
    if name not in TINY_IMAGE_PIPELINES:
        raise ValueError(f"name must be one of {list(TINY_IMAGE_PIPELINES)}, got {name!r}")
    return _saved(name, seed)


@contextlib.contextmanager
def small_references(pixels: int = 64 * 64, condition_pixels: int = 56 * 56) -> Iterator[None]:
    """Inside the block, the edit pipelines that resize references to about a megapixel take them at
    tiny-model sizes instead.

    `QwenImageEditPlusPipeline` resizes every reference to `VAE_IMAGE_SIZE` (1024²) pixels for its VAE and
    `CONDITION_IMAGE_SIZE` (384²) for its vision-language encoder; `FluxKontextPipeline` to the nearest of
    `PREFERRED_KONTEXT_RESOLUTIONS` (about 1024² each). All three are module constants read at every call:
    the block sets Qwen's to `pixels` and `condition_pixels`, scales each of Kontext's to `pixels`, and restores
    them on exit. They change for the whole process: not for use while real models edit in another thread.
    """
    from diffusers.pipelines.flux import pipeline_flux_kontext as kontext
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as qwen

    saved = qwen.VAE_IMAGE_SIZE, qwen.CONDITION_IMAGE_SIZE, kontext.PREFERRED_KONTEXT_RESOLUTIONS
    qwen.VAE_IMAGE_SIZE, qwen.CONDITION_IMAGE_SIZE = pixels, condition_pixels
    kontext.PREFERRED_KONTEXT_RESOLUTIONS = [_with_area(size, pixels) for size in saved[2]]
    try:
        yield
    finally:
        qwen.VAE_IMAGE_SIZE, qwen.CONDITION_IMAGE_SIZE, kontext.PREFERRED_KONTEXT_RESOLUTIONS = saved


def _with_area(size: tuple[int, int], pixels: int) -> tuple[int, int]:
    width, height = size
    scale = math.sqrt(pixels / (width * height))
    return round(width * scale), round(height * scale)


@functools.cache
def _saved(name: str, seed: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"vchain-tiny-{name}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    pipeline = tiny_image_pipeline(name, seed)
    processor = getattr(pipeline, "processor", None)
    if processor is None:
        pipeline.save_pretrained(folder)
        return folder
    # Qwen-VL's processor cannot be saved whole without its video processor (which needs torchvision):
    # save the pipeline without it, then its parts, and name the processor as Qwen's hub checkpoints do.
    pipeline.register_modules(processor=None)
    try:
        pipeline.save_pretrained(folder)
    finally:
        pipeline.register_modules(processor=processor)
    for part in (processor.tokenizer, processor.image_processor):
        part.save_pretrained(folder / "processor")
    _update_json(folder / "processor" / "preprocessor_config.json", processor_class="Qwen2VLProcessor")
    _update_json(folder / "model_index.json", processor=["transformers", "Qwen2VLProcessor"])
    return folder


def _update_json(path: Path, **entries) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **entries}, indent=2))


def _qwen_image_edit_plus():
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )

    from vchain.backends.transformers import without_video
    from vchain.testing.tiny_vlm import qwen_token_ids, qwen_tokenizer

    tokenizer = qwen_tokenizer()
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    z_dim = 4
    vae = AutoencoderKLQwenImage(
        base_dim=z_dim * 6, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
    )  # fmt: skip
    # The text tower's hidden size is the transformer's joint_attention_dim; mrope_section splits the
    # rotary half of head_dim 8 into time, height and width.
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, bos_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}),
            vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
            **qwen_token_ids(tokenizer),
        )
    )  # fmt: skip
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor_class = without_video(Qwen2VLProcessor)
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)
    return QwenImageEditPlusPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder,
        tokenizer=tokenizer, processor=processor,
    )  # fmt: skip


def _flux2_klein():
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from vchain.testing.tiny_vlm import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    # The pipeline stacks the text encoder's hidden states 9, 18 and 27 (as in FLUX.2 klein's Qwen3), so
    # the tower has 27 layers of width 16 and the transformer attends to 3 x 16 features.
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=27,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                    bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    )  # fmt: skip
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False,
    )  # fmt: skip
    # Four blocks scale by 8 as the real VAE does (diffusers' one-block test VAE scales by 1, and two
    # frame-sized references then exhaust memory).
    vae = AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    # Distilled, as FLUX.2 klein 4B and 9B are: four steps, no classifier-free guidance.
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=transformer, vae=vae, is_distilled=True,
    )  # fmt: skip


def _flux_kontext():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from vchain.testing.tiny import tiny_tokenizer

    t5_tokenizer = tiny_tokenizer()
    # CLIP reads 77 tokens; the same small vocabulary serves both encoders.
    clip_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=t5_tokenizer.backend_tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=77,
    )  # fmt: skip
    clip = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    )  # fmt: skip
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    )  # fmt: skip
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )  # fmt: skip
    # Four blocks scale by 8, as FLUX's VAE does (diffusers' one-block test VAE scales by 1).
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=clip, text_encoder_2=t5, tokenizer=clip_tokenizer,
        tokenizer_2=t5_tokenizer, transformer=transformer, vae=vae, image_encoder=None, feature_extractor=None,
    )  # fmt: skip
