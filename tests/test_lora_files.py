"""LoRA interchange on the tiny Wan: ComfyUI / original-Wan export read back by stock diffusers, and the
ComfyUI, musubi-tuner and original-Wan layouts read into vchain (through diffusers' converters)."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
from vchain.cli import main
from vchain.errors import ConfigurationError, VChainError
from vchain.lora_files import find_lora_files, lora_pairs, wan_name
from vchain.testing import DEMO_PROMPT, demo_pipeline, draw_image, tiny_wan_pipeline
from vchain.tuning import LoRAAdapter

SIZE = dict(height=32, width=32, num_frames=1, num_inference_steps=3, max_sequence_length=32)
CAPTIONS = ["a red egg on the table", "a blue ball in the water"]
PROMPT = "a yellow duck falls into the water"


def pairs():
    return [(draw_image(caption, 32, 32), caption) for caption in CAPTIONS]


def stock_latents(pipeline):
    return pipeline(PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent", **SIZE).frames


def keys_of(path):
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def wan():
    return WanVideoGenerator(tiny_wan_pipeline(), **SIZE)


@pytest.fixture(scope="module")
def tuned(wan):
    """A rank-4, alpha-8 LoRA (alpha differs from the rank, so a lost alpha shows) and its samples."""
    adapter = WanLoRATuner(steps=8, learning_rate=1e-2, rank=4, alpha=8).tune(wan, pairs())
    base = wan.sample(PROMPT, seed=0, output_type="latent")
    with adapter.apply(wan):
        tuned = wan.sample(PROMPT, seed=0, output_type="latent")
    assert (tuned - base).abs().max().item() > 1e-2  # the LoRA matters, so agreement below means something
    return adapter, tuned


def test_the_comfyui_export_uses_the_original_wan_names_with_down_up_and_alpha(tuned, tmp_path):
    adapter, _ = tuned
    path = adapter.save(tmp_path, format="comfyui")
    assert path == tmp_path / "vchain_lora.safetensors"
    tensors = load_file(path)
    names = [
        "self_attn.q",
        "self_attn.k",
        "self_attn.v",
        "self_attn.o",
        "cross_attn.q",
        "cross_attn.k",
        "cross_attn.v",
        "cross_attn.o",
        "ffn.0",
        "ffn.2",
    ]
    expected = {
        f"diffusion_model.blocks.{block}.{name}.{part}"
        for block in range(2)
        for name in names
        for part in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert set(tensors) == expected
    assert tensors["diffusion_model.blocks.1.cross_attn.o.alpha"].item() == 8.0
    assert tensors["diffusion_model.blocks.0.ffn.0.lora_down.weight"].shape == (4, 24)  # rank x in_features
    assert tensors["diffusion_model.blocks.0.ffn.0.lora_up.weight"].shape == (32, 4)  # ffn_dim x rank


def test_stock_diffusers_reads_the_comfyui_file_to_the_same_samples(tuned, tmp_path):
    adapter, in_memory = tuned
    path = adapter.save(tmp_path / "rock.safetensors", format="comfyui")
    assert path == tmp_path / "rock.safetensors" and path.is_file()
    stock = tiny_wan_pipeline()
    stock.load_lora_weights(path)  # diffusers' non-diffusers Wan converter
    assert (stock_latents(stock) - in_memory).abs().max().item() < 1e-4


@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_comfyui_file_loads_back_into_vchain_to_the_same_samples(wan, tuned, tmp_path, where):
    adapter, in_memory = tuned
    path = adapter.save(tmp_path, format="comfyui")
    loaded = WanLoRATuner().load_adapter(path if where == "file" else tmp_path)
    # diffusers' converter folds each alpha into the weights: the same update, read as alpha = rank.
    assert (loaded.rank, loaded.alpha) == (4, 4.0)
    for merge in (True, False):
        loaded.merge = merge
        with loaded.apply(wan):
            assert (wan.sample(PROMPT, seed=0, output_type="latent") - in_memory).abs().max().item() < 1e-5


def test_musubi_tuner_files_load_through_diffusers_converter(wan, tuned, tmp_path):
    adapter, in_memory = tuned
    comfy = load_file(adapter.save(tmp_path, format="comfyui"))
    musubi = {}
    for key, value in comfy.items():
        module, part = (
            key.removeprefix("diffusion_model.").split(".lora_")
            if ".lora_" in key
            else (key.removeprefix("diffusion_model.").removesuffix(".alpha"), None)
        )
        name = "lora_unet_" + module.replace(".", "_")
        musubi[f"{name}.lora_{part}" if part else f"{name}.alpha"] = value
    save_file(musubi, tmp_path / "musubi.safetensors")
    loaded = WanLoRATuner().load_adapter(tmp_path / "musubi.safetensors")
    with loaded.apply(wan):
        assert (wan.sample(PROMPT, seed=0, output_type="latent") - in_memory).abs().max().item() < 1e-5


def test_wan22_experts_export_as_a_high_and_low_noise_pair_that_stock_diffusers_loads(tmp_path):
    generator = WanVideoGenerator(tiny_wan_pipeline(two_experts=True), **SIZE)
    adapter = WanLoRATuner(steps=8, learning_rate=1e-2, rank=4).tune(generator, pairs())
    with adapter.apply(generator):
        in_memory = generator.sample(PROMPT, seed=0, output_type="latent")
    high = adapter.save(tmp_path / "rock.safetensors", format="comfyui")
    low = tmp_path / "rock_low_noise.safetensors"
    assert high == tmp_path / "rock_high_noise.safetensors" and low.is_file()
    assert not (tmp_path / "rock.safetensors").exists()

    stock = tiny_wan_pipeline(two_experts=True)
    stock.load_lora_weights(high)
    stock.load_lora_weights(low, load_into_transformer_2=True)
    assert (stock_latents(stock) - in_memory).abs().max().item() < 1e-4

    assert find_lora_files(high) == [high, low] and find_lora_files(tmp_path) == [high, low]
    loaded = WanLoRATuner().load_adapter(high)
    with loaded.apply(generator):
        assert (generator.sample(PROMPT, seed=0, output_type="latent") - in_memory).abs().max().item() < 1e-5


def test_an_unknown_format_is_named_and_writes_nothing(tuned, tmp_path):
    adapter, _ = tuned
    with pytest.raises(ConfigurationError, match="format must be one of 'diffusers', 'comfyui', got 'kohya'"):
        adapter.save(tmp_path, format="kohya")
    assert list(tmp_path.iterdir()) == []


def test_a_module_without_an_original_wan_name_is_refused_before_writing(tmp_path):
    state_dict = {"proj_out.lora_A.weight": torch.zeros(4, 24), "proj_out.lora_B.weight": torch.zeros(64, 4)}
    adapter = LoRAAdapter([state_dict], rank=4, alpha=4, target_modules=("proj_out",))
    with pytest.raises(ConfigurationError, match="'proj_out' has no name in ComfyUI"):
        adapter.save(tmp_path, format="comfyui")
    assert list(tmp_path.iterdir()) == []
    assert wan_name("blocks.7.attn2.add_k_proj") == "blocks.7.cross_attn.k_img"
    with pytest.raises(ConfigurationError, match=r"blocks\.0\.attn1\.add_k_proj"):
        wan_name("blocks.0.attn1.add_k_proj")


def test_a_file_of_another_model_or_rank_is_one_clear_error_and_the_model_is_untouched(wan, tuned, tmp_path):
    adapter, _ = tuned
    tensors = load_file(adapter.save(tmp_path, format="comfyui"))
    wider = {
        k: torch.zeros(v.shape[0], 48) if k.endswith("self_attn.q.lora_down.weight") else v for k, v in tensors.items()
    }
    save_file(wider, tmp_path / "other_model.safetensors")
    before = {k: v.clone() for k, v in wan.pipeline.transformer.state_dict().items()}
    loaded = WanLoRATuner().load_adapter(tmp_path / "other_model.safetensors")
    with pytest.raises(VChainError, match=r"'blocks\.0\.attn1\.to_q' has shape .*another model"), loaded.apply(wan):
        pass
    after = wan.pipeline.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    mixed = {
        k: torch.zeros(8, v.shape[1]) if k == "diffusion_model.blocks.0.ffn.2.lora_down.weight" else v
        for k, v in tensors.items()
    }
    mixed["diffusion_model.blocks.0.ffn.2.lora_up.weight"] = torch.zeros(24, 8)
    save_file(mixed, tmp_path / "mixed.safetensors")
    with pytest.raises(VChainError, match=r"rank\(s\) \[4, 8\]"):
        WanLoRATuner().load_adapter(tmp_path / "mixed.safetensors")

    broken = {k: v for k, v in tensors.items() if k != "diffusion_model.blocks.1.self_attn.k.lora_up.weight"}
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(VChainError, match="ComfyUI / original-Wan keys that diffusers' Wan converter cannot read"):
        WanLoRATuner().load_adapter(tmp_path / "broken.safetensors")


def test_a_folder_with_several_unrelated_files_is_named(tuned, tmp_path):
    adapter, _ = tuned
    adapter.save(tmp_path / "a.safetensors", format="comfyui")
    adapter.save(tmp_path / "b.safetensors", format="comfyui")
    with pytest.raises(VChainError, match=r"\(a\.safetensors, b\.safetensors\) are not one LoRA file"):
        WanLoRATuner().load_adapter(tmp_path)
    with pytest.raises(VChainError, match="no LoRA at"):
        WanLoRATuner().load_adapter(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------- vchain export-lora


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "egg"
    demo_pipeline(steps=3)(DEMO_PROMPT, run, stop_after="tuning")
    return run


def updates(adapter):
    """Each module's LoRA update scale * B @ A: what two layouts of one LoRA share."""
    return {module: adapter.scale * up @ down for module, down, up in lora_pairs(adapter.state_dicts[0])}


