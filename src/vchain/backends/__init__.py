"""Backends, one module per vendor or model family.

- `vchain.backends.openai`: `OpenAIReasoner`, `OpenAIImageBackend`, `OpenAIJudge` (any OpenAI-compatible server).
- `vchain.backends.transformers`: `TransformersReasoner`, `TransformersJudge` (open weights, in process).
- `vchain.backends.diffusers`: `DiffusersImageBackend` (Qwen-Image-Edit-Plus, FLUX.2 klein, FLUX.1 Kontext).
- `vchain.backends.wan`, `vchain.backends.cogvideox`: the video generator families and their tuners.

`generator_family(model_id)` tells which family a Diffusers-format checkpoint belongs to, from the
`_class_name` of its `model_index.json`, so one command serves every family.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from vchain.errors import ConfigurationError


@dataclass(frozen=True)
class GeneratorFamily:
    """A video model family: its diffusers pipeline class and the vchain classes that serve it."""

    name: str
    pipeline_class: str
    module: str
    generator: str
    tuner: str
    sampling: str  # its sampling config and LoRA config, in `vchain.backends._configs` (no torch import)
    tuning: str
    dispatches_attention: bool = True  # its attention goes through diffusers' dispatcher (attention_backend)

    def generator_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.generator)

    def tuner_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.tuner)

    def sampling_class(self) -> type:
        """The generator's sampling config, importable without torch (the CLI checks flags with it first)."""
        return getattr(importlib.import_module("vchain.backends._configs"), self.sampling)

    def tuning_class(self) -> type:
        """The tuner's LoRA config, importable without torch."""
        return getattr(importlib.import_module("vchain.backends._configs"), self.tuning)


GENERATOR_FAMILIES = {
    family.pipeline_class: family
    for family in (
        GeneratorFamily(
            "Wan",
            "WanPipeline",
            "vchain.backends.wan",
            "WanVideoGenerator",
            "WanLoRATuner",
            "WanSamplingConfig",
            "WanLoRAConfig",
        ),
        GeneratorFamily(
            "CogVideoX",
            "CogVideoXPipeline",
            "vchain.backends.cogvideox",
            "CogVideoXVideoGenerator",
            "CogVideoXLoRATuner",
            "CogVideoXSamplingConfig",
            "CogVideoXLoRAConfig",
            dispatches_attention=False,
        ),
    )
}
DEFAULT_FAMILY = GENERATOR_FAMILIES["WanPipeline"]


def generator_family(model_id: str | Path | None) -> GeneratorFamily:
    """The family of a Diffusers-format checkpoint (a folder or a hub id; None: the default, Wan).

    Reads `model_index.json` (downloading only that file for a hub id that is not cached); a checkpoint
    of another pipeline is a `ConfigurationError` naming it and the supported ones.
    """
    if model_id is None:
        return DEFAULT_FAMILY
    from vchain._hub import resolve_pretrained

    source = resolve_pretrained(
        model_id, what="video generator weights", marker="model_index.json", argument="--model"
    )
    folder = Path(source["pretrained_model_name_or_path"])
    if folder.is_dir():
        index = folder / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        index = Path(
            hf_hub_download(str(model_id), "model_index.json", local_files_only=source.get("local_files_only", False))
        )
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigurationError(f"{str(index)!r} is not a readable model_index.json: {e}") from e
    if name not in GENERATOR_FAMILIES:
        supported = ", ".join(f"{f.pipeline_class} ({f.name})" for f in GENERATOR_FAMILIES.values())
        raise ConfigurationError(
            f"--model {str(model_id)!r} is a {name!r} checkpoint; vchain generates with {supported}"
        )
    return GENERATOR_FAMILIES[name]


def family_of_generator(class_name: str | None) -> GeneratorFamily:
    """The family whose generator class is `class_name` (as a manifest records it), else the default."""
    return next((f for f in GENERATOR_FAMILIES.values() if f.generator == class_name), DEFAULT_FAMILY)
