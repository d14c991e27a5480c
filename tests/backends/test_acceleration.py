"""The acceleration switches (regional compile, attention backend, step cache) and the text-encoder offload
on tiny Wan and CogVideoX models: outputs within a stated tolerance of the plain path, the pipeline
exactly as before once the call is over, and bad switches refused before any work.

Compilation runs through a counting `torch.compile` backend that executes the captured graphs eagerly:
it shows what is compiled and when, and that the compiled code runs, without inductor's half a minute of C++
builds on this CPU. Eager execution of the captured graph uses the same kernels, so its output is exact.
"""

import pytest
import torch
from torch._dynamo import register_backend

from vchain.backends.cogvideox import CogVideoXVideoGenerator
from vchain.backends.wan import WanLoRATuner, WanVACEVideoGenerator, WanVideoGenerator
from vchain.errors import ConfigurationError
from vchain.testing import draw_image, tiny_wan_pipeline
from vchain.testing.tiny_cogvideox import tiny_cogvideox_pipeline

SIZE = dict(height=32, width=32, num_frames=1, num_inference_steps=2, max_sequence_length=32)
COGVIDEOX_SIZE = dict(height=32, width=32, num_frames=9, num_inference_steps=2)
# `_native_math` is torch's reference attention; the default picks a fused kernel. Measured: 1.9e-6.
ATTENTION_TOLERANCE = 1e-5
GRAPHS, RUNS = [], []


@register_backend(name="vchain_counting")
def _counting(graph_module, example_inputs):
    GRAPHS.append(graph_module)

    def run(*args):
        RUNS.append(1)
        return graph_module.forward(*args)

    return run