def test_export_lora_writes_the_runs_lora_in_both_formats_and_leaves_the_run_as_it_was(tuned_run, tmp_path, capsys):
    before = {p: p.read_bytes() for p in tuned_run.rglob("*") if p.is_file() and p.name != ".lock"}
    run_lora = updates(LoRAAdapter.load(tuned_run / "lora"))

    file = tmp_path / "egg.safetensors"
    assert main(["export-lora", str(tuned_run), "-o", str(file)]) == 0
    assert f"comfyui LoRA -> {file}" in capsys.readouterr().out
    assert all(key.startswith("diffusion_model.blocks.") for key in keys_of(file))
    exported = updates(LoRAAdapter.load(file))
    assert exported.keys() == run_lora.keys() and len(run_lora) == 20  # 2 blocks x 10 linears
    assert all(torch.allclose(exported[m], run_lora[m], atol=1e-7) for m in run_lora)

    assert main(["export-lora", str(tuned_run), "--format", "diffusers", "-o", str(tmp_path / "folder")]) == 0
    written = load_file(tmp_path / "folder" / "pytorch_lora_weights.safetensors")
    original = load_file(tuned_run / "lora" / "pytorch_lora_weights.safetensors")
    assert written.keys() == original.keys() and all(torch.equal(written[k], original[k]) for k in original)
    assert before == {p: p.read_bytes() for p in tuned_run.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "kohya", "-o", "{tmp}/x"], "invalid choice: 'kohya'"),
        (["-o", "{run}/lora/x.safetensors"], "lies inside the run folder"),
        (["-o", "{tmp}/kept.safetensors"], "kept.safetensors already exist"),
        (["--format", "diffusers", "-o", "{tmp}/x.safetensors"], "the diffusers format writes a folder"),
        (["-o", "{tmp}/kept.safetensors/inside"], "kept.safetensors' is a file, not a folder"),
    ],
)
def test_export_lora_refuses_bad_requests_and_loses_nothing(tuned_run, tmp_path, capsys, args, message):
    (tmp_path / "kept.safetensors").write_bytes(b"someone's file")
    before = {p: p.read_bytes() for p in tuned_run.rglob("*") if p.is_file() and p.name != ".lock"}
    args = [a.format(tmp=tmp_path, run=tuned_run) for a in args]
    try:
        code = main(["export-lora", str(tuned_run), *args])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "kept.safetensors").read_bytes() == b"someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.safetensors"]
    assert before == {p: p.read_bytes() for p in tuned_run.rglob("*") if p.is_file() and p.name != ".lock"}


