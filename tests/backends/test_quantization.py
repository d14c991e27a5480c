"""Big models on small GPUs, on the tiny Wan saved as a checkpoint and loaded as a user would: a quantized base
tuned with a float32 LoRA (as layers) and left bit-exactly as it was, group offloading that changes no frame,
VAE tiling, and the refusals, from Python and from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from diffusers.hooks.group_offloading import _is_group_offload_enabled
from peft.tuners.tuners_utils import BaseTunerLayer

from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
from vchain.errors import ConfigurationError
from vchain.testing import draw_image, tiny_wan_pipeline
from vchain.tuning import LoRAAdapter, is_quantized

SIZE = dict(height=32, width=32, num_frames=1, num_inference_steps=2, max_sequence_length=32)
PAIRS = [(draw_image(caption, 32, 32), caption) for caption in ("a red egg on the table", "a blue ball in the water")]


@pytest.fixture(scope="module")
def saved(tiny_wan_dir) -> str:
    return tiny_wan_dir


def load(saved, **options):
    generator = WanVideoGenerator.from_pretrained(saved, dtype="float32", **options, **SIZE)
    generator.set_progress_bar_config(disable=True)
    return generator


def tune(generator, steps=3):
    tuner = WanLoRATuner(steps=steps, rank=4, alpha=4, learning_rate=1e-2, log_every=1)
    tuner.set_progress_bar_config(disable=True)
    tuner.check(generator)  # the probe step runs on this model too
    return tuner.tune(generator, PAIRS)


def weights(module):
    """Every stored tensor of `module`, a quantized weight as its parts (torchao: data and scales)."""
    parts = {}
    for name, tensor in module.state_dict().items():
        fields = getattr(tensor, "tensor_data_names", None)
        for field in fields or [None]:
            parts[(name, field)] = (getattr(tensor, field) if field else tensor).detach().clone()
    return parts


def sample(generator, output_type="np"):
    return generator.sample("a red egg", seed=0, output_type=output_type)


def test_an_int8_base_tunes_a_float32_lora_as_layers_and_is_left_exactly_as_it_was(saved):
    generator = load(saved, quantization="int8")
    denoiser = generator.denoisers()[0]
    assert is_quantized(denoiser) and type(denoiser.blocks[0].attn1.to_q.weight).__name__ == "Int8Tensor"
    assert generator.describe()["quantization"] == "int8"
    base, stored = sample(generator), weights(denoiser)

    adapter = tune(generator)
    assert all(loss == loss for _, loss in adapter.report.losses)
    assert not adapter.merge  # folding into int8 weights is impossible: the adapter runs beside them
    assert {v.dtype for v in adapter.state_dicts[0].values()} == {torch.float32}
    assert any(v.abs().max() > 0 for k, v in adapter.state_dicts[0].items() if "lora_B" in k)
    loaded_as_merged = LoRAAdapter(adapter.state_dicts, rank=4, alpha=4, target_modules=adapter.target_modules)
    for each in (adapter, loaded_as_merged):  # a merge-by-default adapter (from a file) becomes layers too
        with each.apply(generator):
            assert isinstance(denoiser.blocks[0].attn1.to_q, BaseTunerLayer)
            tuned = sample(generator)
        assert abs(tuned - base).max() > 1e-3

    after = weights(denoiser)
    assert after.keys() == stored.keys() and all(torch.equal(after[k], stored[k]) for k in stored)
    assert (sample(generator) == base).all()
    assert not any(isinstance(m, BaseTunerLayer) for m in denoiser.modules())


def test_group_offloading_gives_the_adapter_and_frames_of_no_offloading(saved):
    plain, offloaded = load(saved), load(saved, offload="group", vae_tiling=True)
    assert offloaded.describe()["offload"] == "group" and offloaded.describe()["vae_tiling"] is True
    assert "offload" not in plain.describe() and "vae_tiling" not in plain.describe()
    assert offloaded.pipeline.vae.use_tiling and offloaded.device == torch.device("cpu")
    results = []
    for generator in (plain, offloaded):
        base = sample(generator)
        adapter = tune(generator, steps=2)  # tuning holds the denoiser whole, then offloads it again
        assert _is_group_offload_enabled(generator.denoisers()[0]) == (generator is offloaded)
        with adapter.apply(generator):
            results.append((base, adapter.state_dicts[0], sample(generator), sample(generator, output_type="latent")))
        assert (sample(generator) == base).all()
    (base, lora, frames, latents), (base_o, lora_o, frames_o, latents_o) = results
    assert (base == base_o).all() and (frames == frames_o).all() and torch.equal(latents, latents_o)
    assert lora.keys() == lora_o.keys() and all(torch.equal(lora[k], lora_o[k]) for k in lora)
    with pytest.raises(ConfigurationError, match="offload='group'"):
        offloaded.to("cpu")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantization": "int4"}, "quantization must be one of int8, fp8, nf4 or None, got 'int4'"),
        ({"offload": "disk"}, "offload must be one of model, group or None, got 'disk'"),
        ({"vae_tiling": "yes"}, "vae_tiling must be True or False, got 'yes'"),
        ({"offload": "group", "offload_text_encoder": True}, "leave offload_text_encoder False"),
        pytest.param(
            {"offload": "model"},
            "offload='model' needs an accelerator",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only refusal"),
        ),
        pytest.param(
            {"quantization": "nf4"},
            "quantization='nf4' needs a CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only refusal"),
        ),
    ],
)
def test_bad_memory_options_are_refused_before_anything_loads(options, message):
    with pytest.raises(ConfigurationError) as error:
        WanVideoGenerator.from_pretrained("/nonexistent/checkpoint", **options)
    assert message in str(error.value)


def test_a_missing_quantization_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(ConfigurationError, match=r"needs torchao: pip install 'vchain\[quant\]'"):
        WanVideoGenerator.from_pretrained("/nonexistent/checkpoint", quantization="int8")


def test_the_cli_loads_a_quantized_offloaded_model_and_sampling_again_keeps_the_quantization(saved, tmp_path):
    from vchain.cli import main

    run = str(tmp_path / "run")
    flags = ["--height", "32", "--width", "32", "--frames", "1", "--steps", "2", "--dtype", "float32"]
    memory = ["--quantization", "int8", "--offload", "group", "--vae-tiling"]
    assert main(["generate", "An egg falls.", "-o", run, "--variant", "t2v", "--model", saved, *flags, *memory]) == 0
    assert main(["sample", "-o", run, "--seed", "3"]) == 0
    generator = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["sampling"]["inputs"][
        "generator"
    ]
    assert generator["quantization"] == "int8" and "offload" not in generator and "vae_tiling" not in generator


def test_a_resumed_run_offloaded_now_keeps_its_adapter_and_samples_again(saved, tmp_path, monkeypatch):
    from vchain import VChainPipeline
    from vchain.testing import DrawingImageBackend, ScriptedReasoner

    tuner = WanLoRATuner(steps=2)
    tunes = []
    tune = tuner.tune
    monkeypatch.setattr(tuner, "tune", lambda *args, **kwargs: tunes.append(1) or tune(*args, **kwargs))
    for offload in (None, "group"):  # offloading changes where the weights wait, not what tuning computes
        reasoner = ScriptedReasoner(["The egg lands.", "The egg rests."])
        VChainPipeline(reasoner, DrawingImageBackend(), load(saved, offload=offload), tuner)("An egg falls.", tmp_path)
    assert tunes == [1]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["sampling"]["inputs"]["generator"]["offload"] == "group"


@pytest.mark.parametrize("flags", [["--quantization", "int4"], ["--offload", "disk"]])
def test_the_cli_refuses_unknown_memory_options(flags, tmp_path, capsys):
    from vchain.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", "p", "-o", str(tmp_path / "run"), "--variant", "t2v", *flags])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_the_cli_refuses_offload_with_the_text_encoder_offload_before_importing_torch(tmp_path):
    script = (
        "import sys\nfrom vchain.cli import main\ncode = main(sys.argv[1:])\n"
        "print('HEAVY', [m for m in ('torch', 'diffusers') if m in sys.modules], 'CODE', code)"
    )
    argv = ["generate", "p", "-o", str(tmp_path / "g"), "--variant", "t2v", "--offload", "group"]
    result = subprocess.run(
        [sys.executable, "-c", script, *argv, "--offload-text-encoder"], capture_output=True, text=True, timeout=120
    )
    assert "HEAVY [] CODE 2" in result.stdout, (result.stdout, result.stderr[-1000:])
    assert "--offload already keeps the text encoder on the CPU" in result.stderr


def test_a_lora_fits_a_4_bit_linear_whose_weight_is_stored_packed():
    import bitsandbytes as bnb  # the quant extra; loading nf4 needs CUDA, this 4-bit linear does not

    generator = WanVideoGenerator(tiny_wan_pipeline(), **SIZE)
    attention = generator.denoisers()[0].blocks[0].attn1
    linear = attention.to_q
    packed = bnb.nn.Linear4bit(linear.in_features, linear.out_features, compute_dtype=torch.float32, quant_type="nf4")
    packed.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4")
    attention.to_q = packed.to("cpu")
    assert attention.to_q.weight.shape != linear.weight.shape and is_quantized(generator.denoisers()[0])
    lora = {
        "blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 24),
        "blocks.0.attn1.to_q.lora_B.weight": torch.ones(24, 4),
    }
    adapter = LoRAAdapter([lora], rank=4, alpha=4, target_modules=["to_q"])
    with adapter.apply(generator):
        assert isinstance(attention.to_q, BaseTunerLayer)
    assert attention.to_q.weight.shape == packed.weight.shape and not isinstance(attention.to_q, BaseTunerLayer)
