"""The offline demo: the whole pipeline on tiny random models, a scripted reasoner and drawn keyframes."""

from __future__ import annotations

from vchain.testing.fakes import DrawingImageBackend, ScriptedReasoner
from vchain.testing.tiny import tiny_wan_pipeline

DEMO_PROMPT = "An egg is dropped onto a pillow."
DEMO_CAPTIONS = (
    "The egg touches the centre of the white pillow, which dents slightly beneath it.",
    "The egg rests intact in a shallow dent in the centre of the pillow.",
)


def demo_pipeline(seed: int = 0, *, steps: int = 30):
    """The whole pipeline offline on tiny random models: a scripted reasoner, drawn keyframes, a tiny Wan.

    The video shows noise shaped by random weights; what it demonstrates is the machinery (every stage,
    the run folder, the manifest), not the method's quality.
    """
    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
    from vchain.pipeline import VChainPipeline

    generator = WanVideoGenerator(
        tiny_wan_pipeline(seed), height=64, width=64, num_frames=17, num_inference_steps=8,
        max_sequence_length=256, fps=8,
    )  # fmt: skip
    return VChainPipeline(
        reasoner=ScriptedReasoner(DEMO_CAPTIONS),
        image_backend=DrawingImageBackend(),
        generator=generator,
        tuner=WanLoRATuner(steps=steps, learning_rate=1e-3, seed=seed, log_every=5),
    )
