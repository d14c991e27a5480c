"""Device memory of Wan tuning and sampling at full size, from the real configurations, without a GPU.

    python benchmarks/memory.py            # the table in docs/benchmarks.md (a CPU, about a minute)
    python benchmarks/memory.py --tiny     # the same code on tiny shapes, in seconds

Each model is built on the meta device (shapes and dtypes, no storage) as `from_pretrained` would leave it
(bfloat16, the modules its class keeps in float32 in float32), LoRA'd by peft as vchain tunes it, and
then turned into fake tensors (torch's FakeTensorMode), on which the real diffusers and transformers
code runs: a sampling forward at 81x480x832, a tuning step (forward, backward, clipping, fused AdamW)
on one 480x832 keyframe with and without gradient checkpointing, a UMT5-XXL encoding of 512 tokens,
and the VAE decoding 81 frames. `LiveBytes` adds up the storage of every tensor the ops create while
it lives: its peak is what `torch.cuda.max_memory_allocated` counts for those tensors, give or take the
allocator's 512-byte rounding. Not seen: kernels' workspaces (cuBLAS, attention) and the caching
allocator's reserve, typically a few per cent; fake attention takes the fused (flash) kernel's memory,
as a GPU's SDPA does.

Weights are the parameters' bytes. A phase's peak is the resident weights plus that phase's peak above
them; a stage's peak is its worst phase. Wan2.2-A14B holds two 14B experts (one serves each step).
"""

from __future__ import annotations

import argparse
import functools
import weakref

import torch
from harness import UMT5_XXL, WAN21_1_3B, WAN21_14B, as_loaded, environment
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

GIB = 2**30
TINY = dict(
    attention_head_dim=8,
    num_attention_heads=2,
    num_layers=2,
    ffn_dim=32,
    text_dim=32,
    freq_dim=32,
    in_channels=16,
    out_channels=16,
    patch_size=(1, 2, 2),
    qk_norm="rms_norm_across_heads",
    cross_attn_norm=True,
    eps=1e-6,
)
TINY_UMT5 = dict(
    vocab_size=256,
    d_model=32,
    d_ff=64,
    num_layers=2,
    num_heads=2,
    d_kv=16,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=8,
)


