"""The `vchain` command, in process and as a subprocess, on the local OpenAI stand-in and the tiny models."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import pytest

from vchain.cli import main

TINY = ["--height", "32", "--width", "32", "--frames", "5", "--steps", "2", "--dtype", "float32"]


def env_without_openai():
    return {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_wan(tiny_wan_dir) -> str:
    return tiny_wan_dir


def test_think_in_process_against_a_local_server(server, tmp_path, capsys):
    urls = ["--base-url", server.base_url, "--image-base-url", server.base_url]
    code = main(["think", "An egg is dropped onto a pillow.", "-o", str(tmp_path), *urls])
    assert code == 0
    assert "3 keyframes" in capsys.readouterr().out
    assert (tmp_path / "chain.json").is_file() and (tmp_path / "metadata.csv").is_file()
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["reasoning"]["status"] == "done"


def test_think_as_a_subprocess_without_a_key_fails_fast_naming_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vchain.cli", "think", "p", "-o", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env_without_openai(),
        timeout=120,
    )
    assert result.returncode == 2 and "OPENAI_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "run").exists()  # nothing was run, nothing is left


def test_an_empty_prompt_is_reported_before_the_missing_key(tmp_path, capsys):
    assert main(["think", "  ", "-o", str(tmp_path / "run")]) == 2
    assert "prompt must be a non-empty string" in capsys.readouterr().err


def test_demo_runs_every_stage_and_a_second_run_reuses_it(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out
    assert iio.imread(tmp_path / "video.mp4").shape[0] == 17
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert all(stages[s]["status"] == "done" and stages[s]["total_seconds"] > 0 for s in stages)
    manifest = (tmp_path / "manifest.json").read_bytes()
    assert main(["demo", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "manifest.json").read_bytes() == manifest  # the same command: nothing ran


def test_demo_with_another_seed_samples_again(tmp_path):
    assert main(["demo", "-o", str(tmp_path)]) == 0
    before = iio.imread(tmp_path / "video.mp4")
    assert main(["demo", "-o", str(tmp_path), "--seed", "7"]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["stages"]["sampling"]["seed"] == 7 and m["stages"]["tuning"]["inputs"]["tuner"]["config"]["seed"] == 7
    assert not (iio.imread(tmp_path / "video.mp4") == before).all()


def test_generate_without_a_key_fails_before_loading_any_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("vchain.backends.wan.WanVideoGenerator.from_pretrained", lambda *a, **k: pytest.fail())
    assert main(["generate", "An egg falls.", "-o", str(tmp_path)]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "80"], "num_frames must be 4k+1"),
        (["--guidance", "nan"], "guidance_scale must be a finite number, got nan"),
        (["--height", "33"], "height must be a positive multiple of 16, got 33"),
        (["--rank", "0"], "--rank does not apply to the t2v variant, which does not tune"),
        (["--seed", "1180591620717411303424"], "seed must be None or an integer in [0, 2**63)"),
        (["--device", "cuda"], "--device cuda: this torch has no usable CUDA device"),
        (["--device", "tpu"], "--device must be"),
        (["--cache-interval", "3"], "cache_interval=3 applies to cache='taylorseer', not cache=None"),
    ],
)
def test_generate_rejects_bad_settings_before_loading(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr("vchain.backends.wan.WanVideoGenerator.from_pretrained", lambda *a, **k: pytest.fail())
    assert main(["generate", "p", "-o", str(tmp_path / "run"), "--variant", "t2v", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sample_reads_a_run_recorded_before_the_newer_caches(tiny_wan, tmp_path, capsys):
    # Earlier runs recorded the first-block threshold (0.05) with no cache at all; a cache's knobs now belong to
    # that cache only, so they carry over with it alone.
    run = tmp_path / "run"
    assert main(["generate", "An egg falls.", "-o", str(run), "--variant", "t2v", "--model", tiny_wan, *TINY]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    acceleration = manifest["stages"]["sampling"]["inputs"]["generator"]["acceleration"]
    acceleration.update(cache_threshold=0.05)
    del acceleration["cache_interval"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["sample", "-o", str(run), "--steps", "3"]) == 0
    generator = json.loads((run / "manifest.json").read_text())["stages"]["sampling"]["inputs"]["generator"]
    assert generator["acceleration"]["cache"] is None and generator["acceleration"]["cache_threshold"] is None
    assert main(["sample", "-o", str(run), "--cache", "sea", "--cache-threshold", "0.5"]) == 0
    assert main(["sample", "-o", str(run), "--cache", "taylorseer"]) == 0  # sea's threshold stays with sea
    generator = json.loads((run / "manifest.json").read_text())["stages"]["sampling"]["inputs"]["generator"]
    assert generator["acceleration"]["cache"] == "taylorseer" and generator["acceleration"]["cache_threshold"] is None


def test_generate_with_the_acceleration_switches_records_them(tiny_wan, tmp_path, capsys):
    run = str(tmp_path / "run")
    switches = ["--cache", "taylorseer", "--cache-interval", "3", "--offload-text-encoder"]
    assert (
        main(["generate", "An egg falls.", "-o", run, "--variant", "t2v", "--model", tiny_wan, *TINY, *switches]) == 0
    )
    generator = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["sampling"]["inputs"][
        "generator"
    ]
    assert generator["acceleration"]["cache"] == "taylorseer" and generator["acceleration"]["cache_interval"] == 3
    assert main(["demo", "-o", str(tmp_path / "demo")]) == 0
    capsys.readouterr()
    assert main(["tune", "-o", str(tmp_path / "demo"), "--cache", "first-block"]) == 2
    assert "--cache does not apply to tune" in capsys.readouterr().err


def test_generate_t2v_on_a_saved_tiny_wan_then_sample_with_another_seed(tiny_wan, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["generate", "An egg falls.", "-o", run, "--variant", "t2v", "--model", tiny_wan, *TINY]) == 0
    first = iio.imread(tmp_path / "run" / "video.mp4")
    assert first.shape[:3] == (5, 32, 32)
    # `vchain sample` takes the recorded settings; only the seed changes, so only sampling runs.
    assert main(["sample", "-o", run, "--seed", "3"]) == 0
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert (
        m["stages"]["sampling"]["seed"] == 3 and m["stages"]["sampling"]["inputs"]["generator"]["model_id"] == tiny_wan
    )
    assert not (iio.imread(tmp_path / "run" / "video.mp4") == first).all()


def test_tune_with_a_new_rank_tunes_again_and_says_where_the_adapter_is(tiny_wan, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["demo", "-o", run]) == 0
    capsys.readouterr()
    frame = ["--height", "32", "--width", "32", "--dtype", "float32"]
    assert main(["tune", "-o", run, "--model", tiny_wan, "--rank", "4", "--tune-steps", "3", *frame]) == 0
    out = capsys.readouterr().out
    assert "tuned in" in out and f"adapter in {run}/lora" in out
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["stages"]["tuning"]["inputs"]["tuner"]["config"]["rank"] == 4
    assert m["stages"]["sampling"]["status"] == "done"  # the old video stays until sampling runs again


def test_tune_and_sample_need_a_run_folder(tmp_path, capsys):
    assert main(["tune", "-o", str(tmp_path / "none")]) == 2
    assert "no run in" in capsys.readouterr().err


def test_a_busy_folder_is_refused_at_once(tmp_path, capsys):
    from vchain.run import RunDirectory

    with RunDirectory(tmp_path, "An egg is dropped onto a pillow."):
        code = subprocess.run(
            [sys.executable, "-m", "vchain.cli", "demo", "-o", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env_without_openai(),
            timeout=120,
        )
    assert code.returncode == 2 and "is in use by another vchain process" in code.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "-o", "{file}"], "is a file, not a folder"),
        (["suite", "-o", "{dir}", "--demo", "--cases", "1,1"], "--cases names a case twice"),
        (["suite", "-o", "{dir}", "--demo", "--cases", "25"], "--cases must be case numbers 0-19"),
        (["suite", "-o", "{dir}", "--demo", "--height", "64"], "--height does not apply to --demo"),
    ],
)
def test_bad_folders_and_options_are_usage_errors(tmp_path, capsys, args, message):
    (tmp_path / "afile").write_text("x")
    args = [a.format(file=tmp_path / "afile", dir=tmp_path / "suite") for a in args]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_an_empty_output_folder_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "-o", ""])
    assert exit_.value.code == 2 and "output_dir must be a folder path, got ''" in capsys.readouterr().err


def test_verbose_works_before_and_after_the_command(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["demo", "-o", str(tmp_path / "afile"), "-v"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["-v", "demo", "-o", str(tmp_path / "afile")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_help_lists_every_command_and_flags_show_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("think", "generate", "tune", "sample", "suite", "demo"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "LoRA rank (default: 16)" in out and "optimizer steps (default: 300)" in out
    assert "(default: 8)" in out  # --max-keyframes, from ReasoningConfig


def test_suite_sharded_over_two_processes_runs_every_run_exactly_once(tmp_path):
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
            "4,13",
            "--variants",
            "vchain",
            "t2v",
        ),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env_without_openai(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = [json.loads(p.read_text()) for p in sorted((tmp_path / ".shards").glob("process_*.json"))]
    assert len(shards) == 2 and all(shards)
    ran = [entry["run"] for shard in shards for entry in shard]
    assert len(ran) == 4 and len(set(ran)) == 4
    assert [sum(entry["run"].endswith("/vchain") for entry in shard) for shard in shards] == [1, 1]  # by work
    assert all(entry["status"] == "done" for shard in shards for entry in shard)
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(summary) == 5 and all(",done," in line for line in summary[1:])
    # Folders are named by case number, whatever the selection.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith((".", "summary"))) == [
        "04_a_steel_ball_is_dropped_into_water",
        "13_an_egg_is_dropped_onto_a_pillow",
    ]


def test_the_chat_and_image_base_urls_reach_two_different_servers(tmp_path, capsys):
    from vchain.testing import FakeOpenAIServer

    with FakeOpenAIServer() as chat, FakeOpenAIServer() as images:
        urls = ["--base-url", chat.base_url, "--image-base-url", images.base_url]
        assert main(["think", "An egg falls.", "-o", str(tmp_path), "--max-keyframes", "3", *urls]) == 0
    assert {r.path for r in chat.requests} == {"/v1/chat/completions"} and len(chat.requests) == 3
    assert {r.path for r in images.requests} == {"/v1/images/generations", "/v1/images/edits"}


def test_think_takes_the_keyframe_size_and_the_quality_switches(server, tmp_path):
    urls = ["--base-url", server.base_url, "--image-base-url", server.base_url]
    args = ["--width", "96", "--height", "64", "--color-correction", "--verify-keyframes", "--max-redos", "1"]
    assert main(["think", "An egg falls.", "-o", str(tmp_path), *urls, *args]) == 0
    from vchain import ThoughtChain

    assert {image.size for image in ThoughtChain.load(tmp_path).images} == {(96, 64)}
    m = json.loads((tmp_path / "manifest.json").read_text())
    config = m["stages"]["reasoning"]["inputs"]["config"]
    assert (config["color_correction"], config["verify_keyframes"], config["max_redos"]) == (1.0, True, 1)
    assert len(m["stages"]["reasoning"]["checks"]) == 3 and len(m["stages"]["reasoning"]["corrections"]) == 3


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--reasoner", "local:x"], "--reasoner must be openai or transformers:ID_OR_DIR, got 'local:x'"),
        (["--reasoner", "transformers:"], "--reasoner must be openai or transformers:ID_OR_DIR"),
        (["--image-backend", "diffusers"], "--image-backend must be openai or diffusers:ID_OR_DIR"),
        (["--image-base-url", "localhost:8000"], "base_url must be an http:// or https:// URL with a host, got"),
        (["--reasoner", "transformers:./no/such/model"], "neither an existing folder nor a hub id"),
    ],
)
def test_bad_component_choices_are_usage_errors(server, tmp_path, capsys, flag, message):
    # --base-url is the chat model's server: refused beside an in-process reasoner, so the images' is given there.
    local = any(f.startswith("transformers:") for f in flag)
    url = ["--image-base-url" if local else "--base-url", server.base_url]
    assert main(["think", "p", "-o", str(tmp_path / "run"), *url, *flag]) == 2
    assert message in capsys.readouterr().err


def test_the_open_weight_demo_runs_every_stage_with_no_key(tmp_path, capsys):
    assert main(["demo", "--open-weights", "-o", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert {s: r["status"] for s, r in m["stages"].items()} == dict.fromkeys(
        ("reasoning", "tuning", "sampling"), "done"
    )
    assert m["stages"]["reasoning"]["inputs"]["reasoner"]["class"] == "TransformersReasoner"
    assert m["stages"]["reasoning"]["inputs"]["image_backend"]["class"] == "DiffusersImageBackend"
    assert iio.imread(tmp_path / "video.mp4").shape[0] == 17
    # Its checkpoints keep their paths: the same command again reuses every stage.
    record = (tmp_path / "manifest.json").read_bytes()
    assert main(["demo", "--open-weights", "-o", str(tmp_path)]) == 0
    assert "reused" in capsys.readouterr().out and (tmp_path / "manifest.json").read_bytes() == record


def test_the_family_comes_from_the_checkpoint(tmp_path, capsys):
    from vchain.testing.tiny_cogvideox import tiny_cogvideox_pipeline

    folder = tmp_path / "cogvideox"
    tiny_cogvideox_pipeline().save_pretrained(folder)
    run = str(tmp_path / "run")
    args = [
        "--model",
        str(folder),
        "--height",
        "32",
        "--width",
        "32",
        "--frames",
        "9",
        "--steps",
        "2",
        "--dtype",
        "float32",
    ]
    assert main(["generate", "An egg falls.", "-o", run, "--variant", "t2v", *args]) == 0
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["stages"]["sampling"]["inputs"]["generator"]["class"] == "CogVideoXVideoGenerator"
    assert iio.imread(tmp_path / "run" / "video.mp4").shape[0] == 9
    assert (
        main(
            [
                "generate",
                "An egg falls.",
                "-o",
                str(tmp_path / "r2"),
                "--variant",
                "t2v",
                *args,
                "--attention-backend",
                "native",
            ]
        )
        == 2
    )
    assert "--attention-backend does not apply to CogVideoX checkpoints" in capsys.readouterr().err


def test_a_checkpoint_of_another_pipeline_names_the_supported_ones(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    assert (
        main(["generate", "p", "-o", str(tmp_path / "run"), "--variant", "t2v", "--model", str(tmp_path / "model")])
        == 2
    )
    err = capsys.readouterr().err
    assert "'StableDiffusionPipeline' checkpoint; vchain generates with WanPipeline (Wan), CogVideoXPipeline" in err


def test_judge_and_report_on_a_demo_suite(server, tmp_path, capsys):
    root = tmp_path / "suite"
    assert main(["suite", "-o", str(root), "--demo", "--cases", "13", "--variants", "vchain", "t2v"]) == 0
    assert main(["judge", str(root), "--base-url", server.base_url]) == 0
    assert (root / "13_an_egg_is_dropped_onto_a_pillow" / "vchain" / "scores.json").is_file()
    assert (root / "judge-summary.csv").is_file() and "2 request(s) this time" in capsys.readouterr().out
    assert main(["judge", str(root), "--base-url", server.base_url]) == 0
    assert "0 request(s) this time" in capsys.readouterr().out and len(server.requests) == 2
    assert main(["report", str(root), "-o", str(root / "report.html")]) == 0
    assert "<video" in (root / "report.html").read_text()


def test_judge_refuses_a_folder_without_finished_runs(tmp_path, capsys):
    assert main(["judge", str(tmp_path / "missing")]) == 2
    assert main(["judge", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["generate", "p", "-o", "{tmp}/g", "--guidance", "nan"],
        ["think", "p", "-o", "{tmp}/t", "--max-redos", "2"],
        ["demo", "-o", "{tmp}/d", "--seed", "-1"],
        ["sample", "-o", "{tmp}/s", "--variant", "x"],
    ],
    ids=["help", "a-bad-value", "a-flag-that-does-not-apply", "a-bad-seed", "an-unknown-flag"],
)
def test_arguments_are_checked_before_torch_diffusers_or_transformers_is_imported(args, tmp_path):
    script = (
        "import sys\nfrom vchain.cli import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    code = e.code\nheavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, 'CODE', code)"
    )
    argv = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
    assert f"HEAVY [] CODE {0 if args == ['--help'] else 2}" in result.stdout, (result.stdout, result.stderr[-1000:])
