"""The judge's answer: a video scored from 1 to 5 on the six dimensions of the paper's user study.

A judge may score only some of them (the VideoScore2 judge scores three): a dimension it leaves out holds
None as its score and its reason, and every summary shows it blank rather than as a number. The schema sent
to a chat judge still asks for all six (None never appears in it), and `vchain.judging.ChatJudge` refuses
an answer that leaves one out.

It sits below `vchain.judging` so that `vchain.interfaces.Judge` can name it without importing the
judging machinery (run folders, summaries).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

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

    frame_quality_reason: str | SkipJsonSchema[None] = _reason("frame_quality")
    frame_quality: int | SkipJsonSchema[None] = _score("frame_quality")
    temporal_quality_reason: str | SkipJsonSchema[None] = _reason("temporal_quality")
    temporal_quality: int | SkipJsonSchema[None] = _score("temporal_quality")
    text_alignment_reason: str | SkipJsonSchema[None] = _reason("text_alignment")
    text_alignment: int | SkipJsonSchema[None] = _score("text_alignment")
    physics_reason: str | SkipJsonSchema[None] = _reason("physics")
    physics: int | SkipJsonSchema[None] = _score("physics")
    commonsense_reason: str | SkipJsonSchema[None] = _reason("commonsense")
    commonsense: int | SkipJsonSchema[None] = _score("commonsense")
    causality_reason: str | SkipJsonSchema[None] = _reason("causality")
    causality: int | SkipJsonSchema[None] = _score("causality")

    @field_validator(*DIMENSIONS)
    @classmethod
    def _on_the_scale(cls, value: int | None, info) -> int | None:
        if value is not None and not 1 <= value <= 5:
            raise ValueError(f"{info.field_name} must be an integer from 1 to 5, got {value}")
        return value

    @model_validator(mode="after")
    def _scored_with_reasons(self) -> VideoScores:
        # A dimension is scored (a score and its reason) or left out (None for both); at least one is scored.
        halves = [d for d in DIMENSIONS if (self.score(d) is None) != (self.reason(d) is None)]
        if halves:
            raise ValueError(f"{halves[0]} and {halves[0]}_reason must both be given or both be None")
        if not self.dimensions:
            raise ValueError("at least one dimension must be scored")
        return self

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The dimensions this answer scores, in `DIMENSIONS` order (all six unless the judge scores fewer)."""
        return tuple(d for d in DIMENSIONS if getattr(self, d) is not None)

    def score(self, dimension: str) -> int | None:
        """The score of `dimension`, None if the judge left it out."""
        return getattr(self, check_dimension(dimension))

    def reason(self, dimension: str) -> str | None:
        return getattr(self, f"{check_dimension(dimension)}_reason")

    @classmethod
    def partial(cls, scores: dict[str, int], reasons: dict[str, str]) -> VideoScores:
        """Scores of some dimensions (`scores` and `reasons` keyed by dimension name); the others left out."""
        unknown = sorted(set(scores) - set(DIMENSIONS))
        if unknown:
            raise ConfigurationError(f"scores must be keyed by dimensions among {list(DIMENSIONS)}, got {unknown}")
        return cls(
            **{d: scores.get(d) for d in DIMENSIONS},
            **{f"{d}_reason": reasons.get(d) if d in scores else None for d in DIMENSIONS},
        )


def check_dimension(dimension: str) -> str:
    if dimension not in DIMENSIONS:
        raise ConfigurationError(f"dimension must be one of {list(DIMENSIONS)}, got {dimension!r}")
    return dimension
