"""`--parallel`: the CFG split on two gloo processes gives one process's frames, rank 0 alone writes the run
folder (and a suite's folders and summary), and bad launches are refused before anything loads.

One launch of two ranks serves the whole file: two processes forked from the test process, each given the
environment torchrun gives its workers (`_rank`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from tests.conftest import SCHEMA
from vchain.cli import main
from vchain.testing import FakeOpenAIServer, Fault, tiny_wan_pipeline

# A high guidance: the tiny random model's two branches differ little, and a wrong split must show.
SIZE = ["--height", "32", "--width", "32", "--frames", "5", "--steps", "3", "--dtype", "float32", "--guidance", "40"]
TINY = [*SIZE, "--tune-steps", "2"]
EXPERTS = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 3, "guidance_scale": 40.0}
PROMPT = "A ball rolls off a table."
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and not k.startswith("OPENAI_")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), **extra}


@pytest.fixture(scope="module")
def tiny_wan(tiny_wan_dir) -> str:
    return tiny_wan_dir


@pytest.fixture(scope="module")
def launched(tiny_wan, tmp_path_factory):
    with contextlib.ExitStack() as stack:
        yield from _launch(tiny_wan, tmp_path_factory, stack)


def _launch(tiny_wan, tmp_path_factory, stack):
    """A chain folder tuned and sampled by one process, its twin by two ranks with `--parallel cfg`, and the
    two-expert tiny Wan sampled through the library by the same ranks."""
    from vchain import VChainPipeline
    from vchain.reasoning import ReasoningConfig
    from vchain.testing import DrawingImageBackend, ScriptedReasoner

    root = tmp_path_factory.mktemp("parallel")
    single, parallel, out = root / "single", root / "parallel", root / "out"
    reasoner = ScriptedReasoner(captions=["The ball reaches the edge.", "The ball falls to the floor."])
    frame = ReasoningConfig(width=32, height=32, max_keyframes=3)
    VChainPipeline(reasoner, DrawingImageBackend(), reasoning=frame).think(PROMPT, output_dir=single)
    shutil.copytree(single, parallel)
    out.mkdir()
    server = stack.enter_context(FakeOpenAIServer(schema_path=SCHEMA))
    suite_server = stack.enter_context(FakeOpenAIServer(schema_path=SCHEMA))
    failing = stack.enter_context(FakeOpenAIServer(schema_path=SCHEMA))
    # The reasoning of a generate, then of the first run of a suite, fails.
    failing.queue("chat", Fault.http(400, "the prompt was refused"), Fault.http(400, "the prompt was refused"))
    port = _free_port()
    # Forked from this process, whose imports they share (a fresh interpreter would import torch and diffusers
    # again), with the environment torchrun gives its workers.
    fork = multiprocessing.get_context("fork")
    ranks = [
        fork.Process(
            target=_rank,
            args=(rank, port, out, tiny_wan, str(parallel), server.base_url, suite_server.base_url, failing.base_url),
        )
        for rank in range(2)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=300)
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in ranks] == [0, 0], (
        (out / "error.txt").read_text() if (out / "error.txt").exists() else ""
    )
    assert main(["sample", "-o", str(single), "--model", tiny_wan, *TINY]) == 0
    assert main(["generate", PROMPT, "-o", str(root / "t2v"), "--variant", "t2v", "--model", tiny_wan, *SIZE]) == 0
    asked = len(suite_server.requests)
    assert main(_suite(root / "suite", tiny_wan, suite_server.base_url)) == 0
    (out / "suite-requests.json").write_text(json.dumps([asked, len(suite_server.requests) - asked]))
    yield single, parallel, out, server


def test_cfg_on_two_processes_samples_the_frames_of_one(launched):
    single, parallel, *_ = launched
    one, two = iio.imread(single / "video.mp4"), iio.imread(parallel / "video.mp4")
    assert one.shape == two.shape == (5, 32, 32, 3)
    # The same float frames up to float error; the mp4 encoding may round a value either way.
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 2
    manifest = json.loads((parallel / "manifest.json").read_text())
    assert manifest["stages"]["sampling"]["inputs"]["generator"]["parallel"] == "cfg"
    tuned = json.loads((single / "manifest.json").read_text())["stages"]["tuning"]
    # Rank 0 tuned as one process does (the same adapter: the same fingerprint); parallel is no tuning input.
    assert manifest["stages"]["tuning"]["fingerprint"] == tuned["fingerprint"]


def test_generate_with_cfg_on_two_processes_samples_the_frames_of_one(launched):
    single, _, out, _ = launched
    assert (out / "t2v-code-0").read_text() == (out / "t2v-code-1").read_text() == "0"
    one, two = iio.imread(single.parent / "t2v" / "video.mp4"), iio.imread(out / "t2v" / "video.mp4")
    assert one.shape == two.shape and np.abs(one.astype(int) - two.astype(int)).max() <= 2
    assert sorted(p.name for p in (out / "t2v").iterdir()) == sorted(p.name for p in (single.parent / "t2v").iterdir())


def test_generate_reasons_once_on_rank_0_and_tunes_once(launched):
    _, _, out, server = launched
    assert (out / "vchain-code-0").read_text() == (out / "vchain-code-1").read_text() == "0"
    manifest = json.loads((out / "vchain" / "manifest.json").read_text())
    assert manifest["usage"]["requests"] == len(server.requests) > 0  # no request from rank 1
    assert manifest["stages"]["tuning"]["status"] == manifest["stages"]["sampling"]["status"] == "done"
    follower = (out / "log-1.txt").read_text()
    assert follower.count("Loading the adapter tuned earlier") == 2  # the sample's and the generate's
    assert (out / "vchain" / "video.mp4").is_file() and (out / "vchain" / "lora").is_dir()


def test_rank_0_alone_writes_the_folder_and_the_other_loads_its_adapter(launched):
    single, parallel, out, _ = launched
    files = sorted(str(p.relative_to(parallel)) for p in parallel.rglob("*"))
    assert files == sorted(str(p.relative_to(single)) for p in single.rglob("*"))
    assert (out / "code-0").read_text() == (out / "code-1").read_text() == "0"
    follower = (out / "log-1.txt").read_text()
    assert "Loading the adapter tuned earlier" in follower and str(parallel) not in follower


def test_a_suite_with_cfg_samples_every_run_on_both_ranks_and_rank_0_alone_writes(launched):
    single, _, out, _ = launched
    one, two = single.parent / "suite", out / "suite"
    assert (out / "suite-code-0").read_text() == (out / "suite-code-1").read_text() == "0"
    assert sorted(str(p.relative_to(two)) for p in two.rglob("*")) == sorted(
        str(p.relative_to(one)) for p in one.rglob("*")
    )
    runs = sorted(p.parent.relative_to(two) for p in two.rglob("video.mp4"))
    assert [run.name for run in runs] == ["vchain", "vchain"]
    for run in runs:
        a, b = iio.imread(one / run / "video.mp4"), iio.imread(two / run / "video.mp4")
        assert a.shape == b.shape == (5, 32, 32, 3) and np.abs(a.astype(int) - b.astype(int)).max() <= 2
        manifest = json.loads((two / run / "manifest.json").read_text())
        assert manifest["stages"]["sampling"]["inputs"]["generator"]["parallel"] == "cfg"
    # Rank 0 alone asked the stand-in: as many requests as one process, every one in a run's manifest.
    parallel_asked, single_asked = json.loads((out / "suite-requests.json").read_text())
    recorded = sum(json.loads((two / run / "manifest.json").read_text())["usage"]["requests"] for run in runs)
    assert parallel_asked == single_asked == recorded > 0
    assert (out / "suite-summaries-0").read_text() == "1" and not (out / "suite-summaries-1").exists()
    rows = (two / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",done," in row for row in rows[1:])
    follower = (out / "suite-log-1.txt").read_text()
    assert follower.count("Loading the adapter tuned earlier") == 2 and "failed" not in follower


def test_when_rank_0_fails_before_sampling_the_other_rank_stops_naming_its_error(launched):
    _, _, out, _ = launched
    (main_code, main_err), (code, err) = (json.loads((out / f"refused-{r}.json").read_text()) for r in (0, 1))
    assert main_code == code == 1 and "the prompt was refused" in main_err
    assert "rank 0 failed on" in err and "before sampling" in err and "the prompt was refused" in err


def test_a_suite_run_that_fails_before_sampling_is_reported_by_rank_0_and_both_ranks_go_on(launched):
    _, _, out, _ = launched
    # Rank 0 reports the failed run and exits 1; rank 1 skipped it with rank 0 and sampled the next.
    assert [(out / f"failing-code-{rank}").read_text() for rank in (0, 1)] == ["1", "0"]
    rows = list(csv.DictReader((out / "failing" / "summary.csv").read_text().splitlines()))
    assert [row["status"] for row in rows] == ["failed", "done"]
    assert (out / "failing" / rows[1]["run"] / "video.mp4").is_file()
    assert "the prompt was refused" in (out / "suite-log-0.txt").read_text()
    assert "failed" not in (out / "suite-log-1.txt").read_text()


def test_cfg_splits_both_experts_of_wan2_2_through_the_library(launched):
    from vchain.backends.wan import WanVideoGenerator

    _, _, out, _ = launched
    reference = WanVideoGenerator(tiny_wan_pipeline(two_experts=True), **EXPERTS).sample(
        PROMPT, seed=1, output_type="np"
    )
    split = np.load(out / "experts.npy")
    assert split.shape == reference.shape and np.allclose(split, reference, atol=1e-5)
    assert (out / "describe-1.json").read_text() == '"cfg"'


def test_a_bad_launch_is_refused_before_torch_is_imported(tiny_wan, tmp_path):
    runs = {
        "guidance": ["generate", PROMPT, "-o", f"{tmp_path}/g", "--variant", "t2v", "--model", tiny_wan],
        "alone": ["generate", PROMPT, "-o", f"{tmp_path}/a", "--variant", "t2v", "--model", tiny_wan],
        "mode": ["sample", "-o", f"{tmp_path}/s", "--parallel", "tensor"],
        "demo": ["suite", "-o", f"{tmp_path}/demo", "--demo", "--parallel", "cfg"],
        "variants": ["suite", "-o", f"{tmp_path}/suite", "--variants", "t2v", "no-sparse-tuning", "--model", tiny_wan],
    }
    runs["guidance"] += ["--parallel", "cfg", "--guidance", "1"]
    runs["alone"] += ["--parallel", "cfg"]
    runs["variants"] += ["--parallel", "cfg"]
    script = (
        "import contextlib, io, json, sys\nfrom vchain.cli import main\nruns = json.loads(sys.argv[1])\nseen = {}\n"
        "for name, argv in runs.items():\n    err = io.StringIO()\n    with contextlib.redirect_stderr(err):\n"
        "        try:\n            code = main(argv)\n        except SystemExit as e:\n            code = e.code\n"
        "    seen[name] = [code, err.getvalue()]\n"
        "seen['heavy'] = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print(json.dumps(seen))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(runs)], capture_output=True, text=True, env=_env(), timeout=120
    )
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen.pop("heavy") == []
    assert all(code == 2 for code, _ in seen.values()), seen
    assert "--parallel cfg" in seen["guidance"][1] and "guidance is 1.0" in seen["guidance"][1]
    assert "started alone" in seen["alone"][1] and "torchrun --nproc_per_node 2" in seen["alone"][1]
    assert "invalid choice: 'tensor'" in seen["mode"][1]
    assert "--parallel cfg does not go with --demo" in seen["demo"][1]
    assert "--parallel cfg does not apply to --variants no-sparse-tuning" in seen["variants"][1]


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
def test_context_parallelism_on_a_cpu_is_one_error_naming_cuda_and_nccl(mode, tiny_wan, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    generate = ["generate", PROMPT, "-o", str(tmp_path / "run"), "--variant", "t2v", "--model", tiny_wan]
    nowhere = ["--base-url", "http://127.0.0.1:9/v1", "--image-base-url", "http://127.0.0.1:9/v1"]  # never reached
    suite = ["suite", "-o", str(tmp_path / "suite"), "--cases", "4", "--model", tiny_wan, *nowhere]
    for argv in (generate, suite):
        assert main([*argv, "--parallel", mode]) == 2
        err = capsys.readouterr().err
        assert f"--parallel {mode}" in err and "CUDA" in err and "NCCL" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "suite").exists()


def test_context_parallelism_needs_a_transformer_diffusers_can_split():
    from vchain.errors import ConfigurationError
    from vchain.parallel import check_sampling

    with pytest.raises(
        ConfigurationError, match=r"--parallel ring is diffusers' context parallelism.*WanVACEPipeline"
    ):
        check_sampling("ring", guidance_scale=5.0, pipeline_class="WanVACEPipeline", argument="--parallel")
    check_sampling("ulysses", guidance_scale=1.0, pipeline_class="WanPipeline")  # no guidance needed


def test_the_library_refuses_a_parallel_generator_without_a_process_group_or_a_second_branch():
    from vchain.backends.wan import WanVideoGenerator
    from vchain.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"parallel='cfg' needs torch\.distributed's process group"):
        WanVideoGenerator(tiny_wan_pipeline(), parallel="cfg", **EXPERTS)
    with pytest.raises(ConfigurationError, match="parallel must be None or one of"):
        WanVideoGenerator(tiny_wan_pipeline(), parallel="tensor", **EXPERTS)
    with pytest.raises(ConfigurationError, match=r"parallel='cfg' splits .* the guidance is 1\.0"):
        WanVideoGenerator(tiny_wan_pipeline(), parallel="cfg", **{**EXPERTS, "guidance_scale": 1.0})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _suite(root: Path, model: str, url: str) -> list[str]:
    """Two cases of the paper's set, the full method, reasoning on the stand-in at `url`."""
    urls = ["--base-url", url, "--image-base-url", url]
    return ["suite", "-o", str(root), "--cases", "4,13", "--variants", "vchain", "--model", model, *TINY, *urls]


