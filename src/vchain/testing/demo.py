"""The offline demos: the whole pipeline on tiny random models, with a scripted reasoner and drawn
keyframes (`demo_pipeline`), or with open-weight model families end to end (`open_weights_demo_pipeline`)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from vchain.chain import NextKeyframe, ThoughtChain
from vchain.testing.fakes import DrawingImageBackend, ScriptedReasoner
from vchain.testing.tiny import tiny_wan_pipeline

DEMO_PROMPT = "An egg is dropped onto a pillow."
DEMO_CAPTIONS = (
    "The egg touches the centre of the white pillow, which dents slightly beneath it.",
    "The egg rests intact in a shallow dent in the centre of the pillow.",
)


class DemoReasoner(ScriptedReasoner):
    """The demo's script: `DEMO_CAPTIONS` for `DEMO_PROMPT`, and captions that describe no object for any
    other prompt (the suite's cases), so no case is given the egg's keyframes."""

    def __init__(self):
        super().__init__(DEMO_CAPTIONS)
        self.generic = ScriptedReasoner()

    def answer_for(self, prompt: str, index: int) -> NextKeyframe:
        return self.answer(index) if prompt == DEMO_PROMPT else self.generic.answer(index)

    def next_keyframe(self, chain: ThoughtChain, composite: Image.Image) -> NextKeyframe:
        self.calls.append(("next_keyframe", len(chain.key_frames)))
        return self.answer_for(chain.input_prompt, len(chain.key_frames))


def demo_pipeline(seed: int = 0, *, steps: int = 30):
    """The whole pipeline offline on tiny random models: a scripted reasoner, drawn keyframes, a tiny Wan.

    The video shows noise shaped by random weights; what it demonstrates is the machinery (every stage,
    the run folder, the manifest), not the method's quality.
    """
    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
    from vchain.pipeline import VChainPipeline

    generator = WanVideoGenerator(
        tiny_wan_pipeline(seed),
        height=64,
        width=64,
        num_frames=17,
        num_inference_steps=8,
        max_sequence_length=256,
        fps=8,
    )
    return VChainPipeline(
        reasoner=DemoReasoner(),
        image_backend=DrawingImageBackend(),
        generator=generator,
        tuner=WanLoRATuner(steps=steps, learning_rate=1e-3, seed=seed, log_every=5),
    )


def open_weights_demo_pipeline(seed: int = 0, *, steps: int = 10):
    """The whole pipeline offline with no proprietary model anywhere, on tiny random open-weight models.

    A tiny Qwen2.5-VL reasons (`TransformersReasoner`, its answers held to vchain's schemas while
    decoding, so even random weights give valid plans and captions), a tiny FLUX.2 klein draws and edits
    the keyframes (`DiffusersImageBackend`), and a tiny Wan is tuned and samples. Each is saved to a
    folder laid out like a hub checkpoint and loaded back through its `from_pretrained`, the path real
    checkpoints take. The captions are random text and the images noise: this shows the machinery.
    """
    from vchain.backends.diffusers_image import DiffusersImageBackend
    from vchain.backends.transformers import TransformersReasoner
    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
    from vchain.pipeline import VChainPipeline
    from vchain.reasoning import ReasoningConfig
    from vchain.testing.tiny_image import tiny_image_checkpoint
    from vchain.testing.tiny_vlm import tiny_vlm

    wan = kept_checkpoint("tiny-wan", seed, lambda folder: tiny_wan_pipeline(seed).save_pretrained(folder))
    vlm = kept_checkpoint("tiny-qwen2_5_vl", seed, lambda folder: _copy(tiny_vlm("qwen2_5_vl", seed), folder))
    flux = kept_checkpoint(
        "tiny-flux2-klein", seed, lambda folder: _copy(tiny_image_checkpoint("Flux2KleinPipeline", seed), folder)
    )
    reasoner = TransformersReasoner.from_pretrained(vlm, max_new_tokens=256, max_string_length=24)
    editor = DiffusersImageBackend.from_pretrained(flux, dtype="float32", seed=seed)
    editor.set_progress_bar_config(disable=True)  # one bar per keyframe edit says little
    sampling = dict(height=64, width=64, num_frames=17, num_inference_steps=8, max_sequence_length=256, fps=8)
    return VChainPipeline(
        reasoner=reasoner,
        image_backend=editor,
        generator=WanVideoGenerator.from_pretrained(wan, dtype="float32", **sampling),
        tuner=WanLoRATuner(steps=steps, learning_rate=1e-3, seed=seed, log_every=5),
        reasoning=ReasoningConfig(max_keyframes=3),
    )


def kept_checkpoint(name: str, seed: int, save: Callable[[Path], object]) -> Path:
    """The folder of a demo checkpoint, saved by `save(folder)` once and kept at a path fixed by name, seed
    and vchain's version (in the system's temporary folder): a re-run of the demo on its run folder sees
    the same checkpoints, so its stages are reused, and runs leave no folder per run behind."""
    from vchain import __version__

    root = Path(tempfile.gettempdir()) / "vchain-demo-checkpoints"
    folder = root / f"{name}-seed{seed}-{__version__}"
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
    try:
        save(staging)
        staging.rename(folder)
    except OSError:
        if not folder.is_dir():  # not a concurrent demo that saved it first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _copy(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)
