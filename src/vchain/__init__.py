"""vchain: chain-of-visual-thought reasoning for video generation.

A multimodal model reasons a prompt into a few keyframes, a pre-trained video generator is LoRA-tuned
on those keyframes at inference time, then the video is sampled from the joined captions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vchain.errors import ConfigurationError, StageError, VChainError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from vchain.chain import KeyframeVerdict, NextKeyframe, ScenePlan, ThoughtChain
    from vchain.interfaces import ImageBackend, Judge, Reasoner, Tuner, VideoGenerator
    from vchain.pipeline import VChainOutput, VChainPipeline
    from vchain.reasoning import ReasoningConfig
    from vchain.search import SearchConfig
    from vchain.tuning import LoRAConfig

# Everything but the errors is imported when first used: `import vchain` (and so `vchain --help`) stays light.
_LAZY = {
    **dict.fromkeys(("ThoughtChain", "ScenePlan", "NextKeyframe", "KeyframeVerdict"), "vchain.chain"),
    "VChainPipeline": "vchain.pipeline",
    "VChainOutput": "vchain.pipeline",
    "ReasoningConfig": "vchain.reasoning",
    "LoRAConfig": "vchain.tuning",
    "SearchConfig": "vchain.search",
    **dict.fromkeys(("Reasoner", "ImageBackend", "VideoGenerator", "Tuner", "Judge"), "vchain.interfaces"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vchain' has no attribute {name!r}")


__all__ = [
    "ConfigurationError",
    "ImageBackend",
    "Judge",
    "KeyframeVerdict",
    "LoRAConfig",
    "NextKeyframe",
    "Reasoner",
    "ReasoningConfig",
    "ScenePlan",
    "SearchConfig",
    "StageError",
    "ThoughtChain",
    "Tuner",
    "VChainError",
    "VChainOutput",
    "VChainPipeline",
    "VideoGenerator",
    "__version__",
]
