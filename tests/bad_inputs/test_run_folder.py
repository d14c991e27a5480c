"""Class 11, a run folder trusts nothing it reads: every path a manifest records stays inside the folder,
links and special files are never followed, and judging takes the same locks as the other commands."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.bad_inputs import NO_WORK, PROMPT, assert_names, assert_usage_error, toy_pipeline, work_done
from vchain import _io
from vchain.errors import ConfigurationError, VChainError
from vchain.interfaces import Judge
from vchain.run import RunDirectory, hold

# (stage, a recorded output name that points outside the folder)
ESCAPES = [
    pytest.param("tuning", "../elsewhere/holiday_0.png", id="parent"),
    pytest.param("sampling", "{outside}/holiday_0.png", id="absolute"),
    pytest.param("tuning", "lora/../../elsewhere/holiday_0.png", id="lora-then-parents"),
    pytest.param("reasoning", "../elsewhere/holiday_0.png", id="reasoning-parent"),
    pytest.param("sampling", "./../elsewhere/holiday_0.png", id="dot-parent"),
    pytest.param("sampling", "lora//x", id="empty-part"),
    pytest.param("sampling", "..\\elsewhere\\holiday_0.png", id="backslashes"),
    pytest.param("tuning", "C:/elsewhere/holiday_0.png", id="a-drive"),
]


@pytest.fixture
def outside(tmp_path) -> Path:
    """A file of the user's beside the run folder, which nothing may touch."""
    path = tmp_path / "elsewhere" / "holiday_0.png"
    path.parent.mkdir()
    path.write_bytes(b"my holiday")
    return path


def _plant(folder: Path, stage: str, name: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["stages"][stage]["outputs"][name] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("stage", "name"), ESCAPES)
def test_a_manifest_naming_a_file_outside_the_folder_is_refused_and_nothing_is_touched(
    finished_run, outside, stage, name, cli, toy_demo
):
    name = name.format(outside=outside.parent)
    _plant(finished_run, stage, name)
    before = sorted(p.name for p in finished_run.iterdir())
    pipe = toy_pipeline()
    with pytest.raises(ConfigurationError) as error:
        pipe(PROMPT, finished_run, seed=7)
    assert_names(str(error.value), "manifest.json", repr(name)[1:12], "inside")
    assert work_done(pipe) == NO_WORK
    assert_usage_error(cli("demo", "-o", finished_run, "--seed", "7"), "manifest.json", repr(name)[1:12])
    assert outside.read_bytes() == b"my holiday"
    assert sorted(p.name for p in finished_run.iterdir()) == before


def test_an_output_reached_through_a_linked_folder_is_refused(finished_run, outside):
    (finished_run / "sub").mkdir()
    os.symlink(outside.parent, finished_run / "sub" / "link")
    _plant(finished_run, "sampling", "sub/link/holiday_0.png")
    with pytest.raises(ConfigurationError) as error:
        RunDirectory(finished_run, PROMPT)
    assert_names(str(error.value), "sub/link/holiday_0.png", "symlink")
    assert outside.read_bytes() == b"my holiday"


@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero", "link-to-a-manifest-elsewhere"])
def test_a_manifest_that_is_not_a_plain_file_is_refused_without_reading_it(finished_run, tmp_path, kind):
    manifest = finished_run / "manifest.json"
    elsewhere = tmp_path / "other.json"
    shutil.move(manifest, elsewhere)
    if kind == "fifo":
        os.mkfifo(manifest)
    else:
        os.symlink("/dev/zero" if kind == "link-to-dev-zero" else elsewhere, manifest)
    with pytest.raises(VChainError) as error:
        RunDirectory(finished_run, PROMPT)
    assert "manifest.json" in str(error.value)


def test_records_over_the_size_limit_are_refused_from_their_size(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"prompt": PROMPT, "pad": "x" * 2000}))
    monkeypatch.setattr(_io, "MAX_RECORD_BYTES", 1000)
    with pytest.raises(OSError, match="over vchain's limit"):
        _io.read_regular(path, limit=_io.MAX_RECORD_BYTES)
    assert _io.regular_file_error("/dev/null") == "is not a regular file (a device, FIFO or socket)"


def test_a_chain_json_that_is_a_link_is_refused(thought_run, tmp_path):
    from vchain import ThoughtChain

    target = tmp_path / "chain-copy.json"
    shutil.move(thought_run / "chain.json", target)
    os.symlink(target, thought_run / "chain.json")
    with pytest.raises(VChainError, match="symlink"):
        ThoughtChain.load(thought_run)


# ------------------------------------------------------------------------------------------- judging


class CountingJudge(Judge):
    """A judge that gives every video 3 on every dimension and counts its calls."""

    def __init__(self):
        self.calls = 0

    def score(self, prompt, frames):
        from vchain.judging import DIMENSIONS, VideoScores

        self.calls += 1
        return VideoScores(**{d: 3 for d in DIMENSIONS}, **{f"{d}_reason": "Plain." for d in DIMENSIONS})


@pytest.fixture
def judged_tree(finished_run, tmp_path):
    """A tree holding one finished run, and a judge that counts its calls."""
    root = tmp_path / "tree"
    root.mkdir()
    shutil.move(finished_run, root / "run")
    return root, CountingJudge()


