"""Class 10, docs that lie: the claims of README.md and docs/ are read and run. Flags and defaults exist as
written, module tables name what the modules hold, the code imports, the exit codes and the resume
semantics are what the CLI page says, the login command is one that exists."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bad_inputs import (
    NO_WORK,
    PROMPT,
    assert_stage_failure,
    assert_usage_error,
    read_manifest,
    server_flags,
    toy_pipeline,
    work_done,
)
from vchain.testing import Fault

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Flags of other programs the pages show: accelerate and torchrun, and the benchmark scripts'.
LAUNCHER_FLAGS = {
    "--multi_gpu",
    "--num_processes",
    "--nproc_per_node",
    "--num_machines",
    "--mixed_precision",
    "--dynamo_backend",
}
SCRIPT_FLAGS = {f for p in (ROOT / "benchmarks").glob("*.py") for f in re.findall(r'"(--[\w-]+)"', p.read_text())}


def _vchain_options() -> dict[str, argparse.Action]:
    """Every option of every `vchain` command, by flag."""
    from vchain.cli import build_parser

    options: dict[str, argparse.Action] = {}
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for sub in [parser, *commands.choices.values()]:
        for action in sub._actions:
            for flag in action.option_strings:
                options.setdefault(flag, action)
    return options


def _code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


@pytest.mark.parametrize("page", [pytest.param(p, id=p.name) for p in PAGES])
def test_every_vchain_flag_a_page_names_exists(page):
    options = _vchain_options()
    named = {flag for span in _code_spans(page.read_text()) for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", span)}
    missing = sorted(named - set(options) - LAUNCHER_FLAGS - SCRIPT_FLAGS)
    assert not missing, f"{page.name} names flags no vchain command has: {missing}"


def _default(action: argparse.Action) -> str | None:
    if action.default not in (None, argparse.SUPPRESS):
        return str(action.default)
    match = re.search(r"\(default: ([^)]+)\)", action.help or "")
    return match.group(1) if match else None


def test_the_defaults_the_cli_page_states_are_the_defaults():
    options = _vchain_options()
    section = (ROOT / "docs" / "cli.md").read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    bullets, inside = [], False
    for line in section.splitlines():  # the bullet list of flags, not the examples after it
        inside = line.startswith("- ") or (inside and line.startswith("  "))
        bullets += [line] if inside else []
    stated = []
    for span in _code_spans("\n".join(bullets)):
        tokens = span.split()
        for flag, value in itertools.pairwise(tokens):
            if (
                flag in options
                and re.fullmatch(r"[\w.+-]+", value)
                and not value.startswith("-")
                and not value.isupper()
            ):
                stated.append((flag, value))
    assert len(stated) >= 8, stated
    wrong = []
    for flag, value in stated:
        actual = _default(options[flag])
        if actual is None or not (actual == value or _numbers_equal(actual, value)):
            wrong.append((flag, value, actual))
    assert not wrong, f"docs/cli.md states defaults the CLI does not have: {wrong}"


def _numbers_equal(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def _module_rows(page: Path):
    for line in page.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`vchain/"):
            yield re.findall(r"`(vchain/[\w/]+(?:\.py)?)`", cells[0]), re.findall(r"`([A-Z]\w+)`", cells[1])


def test_the_architecture_table_names_what_the_modules_hold():
    problems = []
    for paths, names in _module_rows(ROOT / "docs" / "architecture.md"):
        modules = []
        for path in paths:
            if not (ROOT / "src" / path).exists():
                problems.append(f"{path} does not exist")
                continue
            modules.append(importlib.import_module(path.removesuffix(".py").rstrip("/").replace("/", ".")))
        for name in names:
            if modules and not any(hasattr(m, name) for m in modules):
                problems.append(f"{name} is not in {paths}")
    assert not problems, problems


def _python_imports(page: Path) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    return [
        line
        for block in blocks
        for line in block.splitlines()
        if re.match(r"(from vchain\S* import|import vchain)", line)
    ]


@pytest.mark.parametrize("page", [pytest.param(p, id=p.name) for p in PAGES if _python_imports(p)])
def test_the_code_on_a_page_imports(page):
    for line in _python_imports(page):
        exec(line, {})


def test_the_login_command_the_messages_give_exists_and_the_old_one_is_gone():
    from vchain._hub import LOGIN

    assert "hf auth login" in LOGIN
    hf = shutil.which("hf", path=str(Path(sys.executable).parent))
    assert hf is not None, "the hf command is not installed beside this Python"
    assert subprocess.run([hf, "auth", "login", "--help"], capture_output=True, timeout=60).returncode == 0
    texts = [*PAGES, *sorted((ROOT / "src" / "vchain").rglob("*.py"))]
    assert not [str(p.relative_to(ROOT)) for p in texts if "huggingface-cli" in p.read_text()]


def test_the_benchmark_page_commands_take_the_flags_and_presets_it_shows(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as `python benchmarks/bench_wan.py` has it
    monkeypatch.setitem(sys.modules, "bench_wan", None)
    spec = importlib.util.spec_from_file_location("bench_wan", ROOT / "benchmarks" / "bench_wan.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_wan"] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    help_text = capsys.readouterr().out
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    commands = re.findall(r"^python benchmarks/bench_wan\.py (.*?)(?:\s+#.*)?$", page, flags=re.M)
    assert commands
    for command in commands:
        tokens = command.split()
        for flag in (t for t in tokens if t.startswith("--")):
            assert flag in help_text, f"{flag} of {command!r}"
        for preset in (tokens[i + 1] for i, t in enumerate(tokens) if t == "--preset"):
            assert preset in bench.PRESETS, preset
    ci = (ROOT / ".ci" / "run").read_text()
    if "CI runs" in page:
        assert "bench_wan.py --preset cpu-tiny" in ci


# ------------------------------------------------------------------------------- what the CLI page promises


def test_exit_code_1_a_stage_failed_and_what_it_produced_is_kept(cli, faulty_server, no_backoff, tmp_path):
    faulty_server.queue("edit", *[Fault.http(503)] * 3)
    folder = tmp_path / "run"
    result = cli("think", PROMPT, "-o", folder, *server_flags(faulty_server))
    assert_stage_failure(result, "reasoning/edit")
    sent = len(faulty_server.requests)
    assert read_manifest(folder)["stages"]["reasoning"]["status"] == "failed" and (folder / "chain.json").is_file()
    assert cli("think", PROMPT, "-o", folder, *server_flags(faulty_server)).code == 0  # "re-run to resume"
    assert len(faulty_server.requests) - sent == 3  # edit 1, perception 2, edit 2: nothing asked twice


def test_exit_code_2_bad_arguments_and_nothing_was_run(cli, faulty_server, tmp_path):
    result = cli("think", PROMPT, "-o", tmp_path / "run", *server_flags(faulty_server), "--max-keyframes", "1")
    assert_usage_error(result, "max_keyframes")
    assert faulty_server.requests == [] and not (tmp_path / "run").exists()


def test_exit_code_130_interrupted_and_a_rerun_resumes(cli, faulty_server, monkeypatch, tmp_path):
    from vchain.backends.openai import OpenAIImageBackend

    real, hits = OpenAIImageBackend.edit, []

    def interrupted(self, *args, **kwargs):
        hits.append(1)
        if len(hits) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OpenAIImageBackend, "edit", interrupted)
    folder = tmp_path / "run"
    result = cli("think", PROMPT, "-o", folder, *server_flags(faulty_server))
    assert result.code == 130 and "re-run" in result.err and "Traceback" not in result.err
    sent = len(faulty_server.requests)
    assert cli("think", PROMPT, "-o", folder, *server_flags(faulty_server)).code == 0
    assert len(faulty_server.requests) - sent == 1  # only the interrupted edit


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(["demo", "-o", "{file}"], "is a file", id="a-folder-error"),
        pytest.param(["generate", PROMPT, "-o", "{tmp}/run", "--frames", "80"], "num_frames", id="a-settings-error"),
        pytest.param(["generate", PROMPT, "-o", "{tmp}/run", "--frames", "many"], "--frames", id="a-type-error"),
        pytest.param(["generate", PROMPT, "-o", "{tmp}/run", "--varaint", "t2v"], "--varaint", id="a-misspelt-flag"),
        pytest.param(["suite", "-o", "{tmp}/suite", "--variants", "t2"], "--variants", id="an-unknown-choice"),
    ],
)
def test_errors_are_one_or_two_lines_on_stderr(cli, tmp_path, args, named):
    (tmp_path / "afile").write_text("x")
    assert_usage_error(cli(*(a.format(file=tmp_path / "afile", tmp=tmp_path) for a in args)), named)


def test_C03_v_before_or_after_the_command_adds_the_traceback(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    for args in (["demo", "-o", tmp_path / "afile", "-v"], ["-v", "demo", "-o", tmp_path / "afile"]):
        assert "Traceback" in cli(*args).err


def test_everything_named_as_checked_before_a_model_loads_is(cli, no_model_load, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flags in (["--guidance", "nan"], ["--frames", "80"], ["--device", "cuda"], ["--model", "not an id"]):
        result = cli("generate", PROMPT, "-o", tmp_path / "run", "--variant", "t2v", *flags)
        assert result.code == 2 and not (tmp_path / "run").exists(), (flags, result.err)


def test_running_a_command_again_reuses_every_finished_stage(cli, monkeypatch, tmp_path):
    made = []
    monkeypatch.setattr(
        "vchain.testing.demo_pipeline", lambda seed=0, **_: made.append(toy_pipeline(seed)) or made[-1]
    )
    assert cli("demo", "-o", tmp_path / "run").code == 0
    record = (tmp_path / "run" / "manifest.json").read_bytes()
    assert cli("demo", "-o", tmp_path / "run").code == 0
    assert work_done(made[-1]) == NO_WORK and (tmp_path / "run" / "manifest.json").read_bytes() == record


def test_sample_with_a_new_seed_reuses_the_tuned_adapter_and_tune_with_a_new_rank_tunes_again(cli, wan_run):
    lora = (wan_run / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    video = (wan_run / "video.mp4").read_bytes()
    assert cli("sample", "-o", wan_run, "--seed", "7").code == 0
    assert (wan_run / "lora" / "pytorch_lora_weights.safetensors").read_bytes() == lora
    assert (wan_run / "video.mp4").read_bytes() != video
    assert read_manifest(wan_run)["stages"]["sampling"]["seed"] == 7
    assert cli("tune", "-o", wan_run, "--rank", "4").code == 0
    assert read_manifest(wan_run)["stages"]["tuning"]["inputs"]["tuner"]["config"]["rank"] == 4
