"""The judge's answer: a video scored from 1 to 5 on the six dimensions of the paper's user study.

It sits below `vchain.judging` so that `vchain.interfaces.Judge` can name it without importing the
judging machinery (run folders, summaries).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator

from vchain.chain import _Answer
from vchain.errors import ConfigurationError

DIMENSIONS = ("frame_quality", "temporal_quality", "text_alignment", "physics", "commonsense", "causality")


def dimension_title(dimension: str) -> str:
    """`"frame_quality"` -> `"frame quality"`."""
    return dimension.replace("_", " ")


def _reason(dimension: str) -> Any:
    return Field(
        description=f"One or two sentences on what in the frames decides the {dimension_title(dimension)} score."
    )


def _score(dimension: str) -> Any:
    # The scale travels in the schema as an enum, which OpenAI's strict mode and local grammars both
    # honour (a local model could otherwise write digits forever); the validator below checks it too.
    return Field(
        description=f"{dimension_title(dimension).capitalize()}: an integer from 1 (fails) to 5 (excellent).",
        json_schema_extra={"enum": [1, 2, 3, 4, 5]},
    )


class VideoScores(_Answer):
    """A judge's answer: each of the six dimensions scored 1 to 5, with the reason written first.

    This is also the structured-output schema sent to the judge, so it stays flat with every field
    required; the scale is an enum in the schema and is checked here as well. The
    reason comes before its score so that a model writing in order reasons before it commits to a number.
    """

    # Strict: a score is an integer as sent, never a coerced `true` or `"4"`.
    model_config = ConfigDict(strict=True)

    frame_quality_reason: str = _reason("frame_quality")
    frame_quality: int = _score("frame_quality")
    temporal_quality_reason: str = _reason("temporal_quality")
    temporal_quality: int = _score("temporal_quality")
    text_alignment_reason: str = _reason("text_alignment")
    text_alignment: int = _score("text_alignment")
    physics_reason: str = _reason("physics")
    physics: int = _score("physics")
    commonsense_reason: str = _reason("commonsense")
    commonsense: int = _score("commonsense")
    causality_reason: str = _reason("causality")
    causality: int = _score("causality")

    @field_validator(*DIMENSIONS)
    @classmethod
    def _on_the_scale(cls, value: int, info) -> int:
        if not 1 <= value <= 5:
            raise ValueError(f"{info.field_name} must be an integer from 1 to 5, got {value}")
        return value

    def score(self, dimension: str) -> int:
        return getattr(self, check_dimension(dimension))

    def reason(self, dimension: str) -> str:
        return getattr(self, f"{check_dimension(dimension)}_reason")


def check_dimension(dimension: str) -> str:
    if dimension not in DIMENSIONS:
        raise ConfigurationError(f"dimension must be one of {list(DIMENSIONS)}, got {dimension!r}")
    return dimension
