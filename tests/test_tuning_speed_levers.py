"""The tuning step's speed levers on the tiny models: regional compile and fused AdamW give the plain
results, and no code path of a step reads anything back from the device.

The device check is op-level (`benchmarks/harness.py`'s `WaitingOps`, the instrument behind the
benchmarks' syncs per step): a dispatch mode sees every ATen op of a tuning run. An op that reads a
tensor's value on the host (`.item()`, `bool()`, `float()`: `aten::_local_scalar_dense`), one whose
output size depends on the data (`nonzero`, `masked_select`, `unique`), and a tensor made from host data
(`aten::lift_fresh`, a host-to-device copy on a GPU) would each make a GPU step wait. Two runs that differ
only in their step count (one loss read each, at the end) must see the same number of them.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo import register_backend

from vchain.errors import ConfigurationError
from vchain.testing import draw_image, tiny_wan_pipeline
from vchain.tuning import LoRATuner

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from harness import WaitingOps  # the instrument behind the benchmarks' syncs per step

CAPTIONS = ["a red egg on the table", "a blue ball in the water", "a yellow duck in the sky"]
GRAPHS = []


@register_backend(name="vchain_counting_tuning")
def _counting(graph_module, example_inputs):
    GRAPHS.append(graph_module)
    return graph_module.forward


@pytest.fixture(scope="module", autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pairs():
    return [(draw_image(caption, 32, 32), caption) for caption in CAPTIONS]


def make(family):
    if family == "cogvideox":
        from vchain.backends.cogvideox import CogVideoXLoRATuner, CogVideoXVideoGenerator
        from vchain.testing.tiny_cogvideox import tiny_cogvideox_pipeline

        return CogVideoXVideoGenerator(
            tiny_cogvideox_pipeline(), height=32, width=32, num_frames=9
        ), CogVideoXLoRATuner
    from vchain.backends.wan import WanLoRATuner, WanVideoGenerator

    pipeline = tiny_wan_pipeline(two_experts=family == "wan2.2")
    return WanVideoGenerator(pipeline, height=32, width=32, num_frames=1, max_sequence_length=32), WanLoRATuner


@pytest.fixture(scope="module")
def wan():
    return make("wan")[0]


def waiting_ops(generator, tuner_class, steps, **fields):
    with WaitingOps() as mode:
        tuner_class(steps=steps, log_every=steps, **fields).tune(generator, pairs())
    return mode.events


@pytest.mark.parametrize(
    ("family", "fields"),
    [
        ("wan", {}),
        ("wan", {"batch_size": 3, "gradient_checkpointing": True}),
        ("wan2.2", {"batch_size": 2}),  # two experts: routing is decided on the host, up front
        ("cogvideox", {}),
    ],
)
def test_a_step_makes_no_op_that_waits_for_the_device(family, fields):
    generator, tuner_class = make(family)
    fields = {"fused_adamw": True, **fields}
    short, long = waiting_ops(generator, tuner_class, 2, **fields), waiting_ops(generator, tuner_class, 4, **fields)
    assert len(long) == len(short), [event for event in long if event not in short]


def test_the_unfused_optimizer_reads_only_its_host_side_step_counters(wan):
    """torch keeps the unfused AdamW's step counts on the host even for CUDA parameters: no device wait,
    but host work per LoRA tensor per step, which the fused kernel (on by default on CUDA) does not do."""
    from vchain.backends.wan import WanLoRATuner

    def split(events):
        counters = [e for e in events if e[0] == "aten::_local_scalar_dense" and e[2] == "_get_value"]
        return len(counters), len(events) - len(counters)

    (short_counters, short_other), (long_counters, long_other) = (
        split(waiting_ops(wan, WanLoRATuner, steps, fused_adamw=False)) for steps in (2, 4)
    )
    # Every linear of every block gets a LoRA (Wan's targets), two tensors each.
    lora_tensors = 2 * sum(
        isinstance(m, torch.nn.Linear) and name.startswith("blocks.") for name, m in wan.denoisers()[0].named_modules()
    )
    assert long_other == short_other
    assert long_counters - short_counters == 2 * lora_tensors  # one per LoRA tensor per step


def test_regional_compile_while_tuning_gives_the_plain_adapter_and_compiles_once(wan):
    from vchain.backends.wan import WanLoRATuner

    plain = WanLoRATuner(steps=6, log_every=2).tune(wan, pairs())
    GRAPHS.clear()
    compiled = WanLoRATuner(steps=6, log_every=2, compile=True, compile_backend="vchain_counting_tuning")
    first = compiled.tune(wan, pairs())
    graphs = len(GRAPHS)
    second = compiled.tune(wan, pairs())  # fresh LoRA layers, same shapes: the graph is reused
    assert graphs >= 1 and len(GRAPHS) == graphs
    assert first.report.losses == plain.report.losses == second.report.losses
    for key, value in plain.state_dicts[0].items():
        assert torch.equal(first.state_dicts[0][key], value)
    assert all(m._compiled_call_impl is None for m in wan.denoisers()[0].modules())


def test_fused_adamw_matches_the_unfused_optimizer(wan):
    from vchain.backends.wan import WanLoRATuner

    fused = WanLoRATuner(steps=10, log_every=5, learning_rate=1e-2, fused_adamw=True).tune(wan, pairs())
    unfused = WanLoRATuner(steps=10, log_every=5, learning_rate=1e-2, fused_adamw=False).tune(wan, pairs())
    for (_, a), (_, b) in zip(fused.report.losses, unfused.report.losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    # The kernels round differently; what differs stays a thousandth of the total update (lr x steps = 0.1).
    for key, value in unfused.state_dicts[0].items():
        torch.testing.assert_close(fused.state_dicts[0][key], value, rtol=1e-3, atol=1e-4)


def test_compile_of_a_model_without_a_block_list_is_refused():
    from vchain.testing.toy import ToyGenerator

    toy = ToyGenerator()
    with pytest.raises(ConfigurationError, match="ToyDenoiser has no list of repeated blocks to compile"):
        LoRATuner(steps=2, compile=True, compile_backend="vchain_counting_tuning").tune(toy, pairs())
