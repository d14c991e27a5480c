"""The paper's Table 1 as data: what each baseline, ablation and the full method runs; and two variants that
place the keyframes at their moments in a keyframe-conditioned generator (`keyframe-guided`, training-free,
and `vchain-guided`, tuned as well)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vchain.errors import ConfigurationError

STAGES = ("reasoning", "tuning", "sampling")


@dataclass(frozen=True)
class Variant:
    """One row of Table 1.

    Attributes:
        reasoning: `"chain"` (keyframes and captions), `"augment"` (a rewritten prompt) or None.
        tuning: whether the generator is tuned on the keyframes.
        render: who makes the frames: the generator, or the interpolator from the keyframes.
        guided: the generator samples with the keyframes placed at their times (a
            `KeyframeConditionedGenerator` such as `WanVACEVideoGenerator`).
    """

    name: str
    description: str
    reasoning: Literal["chain", "augment"] | None
    tuning: bool
    render: Literal["generator", "interpolator"]
    guided: bool = False

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this variant runs, in order."""
        return tuple(
            s for s, runs in zip(STAGES, (self.reasoning is not None, self.tuning, True), strict=True) if runs
        )

    def needs(self, stage: str) -> tuple[str, ...]:
        """The pipeline components `stage` of this variant uses."""
        if stage == "reasoning":
            return ("reasoner", "image_backend") if self.reasoning == "chain" else ("reasoner",)
        if stage == "tuning":
            return ("generator", "tuner")
        return ("generator",) if self.render == "generator" else ("interpolator",)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("t2v", "the untouched generator on the user prompt", None, False, "generator"),
        Variant(
            "t2v-prompt-aug",
            "the prompt rewritten richer by the reasoner, then plain text-to-video",
            "augment",
            False,
            "generator",
        ),
        Variant(
            "no-visual-thought",
            "full reasoning; only the composite prompt reaches the generator, no tuning",
            "chain",
            False,
            "generator",
        ),
        Variant(
            "no-sparse-tuning",
            "the keyframes turned straight into frames by the interpolator",
            "chain",
            False,
            "interpolator",
        ),
        Variant(
            "vchain",
            "reasoning, sparse tuning on the keyframes, sampling from the composite prompt",
            "chain",
            True,
            "generator",
        ),
        Variant(
            "keyframe-guided",
            "reasoning; the keyframes placed at their moments in a keyframe-conditioned generator (VACE), no tuning",
            "chain",
            False,
            "generator",
            guided=True,
        ),
        Variant(
            "vchain-guided",
            "reasoning, sparse tuning on the keyframes, then sampling with them placed at their moments",
            "chain",
            True,
            "generator",
            guided=True,
        ),
    )
}
# The five rows of the paper's Table 1, in its order.
TABLE_1 = ("t2v", "t2v-prompt-aug", "no-visual-thought", "no-sparse-tuning", "vchain")


def get_variant(name: object) -> Variant:
    if name not in VARIANTS:
        raise ConfigurationError(f"variant must be one of {list(VARIANTS)}, got {name!r}")
    return VARIANTS[name]