class LiveBytes(TorchDispatchMode):
    """The bytes of the tensor storages that ops create inside it, while they live, and their peak.

    Storages that existed before (weights, inputs) are not counted, nor are views of them.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for tensor in tree_leaves((args, kwargs)):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage() not in self._seen:
                self._seen[tensor.untyped_storage()] = 0
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage not in self._seen:
                    self._seen[storage] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, storage.nbytes())
        return out

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.nbytes for t in (*module.parameters(), *module.buffers()))


def _fake(module: torch.nn.Module, mode: FakeTensorMode) -> torch.nn.Module:
    """A meta module as fake CPU tensors: the real code runs, nothing is computed or allocated."""
    with mode:
        return module.to_empty(device="cpu")


def transformer_figures(config: dict, frames: int, height: int, width: int, text_tokens: int) -> dict:
    """Weights, the sampling forward's peak, LoRA bytes and the tuning step's peak (without and with
    gradient checkpointing) of one Wan transformer, in bytes."""
    from diffusers import WanTransformer3DModel
    from peft import inject_adapter_in_model

    from vchain.backends.wan import WanLoRAConfig

    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    keyframe = (*latent[:2], 1, *latent[3:])
    figures = {}
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.device("meta"):
        transformer = as_loaded(WanTransformer3DModel(**config), torch.bfloat16).eval()
    figures["weights"] = _bytes(transformer)
    figures.update(_storage_figures(transformer))
    sampler = _fake(transformer, mode)
    with mode:
        inputs = (
            torch.randn(latent, dtype=torch.bfloat16),
            torch.tensor([500.0]),
            torch.randn(1, text_tokens, config["text_dim"], dtype=torch.bfloat16),
        )
        with torch.no_grad(), LiveBytes() as live:
            sampler(*inputs, return_dict=False)
    figures["sampling_forward"] = live.peak

    for checkpointing in (False, True):
        with torch.device("meta"):
            transformer = as_loaded(WanTransformer3DModel(**config), torch.bfloat16)
        inject_adapter_in_model(WanLoRAConfig().lora_config(WanLoRAConfig().target_modules), transformer)
        transformer = _fake(transformer, mode)
        params = []
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.data = param.data.float()
                params.append(param)
            else:
                param.requires_grad_(False)
        figures["lora"] = sum(p.nbytes for p in params)
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        with mode:
            optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
            noisy = torch.randn(keyframe, dtype=torch.bfloat16)
            context = torch.randn(1, text_tokens, config["text_dim"], dtype=torch.bfloat16)
            with LiveBytes() as live:
                for _ in range(2):  # the second step has the optimizer's states from the first
                    prediction = transformer(noisy, torch.tensor([500.0]), context, return_dict=False)[0]
                    loss = torch.nn.functional.mse_loss(prediction.float(), noisy.float())
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    del prediction, loss
        figures["tuning_step_checkpointing" if checkpointing else "tuning_step"] = live.peak
    targets = [m.base_layer.weight for m in transformer.modules() if hasattr(m, "base_layer")]
    figures["merge_snapshot"] = sum(w.nbytes for w in targets)
    figures["merge_transient"] = 3 * 4 * max(w.numel() for w in targets)  # delta, fp32 weight, their sum
    return figures


def _storage_figures(model: torch.nn.Module) -> dict:
    """What quantization and block streaming act on: the linear layers' weights (element counts, and the
    largest one's) and the repeated blocks' bytes (the largest block's, and all the blocks' together)."""
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    blocks = [_bytes(block) for block in getattr(model, "blocks", None) or model.encoder.block]
    return {
        "linear_elements": sum(w.numel() for w in linears),
        "linear_rows": sum(w.shape[0] for w in linears),
        "linear_bytes": sum(w.nbytes for w in linears),
        "largest_linear": max(w.numel() for w in linears),
        "block": max(blocks),
        "blocks": sum(blocks),
    }


def text_encoder_figures(config: dict, text_tokens: int) -> dict:
    from transformers import UMT5Config, UMT5EncoderModel

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.device("meta"):
        encoder = UMT5EncoderModel(UMT5Config(**config)).to(torch.bfloat16).eval()
    figures = {"weights": _bytes(encoder), **_storage_figures(encoder)}
    encoder = _fake(encoder, mode)
    with mode, torch.no_grad(), LiveBytes() as live:
        ids = torch.zeros(1, text_tokens, dtype=torch.long)
        encoder(ids, torch.ones_like(ids))
    figures["encode"] = live.peak
    return figures


def vae_figures(frames: int, height: int, width: int, keyframes: int, tiny: bool) -> dict:
    from diffusers import AutoencoderKLWan

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.device("meta"):
        vae = (
            AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
            if tiny
            else AutoencoderKLWan()
        ).eval()
    figures = {"weights": _bytes(vae)}
    vae = _fake(vae, mode)
    with mode, torch.no_grad():
        latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
        with LiveBytes() as live:
            vae.decode(latents)
        figures["decode"] = live.peak
        if not tiny:  # the tiny frames are smaller than one tile
            vae.enable_tiling()
            with LiveBytes() as live:
                vae.decode(latents)
            vae.disable_tiling()
            figures["decode_tiled"] = live.peak
        else:
            figures["decode_tiled"] = figures["decode"]
        with LiveBytes() as live:
            vae.encode(torch.randn(keyframes, 3, 1, height, width)).latent_dist.mode()
        figures["encode_keyframes"] = live.peak
        if not tiny:
            vae.enable_tiling()
            with LiveBytes() as live:
                vae.encode(torch.randn(keyframes, 3, 1, height, width)).latent_dist.mode()
            vae.disable_tiling()
            figures["encode_keyframes_tiled"] = live.peak
        else:
            figures["encode_keyframes_tiled"] = figures["encode_keyframes"]
    return figures


def _tuning_peak(weights: int, text: dict, vae: dict, lora: int, step: int, *, offloaded: bool) -> int:
    """The worst phase of a tuning run: encoding the captions, encoding the keyframes, or a step.
    An offloaded text encoder is on the device only while it encodes."""
    encoder = text["weights"]
    phases = [
        encoder + text["encode"],
        lora + vae["encode_keyframes"] + (0 if offloaded else encoder),
        lora + step + (0 if offloaded else encoder),
    ]
    return weights + max(phases)


@functools.cache
def measure(tiny: bool = False) -> tuple[dict, dict, dict, dict]:
    """The figures of the text encoder, the VAE and each transformer shape, and the models built of them."""
    frames, height, width, tokens = (5, 32, 32, 16) if tiny else (81, 480, 832, 512)
    text = text_encoder_figures(TINY_UMT5 if tiny else UMT5_XXL, tokens)
    vae = vae_figures(frames, height, width, 5, tiny)
    shapes = {"tiny": TINY} if tiny else {"1.3B": WAN21_1_3B, "14B": WAN21_14B}
    measured = {name: transformer_figures(config, frames, height, width, tokens) for name, config in shapes.items()}
    for name, config in shapes.items():
        measured[name]["heads"] = config["num_attention_heads"]
    models = (
        {"tiny": ("tiny", 1)}
        if tiny
        else {"Wan2.1-T2V-1.3B": ("1.3B", 1), "Wan2.1-T2V-14B": ("14B", 1), "Wan2.2-T2V-A14B": ("14B", 2)}
    )
    return text, vae, measured, models


def _markdown(rows: dict[str, dict[str, float]], scale: float = GIB) -> str:
    names = list(rows)
    lines = ["| GiB | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label in rows[names[0]]:
        cells = (rows[name][label] for name in names)
        lines.append(f"| {label} | " + " | ".join("—" if c is None else f"{c / scale:.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def table(tiny: bool = False) -> tuple[str, dict]:
    """The markdown table of docs/benchmarks.md and the figures behind it (bytes)."""
    text, vae, measured, models = measure(tiny)
    rows: dict[str, dict[str, float]] = {}
    for model, (shape, experts) in models.items():
        t = measured[shape]
        weights = experts * t["weights"] + vae["weights"]
        lora = experts * t["lora"]
        # The second expert's LoRA has its gradient and AdamW states too (4x the LoRA in all, fp32).
        extra_states = (experts - 1) * 3 * t["lora"]
        sampling = max(t["sampling_forward"], vae["decode"], t["merge_transient"])
        tuning = {
            ckpt: t[key] + extra_states for ckpt, key in ((False, "tuning_step"), (True, "tuning_step_checkpointing"))
        }

        def peak(step: int, *, offloaded: bool, weights=weights, lora=lora) -> int:
            return _tuning_peak(weights, text, vae, lora, step, offloaded=offloaded)

        rows[model] = {
            "transformer weights (bf16)": experts * t["weights"],
            "UMT5-XXL weights (bf16)": text["weights"],
            "VAE weights (fp32)": vae["weights"],
            "UMT5 encoding, 512 tokens": text["encode"],
            "sampling: one transformer forward (CFG runs two in turn)": t["sampling_forward"],
            "sampling: VAE decode of the video": vae["decode"],
            "sampling: adapter merge, largest layer in fp32 (transient)": t["merge_transient"],
            "sampling: merge snapshot (pinned host memory, not on the device)": experts * t["merge_snapshot"],
            "**sampling peak**": weights + text["weights"] + max(sampling, text["encode"]),
            "**sampling peak, text encoder offloaded**": weights + max(sampling, text["weights"] + text["encode"]),
            "tuning: LoRA rank 16 (fp32)": lora,
            "tuning: VAE encoding of 5 keyframes": vae["encode_keyframes"],
            "tuning: one step above the weights (activations, gradients, AdamW), no checkpointing": tuning[False],
            "tuning: one step above the weights, gradient checkpointing": tuning[True],
            "**tuning peak, no checkpointing**": peak(tuning[False], offloaded=False),
            "**tuning peak, no checkpointing, text encoder offloaded**": peak(tuning[False], offloaded=True),
            "**tuning peak, checkpointing**": peak(tuning[True], offloaded=False),
            "**tuning peak, checkpointing, text encoder offloaded**": peak(tuning[True], offloaded=True),
        }
    return _markdown(rows), rows


# ---------------------------------------------------------------------------- small cards and many GPUs

# Bytes per element of a quantized linear weight and per output row (its scale): torchao's int8 weight-only
# (int8, a bf16 scale per row), float8 weight-only (fp8, an fp32 scale per row), and bitsandbytes' NF4 (4 bits,
# an fp32 absmax per block of 64 elements, no double quantization: diffusers' defaults). Biases, norms and
# embeddings stay as loaded.
QUANTIZED = {"int8": (1.0, 2), "fp8": (1.0, 4), "nf4": (0.5 + 4 / 64, 0)}
# A card's usable share: the CUDA context, the kernels' workspaces and the allocator's reserve take the rest.
USABLE = 0.9
CARDS = {"24 GB": 24e9, "48 GB": 48e9}


def quantized_bytes(figures: dict, kind: str | None) -> float:
    """A model's weights with its linear layers' weights stored as `kind` (None: as loaded)."""
    if kind is None:
        return figures["weights"]
    per_element, per_row = QUANTIZED[kind]
    linear = figures["linear_elements"] * per_element + figures["linear_rows"] * per_row
    return figures["weights"] - figures["linear_bytes"] + linear


def streamed_bytes(figures: dict, weights: float) -> float:
    """What stays on the device of a model under diffusers' block-level group offloading (one block a group,
    the next one prefetched on a side stream): everything outside the blocks, and two blocks."""
    share = weights / figures["weights"]  # the blocks shrink with the model when it is quantized
    return weights - share * figures["blocks"] + 2 * share * figures["block"]


def small_cards(tiny: bool = False) -> tuple[str, dict]:
    """Peaks of sampling and tuning (bytes) with `from_pretrained`'s quantization and offload, all with
    `vae_tiling=True`, and which fit a 24 GB and a 48 GB card. Without offload the text encoder is offloaded
    between encodings (`offload_text_encoder=True`); `offload="group"` streams every model's blocks, and tuning
    holds the denoisers whole for its steps (their backward pass needs the weights)."""
    text, vae, measured, models = measure(tiny)
    settings = {
        "bf16": (None, False),
        "bf16, offload=group": (None, True),
        "int8": ("int8", False),
        "int8, offload=group": ("int8", True),
        "fp8": ("fp8", False),
        "nf4": ("nf4", False),
        "nf4, offload=group": ("nf4", True),
    }
    rows: dict[str, dict] = {}
    fits: dict[str, dict] = {}
    for model, (shape, experts) in models.items():
        t = measured[shape]
        for name, (kind, offload) in settings.items():
            weights = experts * quantized_bytes(t, kind)
            streamed = experts * streamed_bytes(t, quantized_bytes(t, kind))
            encoding = (streamed_bytes(text, text["weights"]) if offload else text["weights"]) + text["encode"]
            # A quantized layer's weight is dequantized for its matmul: the largest one, in bf16, transiently.
            dequantized = 2 * t["largest_linear"] if kind else 0
            # On a quantized base the adapter stays as fp32 layers; on a bf16 one it is merged (one layer at a time).
            lora = experts * t["lora"]
            forward = t["sampling_forward"] + dequantized + (0 if kind else t["merge_transient"])
            resident = streamed if offload else weights
            sampling = vae["weights"] + max(
                resident + (lora if kind else 0) + forward, resident + vae["decode_tiled"], resident + encoding
            )
            # Tuning with gradient checkpointing; the second expert's LoRA has its gradient and AdamW states.
            step = t["tuning_step_checkpointing"] + dequantized + (experts - 1) * 3 * t["lora"]
            tuning = vae["weights"] + max(
                resident + encoding, weights + lora + max(vae["encode_keyframes_tiled"], step)
            )
            rows.setdefault(model, {})[f"{name}: sampling"] = sampling
            rows[model][f"{name}: tuning"] = tuning
            fits.setdefault(model, {})[name] = {
                card: [stage for stage, peak in (("sampling", sampling), ("tuning", tuning)) if peak <= USABLE * size]
                for card, size in CARDS.items()
            }
    return _markdown(rows), {"peaks": rows, "fits": fits}


def fits_table(fits: dict) -> str:
    """Which stages fit which card, per setting (rows) and model (columns)."""
    names = list(fits)
    lines = ["| fits (90% of the card) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for setting in fits[names[0]]:
        cells = []
        for name in names:
            by_card = fits[name][setting]
            cells.append("; ".join(f"{card}: {' + '.join(stages) or '—'}" for card, stages in by_card.items()))
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def many_gpus(tiny: bool = False) -> tuple[str, dict]:
    """Peaks per GPU (bytes) with the guidance branches on two GPUs and with context parallelism over 2, 4 and 8
    GPUs: the denoising loop's, and the whole sampling call's (bf16, text encoder offloaded between encodings,
    tiled VAE decode; every rank holds the whole model and decodes the video)."""
    text, vae, measured, models = measure(tiny)
    rows: dict[str, dict] = {}
    for model, (shape, experts) in models.items():
        t = measured[shape]
        resident = experts * t["weights"] + vae["weights"]
        others = max(vae["decode_tiled"], text["weights"] + text["encode"])

        def denoising(parts: int, resident=resident, t=t) -> float:
            # 1/parts of the tokens' activations on each rank: an estimate, the forward's measured peak divided.
            return resident + max(t["sampling_forward"] / parts, t["merge_transient"])

        row = {"denoising, one GPU": denoising(1), "denoising, cfg on 2 GPUs": denoising(1)}
        for n in (2, 4, 8):
            # Ulysses splits the attention heads among the ranks: n must divide their number.
            row[f"denoising, ulysses on {n} GPUs"] = denoising(n) if t["heads"] % n == 0 else None
            row[f"denoising, ring on {n} GPUs"] = denoising(n)
        row["whole sampling call, any of these (the prompt's encoding or the decode is its peak)"] = max(
            denoising(1), resident + others
        )
        rows[model] = row
    return _markdown(rows), rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: the same code in seconds")
    args = parser.parse_args(argv)
    env = environment("cpu", __file__, argv)
    print(
        f"# {env['command']}\n# analytic (fake tensors, no device), torch {env['torch']}, "
        f"diffusers {env['diffusers']}, peft {env['peft']}, {env['date']}\n"
    )
    text, rows = table(tiny=args.tiny)
    print(text)
    cards, small = small_cards(tiny=args.tiny)
    print("Quantized, offloaded and tiled (text encoder offloaded between encodings):\n")
    print(cards)
    print(fits_table(small["fits"]))
    parallel, per_gpu = many_gpus(tiny=args.tiny)
    print("\nSampling per GPU with parallelism:\n")
    print(parallel)
    return {"single": rows, "small_cards": small, "many_gpus": per_gpu}


if __name__ == "__main__":
    main()
