"""`VChainPipeline`: reasoning, sparse tuning and sampling, composed."""

from __future__ import annotations

import logging
from pathlib import Path

from vchain.accounting import UsageMeter
from vchain.chain import CHAIN_FILE, ThoughtChain
from vchain.errors import ConfigurationError
from vchain.interfaces import ImageBackend, Reasoner
from vchain.reasoning import ReasoningConfig, check_prompt, reason
from vchain.run import RunDirectory

logger = logging.getLogger(__name__)


def describe(component: object) -> dict | None:
    """What a manifest records of a component: its class and model id, never its client or key."""
    if component is None:
        return None
    info = {"class": type(component).__name__}
    for attribute in ("model", "model_id"):
        value = getattr(component, attribute, None)
        if isinstance(value, str):
            info[attribute] = value
    return info


class VChainPipeline:
    """Reason a prompt into keyframes, tune the video generator on them, sample the video.

    Args:
        reasoner: plans the scene and predicts keyframe captions (e.g. `OpenAIReasoner()`).
        image_backend: draws and edits the keyframes (e.g. `OpenAIImageBackend()`).
        generator: the video model (e.g. `WanVideoGenerator.from_pretrained(...)`).
        tuner: learns the keyframe adapter (e.g. `WanLoRATuner()`).
        reasoning: settings of the reasoning loop; its frame size follows the generator when one is set.

    Only the components a stage needs must be given: `think` needs `reasoner` and `image_backend`.

    Example::

        import torch
        from vchain import VChainPipeline
        from vchain.backends.openai import OpenAIImageBackend, OpenAIReasoner
        from vchain.backends.wan import WanLoRATuner, WanVideoGenerator

        pipe = VChainPipeline(
            reasoner=OpenAIReasoner(),
            image_backend=OpenAIImageBackend(),
            generator=WanVideoGenerator.from_pretrained(
                "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch_dtype=torch.bfloat16
            ).to("cuda"),
            tuner=WanLoRATuner(),
        )
        out = pipe("An egg is dropped onto a pillow.", output_dir="runs/egg")
        out.video_path
    """

    def __init__(
        self,
        reasoner: Reasoner | None = None,
        image_backend: ImageBackend | None = None,
        generator=None,
        tuner=None,
        *,
        reasoning: ReasoningConfig | None = None,
    ):
        self.reasoner = reasoner
        self.image_backend = image_backend
        self.generator = generator
        self.tuner = tuner
        self.reasoning = reasoning or ReasoningConfig()
        if generator is not None:
            self.reasoning.width, self.reasoning.height = generator.width, generator.height

    def check_inputs(self, prompt: object, stages: tuple[str, ...]) -> str:
        """Reject what cannot work before any API call or model load; returns the cleaned prompt."""
        prompt = check_prompt(prompt)
        needs = {
            "think": ("reasoner", "image_backend"),
            "augment": ("reasoner",),
            "tune": ("generator", "tuner"),
            "sample": ("generator",),
        }
        missing = [
            f"{name} (needed to {stage})"
            for stage in stages
            for name in needs[stage]
            if getattr(self, name) is None
        ]
        if missing:
            raise ConfigurationError("VChainPipeline is missing " + ", ".join(dict.fromkeys(missing)))
        return prompt

    def think(self, prompt: str, output_dir: str | Path | None = None) -> ThoughtChain:
        """Stage 1: reason `prompt` into a chain of visual thoughts.

        With `output_dir`, every keyframe is saved as it arrives and a re-run resumes: keyframes on
        disk are not requested again, and a finished chain is returned as is.
        """
        prompt = self.check_inputs(prompt, ("think",))
        run = RunDirectory(output_dir, prompt) if output_dir is not None else None
        return self._think(prompt, run)

    def _think(self, prompt: str, run: RunDirectory | None) -> ThoughtChain:
        if run is None:
            return reason(prompt, self.reasoner, self.image_backend, self.reasoning).chain
        if run.status("reasoning") == "done":
            return ThoughtChain.load(run.path)
        chain = ThoughtChain.load(run.path) if (run.path / CHAIN_FILE).is_file() else None
        meter = UsageMeter(run.manifest.calls)

        def save(progress: ThoughtChain) -> None:
            progress.save(run.path)
            run.record_usage(meter)

        if chain is not None:
            logger.info("Resuming reasoning in %s from %d keyframe(s)", run.path, len(chain.images))
        with run.stage("reasoning") as record:
            result = reason(
                prompt,
                self.reasoner,
                self.image_backend,
                self.reasoning,
                chain=chain,
                meter=meter,
                on_progress=save,
            )
            record.seconds = meter.seconds_by_step()
            record.detail = {
                "keyframes": len(result.chain.images),
                "stop_reason": result.stop_reason,
                "max_keyframes": self.reasoning.max_keyframes,
            }
            run.manifest.config["reasoning"] = self.reasoning.to_dict()
            run.manifest.models.update(
                reasoner=describe(self.reasoner), image_backend=describe(self.image_backend)
            )
        return result.chain
