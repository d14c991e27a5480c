"""Backends, one module per vendor or model family.

- `vchain.backends.openai`: `OpenAIReasoner`, `OpenAIImageBackend`, `OpenAIJudge` (any OpenAI-compatible server).
- `vchain.backends.transformers`: `TransformersReasoner`, `TransformersJudge` (open weights, in process).
- `vchain.backends.diffusers_image`: `DiffusersImageBackend` (Qwen-Image-Edit-Plus, FLUX.2 klein, FLUX.1
  Kontext).
- `vchain.backends.wan`, `vchain.backends.cogvideox`: the video generator families and their tuners, on
  `vchain.backends.diffusers_video.DiffusersVideoGenerator`.

`vchain.backends.diffusers` and `vchain.backends._diffusers`, the old names of `diffusers_image` and
`diffusers_video`, still import (with a `DeprecationWarning`) until the next release.

`generator_family(model_id)` tells which family a Diffusers-format checkpoint belongs to, from the
`_class_name` of its `model_index.json`, so one command serves every family.

`REASONERS`, `IMAGE_BACKENDS` and `JUDGES` are the kinds `--reasoner`, `--image-backend` and `--judge` take,
each a factory: a `BackendKind` (the factory and what it needs), or a bare function, read as
`BackendKind.of(function)`. A backend of your own registers itself by adding one::

    from vchain.backends import REASONERS, BackendKind
    from vchain.reasoning import ChatReasoner

    def my_reasoner(model: str, *, base_url: str | None = None):
        return ChatReasoner(MyChatModel(model, base_url))

    REASONERS["mine"] = BackendKind(my_reasoner, model="NAME")   # vchain think ... --reasoner mine:NAME
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vchain.backends._deprecated import RenamedModules
from vchain.errors import ConfigurationError

if not any(isinstance(finder, RenamedModules) for finder in sys.meta_path):
    sys.meta_path.append(RenamedModules())


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
        GeneratorFamily(
            "Wan VACE",
            "WanVACEPipeline",
            "vchain.backends.wan",
            "WanVACEVideoGenerator",
            "WanLoRATuner",
            "WanSamplingConfig",
            "WanLoRAConfig",
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
    name = checkpoint_class(model_id, source)
    if name not in GENERATOR_FAMILIES:
        supported = ", ".join(f"{f.pipeline_class} ({f.name})" for f in GENERATOR_FAMILIES.values())
        raise ConfigurationError(
            f"--model {str(model_id)!r} is a {name!r} checkpoint; vchain generates with {supported}"
        )
    return GENERATOR_FAMILIES[name]


def checkpoint_class(model_id: str | Path, source: dict) -> str | None:
    """The diffusers pipeline class a checkpoint names (`_class_name` of its `model_index.json`), from what
    `vchain._hub.resolve_pretrained` found; only that file is downloaded for a hub id that is not cached."""
    return checkpoint_index(model_id, source).get("_class_name")


def checkpoint_index(model_id: str | Path, source: dict) -> dict:
    """A checkpoint's `model_index.json`, found as `checkpoint_class` finds it."""
    folder = Path(source["pretrained_model_name_or_path"])
    if folder.is_dir():
        index = folder / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        hub = {k: source[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in source}
        index = Path(hf_hub_download(str(model_id), "model_index.json", **hub))
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
        if not isinstance(content, dict):
            raise ValueError(f"it holds a {type(content).__name__}, not an object")
        return content
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"{str(index)!r} is not a readable model_index.json: {e}") from e


def family_of_generator(class_name: str | None) -> GeneratorFamily:
    """The family whose generator class is `class_name` (as a manifest records it), else the default."""
    return next((f for f in GENERATOR_FAMILIES.values() if f.generator == class_name), DEFAULT_FAMILY)


# ------------------------------------------------------------------------------ reasoners, editors, judges