def test_a_judge_on_a_tree_another_process_holds_is_refused_before_any_request(judged_tree):
    import subprocess
    import sys

    from vchain.judging import judge_runs

    root, judge = judged_tree
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from vchain.run import hold\nwith hold({str(root)!r}):\n    input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        for _ in range(200):
            if (root / ".lock").is_file() and (root / ".lock").read_text().startswith("pid"):
                break
            __import__("time").sleep(0.05)
        with pytest.raises(ConfigurationError, match="in use by another vchain process"):
            judge_runs(root, judge)
    finally:
        holder.communicate(b"\n")
    assert judge.calls == 0


def test_a_judge_skips_a_run_another_process_writes_and_judges_the_others(judged_tree):
    from vchain.errors import StageError
    from vchain.judging import judge_runs

    root, judge = judged_tree
    shutil.copytree(root / "run", root / "busy")
    # This process's own hold stands in for another process: a second lock on the file is refused.
    from vchain.run import _FolderLock

    lock = _FolderLock(root / "busy")
    try:
        with pytest.raises(StageError, match="busy"):
            judge_runs(root, judge)
    finally:
        lock.release()
    assert (
        judge.calls == 1 and (root / "run" / "scores.json").is_file() and not (root / "busy" / "scores.json").exists()
    )


def test_a_linked_video_from_outside_the_run_is_never_sent(judged_tree, tmp_path):
    from vchain.judging import judge_runs

    root, judge = judged_tree
    shutil.copytree(root / "run", root / "linked")
    shutil.move(root / "linked" / "video.mp4", tmp_path / "secret.mp4")
    os.symlink(tmp_path / "secret.mp4", root / "linked" / "video.mp4")
    result = judge_runs(root, judge)
    assert [run.path.name for run in result.runs] == ["run"] and judge.calls == 1


def test_a_read_only_run_is_reported_before_anything_is_paid(judged_tree):
    from vchain.errors import StageError
    from vchain.judging import judge_runs

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    root, judge = judged_tree
    shutil.copytree(root / "run", root / "frozen")
    os.chmod(root / "frozen", 0o555)
    try:
        with pytest.raises(StageError, match="not writable"):
            judge_runs(root, judge)
    finally:
        os.chmod(root / "frozen", 0o755)
    assert judge.calls == 1 and (root / "judge-summary.md").is_file()


def test_hold_inside_hold_of_the_same_folder_is_one_lock(tmp_path):
    with hold(tmp_path / "run") as outer, hold(outer) as inner:
        assert inner == outer and (outer / ".lock").is_file()


# ------------------------------------------------------------------------------- the keyframe window


class Killed(BaseException):
    """Stands in for a kill: nothing catches it but the run's own bookkeeping."""


def test_a_stop_between_a_keyframes_png_and_chain_json_does_not_pay_for_the_edit_again(tmp_path, monkeypatch):
    from vchain import ThoughtChain
    from vchain import chain as chain_module

    folder = tmp_path / "run"
    write_json = chain_module._io.write_json
    commits = []

    def stop_at_the_second_keyframe(path, data):
        if Path(path).name == "chain.json":
            commits.append(path)
            if len(commits) == 3:  # plan, keyframe 0, then keyframe 1: its PNG is on disk, chain.json not yet
                raise Killed
        return write_json(path, data)

    monkeypatch.setattr(chain_module._io, "write_json", stop_at_the_second_keyframe)
    first = toy_pipeline()
    with pytest.raises(Killed):
        first.think(PROMPT, folder)
    monkeypatch.setattr(chain_module._io, "write_json", write_json)
    paid = work_done(first)
    assert ThoughtChain.load(folder, with_images=False).key_frames == [] and (folder / f"{_name()}_1.png").is_file()

    again = toy_pipeline()
    chain = again.think(PROMPT, folder)
    assert paid["images"] == 2 and work_done(again)["images"] == 1  # only keyframe 2's edit; keyframe 1 adopted
    assert work_done(again)["reasoner"] == 1 and len(chain.images) == 3

    fresh = toy_pipeline().think(PROMPT, tmp_path / "fresh")
    assert [im.tobytes() for im in chain.images] == [im.tobytes() for im in fresh.images]


def test_a_png_that_is_not_the_recorded_draw_is_not_adopted(tmp_path, monkeypatch):
    from PIL import Image

    from vchain import chain as chain_module

    folder = tmp_path / "run"
    write_json = chain_module._io.write_json
    commits = []

    def stop(path, data):
        if Path(path).name == "chain.json":
            commits.append(path)
            if len(commits) == 3:
                raise Killed
        return write_json(path, data)

    monkeypatch.setattr(chain_module._io, "write_json", stop)
    with pytest.raises(Killed):
        toy_pipeline().think(PROMPT, folder)
    monkeypatch.setattr(chain_module._io, "write_json", write_json)
    Image.new("RGB", (4, 4), "red").save(folder / f"{_name()}_1.png")  # replaced by hand after the stop
    again = toy_pipeline()
    chain = again.think(PROMPT, folder)
    assert work_done(again)["images"] == 2 and chain.images[1].getpixel((0, 0)) != (255, 0, 0)


def _name() -> str:
    from vchain.chain import chain_name

    return chain_name(PROMPT)
