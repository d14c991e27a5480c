"""Stage 2, model-agnostic: the LoRA tuner on a toy non-Wan generator and on the tiny Wan.

`vchain.testing.toy.ToyGenerator` implements `TunableGenerator` from scratch (its own encoders, denoiser,
objective and sampler, no diffusers), so these tests show that the tuner needs nothing from Wan.
"""

import json

import pytest
import torch

from vchain.errors import ConfigurationError, StageError, VChainError
from vchain.testing import draw_image, tiny_wan_pipeline
from vchain.testing.toy import ToyGenerator
from vchain.tuning import LoRAAdapter, LoRAConfig, LoRATuner, check_pairs

CAPTIONS = ["a red egg on the table", "a blue ball in the water", "a yellow duck in the sky"]


def pairs_for(captions=CAPTIONS, tag="", size=32):
    return [(draw_image(tag + caption, size, size), caption) for caption in captions]


def evaluation_loss(generator, pairs, seed=123):
    """The objective on fixed noise and levels: what tuning should lower."""
    images, captions = zip(*pairs, strict=True)
    x0 = generator.encode_keyframes(images, height=generator.height, width=generator.width).float()
    context = generator.encode_captions(captions)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    level = torch.linspace(0.2, 0.9, len(x0))
    noisy, timestep, target = generator.training_objective().corrupt(x0, noise, level)
    dtype = next(generator.denoisers()[0].parameters()).dtype
    with torch.no_grad():
        prediction = generator.predict(generator.denoisers()[0], noisy.to(dtype), timestep, context.to(dtype))
    return torch.nn.functional.mse_loss(prediction.float(), target.float()).item()


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_the_toy_generator_tunes_through_the_generic_tuner():
    toy = ToyGenerator()
    pairs = pairs_for()
    before = evaluation_loss(toy, pairs)
    adapter = LoRATuner(steps=200, learning_rate=3e-3, rank=4).tune(toy, pairs)
    with adapter.apply(toy):
        after = evaluation_loss(toy, pairs)
    assert after < 0.5 * before, (before, after)
    assert evaluation_loss(toy, pairs) == before  # the base is back
    assert adapter.report.trainable_parameters == 4 * (65 + 64) + 4 * (64 + 64) + 4 * (64 + 48)


@pytest.mark.parametrize("merge", [True, False])
def test_the_toy_generator_is_restored_exactly_on_both_application_paths(merge):
    toy = ToyGenerator()
    weights, flags = state(toy.denoiser), {n: p.requires_grad for n, p in toy.denoiser.named_parameters()}
    base = toy.sample_latent("a red egg")
    adapter = LoRATuner(steps=20, learning_rate=1e-2, merge_for_sampling=merge).tune(toy, pairs_for())
    assert torch.equal(toy.sample_latent("a red egg"), base)  # tuning leaves no trace
    with adapter.apply(toy):
        assert not torch.equal(toy.sample_latent("a red egg"), base)
    assert torch.equal(toy.sample_latent("a red egg"), base)
    after = toy.denoiser.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)
    assert {n: p.requires_grad for n, p in toy.denoiser.named_parameters()} == flags
    assert not toy.denoiser.training and not hasattr(toy.denoiser, "peft_config")


def test_merged_and_peft_layer_application_agree():
    toy = ToyGenerator()
    tuned = LoRATuner(steps=30, learning_rate=1e-2).tune(toy, pairs_for())
    with tuned.apply(toy):
        merged = toy.sample_latent("a blue ball")
    layered = LoRAAdapter(
        tuned.state_dicts, rank=tuned.rank, alpha=tuned.alpha, target_modules=tuned.target_modules, merge=False
    )
    with layered.apply(toy):
        assert torch.allclose(toy.sample_latent("a blue ball"), merged, atol=1e-5)


def test_a_save_and_load_round_trip_keeps_rank_alpha_and_outputs(tmp_path):
    toy = ToyGenerator()
    adapter = LoRATuner(steps=30, learning_rate=1e-2, rank=4, alpha=2.0).tune(toy, pairs_for())
    with adapter.apply(toy):
        expected = toy.sample_latent("a yellow duck")
    path = adapter.save(tmp_path)
    assert path == tmp_path / "pytorch_lora_weights.safetensors" and path.is_file()
    loaded = LoRATuner().load_adapter(tmp_path)
    assert (loaded.rank, loaded.alpha, set(loaded.target_modules)) == (4, 2.0, set(ToyGenerator.lora_targets))
    with loaded.apply(toy):
        assert torch.allclose(toy.sample_latent("a yellow duck"), expected, atol=1e-6)


def test_tuning_is_deterministic_for_a_seed():
    toy = ToyGenerator()
    a, b, c = (LoRATuner(steps=10, seed=s).tune(toy, pairs_for()) for s in (3, 3, 4))
    assert all(torch.equal(a.state_dicts[0][k], b.state_dicts[0][k]) for k in a.state_dicts[0])
    assert any(not torch.equal(a.state_dicts[0][k], c.state_dicts[0][k]) for k in a.state_dicts[0])


