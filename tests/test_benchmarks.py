import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_wan", Path(__file__).parents[1] / "benchmarks" / "bench_wan.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_wan"] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)


def test_flop_model_matches_the_real_shapes():
    tokens = bench.video_tokens(480, 832, 81)
    assert tokens == 32760
    forward = bench.transformer_flops(bench.WAN21_1_3B, tokens, 512)
    assert 2.7e14 < forward < 3.0e14  # one 1.3B forward at 81x480x832
    keyframe = 3 * bench.transformer_flops(bench.WAN21_1_3B, bench.video_tokens(480, 832, 1), 512)
    assert 1.2e13 < keyframe < 1.5e13  # one training step on one keyframe


def test_cpu_preset_reports_every_figure(tmp_path):
    results = bench.main(["--preset", "cpu-tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert results["tuning"]["trainable_parameters"] > 0 and results["tuning"]["per_100_steps_s"] > 0
    assert set(results["ratios"]) == {"vchain_over_diffusers", "tuning_over_sampling"}
    assert (tmp_path / "results.md").read_text().startswith("| figure | value |")
