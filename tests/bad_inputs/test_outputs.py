"""Class 14, where results go: no output may replace a file of a run folder, a device, a FIFO or a link; a
suite whose runs failed says so (exit 1, the runs named in its summary); misuse of `run_suite` is a clear
error before any work."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.bad_inputs import assert_names, assert_usage_error, toy_pipeline
from vchain.errors import ConfigurationError
from vchain.testing import ScriptedReasoner


def _outputs(run, tmp_path):
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    link = tmp_path / "link.html"
    os.symlink(tmp_path / "elsewhere.html", link)
    return [
        (run / "manifest.json", "inside the run folder"),
        (run / "video.mp4", "inside the run folder"),
        (run / "lora" / "report.html", "inside the run folder"),
        (run / "report.html", "inside the run folder"),
        (fifo, "not a regular file"),
        ("/dev/null", "not a regular file"),
        (link, "symlink"),
        (tmp_path, "folder"),
    ]


def test_a_report_never_replaces_a_run_file_a_device_a_fifo_or_a_link(finished_run, tmp_path, cli):
    from vchain.report import write_report

    manifest = (finished_run / "manifest.json").read_bytes()
    for output, reason in _outputs(finished_run, tmp_path):
        with pytest.raises(ConfigurationError) as error:
            write_report(finished_run, output)
        assert_names(str(error.value), "output_html", str(output), reason)
        assert_usage_error(cli("report", finished_run, "-o", output), str(output), reason)
    assert (finished_run / "manifest.json").read_bytes() == manifest
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert not (tmp_path / "elsewhere.html").exists()
    assert write_report(finished_run, tmp_path / "report.html").is_file()


def test_the_report_shows_every_run_the_summary_counts(finished_run, tmp_path):
    from vchain.report import write_report

    for seed in ("seed-0", "seed-1"):
        shutil.copytree(finished_run, tmp_path / "tree" / seed / "vchain")
    html = write_report(tmp_path / "tree", tmp_path / "report.html").read_text()
    assert html.count('class="sync-group"') == 2 and "seed-1/vchain" in html  # a row each, the copy named
    assert html.count("seed-0/vchain/video.mp4") == 1 and html.count("seed-1/vchain/video.mp4") == 1


class Failing(ScriptedReasoner):
    def plan(self, prompt):
        raise RuntimeError("the planner is down")


def test_a_suite_whose_runs_failed_exits_1_and_its_summary_names_them(monkeypatch, tmp_path, cli):
    monkeypatch.setattr("vchain.testing.demo_pipeline", lambda seed=0, **_: toy_pipeline(reasoner=Failing(["x"])))
    result = cli("suite", "-o", tmp_path / "suite", "--demo", "--cases", "0,13")
    assert result.code == 1, result.err[-2000:]
    assert "2 of 2 run(s) did not finish" in result.err and "00_" in result.err and "13_" in result.err
    summary = (tmp_path / "suite" / "summary.md").read_text()
    assert "Not finished (2 of 2)" in summary and "(failed)" in summary


MISUSES = [
    pytest.param({"make_pipeline": "toy"}, ["make_pipeline", "'toy'"], id="not-callable"),
    pytest.param({"root": "{file}"}, ["output_dir", "is a file"], id="root-a-file"),
    pytest.param({"variants": "vchain"}, ["variants must be a list", "'vchain'"], id="variants-a-string"),
    pytest.param({"cases": 3}, ["cases must be a list", "3"], id="cases-an-int"),
    pytest.param({"prompts": ["An egg.", ""]}, ["prompts", "non-empty strings"], id="a-blank-prompt"),
    pytest.param({"seed": -1}, ["seed", "-1"], id="a-negative-seed"),
    pytest.param({"seed": 2**64}, ["seed", str(2**64)], id="a-seed-beyond-64-bits"),
]


@pytest.mark.parametrize(("change", "fragments"), MISUSES)
def test_run_suite_misuse_is_a_clear_error_before_any_work(change, fragments, tmp_path):
    from vchain.suite import run_suite

    made = []
    (tmp_path / "afile").write_text("x")
    arguments = {"make_pipeline": lambda: made.append(1) or toy_pipeline(), "root": tmp_path / "suite"}
    arguments.update(
        {k: v.format(file=tmp_path / "afile") if isinstance(v, str) and k == "root" else v for k, v in change.items()}
    )
    with pytest.raises(ConfigurationError) as error:
        run_suite(**arguments)
    assert_names(str(error.value), *fragments)
    assert made == [] and not (tmp_path / "suite").exists()