def test_export_lora_needs_a_run_that_tuned(tmp_path, capsys):
    assert main(["export-lora", str(tmp_path), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "holds no vchain run" in capsys.readouterr().err
    demo_pipeline()(DEMO_PROMPT, tmp_path / "thought", stop_after="reasoning")
    assert main(["export-lora", str(tmp_path / "thought"), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "holds no saved LoRA (tuning is pending)" in capsys.readouterr().err


# ------------------------------------------------------------------------- a pipeline that holds a LoRA


def random_lora(transformer, rank=2, seed=1):
    """A diffusers-format LoRA on every block linear of `transformer`, as a step-distillation LoRA would be."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks.") and ".norm" not in name:
            tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator)
            tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator)
    return {k: 0.3 * v for k, v in tensors.items()}


def snapshot(pipeline):
    """Everything a held LoRA consists of: weights (its own included) with dtypes, adapters, activity, scales."""
    transformer = pipeline.transformer
    weights = {k: v.clone() for k, v in transformer.state_dict().items()}
    to_q = transformer.blocks[0].attn1.to_q
    return {
        "weights": weights,
        "adapters": list(transformer.peft_config),
        "active": pipeline.get_active_adapters(),
        "scaling": dict(to_q.scaling),
        "modules": [(name, type(m).__name__) for name, m in transformer.named_modules()],
        "requires_grad": {name: p.requires_grad for name, p in transformer.named_parameters()},
        "training": transformer.training,
    }


def same(a, b):
    weights_equal = a["weights"].keys() == b["weights"].keys() and all(
        torch.equal(a["weights"][k], b["weights"][k]) and a["weights"][k].dtype == b["weights"][k].dtype
        for k in a["weights"]
    )
    return weights_equal and {k: v for k, v in a.items() if k != "weights"} == {
        k: v for k, v in b.items() if k != "weights"
    }


def test_a_pipeline_holding_a_lora_is_tuned_and_sampled_with_it_and_left_exactly_as_it_was(tmp_path):
    generator = WanVideoGenerator(tiny_wan_pipeline(), **SIZE)
    pipeline = generator.pipeline
    distill = random_lora(pipeline.transformer)
    pipeline.load_lora_weights(distill, adapter_name="distill")  # stock diffusers, as a user would
    pipeline.set_adapters(["distill"], adapter_weights=[0.7])
    before, held = snapshot(pipeline), generator.sample(PROMPT, seed=0, output_type="latent")

    active_while_tuning = []
    predict = generator.predict

    def spy(denoiser, *args):
        active_while_tuning.append(list(denoiser.blocks[0].attn1.to_q.active_adapters))
        return predict(denoiser, *args)

    generator.predict = spy
    adapter = WanLoRATuner(steps=5, learning_rate=1e-2, rank=4).tune(generator, pairs())
    del generator.predict
    assert active_while_tuning[0] == ["distill", "vchain"]  # trained on top of the held LoRA
    assert same(snapshot(pipeline), before)

    samples = []
    for merge in (True, False):
        adapter.merge = merge
        with adapter.apply(generator):
            assert pipeline.transformer.blocks[0].attn1.to_q.scaling["distill"] == before["scaling"]["distill"]
            samples.append(generator.sample(PROMPT, seed=0, output_type="latent"))
        assert same(snapshot(pipeline), before)
    assert (samples[0] - held).abs().max().item() > 1e-2
    assert (samples[0] - samples[1]).abs().max().item() < 1e-5

    # Stock diffusers with both LoRAs active gives the same video: vchain's adapter sat on top of the held one.
    adapter.save(tmp_path)
    stock = tiny_wan_pipeline()
    stock.load_lora_weights(distill, adapter_name="distill")
    stock.load_lora_weights(tmp_path, adapter_name="keyframes")
    stock.set_adapters(["distill", "keyframes"], adapter_weights=[0.7, 1.0])
    assert (stock_latents(stock) - samples[0]).abs().max().item() < 1e-4
    assert torch.equal(generator.sample(PROMPT, seed=0, output_type="latent"), held)
