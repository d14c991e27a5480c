"""Memory of the default open-weight models at bf16, from parameter counts of their real configurations.

    python benchmarks/open_weights_memory.py

Each model is built on the meta device from its published configuration (no weights, no download) and
its parameters counted; the weights' memory is 2 bytes per parameter. What runs on top (activations, the
KV cache of a reasoner's answer, the VAE's decode, a tuner's optimizer states) is not in these figures:
docs/open-weights.md gives the margins and docs/benchmarks.md the video generator's full tables.
"""

from __future__ import annotations

import torch
from harness import UMT5_XXL, WAN21_1_3B

GIB = 2**30


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def qwen2_5_vl_7b() -> int:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        return count(Qwen2_5_VLForConditionalGeneration(config))


def qwen_image_edit() -> dict[str, int]:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=60,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=3584,
            guidance_embeds=False,
            axes_dims_rope=(16, 56, 56),
        )
        vae = AutoencoderKLQwenImage()
    return {"transformer": count(transformer), "text encoder (Qwen2.5-VL-7B)": qwen2_5_vl_7b(), "VAE": count(vae)}


def flux_kontext() -> dict[str, int]:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(guidance_embeds=True)  # FLUX.1-dev's shapes are the defaults
        t5 = T5EncoderModel(
            T5Config(
                d_model=4096,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                d_kv=64,
                vocab_size=32128,
                feed_forward_proj="gated-gelu",
            )
        )
        clip = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                projection_dim=768,
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=16,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
    return {"transformer": count(transformer), "T5-XXL": count(t5), "CLIP-L": count(clip), "VAE": count(vae)}


def wan(heads: int, layers: int, ffn: int) -> dict[str, int]:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        config = {**WAN21_1_3B, "num_attention_heads": heads, "num_layers": layers, "ffn_dim": ffn}
        transformer = WanTransformer3DModel(**config)
        umt5 = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
        vae = AutoencoderKLWan()
    return {"transformer": count(transformer), "UMT5-XXL": count(umt5), "VAE": count(vae)}


def main() -> str:
    models = {
        "Qwen2.5-VL-7B-Instruct (reasoner)": {"model": qwen2_5_vl_7b()},
        "Qwen-Image-Edit-2509 (image editor)": qwen_image_edit(),
        "FLUX.1-Kontext-dev (image editor)": flux_kontext(),
        "Wan2.1-T2V-1.3B (video generator)": wan(12, 30, 8960),
        "Wan2.1-T2V-14B (video generator)": wan(40, 40, 13824),
    }
    rows = ["| model | parts (parameters) | total | bf16 weights |", "|---|---|---|---|"]
    for name, parts in models.items():
        total = sum(parts.values())
        detail = ", ".join(f"{k} {v / 1e9:.2f} B" for k, v in parts.items())
        rows.append(f"| {name} | {detail} | {total / 1e9:.2f} B | {2 * total / GIB:.1f} GiB |")
    table = "\n".join(rows)
    print(table)
    return table


if __name__ == "__main__":
    main()
