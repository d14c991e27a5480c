"""Class 3, paths: an output folder that cannot be one (empty, a file, unreachable, unwritable, not a path)
is refused naming the path and the OS reason before any work; links inside a run folder are refused
without touching what they point to; a finished run in a read-only folder is reported, not rewritten."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bad_inputs import (
    NO_WORK,
    PROMPT,
    assert_names,
    assert_usage_error,
    server_flags,
    toy_pipeline,
    work_done,
)
from vchain.errors import ConfigurationError
from vchain.run import RunDirectory

ROOT = Path(__file__).parents[2]


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    return path


# (make the output_dir from tmp_path, fragments the message names)
BAD_FOLDERS = [
    pytest.param(lambda t: "", ["output_dir", "''"], id="an-empty-string"),
    pytest.param(lambda t: "   ", ["output_dir", "'   '"], id="blanks"),
    pytest.param(lambda t: 123, ["output_dir", "123"], id="O05-a-number"),
    pytest.param(lambda t: b"runs/egg", ["output_dir", "b'runs/egg'"], id="bytes"),
    pytest.param(lambda t: ["runs/egg"], ["output_dir", "['runs/egg']"], id="a-list"),
    pytest.param(_file, ["output_dir", "notes.txt", "is a file"], id="C14-a-regular-file"),
    pytest.param(lambda t: _file(t) / "run", ["output_dir", "notes.txt", "cannot be created"], id="below-a-file"),
    pytest.param(
        lambda t: "/proc/vchain_x",
        ["output_dir", "/proc/vchain_x", "cannot be created"],
        id="O04-an-unreachable-place",
    ),
    pytest.param(lambda t: str(t / "run\0x"), ["output_dir", "null"], id="a-nul-byte"),
    pytest.param(lambda t: t / ("x" * 300), ["output_dir", "xxxx", "too long"], id="a-name-too-long"),
]


@pytest.mark.parametrize(("make", "fragments"), BAD_FOLDERS)
def test_a_bad_output_folder_is_refused_before_any_work(make, fragments, tmp_path):
    pipe = toy_pipeline()
    folder = make(tmp_path)
    with pytest.raises(ConfigurationError) as error:
        pipe.think(PROMPT, output_dir=folder)
    assert_names(str(error.value), *fragments)
    assert work_done(pipe) == NO_WORK
    assert not list(tmp_path.rglob("manifest.json"))


def test_a_dangling_link_as_the_output_folder_is_named(tmp_path):
    (tmp_path / "run").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigurationError) as error:
        toy_pipeline().think(PROMPT, output_dir=tmp_path / "run")
    assert_names(str(error.value), "output_dir", "run")


# ----------------------------------------------------------------------------- links inside a run folder


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    return victim


LINKS = [
    pytest.param(".lock", False, id="the-lock-file"),
    pytest.param("manifest.json", False, id="the-manifest"),
    pytest.param("chain.json", False, id="the-chain"),
    pytest.param("an_egg_is_dropped_onto_a_pillow_1.png", False, id="a-keyframe"),
    pytest.param("video.mp4", False, id="the-video"),
    pytest.param("lora", True, id="the-adapter-folder"),
    pytest.param("lora/pytorch_lora_weights.safetensors", False, id="a-file-inside-lora"),
]


@pytest.mark.parametrize(("name", "to_folder"), LINKS)
def test_a_link_inside_a_run_folder_is_refused_and_its_target_left_alone(finished_run, tmp_path, name, to_folder):
    victim = _victim(tmp_path)
    target = victim.parent if to_folder else victim
    link = finished_run / name
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)
    pipe = toy_pipeline()
    with pytest.raises(ConfigurationError) as error:
        pipe(PROMPT, finished_run, seed=1)
    assert_names(str(error.value), "symlink", name.split("/")[-1])
    assert victim.read_text() == "precious" and sorted(p.name for p in victim.parent.iterdir()) == ["precious.txt"]
    assert work_done(pipe) == NO_WORK


def test_a_lock_file_that_is_a_folder_is_named(tmp_path):
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    with pytest.raises(ConfigurationError) as error:
        RunDirectory(tmp_path / "run", PROMPT)
    assert_names(str(error.value), ".lock")


# ---------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(["demo", "-o", "{file}"], ["notes.txt", "is a file"], id="C14-demo-into-a-file"),
        pytest.param(["demo", "-o", ""], ["output_dir", "''"], id="C16-demo-into-an-empty-path"),
        pytest.param(["demo", "-o", "  "], ["output_dir", "'  '"], id="demo-into-blanks"),
        pytest.param(["think", PROMPT, "-o", "{file}/run"], ["notes.txt", "not a folder"], id="think-below-a-file"),
        pytest.param(
            ["think", PROMPT, "-o", "/proc/vchain_x"],
            ["/proc/vchain_x", "cannot be created"],
            id="O04-think-into-proc",
        ),
        pytest.param(["think", PROMPT, "-o", "{tmp}/run\0x"], ["output_dir", "null"], id="think-a-nul-byte"),
        pytest.param(
            ["generate", PROMPT, "-o", "{file}", "--variant", "t2v"],
            ["notes.txt", "is a file"],
            id="generate-into-a-file",
        ),
        pytest.param(["suite", "-o", "{file}", "--demo"], ["notes.txt", "is a file"], id="suite-into-a-file"),
        pytest.param(["tune", "-o", "{file}"], ["notes.txt", "is a file"], id="tune-a-file"),
        pytest.param(["sample", "-o", "{tmp}/nothing"], ["nothing", "no run"], id="sample-a-missing-folder"),
        pytest.param(["demo", "-o", "{tmp}"], ["not empty", "holds no vchain run"], id="demo-into-a-folder-of-mine"),
    ],
)
def test_cli_refuses_a_bad_output_folder_before_any_work(cli, no_model_load, monkeypatch, tmp_path, args, fragments):
    monkeypatch.setattr("vchain.testing.demo_pipeline", lambda *a, **k: pytest.fail("the demo models were built"))
    file = _file(tmp_path)
    result = cli(*(a.format(file=file, tmp=tmp_path) for a in args))
    assert_usage_error(result, *fragments)
    assert not list(tmp_path.rglob("manifest.json"))


def test_C38_generate_into_a_folder_of_another_prompt_is_refused_before_the_model_loads(
    cli, no_model_load, finished_run
):
    record = (finished_run / "manifest.json").read_bytes()
    result = cli("generate", "A ball falls.", "-o", finished_run, "--variant", "t2v")
    assert_usage_error(result, "holds a run of prompt", PROMPT, "A ball falls.")
    assert (finished_run / "manifest.json").read_bytes() == record


def test_generate_another_variant_into_a_finished_folder_is_refused_before_the_model_loads(
    cli, no_model_load, finished_run
):
    result = cli("generate", PROMPT, "-o", finished_run, "--variant", "t2v")
    assert_usage_error(result, "variant", "'vchain'", "'t2v'")


def test_think_into_a_folder_of_another_prompt_sends_no_request(cli, faulty_server, finished_run):
    result = cli("think", "A ball falls.", "-o", finished_run, *server_flags(faulty_server))
    assert_usage_error(result, "holds a run of prompt")
    assert faulty_server.requests == []


# ------------------------------------------------------------------------------------ permissions, for real

# Run as another process without the right to override file permissions (root has it; a user has not).
UNPRIVILEGED = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]
CLI_SCRIPT = """
import contextlib, io, json, logging, sys
import vchain.testing
from tests.bad_inputs import toy_demo_pipeline
vchain.testing.demo_pipeline = toy_demo_pipeline
from vchain.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    logging.getLogger().handlers.clear()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
"""


def _without_write_permission(*argvs: list[str]) -> list[dict]:
    """Each `vchain` command line in one process that may not write where the permissions say no."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        prefix = UNPRIVILEGED
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run(
        [*prefix, sys.executable, "-c", CLI_SCRIPT, json.dumps([[str(a) for a in argv] for argv in argvs])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def unwritable(_finished_run, tmp_path_factory):
    """Three commands run by one process without the right to write: E01 into a 0555 folder, then E02, a
    finished read-only run, as it is and with another seed. Yields the results and the folders."""
    root = tmp_path_factory.mktemp("unwritable")
    parent, finished = root / "locked", Path(shutil.copytree(_finished_run, root / "finished"))
    parent.mkdir(mode=0o555)
    before = _tree(finished)
    for path in (finished, *finished.rglob("*")):
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        results = _without_write_permission(
            ["think", PROMPT, "-o", parent / "run"],
            ["demo", "-o", finished],
            ["demo", "-o", finished, "--seed", "7"],
        )
    finally:
        for path in (finished, *finished.rglob("*"), parent):
            path.chmod(0o755 if path.is_dir() else 0o644)
    return dict(zip(("think", "demo", "seed7"), results, strict=True)), parent, finished, before


def _assert_one_usage_error(result: dict, *fragments: str) -> None:
    lines = [line for line in result["err"].splitlines() if line.strip()]
    assert result["code"] == 2 and "Traceback" not in result["err"] and 1 <= len(lines) <= 2, result
    assert_names(" ".join(lines), *fragments)


def test_E01_a_folder_that_cannot_be_created_names_the_path_and_the_reason(unwritable):
    results, parent, _, _ = unwritable
    _assert_one_usage_error(results["think"], str(parent / "run"), "not writable")
    assert not (parent / "run").exists()


def test_E02_a_finished_run_in_a_read_only_folder_is_reported_not_rewritten(unwritable):
    results, _, finished, before = unwritable
    assert results["demo"]["code"] == 0 and "Traceback" not in results["demo"]["err"], results["demo"]
    assert "frames" in results["demo"]["out"] and _tree(finished) == before


def test_E02_work_left_in_a_read_only_folder_is_a_usage_error_and_nothing_changes(unwritable):
    results, _, finished, before = unwritable
    _assert_one_usage_error(results["seed7"], str(finished), "not writable")
    assert _tree(finished) == before