def test_the_global_torch_rng_is_left_alone():
    toy = ToyGenerator()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    LoRATuner(steps=5).tune(toy, pairs_for())
    assert torch.equal(torch.rand(3), expected)


def test_every_keyframe_is_visited_equally_often():
    seen = []

    class Counting(ToyGenerator):
        def predict(self, denoiser, noisy, timestep, context):
            seen.extend(round(v, 4) for v in context.mean((1, 2)).tolist())
            return super().predict(denoiser, noisy, timestep, context)

    toy = Counting()
    LoRATuner(steps=30, batch_size=2).tune(toy, pairs_for())
    counts = sorted(seen.count(v) for v in set(seen))
    assert len(counts) == 3 and counts == [20, 20, 20]


def test_a_blow_up_is_a_stage_error_naming_its_step_and_leaves_the_model_as_it_was():
    class BlowsUp(ToyGenerator):
        """The prediction becomes inf at step 5; the loss is read only at step 40."""

        calls = 0

        def predict(self, denoiser, noisy, timestep, context):
            BlowsUp.calls += 1
            out = super().predict(denoiser, noisy, timestep, context)
            return out * float("inf") if BlowsUp.calls == 5 else out

    toy = BlowsUp()
    weights = state(toy.denoiser)
    with pytest.raises(
        StageError, match=r"tuning/fine_tune.*loss became \w+ at step 5 .*learning_rate \(now 0\.001\)"
    ):
        LoRATuner(steps=40, learning_rate=1e-3, log_every=40).tune(toy, pairs_for())
    assert all(torch.equal(toy.denoiser.state_dict()[k], weights[k]) for k in weights)


def test_a_nan_in_the_tiny_wan_is_caught_and_leaves_it_exactly_as_it_was(wan, monkeypatch):
    from vchain.backends.wan import WanLoRATuner

    base = wan.sample("a red egg", seed=0, output_type="latent")
    real, calls = wan.predict, []

    def poisoned(*args):
        calls.append(1)
        out = real(*args)
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(wan, "predict", poisoned)
    with pytest.raises(StageError, match=r"loss became nan at step 3 .*learning_rate \(now 0\.0001\)"):
        WanLoRATuner(steps=20).tune(wan, pairs_for())
    monkeypatch.undo()
    assert torch.equal(wan.sample("a red egg", seed=0, output_type="latent"), base)


def test_non_finite_weights_after_the_last_step_are_caught():
    class Poisoned(ToyGenerator):
        """The last step's gradient is inf: the loss read before it is finite, the weights after are not."""

        calls = 0

        def predict(self, denoiser, noisy, timestep, context):
            Poisoned.calls += 1
            out = super().predict(denoiser, noisy, timestep, context)
            return out * 1e30 if Poisoned.calls == 3 else out

    with pytest.raises(StageError, match=r"(not finite after step 3|became .* at step 3)"):
        LoRATuner(steps=3, learning_rate=1e-3, max_grad_norm=None, log_every=100).tune(Poisoned(), pairs_for())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rank": 0}, "rank must be greater than or equal to 1, got 0"),
        ({"rank": True}, "rank must be a valid integer, got True"),
        ({"learning_rate": float("inf")}, "learning_rate must be a finite number, got inf"),
        ({"learning_rate": 3e38}, "learning_rate must be less than or equal to 1"),
        ({"learning_rate": -1}, "learning_rate must be greater than 0, got -1"),
        ({"steps": 2.5}, "steps must be a valid integer, got 2.5"),
        ({"weighting_scheme": "cosine"}, "weighting_scheme must be 'logit_normal' or 'uniform', got 'cosine'"),
        ({"target_modules": []}, "target_modules"),
        ({"seed": -1}, "seed must be greater than or equal to 0"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm must be a finite number"),
    ],
)
def test_bad_settings_are_named_with_their_values(fields, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LoRAConfig(**fields)


def test_settings_errors_are_collected():
    with pytest.raises(ConfigurationError) as e:
        LoRAConfig(rank=0, learning_rate=-1, weighting_scheme="cosine")
    assert str(e.value).count(" got ") == 3


def test_targets_that_match_nothing_are_refused_before_any_work():
    toy = ToyGenerator()
    with pytest.raises(ConfigurationError, match=r"target_modules \['nonexistent'\] match no linear layer"):
        LoRATuner(target_modules=("nonexistent",)).tune(toy, pairs_for())


def test_a_generator_that_is_not_tunable_is_named():
    with pytest.raises(ConfigurationError, match=r"the generator must implement vchain\.interfaces\.TunableGenerator"):
        LoRATuner().tune(object(), pairs_for())


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([], r"pairs must be a non-empty list"),
        ("a caption", r"pairs must be a non-empty list"),
        ([("missing.png", "c")], r"pairs\[0\] image cannot be read: image 'missing.png' does not exist"),
        ([(draw_image("x", 8, 8), "")], r"pairs\[0\] caption must be a non-empty string"),
        ([(42, "c")], r"pairs\[0\] image must be a PIL image or a path, got int"),
        ([("just one thing",)], r"pairs\[0\] must be an \(image, caption\) pair"),
    ],
)
def test_bad_pairs_are_named(pairs, message):
    with pytest.raises(ConfigurationError, match=message):
        check_pairs(pairs)


