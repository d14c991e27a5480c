"""vchain: chain-of-visual-thought reasoning for video generation.

A multimodal model reasons a prompt into a few keyframes, a pre-trained video generator is LoRA-tuned
on those keyframes at inference time, then the video is sampled from the joined captions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vchain.chain import KeyframeVerdict, NextKeyframe, ScenePlan, ThoughtChain
from vchain.errors import ConfigurationError, StageError, VChainError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from vchain.pipeline import VChainOutput, VChainPipeline
    from vchain.search import SearchConfig

# The pipeline imports torch-heavy code lazily; `import vchain` stays light.
_LAZY = {"VChainPipeline": "vchain.pipeline", "VChainOutput": "vchain.pipeline", "SearchConfig": "vchain.search"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vchain' has no attribute {name!r}")


__all__ = [
    "ConfigurationError",
    "KeyframeVerdict",
    "NextKeyframe",
    "ScenePlan",
    "SearchConfig",
    "StageError",
    "ThoughtChain",
    "VChainError",
    "VChainOutput",
    "VChainPipeline",
    "__version__",
]