def _rank(rank: int, port: int, out: Path, model: str, run: str, url: str, suite_url: str, failing: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    try:
        _worker(out, model, run, url, suite_url, failing)
    except BaseException:
        (out / "error.txt").write_text(traceback.format_exc())
        raise


def _worker(out: Path, model: str, run: str, url: str, suite_url: str, failing: str) -> None:
    """One rank of the launch: the library on the two-expert tiny Wan, then `vchain sample`, `vchain generate`
    (t2v, and vchain reasoning on the local OpenAI stand-in at `url`) and `vchain suite` (on `suite_url`, and on
    `failing`, which refuses the reasoning of a generate and of the suite's first run) with `--parallel cfg`."""
    import logging

    import torch.distributed as dist

    from vchain import suite
    from vchain.backends.wan import WanVideoGenerator
    from vchain.parallel import init_process_group

    init_process_group()
    rank = dist.get_rank()
    generator = WanVideoGenerator(tiny_wan_pipeline(two_experts=True), parallel="cfg", **EXPERTS)
    frames = generator.sample(PROMPT, seed=1, output_type="np")
    (out / f"describe-{rank}.json").write_text(json.dumps(generator.describe()["parallel"]))
    if rank == 0:
        np.save(out / "experts.npy", frames)
    log = logging.FileHandler(out / f"log-{rank}.txt")
    logging.getLogger("vchain").addHandler(log)
    code = main(["sample", "-o", run, "--model", model, *TINY, "--parallel", "cfg"])
    (out / f"code-{rank}").write_text(str(code))
    t2v = [
        "generate",
        PROMPT,
        "-o",
        str(out / "t2v"),
        "--variant",
        "t2v",
        "--model",
        model,
        *SIZE,
        "--parallel",
        "cfg",
    ]
    (out / f"t2v-code-{rank}").write_text(str(main(t2v)))
    urls = ["--base-url", url, "--image-base-url", url]
    vchain = ["generate", PROMPT, "-o", str(out / "vchain"), "--model", model, *TINY, *urls, "--parallel", "cfg"]
    (out / f"vchain-code-{rank}").write_text(str(main(vchain)))
    logging.getLogger("vchain").removeHandler(log)
    logging.getLogger("vchain").addHandler(logging.FileHandler(out / f"suite-log-{rank}.txt"))
    write_summary = suite.write_summary

    def counted(*args, **kwargs):
        written = out / f"suite-summaries-{rank}"
        written.write_text(str(int(written.read_text()) + 1 if written.exists() else 1))
        return write_summary(*args, **kwargs)

    suite.write_summary = counted
    code = main([*_suite(out / "suite", model, suite_url), "--parallel", "cfg"])
    (out / f"suite-code-{rank}").write_text(str(code))
    suite.write_summary = write_summary
    urls = ["--base-url", failing, "--image-base-url", failing]
    refused = ["generate", PROMPT, "-o", str(out / "refused"), "--model", model, *TINY, *urls, "--parallel", "cfg"]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(refused)
    (out / f"refused-{rank}.json").write_text(json.dumps([code, err.getvalue()]))
    broken = _suite(out / "failing", model, failing)
    broken[broken.index("vchain")] = "no-visual-thought"
    (out / f"failing-code-{rank}").write_text(str(main([*broken, "--parallel", "cfg"])))
    dist.destroy_process_group()
