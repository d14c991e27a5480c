"""`VChainPipeline`: reasoning, sparse tuning and sampling, composed; and the paper's variants."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vchain.accounting import UsageMeter
from vchain.chain import CHAIN_FILE, ThoughtChain
from vchain.errors import ConfigurationError, StageError
from vchain.interfaces import Adapter, ImageBackend, Interpolator, Reasoner, Tuner, VideoGenerator
from vchain.reasoning import ReasoningConfig, check_prompt, reason
from vchain.run import RunDirectory

logger = logging.getLogger(__name__)

# The paper's Table 1, and what each variant runs.
VARIANTS = {
    "t2v": "the untouched generator on the user prompt",
    "t2v-prompt-aug": "the prompt rewritten richer by the reasoner, then plain text-to-video",
    "no-visual-thought": "full reasoning; only the composite prompt reaches the generator, no tuning",
    "no-sparse-tuning": "the keyframes turned straight into frames by the interpolator",
    "vchain": "reasoning, sparse tuning on the keyframes, sampling from the composite prompt",
}
_STAGES_OF = {
    "t2v": ("sample",),
    "t2v-prompt-aug": ("augment", "sample"),
    "no-visual-thought": ("think", "sample"),
    "no-sparse-tuning": ("think", "interpolate"),
    "vchain": ("think", "tune", "sample"),
}
_RECORDED_AS = {"think": "reasoning", "augment": "reasoning", "tune": "tuning", "sample": "sampling",
                "interpolate": "sampling"}  # fmt: skip
_NEEDS = {
    "think": ("reasoner", "image_backend"),
    "augment": ("reasoner",),
    "tune": ("generator", "tuner"),
    "sample": ("generator",),
    "interpolate": ("interpolator",),
}


@dataclass
class VChainOutput:
    """What one run produced.

    Attributes:
        chain: the chain of visual thoughts (None for variants that do not reason).
        frames: the video's frames.
        video_path: the written mp4, when the run had an output folder.
        prompt: the text the generator sampled from (composite, augmented or the user's).
        manifest: the run's manifest as a dict (also on disk as `manifest.json`).
    """

    chain: ThoughtChain | None
    frames: list[Image.Image]
    video_path: Path | None = None
    prompt: str = ""
    manifest: dict = field(default_factory=dict)


def describe(component: object) -> dict | None:
    """What a manifest records of a component: its class, model id and config, never a client or key."""
    if component is None:
        return None
    info: dict = {"class": type(component).__name__}
    for attribute in ("model", "model_id"):
        value = getattr(component, attribute, None)
        if isinstance(value, str):
            info[attribute] = value
    config = getattr(component, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        info["config"] = dataclasses.asdict(config)
    return info


class VChainPipeline:
    """Reason a prompt into keyframes, tune the video generator on them, sample the video.

    Args:
        reasoner: plans the scene and predicts keyframe captions (e.g. `OpenAIReasoner()`).
        image_backend: draws and edits the keyframes (e.g. `OpenAIImageBackend()`).
        generator: the video model (e.g. `WanVideoGenerator.from_pretrained(...)`).
        tuner: learns the keyframe adapter (e.g. `WanLoRATuner()`).
        interpolator: keyframes to frames, for the `no-sparse-tuning` ablation (default: cross-fades).
        reasoning: settings of the reasoning loop; its frame size follows the generator when one is set.
        save_adapter: keep the tuned adapter in the run folder (`lora/`), written in the background while
            sampling runs from memory, so a resumed run need not tune again.

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
        generator: VideoGenerator | None = None,
        tuner: Tuner | None = None,
        *,
        interpolator: Interpolator | None = None,
        reasoning: ReasoningConfig | None = None,
        save_adapter: bool = True,
    ):
        from vchain.interpolation import CrossfadeInterpolator

        self.reasoner = reasoner
        self.image_backend = image_backend
        self.generator = generator
        self.tuner = tuner
        self.interpolator = interpolator or CrossfadeInterpolator()
        self.reasoning = reasoning or ReasoningConfig()
        self.save_adapter = save_adapter
        if generator is not None:
            self.reasoning.width, self.reasoning.height = generator.width, generator.height

    # ------------------------------------------------------------------------------------ checks

    def check_inputs(
        self, prompt: object, variant: str = "vchain", stages: tuple[str, ...] | None = None
    ) -> str:
        """Reject what cannot work before any API call or model load; returns the cleaned prompt."""
        if variant not in VARIANTS:
            raise ConfigurationError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        prompt = check_prompt(prompt)
        stages = _STAGES_OF[variant] if stages is None else stages
        missing = [
            f"{name} (needed to {stage})"
            for stage in stages
            for name in _NEEDS[stage]
            if getattr(self, name) is None
        ]
        if missing:
            raise ConfigurationError(
                f"VChainPipeline is missing {', '.join(dict.fromkeys(missing))} for {variant!r}"
            )
        return prompt

    # ------------------------------------------------------------------------------------ stages

    def think(self, prompt: str, output_dir: str | Path | None = None) -> ThoughtChain:
        """Stage 1: reason `prompt` into a chain of visual thoughts.

        With `output_dir`, every keyframe is saved as it arrives and a re-run resumes: keyframes on
        disk are not requested again, and a finished chain is returned as is.
        """
        prompt = self.check_inputs(prompt, stages=("think",))
        run = RunDirectory(output_dir, prompt) if output_dir is not None else None
        return self._think(prompt, run)

    def tune(self, chain: ThoughtChain) -> Adapter:
        """Stage 2: learn an adapter from the chain's (keyframe, caption) pairs. Nothing is written."""
        self.check_inputs(chain.input_prompt, stages=("tune",))
        return self.tuner.tune(self.generator, chain.training_pairs())

    def sample(
        self, chain: ThoughtChain | str, adapter: Adapter | None = None, *, seed: int | None = 0, **overrides
    ) -> list[Image.Image]:
        """Stage 3: sample from the chain's composite prompt (or a plain prompt), with the adapter if given.

        The adapter is active only during this call; the generator is exactly restored afterwards.
        """
        text = self.composite_prompt(chain) if isinstance(chain, ThoughtChain) else check_prompt(chain)
        self.check_inputs(text, stages=("sample",))
        if adapter is None:
            return self.generator.sample(text, seed=seed, **overrides)
        with adapter.apply(self.generator):
            return self.generator.sample(text, seed=seed, **overrides)

    def composite_prompt(self, chain: ThoughtChain) -> str:
        """The chain's captions joined, kept within the generator's text window.

        Policy when the joined captions are too long for the text encoder (UMT5: 512 tokens): keep the
        first caption (the scene) and the last (the outcome) and drop captions from the middle of the
        chain until it fits, with a warning naming how many were dropped. If the first and last alone
        do not fit, the encoder truncates the end and a warning says so.
        """
        captions = chain.captions
        counted = self.generator.prompt_tokens(" ".join(captions)) if self.generator else None
        if counted is None or counted[0] <= counted[1]:
            return chain.composite_prompt
        limit = counted[1]
        kept = list(captions)
        while len(kept) > 2 and self.generator.prompt_tokens(" ".join(kept))[0] > limit:
            del kept[len(kept) // 2]
        text = " ".join(kept)
        dropped = len(captions) - len(kept)
        still_long = self.generator.prompt_tokens(text)[0] > limit
        logger.warning(
            "The composite prompt of %r has %d tokens, over the text encoder's %d: dropped %d middle "
            "caption(s) to fit%s.", chain.name, counted[0], limit, dropped,
            "; still too long, the encoder will truncate the end" if still_long else "",
        )  # fmt: skip
        return text

    # ------------------------------------------------------------------------------------ a run

    def __call__(
        self,
        prompt: str,
        output_dir: str | Path | None = None,
        *,
        variant: str = "vchain",
        seed: int | None = 0,
        stop_after: str | None = None,
    ) -> VChainOutput | None:
        """Run `variant` on `prompt`; with `output_dir`, write the run folder and resume from it.

        A finished stage is not redone (and its components need not be given); a stage that crashed is
        redone from its last saved state: the reasoning from its last keyframe, sampling from the adapter
        in `lora/`. `stop_after="think"` or `"tune"` ends the run there (returns None).
        """
        if variant not in VARIANTS:
            raise ConfigurationError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        stages = _STAGES_OF[variant]
        if stop_after is not None:
            if stop_after not in stages or stop_after in ("sample", "interpolate"):
                raise ConfigurationError(
                    f"stop_after must be a stage of {variant!r} before sampling, got {stop_after!r}"
                )
            stages = stages[: stages.index(stop_after) + 1]
        run = (
            RunDirectory(output_dir, check_prompt(prompt), variant=variant)
            if output_dir is not None
            else None
        )
        pending = tuple(s for s in stages if run is None or run.status(_RECORDED_AS[s]) != "done")
        prompt = self.check_inputs(prompt, variant, pending)
        if run is not None:
            run.update(seed=seed, models={**run.manifest.models, **self._models()})

        chain = self._think(prompt, run) if "think" in stages else None
        if run is not None and chain is None:
            run.skip("reasoning", f"not part of {variant}")

        if "interpolate" in stages:
            return self._interpolate(prompt, chain, run)

        adapter, saver = self._tune(chain, run) if "tune" in stages else (None, None)
        if run is not None and "tune" not in _STAGES_OF[variant]:
            run.skip("tuning", f"not part of {variant}")
        if stop_after is not None:
            if saver is not None:
                saver.join()
            return None

        if chain is not None:
            text = self.composite_prompt(chain)
        elif "augment" in stages:
            text = self._augment(prompt, run)
        else:
            text = prompt
        try:
            return self._sample(text, chain, adapter, seed, run)
        finally:
            if saver is not None:
                saver.join()

    def _models(self) -> dict:
        return {
            name: describe(getattr(self, name))
            for name in ("reasoner", "image_backend", "generator", "tuner", "interpolator")
            if getattr(self, name) is not None
        }

    def _think(self, prompt: str, run: RunDirectory | None) -> ThoughtChain:
        if run is None:
            return reason(prompt, self.reasoner, self.image_backend, self.reasoning).chain
        if run.status("reasoning") == "done":
            return ThoughtChain.load(run.path)
        chain = ThoughtChain.load(run.path) if (run.path / CHAIN_FILE).is_file() else None
        if chain is not None and chain.input_prompt != prompt:
            raise ConfigurationError(
                f"{str(run.path)!r} holds a chain for {chain.input_prompt!r}, not {prompt!r}"
            )
        meter = UsageMeter(run.manifest.calls)
        record = run.manifest.stages["reasoning"]

        def save(progress: ThoughtChain) -> None:
            progress.save(run.path)
            record.seconds = meter.seconds_by_step()
            run.record_usage(meter)

        if chain is not None:
            logger.info("Resuming reasoning in %s from %d keyframe(s)", run.path, len(chain.images))
        run.manifest.config["reasoning"] = self.reasoning.to_dict()
        run.manifest.models.update(
            reasoner=describe(self.reasoner), image_backend=describe(self.image_backend)
        )
        with run.stage("reasoning"):
            result = reason(prompt, self.reasoner, self.image_backend, self.reasoning,
                            chain=chain, meter=meter, on_progress=save)  # fmt: skip
            record.seconds = meter.seconds_by_step()
            record.detail = {"keyframes": len(result.chain.images), "stop_reason": result.stop_reason,
                             "max_keyframes": self.reasoning.max_keyframes}  # fmt: skip
        return result.chain

    def _augment(self, prompt: str, run: RunDirectory | None) -> str:
        if run is not None and run.status("reasoning") == "done":
            return run.manifest.stages["reasoning"].detail["augmented_prompt"]
        if run is None:
            return self.reasoner.augment_prompt(prompt)
        meter = UsageMeter(run.manifest.calls)
        with run.stage("reasoning") as record:
            with meter.call("augment"):
                text = check_prompt(self.reasoner.augment_prompt(prompt))
            record.seconds = meter.seconds_by_step()
            record.detail = {"augmented_prompt": text}
            run.record_usage(meter)
        return text

    def _tune(self, chain: ThoughtChain, run: RunDirectory | None) -> tuple[Adapter, threading.Thread | None]:
        if run is not None and run.status("tuning") == "done" and (run.lora_path).is_dir():
            logger.info("Loading the adapter tuned earlier from %s", run.lora_path)
            return self.tuner.load_adapter(run.lora_path), None
        if run is None:
            return self.tune(chain), None
        with run.stage("tuning") as record:
            start = time.perf_counter()
            adapter = self.tune(chain)
            report = getattr(adapter, "report", None)
            record.seconds = dict(
                getattr(report, "seconds", {}) or {"fine_tune": round(time.perf_counter() - start, 3)}
            )
            record.detail = {"keyframes": len(chain.images), "tuner": describe(self.tuner)}
            if report is not None:
                record.detail.update(losses=report.losses, trainable_parameters=report.trainable_parameters)
        saver = None
        if self.save_adapter:
            saver = threading.Thread(
                target=_save_adapter, args=(adapter, run.lora_path), name="vchain-save-lora"
            )
            saver.start()  # sampling goes on from memory meanwhile
        return adapter, saver

    def _sample(self, text: str, chain, adapter, seed, run: RunDirectory | None) -> VChainOutput:
        if run is not None and run.status("sampling") == "done" and run.video_path.is_file():
            return VChainOutput(
                chain, _read_video(run.video_path), run.video_path, text, run.manifest.model_dump(mode="json")
            )
        if run is None:
            frames = self.sample(text, adapter, seed=seed)
            return VChainOutput(chain, frames, None, text)
        with run.stage("sampling") as record:
            frames = self.sample(text, adapter, seed=seed)
            timings = dict(getattr(self.generator, "last_timings", {}) or {})
            start = time.perf_counter()
            self.generator.save_video(frames, run.video_path)
            record.seconds = {**timings, "save": round(time.perf_counter() - start, 3)}
            record.detail = {"prompt": text, "frames": len(frames), "seed": seed,
                             "size": list(frames[0].size) if frames else None}  # fmt: skip
        return self._output(chain, frames, run, text)

    @staticmethod
    def _output(chain, frames, run: RunDirectory, text: str) -> VChainOutput:
        return VChainOutput(chain, frames, run.video_path, text, run.manifest.model_dump(mode="json"))

    def _interpolate(self, prompt: str, chain: ThoughtChain, run: RunDirectory | None) -> VChainOutput:
        num_frames = self.generator.num_frames if self.generator is not None else 81
        fps = self.generator.fps if self.generator is not None else 16
        if run is None:
            return VChainOutput(chain, self.interpolator.interpolate(chain.images, num_frames), None, prompt)
        run.skip("tuning", "not part of no-sparse-tuning")
        if run.status("sampling") == "done" and run.video_path.is_file():
            return VChainOutput(
                chain,
                _read_video(run.video_path),
                run.video_path,
                prompt,
                run.manifest.model_dump(mode="json"),
            )
        from vchain.video import write_video

        with run.stage("sampling") as record:
            start = time.perf_counter()
            frames = self.interpolator.interpolate(chain.images, num_frames)
            middle = time.perf_counter()
            write_video(frames, run.video_path, fps=fps)
            record.seconds = {
                "interpolate": round(middle - start, 3),
                "save": round(time.perf_counter() - middle, 3),
            }
            record.detail = {"interpolator": describe(self.interpolator), "frames": len(frames)}
        return self._output(chain, frames, run, prompt)


def _save_adapter(adapter: Adapter, path: Path) -> None:
    """Write the adapter beside its final place, then move it in: `lora/` exists only when complete."""
    staging = path.with_name(path.name + ".partial")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        adapter.save(staging)
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)
    except Exception:
        logger.exception("Saving the adapter to %s failed; a resumed run will tune again", path)
        shutil.rmtree(staging, ignore_errors=True)


def _read_video(path: Path) -> list[Image.Image]:
    import imageio.v3 as iio

    try:
        return [Image.fromarray(frame) for frame in iio.imread(path)]
    except Exception as e:
        raise StageError(f"cannot read back {str(path)!r}: {e}", stage="sampling") from e
