"""Tiny random vision-language checkpoints built offline, saved like hub checkpoints.

`tiny_vlm(family)` builds a random model of a real architecture (80 to 170 thousand parameters),
a tokenizer trained in memory on vchain's own prompts, an image processor and a chat template, and
saves them with `save_pretrained` into a folder laid out like the family's hub checkpoints, so that
`TransformersReasoner.from_pretrained(folder)` runs the real loading code. Nothing is downloaded.

Families: `"qwen2_5_vl"` (Qwen2.5-VL), `"qwen3_vl"` (Qwen3-VL) and `"gemma3"` (Gemma 3).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

FAMILIES = ("qwen2_5_vl", "qwen3_vl", "gemma3")
VOCAB_SIZE = 600

# The special tokens of Qwen's chat format, in the order their checkpoints number them.
_QWEN_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
_QWEN_TEMPLATE = """\
{%- for message in messages -%}
<|im_start|>{{ message['role'] }}
{% if message['content'] is string %}{{ message['content'] }}{% else %}\
{% for part in message['content'] %}\
{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>\
{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}\
{% endfor %}{% endif %}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"""

_GEMMA_SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
_GEMMA_TURNS = ("<start_of_turn>", "<end_of_turn>")
_GEMMA_IMAGE = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
# Gemma has no system role: its template folds the system text into the first user turn.
_GEMMA_TEMPLATE = """\
{{- bos_token -}}
{%- set state = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- set state.system = (message['content'] if message['content'] is string \
else message['content'][0]['text']) + '\n\n' -%}
{%- else -%}
<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}
{{ state.system }}{%- set state.system = '' -%}
{%- if message['content'] is string %}{{ message['content'] }}{% else %}\
{% for part in message['content'] %}\
{% if part['type'] == 'image' %}<start_of_image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}\
{% endfor %}{% endif %}<end_of_turn>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif -%}"""


def tiny_vlm(family: str, seed: int = 0) -> Path:
    """The folder of a tiny random checkpoint of `family`, built and saved once per process.

    Args:
        family: one of `FAMILIES`.
        seed: seeds the random weights (the global torch RNG is left as it was).

    The folder lives in a temporary directory removed when the process exits.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    return _saved(family, seed)


@functools.cache
def _saved(family: str, seed: int) -> Path:
    import torch

    folder = Path(tempfile.mkdtemp(prefix=f"vchain-tiny-{family}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    build = {"qwen2_5_vl": _qwen2_5_vl, "qwen3_vl": _qwen3_vl, "gemma3": _gemma3}[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor_parts, processor_class = build()
    model.eval().save_pretrained(folder)
    for part in processor_parts:
        part.save_pretrained(folder)
    if processor_class is not None:
        # Saved as parts, the checkpoint names the processor that combines them, as Qwen's hub ones do.
        config_path = folder / "preprocessor_config.json"
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**config, "processor_class": processor_class}, indent=2))
    return folder


def _corpus() -> list[str]:
    """Text the tokenizers learn from: vchain's own prompts and the JSON its answers are made of."""
    from vchain import prompts

    texts = [value for name, value in vars(prompts).items() if name.isupper() and isinstance(value, str)]
    return [*texts, '{"thoughts": "a", "caption": "b", "is_last": true, "matches": false, "problem": ""}']


def qwen_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(_QWEN_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    learned = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=learned["vocab"], merges=[tuple(pair) for pair in learned["merges"]],
        eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=list(_QWEN_SPECIAL[1:]),
    )  # fmt: skip
    tokenizer.chat_template = _QWEN_TEMPLATE
    return tokenizer


def qwen_token_ids(tokenizer) -> dict[str, int]:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_SPECIAL}
    return {
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
    }  # fmt: skip


def _qwen_text(tokenizer, **extra) -> dict:
    """A two-layer text tower; `mrope_section` splits the rotary half of head_dim 16 into t, h, w."""
    return dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], **extra},
    )  # fmt: skip


def _set_stop_tokens(model, tokenizer, *turn_end: str) -> None:
    """Generation stops at the end of the assistant's turn or at the end of text, as in released models."""
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in turn_end]
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def _qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tokenizer = qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(tokenizer),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                           window_size=56, fullatt_block_indexes=[1]),
        **qwen_token_ids(tokenizer),
    )  # fmt: skip
    model = Qwen2_5_VLForConditionalGeneration(config)
    _set_stop_tokens(model, tokenizer, "<|im_end|>", "<|endoftext|>")
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    # A Qwen-VL processor cannot be built, nor saved, without its video processor (which needs
    # torchvision): save the parts, as the hub checkpoints hold them.
    return model, (tokenizer, image_processor), "Qwen2_5_VLProcessor"


def _qwen3_vl():
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = qwen_tokenizer()
    config = Qwen3VLConfig(
        text_config={**_qwen_text(tokenizer, mrope_interleaved=True), "head_dim": 16},
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        **qwen_token_ids(tokenizer),
    )  # fmt: skip
    model = Qwen3VLForConditionalGeneration(config)
    _set_stop_tokens(model, tokenizer, "<|im_end|>", "<|endoftext|>")
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2)
    return model, (tokenizer, image_processor), "Qwen3VLProcessor"


def _gemma_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    # Gemma's conventions: spaces become "▁", and characters outside the vocabulary fall back to bytes.
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    specials = [*_GEMMA_SPECIAL, *_GEMMA_TURNS, *_GEMMA_IMAGE.values()]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE + len(byte_tokens), special_tokens=[*specials, *byte_tokens], show_progress=False
    )
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_previous")
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    learned = json.loads(bpe.to_str())["model"]
    tokenizer = GemmaTokenizer(
        vocab=learned["vocab"], merges=[tuple(pair) for pair in learned["merges"]],
        extra_special_tokens={**_GEMMA_IMAGE, "sot_token": "<start_of_turn>", "eot_token": "<end_of_turn>"},
    )  # fmt: skip
    tokenizer.chat_template = _GEMMA_TEMPLATE
    return tokenizer


def _gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tokenizer = _gemma_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _GEMMA_IMAGE.items()}
    # 28x28 images in 14-pixel patches: a 2x2 grid, pooled to mm_tokens_per_image = 4 tokens.
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                         sliding_window=64, max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id),
        vision_config=dict(model_type="siglip_vision_model", image_size=28, patch_size=14, hidden_size=32,
                           intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        mm_tokens_per_image=4, boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
    )  # fmt: skip
    model = Gemma3ForConditionalGeneration(config)
    _set_stop_tokens(model, tokenizer, "<end_of_turn>", "<eos>")
    image_processor = Gemma3ImageProcessorPil(size={"height": 28, "width": 28})
    processor = Gemma3Processor(image_processor, tokenizer, chat_template=_GEMMA_TEMPLATE, image_seq_length=4)
    return model, (processor,), None
