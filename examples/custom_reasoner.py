"""Plugging in your own reasoner: rules instead of a model, with everything else unchanged.

python examples/custom_reasoner.py
"""

from vchain import VChainPipeline
from vchain.chain import NextKeyframe, ScenePlan
from vchain.interfaces import Reasoner
from vchain.testing import DrawingImageBackend


class FallingObjectReasoner(Reasoner):
    """Knows one thing: objects that are dropped hit the ground, then rest."""

    def plan(self, prompt):
        return ScenePlan(
            thoughts=f"{prompt} Side view, plain floor, daylight.",
            consequences="The object falls, touches the floor, and comes to rest.",
            context_frame="The object is held one metre above a plain grey floor, still.",
            concise_prompt="An object held above a grey floor.",
        )

    def next_keyframe(self, chain, composite):
        steps = ["The object touches the floor at the centre of the frame.", "The object rests on the floor."]
        index = len(chain.key_frames)
        return NextKeyframe(caption=steps[index], is_last=index == len(steps) - 1)


pipe = VChainPipeline(reasoner=FallingObjectReasoner(), image_backend=DrawingImageBackend())
chain = pipe.think("A steel ball is dropped.", output_dir="runs/custom_reasoner")
print(chain.composite_prompt)