@pytest.fixture(scope="module", autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def wan():
    return WanVideoGenerator(tiny_wan_pipeline(), **SIZE)


@pytest.fixture(scope="module")
def cogvideox():
    """The tiny CogVideoX with two blocks (the cache needs a first block and others to skip)."""
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    pipeline = tiny_cogvideox_pipeline()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = CogVideoXTransformer3DModel.from_config({**pipeline.transformer.config, "num_layers": 2}).eval()
    pipeline = CogVideoXPipeline(**{**pipeline.components, "transformer": transformer})
    pipeline.set_progress_bar_config(disable=True)
    return CogVideoXVideoGenerator(pipeline, **COGVIDEOX_SIZE)


def latent(generator, prompt="a red egg", seed=0, **overrides):
    overrides = {"num_inference_steps": overrides.pop("steps")} if "steps" in overrides else overrides
    return generator.sample(prompt, seed=seed, output_type="latent", **overrides)


def compiled_modules(generator):
    return [m for d in generator.denoisers() for m in d.modules() if m._compiled_call_impl is not None]


def test_compile_traces_the_blocks_once_for_every_prompt_seed_and_merged_adapter(wan):
    base = latent(wan)
    adapter = WanLoRATuner(steps=5, learning_rate=1e-2).tune(wan, [(draw_image("egg", 32, 32), "a red egg")])
    with adapter.apply(wan):
        tuned = latent(wan)
    fast = WanVideoGenerator(wan.pipeline, compile=True, compile_backend="vchain_counting", **SIZE)
    GRAPHS.clear()
    RUNS.clear()

    assert torch.equal(latent(fast), base)
    graphs = len(GRAPHS)
    # Both blocks share one graph; CFG runs the transformer twice per step: 2 blocks x 2 x 2 steps.
    assert graphs == 1 and len(RUNS) == 2 * 2 * 2
    latent(fast, "a blue ball in the water", seed=3)
    with adapter.apply(fast):  # the merge changes weights in place, same shapes
        assert torch.equal(latent(fast), tuned)
    assert len(GRAPHS) == graphs and len(RUNS) == 3 * 8  # no recompilation; compiled code ran every time
    assert compiled_modules(fast) == []  # between calls the pipeline is the stock one
    assert torch.equal(latent(wan), base)


def test_compile_of_a_model_without_diffusers_block_list_finds_its_blocks(cogvideox):
    base = latent(cogvideox)
    fast = CogVideoXVideoGenerator(
        cogvideox.pipeline, compile=True, compile_backend="vchain_counting", **COGVIDEOX_SIZE
    )
    RUNS.clear()
    assert torch.equal(latent(fast), base)
    assert len(RUNS) == 2 * 2  # both blocks compiled (CFG is one batch here), 2 steps
    assert compiled_modules(fast) == [] and torch.equal(latent(cogvideox), base)


def test_an_attention_backend_is_close_to_the_default_and_reset_after(wan):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    base = latent(wan)
    active = _AttentionBackendRegistry.get_active_backend()
    reference = WanVideoGenerator(wan.pipeline, attention_backend="_native_math", **SIZE)
    out = latent(reference)
    assert (out - base).abs().max() <= ATTENTION_TOLERANCE and not torch.equal(out, base)
    assert _AttentionBackendRegistry.get_active_backend() == active
    assert torch.equal(latent(wan), base)


@pytest.mark.parametrize(
    ("switches", "message"),
    [
        ({"attention_backend": "flash"}, r"attention_backend cannot be used here: .*install `flash-attn"),
        ({"attention_backend": "sage"}, r"install `sageattention"),
        ({"attention_backend": "flsh"}, r"attention_backend must be one of diffusers' attention backends \(flash, "),
        ({"cache": "magic"}, "cache must be 'first-block', 'sea' or 'taylorseer', got 'magic'"),
        ({"cache": "first-block", "cache_threshold": 0.0}, "cache_threshold must be greater than 0"),
        ({"cache": "first-block", "cache_threshold": 2.0}, "at most 1 for the first-block cache .*got 2.0"),
        ({"cache_threshold": 0.1}, r"cache_threshold=0.1 applies to cache='first-block' or 'sea', not cache=None"),
        ({"cache": "sea", "cache_interval": 3}, "cache_interval=3 applies to cache='taylorseer', not cache='sea'"),
        ({"cache": "taylorseer", "cache_interval": 0}, "cache_interval must be greater than or equal to 1"),
        ({"compile": "yes"}, "compile must be a valid boolean"),
        ({"offload_text_encoder": 1}, "offload_text_encoder must be True or False, got 1"),
    ],
)
def test_bad_switches_are_named_before_any_model_loads(wan, switches, message):
    with pytest.raises(ConfigurationError, match=message):
        WanVideoGenerator(wan.pipeline, **switches)
    with pytest.raises(ConfigurationError, match=message):  # not "no such folder": checked first
        WanVideoGenerator.from_pretrained("/no/such/folder", **switches)


def test_seacache_is_refused_where_the_pipeline_cannot_drive_it(cogvideox):
    # diffusers' SeaCache needs the scheduler's step and sigma, which only WanPipeline passes: elsewhere it
    # would warn and cache nothing.
    for family, source in ((CogVideoXVideoGenerator, cogvideox.pipeline), (WanVACEVideoGenerator, "/no/such")):
        with pytest.raises(ConfigurationError, match=rf"cache='sea' cannot apply to {family.__name__} .*taylorseer"):
            family.from_pretrained(source, cache="sea") if isinstance(source, str) else family(source, cache="sea")


def test_an_attention_backend_is_refused_where_attention_does_not_dispatch(cogvideox):
    with pytest.raises(ConfigurationError, match=r"CogVideoXAttnProcessor2_0\) call torch directly"):
        CogVideoXVideoGenerator(cogvideox.pipeline, attention_backend="native")


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_the_step_cache_skips_blocks_and_a_tiny_threshold_changes_nothing(request, family):
    plain = request.getfixturevalue(family)
    size = SIZE if family == "wan" else COGVIDEOX_SIZE
    # A skipped block is still called (the cache replaces its forward): count what runs inside it.
    transformer = plain.denoisers()[0]
    inner = transformer.blocks[-1].ffn if family == "wan" else transformer.transformer_blocks[-1].ff
    runs = []
    hook = inner.register_forward_hook(lambda *_: runs.append(1))
    try:
        base = latent(plain)
        full = len(runs)
        strict = type(plain)(plain.pipeline, cache="first-block", cache_threshold=1e-9, **size)
        runs.clear()
        assert torch.equal(latent(strict), base) and len(runs) == full  # nothing is ever similar enough
        loose = type(plain)(plain.pipeline, cache="first-block", cache_threshold=0.9, **size)
        runs.clear()
        latent(loose)
        assert len(runs) < full
        runs.clear()
        assert torch.equal(latent(plain), base) and len(runs) == full  # the hooks are gone
    finally:
        hook.remove()


def test_switches_combine_and_are_recorded(wan):
    base = latent(wan)
    fast = WanVideoGenerator(
        wan.pipeline, compile=True, compile_backend="vchain_counting", attention_backend="native", **SIZE
    )
    assert torch.equal(latent(fast), base)
    assert fast.describe()["acceleration"] == {
        "compile": True,
        "compile_backend": "vchain_counting",
        "attention_backend": "native",
        "cache": None,
        "cache_threshold": None,
        "cache_interval": None,
    }
    assert wan.describe()["acceleration"]["compile"] is False
    assert compiled_modules(fast) == [] and torch.equal(latent(wan), base)


@pytest.mark.parametrize(
    ("family", "cache", "knobs"),
    [("wan", "sea", {"cache_threshold": 10.0}), ("wan", "taylorseer", {}), ("cogvideox", "taylorseer", {})],
)
def test_the_newer_step_caches_skip_work_stay_close_and_leave_no_hook(request, family, cache, knobs):
    plain = request.getfixturevalue(family)
    # Enough steps for each cache's warm-up and refresh: sea always runs the first and the last step,
    # taylorseer the first three and then one in five.
    size = {**(SIZE if family == "wan" else COGVIDEOX_SIZE), "num_inference_steps": 8}
    transformer = plain.denoisers()[0]
    inner = transformer.blocks[-1].ffn if family == "wan" else transformer.transformer_blocks[-1].ff
    runs = []
    hook = inner.register_forward_hook(lambda *_: runs.append(1))
    try:
        base = latent(plain, steps=8)
        full = len(runs)
        cached = type(plain)(plain.pipeline, cache=cache, **knobs, **size)
        runs.clear()
        out = latent(cached)
        assert len(runs) < full and not torch.equal(out, base)
        # An extrapolated step is an approximation. Measured on these random models at 8 steps, as a fraction of
        # the largest latent: sea 0.004, taylorseer 0.09 (Wan and CogVideoX); the bound is about twice that.
        assert (out - base).abs().max() < 0.2 * base.abs().max()
        hooked = [m for m in transformer.modules() if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks]
        assert hooked == []
        runs.clear()
        assert torch.equal(latent(plain, steps=8), base) and len(runs) == full  # the hooks are gone
    finally:
        hook.remove()


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_an_offloaded_text_encoder_moves_only_to_encode_and_changes_nothing(request, monkeypatch, family):
    plain = request.getfixturevalue(family)
    size = SIZE if family == "wan" else COGVIDEOX_SIZE
    base = latent(plain)
    pairs = [(draw_image("egg", 32, 32), "a red egg"), (draw_image("ball", 32, 32), "a blue ball")]
    captions = plain.encode_captions([c for _, c in pairs])
    offloaded = type(plain)(plain.pipeline, offload_text_encoder=True, **size)
    encoder = plain.pipeline.text_encoder
    moves = []
    real_to = encoder.to
    monkeypatch.setattr(encoder, "to", lambda device, *args: moves.append(str(device)) or real_to(device, *args))

    assert torch.equal(latent(offloaded), base)
    assert torch.equal(offloaded.encode_captions([c for _, c in pairs]), captions)
    assert moves == [str(offloaded.device), "cpu"] * 2  # one round trip per encoding
