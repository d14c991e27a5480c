"""`VChainPipeline`: reasoning, sparse tuning and sampling, composed; and the paper's variants."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vchain.chain import ThoughtChain, check_prompt
from vchain.errors import ConfigurationError, NumericalError, StageError, VChainError
from vchain.interfaces import (
    Adapter,
    ImageBackend,
    Interpolator,
    Judge,
    KeyframeConditionedGenerator,
    Reasoner,
    Tuner,
    VideoGenerator,
    check_description,
)
from vchain.judging import judge_identity
from vchain.reasoning import ReasoningConfig, augment, check_reasoning, keyframe_frame, reason
from vchain.run import Manifest, NullRun, RunDirectory, chain_files, fingerprint
from vchain.sampling import Rendered, composite_prompt, interpolate, render
from vchain.search import Search, SearchConfig, SearchResult, check_applies, check_search
from vchain.variants import VARIANTS, Variant, get_variant

logger = logging.getLogger(__name__)

# Frames of the no-sparse-tuning ablation when no generator says otherwise: Wan2.1's 81 at 16 fps.
DEFAULT_FRAMES, DEFAULT_FPS = 81, 16
_COMPONENTS = {
    "reasoner": Reasoner,
    "image_backend": ImageBackend,
    "generator": VideoGenerator,
    "tuner": Tuner,
    "interpolator": Interpolator,
    "judge": Judge,
}


@dataclass
class VChainOutput:
    """What one run produced (a run stopped early holds what it has).

    Attributes:
        chain: the chain of visual thoughts (None for variants that do not reason).
        frames: the video's frames (empty when the run stopped before sampling). With an output folder
            they are always the frames of `video.mp4` as written (decoded from it), whether this call
            sampled or reused the stage, so they never depend on a resume; without a folder they are the
            generator's frames as sampled.
        video_path: the written mp4, when the run had an output folder and sampled.
        prompt: the text the generator sampled from (composite, augmented or the user's).
        adapter: the tuned adapter, when the variant tunes.
        manifest: the run folder's manifest (also on disk as `manifest.json`), None without a folder.
        ran: the stages this call did; the others were reused from the run folder (or skipped).
    """

    chain: ThoughtChain | None = None
    frames: list[Image.Image] = field(default_factory=list, repr=False)
    video_path: Path | None = None
    prompt: str | None = None
    adapter: Adapter | None = field(default=None, repr=False)
    manifest: Manifest | None = field(default=None, repr=False)
    ran: tuple[str, ...] = ()

    @property
    def statuses(self) -> dict[str, str]:
        """Each stage's status in the run folder (empty without one)."""
        if self.manifest is None:
            return {}
        return {name: record.status for name, record in self.manifest.stages}


class VChainPipeline:
    """Reason a prompt into keyframes, tune the video generator on them, sample the video.

    Args:
        reasoner: plans the scene and predicts keyframe captions (e.g. `OpenAIReasoner()`).
        image_backend: draws and edits the keyframes (e.g. `OpenAIImageBackend()`).
        generator: the video model (e.g. `WanVideoGenerator.from_pretrained(...)`).
        tuner: learns the keyframe adapter (e.g. `WanLoRATuner()`).
        interpolator: keyframes to frames, for the `no-sparse-tuning` ablation (default: cross-fades).
        judge: scores the candidates of a test-time search (`search=SearchConfig(...)`), e.g. `OpenAIJudge()`.
        reasoning: settings of the reasoning loop (never changed by the pipeline).
        save_adapter: keep the tuned adapter in the run folder (`lora/`), written in the background while
            sampling runs from memory, so a resumed run need not tune again.
        release_between_stages: once reasoning is done, call `release()` on the reasoner and the image
            backend, so that local models hand their GPU memory to the video generator (see
            `docs/open-weights.md` for what fits where).

    Only the components a stage needs must be given: `think` needs `reasoner` and `image_backend`, and a
    finished stage of a run folder needs none.

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
        judge: Judge | None = None,
        reasoning: ReasoningConfig | None = None,
        save_adapter: bool = True,
        release_between_stages: bool = False,
    ):
        from vchain.interpolation import CrossfadeInterpolator

        given = {
            "reasoner": reasoner,
            "image_backend": image_backend,
            "generator": generator,
            "tuner": tuner,
            "interpolator": interpolator,
            "judge": judge,
        }
        for keyword, value in given.items():
            _check_component(keyword, value)
        if reasoning is not None and not isinstance(reasoning, ReasoningConfig):
            raise ConfigurationError(
                f"reasoning must be a ReasoningConfig, got {type(reasoning).__name__}"
                + (f"; use ReasoningConfig(**{reasoning!r})" if isinstance(reasoning, dict) else "")
            )
        for name, flag in (("save_adapter", save_adapter), ("release_between_stages", release_between_stages)):
            if not isinstance(flag, bool):
                raise ConfigurationError(f"{name} must be True or False, got {flag!r}")
        self.reasoner = reasoner
        self.image_backend = image_backend
        self.generator = generator
        self.tuner = tuner
        self.interpolator = interpolator or CrossfadeInterpolator()
        self.judge = judge
        self.reasoning = reasoning or ReasoningConfig()
        self.save_adapter = save_adapter
        self.release_between_stages = release_between_stages
        self._progress: dict[str, Any] = {}
        keyframe_frame(self.reasoning, generator)  # the keyframe size must be the generator's

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options for every progress bar (keyframes, tuning steps, denoising), as in diffusers."""
        self._progress = dict(kwargs)
        for component in (self.image_backend, self.tuner, self.generator):
            if hasattr(component, "set_progress_bar_config"):
                component.set_progress_bar_config(**kwargs)

    # ------------------------------------------------------------------------------------ stages

    def think(self, prompt: str, output_dir: str | Path | None = None, *, overwrite: bool = False) -> ThoughtChain:
        """Stage 1: reason `prompt` into a chain of visual thoughts.

        With `output_dir`, every keyframe is saved as it arrives and a re-run resumes: keyframes and
        answers on disk are not requested again, and a finished chain is returned as is.
        """
        return self._run(prompt, output_dir, None, seed=0, last="reasoning", overwrite=overwrite).chain

    def tune(self, chain: ThoughtChain) -> Adapter:
        """Stage 2: learn an adapter from the chain's (keyframe, caption) pairs. Nothing is written."""
        if not isinstance(chain, ThoughtChain):
            raise ConfigurationError(f"chain must be a ThoughtChain, got {type(chain).__name__}: {chain!r:.60}")
        if not chain.images or len(chain.images) != len(chain.captions):
            raise ConfigurationError(
                f"chain {chain.name!r} has {len(chain.images)} images for {len(chain.captions)} captions: finish "
                "reasoning (pipe.think) before tuning"
            )
        self._require(("generator", "tuner"), "tune")
        return self._tune(chain)

    def sample(
        self, chain: ThoughtChain | str, adapter: Adapter | None = None, *, seed: int | None = 0, **overrides
    ) -> list[Image.Image]:
        """Stage 3: sample from the chain's composite prompt (or a plain prompt), with the adapter if given.

        The adapter is active only during this call; the generator is exactly restored afterwards.
        """
        self._require(("generator",), "sample")
        if isinstance(chain, ThoughtChain):
            text = self.composite_prompt(chain)
        elif isinstance(chain, str):
            text = check_prompt(chain)
        else:
            raise ConfigurationError(f"chain must be a ThoughtChain or a prompt, got {type(chain).__name__}")
        if adapter is not None and not isinstance(adapter, Adapter):
            hint = "; load it with tuner.load_adapter(path)" if isinstance(adapter, (str, Path)) else ""
            raise ConfigurationError(f"adapter must be an Adapter, got {type(adapter).__name__}{hint}")
        if overrides.get("output_type", "pil") != "pil":
            raise ConfigurationError(
                f"pipe.sample returns PIL frames, so output_type must be 'pil', got {overrides['output_type']!r}; "
                "call pipe.generator.sample(prompt, output_type=...) for latents or arrays"
            )
        return render(self.generator, text, adapter, seed=check_seed(seed), **overrides).frames

    def composite_prompt(self, chain: ThoughtChain) -> str:
        """The chain's captions joined, kept within the generator's text window (`vchain.sampling`)."""
        return composite_prompt(chain, self.generator)

    # ------------------------------------------------------------------------------------ a run

    def __call__(
        self,
        prompt: str,
        output_dir: str | Path | None = None,
        *,
        variant: str = "vchain",
        seed: int | None = 0,
        stop_after: str | None = None,
        overwrite: bool = False,
        search: SearchConfig | None = None,
    ) -> VChainOutput:
        """Run `variant` on `prompt`; with `output_dir`, write the run folder and resume from it.

        A finished stage is reused when its inputs are unchanged (and its components need not be given);
        a changed input redoes that stage and those after it; a stage that crashed resumes from what it
        committed. Changed reasoning inputs are refused unless `overwrite=True`, which starts the folder
        over. `stop_after="reasoning"` or `"tuning"` ends the run there.

        `search=SearchConfig(candidates=N, rounds=R, ...)` samples seeds `seed` to `seed+N-1` with the one
        adapter, has the pipeline's `judge` score each, keeps the best as `video.mp4` and, with rounds,
        re-plans the keyframes from the judge's critique (`vchain.search`; needs `output_dir`).
        """
        spec = get_variant(variant)
        if stop_after is not None and stop_after not in spec.stages[:-1]:
            raise ConfigurationError(
                f"stop_after must be None or a stage of {variant!r} before the last, one of "
                f"{list(spec.stages[:-1])}, got {stop_after!r}"
            )
        search = check_search(search, self.judge, check_seed(seed))
        if search is not None:
            if spec.guided:
                raise ConfigurationError(f"search applies to the unguided variants, not to {variant!r}")
            check_applies(search, spec, output_dir, stop_after)
        return self._run(prompt, output_dir, variant, seed=seed, last=stop_after, overwrite=overwrite, search=search)

    def _run(
        self, prompt, output_dir, variant: str | None, *, seed, last: str | None, overwrite, search=None
    ) -> VChainOutput:
        prompt = check_prompt(prompt)
        seed = check_seed(seed)
        if not isinstance(overwrite, bool):
            raise ConfigurationError(f"overwrite must be True or False, got {overwrite!r}")
        run = (
            NullRun() if output_dir is None else RunDirectory(output_dir, prompt, variant=variant, overwrite=overwrite)
        )
        with run:
            spec = VARIANTS[variant or (run.manifest.variant if run.manifest else "vchain")]
            if last == "reasoning" and spec.reasoning != "chain":
                raise ConfigurationError(
                    f"{str(run.path)!r} holds a {spec.name!r} run, which has no keyframes to think"
                )
            stages = spec.stages if last is None else spec.stages[: spec.stages.index(last) + 1]
            self._check_components(run, spec, stages)
            if search is not None and search.rounds and self.generator is not None:
                self._check_replanning(spec)
            out = VChainOutput(manifest=run.manifest)
            if spec.reasoning == "chain":
                out.chain = self._reason_step(run, prompt)
            elif spec.reasoning == "augment":
                out.prompt = self._augment_step(run, prompt)
            else:
                run.skip("reasoning", f"not part of {spec.name}")
            if self.release_between_stages:
                for component in (self.reasoner, self.image_backend):
                    if component is not None:
                        component.release()
            if "tuning" in stages:
                out.adapter = self._tune_step(run, out.chain)
            elif not spec.tuning:
                run.skip("tuning", f"not part of {spec.name}")
            if "sampling" in stages:
                if spec.render == "interpolator":
                    rendered = self._interpolate_step(run, out.chain)
                    out.prompt = None
                elif search is not None:
                    text = out.prompt or (self.composite_prompt(out.chain) if out.chain else prompt)
                    rendered = self._search_step(run, prompt, text, out.adapter, out.chain, seed, search)
                    out.prompt, out.chain, out.adapter = rendered.prompt, rendered.chain, rendered.adapter
                else:
                    out.prompt = out.prompt or (self.composite_prompt(out.chain) if out.chain else prompt)
                    keyframes = list(zip(out.chain.times, out.chain.images, strict=True)) if spec.guided else None
                    rendered = self._sample_step(run, out.prompt, out.adapter, out.chain, seed, keyframes)
                # One source of frames: with a folder they are the video's as written, so a metric on
                # `out.frames` does not depend on whether this call sampled or reused the stage.
                ran = "sampling" in run.ran and run.path is not None
                out.frames = _read_video(run.video_path) if ran else rendered.frames
                out.video_path = run.video_path
            run.wait_for_adapter()
            out.ran = tuple(run.ran)
        return out

    # -- checks

    def _require(self, names: tuple[str, ...], action: str) -> None:
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ConfigurationError(f"VChainPipeline needs {' and '.join(missing)} to {action}; none was given")

    def _check_replanning(self, spec: Variant) -> None:
        needs = ("reasoner", "image_backend", *(("tuner",) if spec.tuning else ()))
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ConfigurationError(
                f"VChainPipeline needs {' and '.join(missing)} for the re-planning rounds of a search"
            )
        if not self.reasoner.supports("revise"):
            raise ConfigurationError(
                f"{type(self.reasoner).__name__} does not implement revise(), which search rounds need"
            )

    def _check_components(self, run, spec: Variant, stages: tuple[str, ...]) -> None:
        """Everything that will run has its components, before any work; finished stages need none."""
        redo = False
        for stage in stages:
            missing = [name for name in spec.needs(stage) if getattr(self, name) is None]
            if missing and (redo or not run.finished(stage, None)):
                state = "" if run.path is None else f" ({stage} is not finished in {str(run.path)!r})"
                raise ConfigurationError(
                    f"VChainPipeline needs {' and '.join(missing)} for the {stage} of {spec.name!r}{state}"
                )
            redo = redo or (not missing and not run.finished(stage, None))
        thinks = "reasoning" in stages and spec.reasoning == "chain" and self.reasoner is not None
        if thinks and not run.finished("reasoning", None):
            check_reasoning(self.reasoning, self.reasoner, keyframe_frame(self.reasoning, self.generator))
        if "tuning" in stages and self.tuner is not None and self.generator is not None:
            self.tuner.check(self.generator)
        if spec.guided and "sampling" in stages and self.generator is not None:
            check_keyframe_conditioned(self.generator, spec.name)
        augments = "reasoning" in stages and spec.reasoning == "augment" and self.reasoner is not None
        if augments and not self.reasoner.supports("augment_prompt") and not run.finished("reasoning", None):
            raise ConfigurationError(
                f"{type(self.reasoner).__name__} does not implement augment_prompt(), which {spec.name!r} needs"
            )

    # -- steps

    def _reason_step(self, run, prompt: str) -> ThoughtChain:
        frame = keyframe_frame(self.reasoning, self.generator)
        inputs = None
        if self.reasoner is not None and self.image_backend is not None:
            inputs = {
                "prompt": prompt,
                "config": self.reasoning.to_dict(),
                "frame": list(frame),
                "reasoner": self.reasoner.describe(),
                "image_backend": self.image_backend.describe(),
            }

        def compute(record) -> ThoughtChain:
            chain = run.partial_chain()
            if chain is not None and chain.input_prompt != prompt:
                raise ConfigurationError(f"{str(run.path)!r} holds a chain for {chain.input_prompt!r}, not {prompt!r}")
            if chain is not None:
                logger.info("Resuming reasoning in %s from %d keyframe(s)", run.path, len(chain.images))
            meter = run.meter()
            with self._bar(total=self.reasoning.max_keyframes, desc="keyframes", unit="keyframe") as bar:
                bar.update(len(chain.images) if chain else 0)
                result = reason(
                    prompt,
                    self.reasoner,
                    self.image_backend,
                    self.reasoning,
                    frame=frame,
                    chain=chain,
                    log=run.reasoning_log(),
                    meter=meter,
                    progress=lambda n: bar.update(n - bar.n),
                )
                bar.total = bar.n  # the chain ends where the reasoner said, not at the cap: so does the bar
                bar.refresh()
            record.seconds = _steps_seconds(meter, ("plan", "generate", "perception", "edit"))
            record.keyframes, record.stop_reason = len(result.chain.images), result.stop_reason
            run.set_outputs("reasoning", chain_files(result.chain))
            return result.chain

        return run.step(
            "reasoning",
            inputs,
            compute=compute,
            load=lambda _: ThoughtChain.load(run.path),
            paid=True,
            missing="reasoner and image_backend",
        )

    def _augment_step(self, run, prompt: str) -> str:
        inputs = None
        if self.reasoner is not None:
            inputs = {"prompt": prompt, "augment": True, "reasoner": self.reasoner.describe()}

        def compute(record) -> str:
            meter = run.meter()
            record.augmented_prompt = augment(prompt, self.reasoner, self.reasoning, meter=meter)
            record.seconds = _steps_seconds(meter, ("augment",))
            return record.augmented_prompt

        return run.step(
            "reasoning",
            inputs,
            compute=compute,
            load=lambda record: record.augmented_prompt,
            paid=True,
            missing="reasoner",
        )

    def _tune_step(self, run, chain: ThoughtChain) -> Adapter:
        inputs = None
        if self.generator is not None and self.tuner is not None:
            # What tuning depends on: the model, not how it samples (settings, acceleration switches, parallel) nor
            # where its weights wait between uses (offloading moves them and computes the same).
            ignored = ("config", "acceleration", "parallel", "offload")
            identity = {k: v for k, v in self.generator.describe().items() if k not in ignored}
            tokens = self.generator.prompt_tokens("")
            inputs = {
                "chain": fingerprint(run.record("reasoning").outputs) if run.path else None,
                "tuner": self.tuner.describe(),
                "generator": identity,
                "frame": [self.generator.width, self.generator.height],
                "text_tokens": tokens[1] if tokens else None,
            }

        def compute(record) -> Adapter:
            adapter = self._tune(chain)
            report = adapter.report
            if report is not None:
                record.seconds = dict(report.seconds)
                record.keyframes, record.losses = report.keyframes, list(report.losses)
                record.trainable_parameters = report.trainable_parameters
            if self.save_adapter:
                run.save_adapter(adapter)
            return adapter

        def load(record) -> Adapter:
            logger.info("Loading the adapter tuned earlier from %s", run.lora_path)
            if self.tuner is not None:
                return self.tuner.load_adapter(run.lora_path)
            from vchain.tuning import LoRAAdapter

            return LoRAAdapter.load(run.lora_path)

        return run.step("tuning", inputs, compute=compute, load=load, missing="generator and tuner")

    def _tune(self, chain: ThoughtChain) -> Adapter:
        try:
            adapter = self.tuner.tune(self.generator, chain.training_pairs())
        except NumericalError as e:
            raise StageError(f"{type(self.tuner).__name__}.tune() made a broken adapter: {e}", stage="tuning") from e
        except VChainError:
            raise
        except Exception as e:
            raise StageError(
                f"{type(self.tuner).__name__}.tune() raised {type(e).__name__}: {e}", stage="tuning"
            ) from e
        if not isinstance(adapter, Adapter):
            raise StageError(
                f"{type(self.tuner).__name__}.tune() must return an Adapter, got {type(adapter).__name__}",
                stage="tuning",
            )
        return adapter

    def _sample_step(
        self,
        run,
        text: str,
        adapter: Adapter | None,
        chain,
        seed: int | None,
        keyframes: list[tuple[float, Image.Image]] | None = None,
    ) -> Rendered:
        """Sample the video; `keyframes` (time, image) are placed at their moments (the guided variants)."""
        inputs = None
        if self.generator is not None:
            inputs = {
                "prompt": text,
                "seed": seed,
                "generator": self.generator.describe(),
                "adapter": run.record("tuning").fingerprint if adapter is not None else None,
            }
            if keyframes is not None:
                inputs["keyframes"] = [{"time": t, "image": image_digest(image)} for t, image in keyframes]
        conditions = {} if keyframes is None else {"keyframes": keyframes}

        def compute(record) -> Rendered:
            rendered = render(self.generator, text, adapter, seed=seed, **conditions)
            rendered.seconds["save"] = run.write_video(rendered.frames, self.generator.fps)
            record.seconds = rendered.seconds
            record.prompt, record.seed, record.frames = text, seed, len(rendered.frames)
            record.size = rendered.frames[0].size
            return rendered

        return run.step(
            "sampling",
            inputs,
            compute=compute,
            load=lambda _: Rendered(_read_video(run.video_path)),
            missing="generator",
        )

    def _search_step(self, run, prompt: str, text: str, adapter, chain, seed: int, search: SearchConfig):
        """Sampling as a search: its settings, the judge (and what re-planning uses) are sampling inputs."""
        inputs = None
        if self.generator is not None:
            inputs = {
                "prompt": text,
                "seed": seed,
                "generator": self.generator.describe(),
                "adapter": run.record("tuning").fingerprint if adapter is not None else None,
                "search": search.to_dict(),
                "judge": judge_identity(self.judge, Search.judging),
            }
            if search.rounds:
                inputs["replanning"] = {
                    "reasoner": self.reasoner.describe(),
                    "image_backend": self.image_backend.describe(),
                    "reasoning": self.reasoning.to_dict(),
                    "tuner": self.tuner.describe() if adapter is not None else None,
                }

        def compute(record) -> SearchResult:
            return Search(self, run, record, search, seed, prompt)(chain, adapter, text)

        def load(record) -> SearchResult:
            state = record.search
            final = state.rounds[-1] if state is not None and state.rounds else None
            if final is not None and final.round > 0:
                return SearchResult(
                    _read_video(run.video_path),
                    record.prompt,
                    ThoughtChain.load(run.path / final.folder),
                    adapter=None,
                )
            return SearchResult(_read_video(run.video_path), record.prompt, chain, adapter)

        return run.step("sampling", inputs, compute=compute, load=load, missing="generator")

    def _interpolate_step(self, run, chain: ThoughtChain) -> Rendered:
        num_frames = self.generator.num_frames if self.generator is not None else DEFAULT_FRAMES
        fps = self.generator.fps if self.generator is not None else DEFAULT_FPS
        inputs = {
            "chain": fingerprint(run.record("reasoning").outputs) if run.path else None,
            "interpolator": self.interpolator.describe(),
            "num_frames": num_frames,
            "fps": fps,
        }
        if self.generator is None and run.finished("sampling", None):
            inputs = None  # the frame count and rate were the generator's: keep what was made with them

        def compute(record) -> Rendered:
            rendered = interpolate(self.interpolator, chain, num_frames)
            rendered.seconds["save"] = run.write_video(rendered.frames, fps)
            record.seconds, record.frames = rendered.seconds, len(rendered.frames)
            record.size = rendered.frames[0].size
            return rendered

        return run.step("sampling", inputs, compute=compute, load=lambda _: Rendered(_read_video(run.video_path)))

    def _bar(self, **kwargs):
        from tqdm.auto import tqdm

        return tqdm(**{"leave": False, **kwargs, **self._progress})


def check_keyframe_conditioned(generator: object, variant: str) -> None:
    """A guided variant samples with the keyframes placed: its generator must take them."""
    if not isinstance(generator, KeyframeConditionedGenerator):
        raise ConfigurationError(
            f"variant {variant!r} places the keyframes in the video, which needs a keyframe-conditioned generator "
            f"(e.g. WanVACEVideoGenerator, --model Wan-AI/Wan2.1-VACE-1.3B-diffusers); got {type(generator).__name__}"
        )


def image_digest(image: Image.Image) -> str:
    """sha256 of an image's size, mode and pixels: what a sampling fingerprint records of a keyframe."""
    digest = hashlib.sha256(f"{image.size}{image.mode}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def check_seed(seed: object) -> int | None:
    """A seed torch accepts (an int in [0, 2**63)), or None for a random one."""
    if seed is None:
        return None
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ConfigurationError(f"seed must be None or an integer in [0, 2**63), got {seed!r}")
    return seed


def _check_component(keyword: str, value: object) -> None:
    interface = _COMPONENTS[keyword]
    if value is None:
        return
    if isinstance(value, interface):
        check_description(value, keyword)
        return
    if isinstance(value, type):
        what = f"the class {value.__name__}; pass an instance, {value.__name__}(...)"
    else:
        what = type(value).__name__
        fits = [k for k, cls in _COMPONENTS.items() if isinstance(value, cls)]
        if fits:
            what += f", which is a {_COMPONENTS[fits[0]].__name__}: pass it as {fits[0]}="
        elif type(value).__name__.endswith("Pipeline"):
            what += "; wrap a diffusers pipeline first, e.g. WanVideoGenerator(pipeline)"
        elif isinstance(value, str) and keyword == "generator":
            what += f" {value!r}; load it first, e.g. WanVideoGenerator.from_pretrained({value!r})"
    raise ConfigurationError(f"{keyword} must be a vchain.interfaces.{interface.__name__}, got {what}")


def _steps_seconds(meter, steps: tuple[str, ...]) -> dict[str, float]:
    seconds = meter.seconds_by_step()
    return {step: seconds[step] for step in steps if step in seconds}


def _read_video(path: Path) -> list[Image.Image]:
    from vchain.video import read_video

    return read_video(path)
