"""The benchmark scripts on tiny models: the FLOP model, the timing method's output, the memory instrument."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench_wan  # the scripts beside it import their shared module the same way
import harness
import memory


def test_flop_model_matches_the_real_shapes():
    tokens = harness.video_tokens(480, 832, 81)
    assert tokens == 32760
    forward = harness.transformer_flops(harness.WAN21_1_3B, tokens, 512)
    assert 2.7e14 < forward < 3.0e14  # one 1.3B forward at 81x480x832
    keyframe = harness.video_tokens(480, 832, 1)
    one = harness.transformer_flops(harness.WAN21_1_3B, keyframe, 512)
    step = harness.tuning_step_flops(harness.WAN21_1_3B, keyframe, 512, checkpointing=False)
    assert 0.9e13 < step < 1.1e13  # one training step on one keyframe, the base frozen
    assert 2.0 < step / one < 2.3  # not 3x: a frozen base computes no weight gradients
    with_checkpointing = harness.tuning_step_flops(harness.WAN21_1_3B, keyframe, 512, checkpointing=True)
    assert with_checkpointing == pytest.approx(step + one)


def test_cpu_preset_reports_repeats_medians_and_spread(tmp_path):
    results = bench_wan.main(["--preset", "cpu-tiny", "--device", "cpu", "--rounds", "2", "--out", str(tmp_path)])
    assert results["environment"]["command"].startswith("python benchmarks/bench_wan.py --preset cpu-tiny")
    assert {"device", "torch", "diffusers", "peft", "date"} <= set(results["environment"])
    tuning = results["tuning"]
    assert tuning["trainable_parameters"] > 0 and tuning["per_100_steps_s"]["median"] > 0
    sampling = results["sampling"]
    assert set(sampling["variants"]) == {"diffusers_no_lora", "vchain", "diffusers", "diffusers_fused"}
    for variant in sampling["variants"].values():
        per_call, per_step = variant["per_call_s"], variant["per_step_s"]
        assert per_call["n"] == 2 and len(per_call["repeats"]) == 2
        assert per_call["min"] <= per_call["median"] <= per_call["max"]
        assert per_step["n"] == 2 * (sampling["steps_per_call"] - 1)  # the steps of each timed call
    ratio = sampling["ratios"]["vchain/diffusers_fused"]["per_call"]
    assert ratio["n"] == 2 and ratio["min"] > 0
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["sampling"]["variants"]["vchain"]["per_call_s"]["repeats"]
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("# python benchmarks/bench_wan.py") and "| figure | median | min | max | n |" in table


def test_live_bytes_counts_what_ops_allocate_while_it_lives():
    mode = torch._subclasses.fake_tensor.FakeTensorMode()
    with mode:
        weight = torch.empty(1000)  # made before: not counted
        with memory.LiveBytes() as live:
            a = torch.empty(256, dtype=torch.float32)
            view = a[:10]  # a view allocates nothing
            b = weight * 2
            del a, view, b
            c = torch.empty(64, dtype=torch.bfloat16)
    assert live.peak == 4 * 256 + 4 * 1000 and live.live == 2 * 64
    del c, weight


def test_the_memory_table_runs_on_tiny_shapes_and_adds_up():
    text, rows = memory.table(tiny=True)
    (row,) = rows.values()
    assert text.startswith("| GiB | tiny |")
    weights = row["transformer weights (bf16)"] + row["UMT5-XXL weights (bf16)"] + row["VAE weights (fp32)"]
    assert row["**sampling peak**"] > weights > 0
    assert row["**sampling peak, text encoder offloaded**"] <= row["**sampling peak**"]
    for checkpointing in ("no checkpointing", "checkpointing"):
        plain = row[f"**tuning peak, {checkpointing}**"]
        assert weights < plain and row[f"**tuning peak, {checkpointing}, text encoder offloaded**"] <= plain
    assert row["tuning: LoRA rank 16 (fp32)"] > 0


def test_quantized_and_streamed_bytes_follow_the_layers():
    model = torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([torch.nn.Linear(64, 32) for _ in range(3)])})
    model.blocks.to(torch.bfloat16)
    figures = {"weights": memory._bytes(model), **memory._storage_figures(model)}
    biases = 3 * 32 * 2
    assert figures["weights"] == 3 * 64 * 32 * 2 + biases
    assert memory.quantized_bytes(figures, None) == figures["weights"]
    assert memory.quantized_bytes(figures, "int8") == 3 * (64 * 32 + 32 * 2) + biases  # int8 + a bf16 scale a row
    assert memory.quantized_bytes(figures, "nf4") == 3 * 64 * 32 * (0.5 + 4 / 64) + biases
    # Nothing outside the blocks here: two of the three blocks stay on the device.
    assert memory.streamed_bytes(figures, figures["weights"]) == 2 * figures["block"]


def test_the_small_card_and_many_gpu_tables_run_on_tiny_shapes():
    _, small = memory.small_cards(tiny=True)
    (peaks,) = small["peaks"].values()
    # On tiny shapes the VAE decode and the fp32 LoRA outweigh the transformer, so only the structure is checked
    # here; the byte counts of quantization and streaming are checked above.
    assert peaks["nf4: sampling"] < peaks["fp8: sampling"] and peaks["nf4: tuning"] < peaks["int8: tuning"]
    assert peaks["bf16, offload=group: sampling"] <= peaks["bf16: sampling"]
    assert peaks["int8, offload=group: tuning"] <= peaks["int8: tuning"]
    _, per_gpu = memory.many_gpus(tiny=True)
    (row,) = per_gpu.values()
    one = row["denoising, one GPU"]
    assert row["denoising, cfg on 2 GPUs"] == one  # each rank runs a whole forward, one branch each
    assert row["denoising, ring on 8 GPUs"] <= row["denoising, ring on 2 GPUs"] <= one
    assert row["denoising, ulysses on 2 GPUs"] is not None and row["denoising, ulysses on 4 GPUs"] is None  # 2 heads