@dataclass(frozen=True)
class BackendKind:
    """One kind a `--reasoner`, `--image-backend` or `--judge` flag can name: a factory and what it takes.

    Attributes:
        factory: `factory(model, **settings)` builds the component. Its keyword parameters are the settings
            the kind takes (`base_url`, `timeout`, `dtype`, `device`, ...): the CLI passes the ones given and
            refuses a flag the kind does not take.
        model: what follows `KIND:` on the command line (e.g. `"ID_OR_DIR"`); empty for a kind that is named
            alone and takes its model from a flag of its own (`--reasoner-model`) or the factory's default.
        checkpoint: a file the model's checkpoint holds (`"config.json"`) for a kind that loads weights:
            the id or folder is found before anything runs, and the component is built after every check.
        dimensions: for a judge that scores only some of vchain's dimensions, those (its `dimensions`), so
            that a search objective naming another is refused before anything loads; None: all six.
    """

    factory: Callable[..., Any]
    model: str = ""
    checkpoint: str | None = None
    dimensions: tuple[str, ...] | None = None

    @classmethod
    def of(cls, entry: BackendKind | Callable[..., Any]) -> BackendKind:
        """A registry entry as a `BackendKind`: itself, or a bare factory, which takes `KIND:MODEL` when its
        first parameter has no default."""
        if isinstance(entry, BackendKind):
            return entry
        first = next(iter(inspect.signature(entry).parameters.values()), None)
        return cls(entry, model="MODEL" if first is not None and first.default is first.empty else "")

    def __call__(self, *args: Any, **settings: Any) -> Any:
        return self.factory(*args, **settings)

    def settings(self) -> tuple[str, ...]:
        """The settings the factory takes, by name."""
        parameters = list(inspect.signature(self.factory).parameters.values())[1:]
        return tuple(p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))

    def form(self, name: str) -> str:
        """How the command line names this kind, e.g. `transformers:ID_OR_DIR`."""
        return f"{name}:{self.model}" if self.model else name


def _openai_reasoner(
    model: str = "gpt-4o", *, base_url=None, structured_output="auto", timeout=120.0, max_tokens=None, extra_body=None
):
    from vchain.backends.openai import OpenAIReasoner

    return OpenAIReasoner(
        model,
        base_url=base_url,
        structured_output=structured_output,
        timeout=timeout,
        max_tokens=max_tokens,
        extra_body=extra_body,
    )


def _transformers_reasoner(model: str, *, dtype=None, device=None):
    from vchain.backends.transformers import TransformersReasoner

    return TransformersReasoner.from_pretrained(model, dtype=dtype, device=device)


def _openai_image_backend(model: str = "gpt-image-1", *, base_url=None):
    from vchain.backends.openai import OpenAIImageBackend

    return OpenAIImageBackend(model, base_url=base_url)


def _diffusers_image_backend(model: str, *, dtype=None, device=None):
    from vchain.backends.diffusers_image import DiffusersImageBackend

    return DiffusersImageBackend.from_pretrained(model, dtype=dtype, device=device)


def _openai_judge(
    model: str = "gpt-4o",
    *,
    base_url=None,
    grid=False,
    structured_output="auto",
    timeout=120.0,
    max_tokens=None,
    extra_body=None,
):
    from vchain.backends.openai import OpenAIJudge

    return OpenAIJudge(
        model,
        base_url=base_url,
        grid=grid,
        structured_output=structured_output,
        timeout=timeout,
        max_tokens=max_tokens,
        extra_body=extra_body,
    )


def _transformers_judge(model: str, *, grid=False, dtype=None, device=None):
    from vchain.backends.transformers import TransformersJudge

    return TransformersJudge.from_pretrained(model, grid=grid, dtype=dtype, device=device)


def _videoscore2_judge(model: str, *, dtype=None, device=None):
    from vchain.backends.videoscore2 import VideoScore2Judge

    return VideoScore2Judge.from_pretrained(model, dtype=dtype, device=device)


REASONERS: dict[str, BackendKind] = {
    "openai": BackendKind(_openai_reasoner),
    "transformers": BackendKind(_transformers_reasoner, model="ID_OR_DIR", checkpoint="config.json"),
}
IMAGE_BACKENDS: dict[str, BackendKind] = {
    "openai": BackendKind(_openai_image_backend),
    "diffusers": BackendKind(_diffusers_image_backend, model="ID_OR_DIR", checkpoint="model_index.json"),
}
JUDGES: dict[str, BackendKind] = {
    "openai": BackendKind(_openai_judge),
    "transformers": BackendKind(_transformers_judge, model="ID_OR_DIR", checkpoint="config.json"),
    "videoscore2": BackendKind(
        _videoscore2_judge,
        model="ID_OR_DIR",
        checkpoint="config.json",
        dimensions=("frame_quality", "text_alignment", "physics"),
    ),
}
