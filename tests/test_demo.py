"""The demos and the smaller promises: top-level imports, the suite demo's captions, progress that ends at
its real total, the tiny model's size limit."""

from __future__ import annotations

import io

import pytest

from vchain.errors import ConfigurationError
from vchain.suite import PAPER_CASES
from vchain.testing import DEMO_CAPTIONS, DEMO_PROMPT, DrawingImageBackend, ScriptedReasoner
from vchain.testing.demo import DemoReasoner


def test_the_documented_names_import_from_the_top_level():
    import vchain
    from vchain import (
        ImageBackend,
        Judge,
        LoRAConfig,
        Reasoner,
        ReasoningConfig,
        Tuner,
        VideoGenerator,
        interfaces,
        reasoning,
        tuning,
    )

    assert (Reasoner, ImageBackend, VideoGenerator, Tuner, Judge) == (
        interfaces.Reasoner,
        interfaces.ImageBackend,
        interfaces.VideoGenerator,
        interfaces.Tuner,
        interfaces.Judge,
    )
    assert ReasoningConfig is reasoning.ReasoningConfig and LoRAConfig is tuning.LoRAConfig
    assert {"ReasoningConfig", "LoRAConfig", "Judge"} <= set(vchain.__all__)


def test_the_suite_demo_gives_each_case_captions_of_its_own():
    reasoner = DemoReasoner()
    assert [reasoner.answer_for(DEMO_PROMPT, i).caption for i in range(2)] == list(DEMO_CAPTIONS)
    for prompt in PAPER_CASES:
        if prompt != DEMO_PROMPT:
            captions = [reasoner.answer_for(prompt, i).caption for i in range(2)]
            assert not any("egg" in caption or "pillow" in caption for caption in captions), (prompt, captions)


def test_the_keyframe_bar_ends_at_the_keyframes_drawn_not_at_the_cap(tmp_path):
    from vchain import VChainPipeline

    bar = io.StringIO()
    pipe = VChainPipeline(ScriptedReasoner(["The egg lands.", "The egg rests."]), DrawingImageBackend())
    pipe.set_progress_bar_config(file=bar, leave=True)
    pipe.think(DEMO_PROMPT, tmp_path / "run")
    assert bar.getvalue().rstrip().endswith("]") and "3/3" in bar.getvalue().splitlines()[-1].split("\r")[-1]
    assert "/8" not in bar.getvalue().split("\r")[-1]


def test_the_tiny_wan_takes_wans_default_size_and_names_its_limit_beyond():
    from vchain.backends.wan import WanVideoGenerator
    from vchain.testing import tiny_wan_pipeline

    wan = WanVideoGenerator(tiny_wan_pipeline(), num_frames=1, num_inference_steps=1)
    assert (wan.height, wan.width) == (480, 832) and wan.pipeline.transformer.config.rope_max_seq_len * 16 >= 832
    with pytest.raises(ConfigurationError, match=r"at most 1024x1024 .* got 1040x832"):
        wan.sample("An egg.", height=1040)