def test_an_adapter_for_other_modules_or_shapes_is_refused(tmp_path):
    toy = ToyGenerator()
    adapter = LoRATuner(steps=2).tune(toy, pairs_for())
    wrong_name = LoRAAdapter(
        [{k.replace("mix", "nope"): v for k, v in adapter.state_dicts[0].items()}],
        rank=16,
        alpha=16,
        target_modules=("nope",),
    )
    with pytest.raises(VChainError, match="targets 'nope'"), wrong_name.apply(toy):
        pass
    wrong_shape = LoRAAdapter(
        [{k: v[:, :3] if "lora_A" in k else v for k, v in adapter.state_dicts[0].items()}],
        rank=16,
        alpha=16,
        target_modules=ToyGenerator.lora_targets,
    )
    with pytest.raises(VChainError, match="has shape"), wrong_shape.apply(toy):
        pass
    two = LoRAAdapter([{}, {}], rank=4, alpha=4, target_modules=("mix",))
    with pytest.raises(ConfigurationError, match="2 denoiser"), two.apply(toy):
        pass


def test_unreadable_lora_files_are_named(tmp_path):
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(VChainError, match="cannot read LoRA file"):
        LoRAAdapter.load(tmp_path)
    from safetensors.torch import save_file

    save_file({"transformer.x.weight": torch.zeros(2, 2)}, tmp_path / "pytorch_lora_weights.safetensors")
    with pytest.raises(VChainError, match="holds no complete lora_A/lora_B pairs"):
        LoRAAdapter.load(tmp_path)
    with pytest.raises(VChainError, match=r"no LoRA at .*elsewhere"):
        LoRAAdapter.load(tmp_path / "elsewhere")


def test_the_saved_file_is_diffusers_format_with_alpha(tmp_path):
    from safetensors import safe_open

    adapter = LoRATuner(steps=2, rank=4, alpha=8.0).tune(ToyGenerator(), pairs_for())
    adapter.save(tmp_path)
    with safe_open(str(tmp_path / "pytorch_lora_weights.safetensors"), framework="pt") as f:
        keys, header = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("transformer.") for k in keys)
    metadata = json.loads(header["lora_adapter_metadata"])
    assert metadata["transformer.r"] == 4 and metadata["transformer.lora_alpha"] == 8.0


# -------------------------------------------------------------------------------------- on the tiny Wan


@pytest.fixture(scope="module")
def wan():
    from vchain.backends.wan import WanVideoGenerator

    return WanVideoGenerator(
        tiny_wan_pipeline(), height=32, width=32, num_frames=1, num_inference_steps=4, max_sequence_length=32
    )


def test_tuning_the_tiny_wan_lowers_the_loss_and_moves_samples_toward_the_keyframes(wan):
    from vchain.backends.wan import WanLoRATuner

    pairs = pairs_for()
    before_loss = evaluation_loss(wan, pairs)
    adapter = WanLoRATuner(steps=300, learning_rate=2e-3).tune(wan, pairs)
    keyframes = wan.encode_keyframes([image for image, _ in pairs], height=32, width=32)

    def distance():
        errors = [
            torch.mean((wan.sample(caption, seed=seed, output_type="latent") - keyframes[i : i + 1]) ** 2).item()
            for i, (_, caption) in enumerate(pairs)
            for seed in range(3)
        ]
        return sum(errors) / len(errors)

    before = distance()
    with adapter.apply(wan):
        after, after_loss = distance(), evaluation_loss(wan, pairs)
    assert after_loss < 0.9 * before_loss and after <= 0.85 * before, (before_loss, after_loss, before, after)
    losses = [loss for _, loss in adapter.report.losses]
    assert losses[-1] < losses[0] and adapter.report.steps == 300 and adapter.report.keyframes == 3


def test_the_steps_never_wait_for_the_device_except_at_loss_reads(wan, monkeypatch):
    """No `.item()`, `bool()` or `.tolist()` of a tensor from vchain's code during steps, bar the loss reads;
    and the denoiser's dtype (a walk over every module in diffusers) is read once per run, not per step."""
    import traceback

    from vchain.backends.wan import WanLoRATuner

    waits = []
    for name in ("item", "__bool__", "tolist"):
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _real=real, _name=name):
            caller = traceback.extract_stack(limit=2)[0]
            if "/vchain/" in caller.filename and self.numel() and caller.name != "_Schedule":
                waits.append((_name, caller.name, caller.lineno))
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    dtype_reads = []
    cls = type(wan.pipeline.transformer)
    monkeypatch.setattr(cls, "dtype", property(lambda self: dtype_reads.append(1) or torch.float32))
    WanLoRATuner(steps=20, log_every=10).tune(wan, pairs_for())
    in_steps = [w for w in waits if w[1] == "_train"]
    assert len(in_steps) == 2 * 2, waits  # the mean loss and the first bad step, at steps 10 and 20
    assert dtype_reads == [1]  # diffusers' compute dtype, read once before the steps
