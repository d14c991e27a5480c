import json
import os
import subprocess
import sys

from vchain.cli import main


def test_think_in_process_against_a_local_server(server, tmp_path, capsys):
    code = main(
        ["think", "An egg is dropped onto a pillow.", "-o", str(tmp_path), "--base-url", server.base_url]
    )
    assert code == 0
    assert "3 keyframes" in capsys.readouterr().out
    assert (tmp_path / "chain.json").is_file() and (tmp_path / "metadata.csv").is_file()
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["reasoning"]["status"] == "done"


def test_think_as_a_subprocess_without_a_key_fails_fast_naming_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run(
        [sys.executable, "-m", "vchain.cli", "think", "p", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr
    assert not (tmp_path / "manifest.json").exists()


def test_empty_prompt_is_a_usage_error(server, tmp_path, capsys):
    assert main(["think", "  ", "-o", str(tmp_path), "--base-url", server.base_url]) == 2
    assert "prompt must be a non-empty string" in capsys.readouterr().err


def test_demo_runs_every_stage_and_says_its_models_are_random(tmp_path, capsys):
    import imageio.v3 as iio

    assert main(["demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out
    assert iio.imread(tmp_path / "video.mp4").shape[0] == 17
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert all(stages[s]["status"] == "done" and stages[s]["total_seconds"] > 0 for s in stages)


def test_generate_without_a_key_fails_fast_naming_it(tmp_path):
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    start = time.monotonic()
    command = [sys.executable, "-m", "vchain.cli", "generate", "An egg falls.", "-o", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "OPENAI_API_KEY" in result.stderr
    assert time.monotonic() - start < 60  # no model was loaded


def test_generate_rejects_bad_sizes_before_loading(server, tmp_path, capsys):
    code = main(["generate", "p", "-o", str(tmp_path), "--variant", "t2v", "--frames", "80"])
    assert code == 2 and "num_frames must be 4k+1" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("think", "generate", "tune", "sample", "suite", "demo"):
        assert command in out


def test_suite_sharded_over_two_processes_runs_every_run_exactly_once(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}, "OMP_NUM_THREADS": "1"}
    # accelerate's torchrun launcher (`--multi_gpu`): without GPUs the processes form a CPU group.
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *(
            "-m",
            "vchain.cli",
            "suite",
            "-o",
            str(tmp_path),
            "--demo",
            "--cases",
            "0,13",
            "--variants",
            "vchain",
            "t2v",
        ),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = [json.loads(p.read_text()) for p in sorted((tmp_path / ".shards").glob("process_*.json"))]
    assert len(shards) == 2 and all(shards)
    ran = [entry["run"] for shard in shards for entry in shard]
    assert len(ran) == 4 and len(set(ran)) == 4
    assert all(entry["status"] == "done" for shard in shards for entry in shard)
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(summary) == 5 and all(",done," in line for line in summary[1:])
    assert len(list(tmp_path.glob("*/*/video.mp4"))) == 4
