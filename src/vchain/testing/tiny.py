"""Tiny random diffusers pipelines built offline: real code paths, no download, CPU-fast."""

from __future__ import annotations

import functools

_TINY_CORPUS = (
    "a the of and in on is are to with an egg rock feather duck ball water cup milk coffee paint ice "
    "falls falling dropped poured rises shatters melts breaks floats sinks table ground sky pillow "
    "red yellow blue white black green large small left right centre frame top bottom keyframe scene"
)


@functools.cache
def tiny_tokenizer():
    """A small BPE tokenizer trained in memory, with T5's conventions (pad=0, eos=1, `$A </s>`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=256,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_wan_pipeline(seed: int = 0, *, two_experts: bool = False):
    """A tiny random diffusers `WanPipeline`: real code paths, no download, CPU-fast, deterministic.

    Same architecture family as Wan2.1 (UMT5 text encoder, Wan VAE, Wan transformer, UniPC flow
    scheduler) with a few thousand parameters. `two_experts=True` adds a second transformer and a
    boundary, as in Wan2.2.
    """
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
            in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64,  # 64 rotary positions: frames up to 1024 px
        )  # fmt: skip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = UMT5EncoderModel(
            UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                       relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                       eos_token_id=1, decoder_start_token_id=0)
        )  # fmt: skip
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])  # fmt: skip
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
        main = transformer()
        second = transformer() if two_experts else None
    pipeline = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=main,
        transformer_2=second, boundary_ratio=0.875 if two_experts else None,
    )  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    for module in (text_encoder, vae, main, second):
        if module is not None:
            module.eval()
    return pipeline


def tiny_wan_vace_pipeline(seed: int = 0):
    """A tiny random diffusers `WanVACEPipeline` (Wan2.1-VACE's architecture), built as `tiny_wan_pipeline`.

    The VACE branch reads 96 channels: the inactive and reactive video latents (2 x 16) and the mask folded
    8 x 8 into 64, as the pipeline builds them for the tiny VAE's 8x spatial compression.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline, WanVACETransformer3DModel

    base = tiny_wan_pipeline(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanVACETransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
            in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=3, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
            vace_layers=[0, 2], vace_in_channels=96,
        )  # fmt: skip
    pipeline = WanVACEPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer,
    )  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    transformer.eval()
    return pipeline
