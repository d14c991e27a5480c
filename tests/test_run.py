"""Run folders: one process at a time, crash-consistent commits, nothing unreferenced trusted."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from vchain import ThoughtChain, VChainPipeline
from vchain.errors import ConfigurationError, VChainError
from vchain.images import fit_to_frame
from vchain.reasoning import ReasoningConfig
from vchain.run import RunDirectory, hold
from vchain.testing import DrawingImageBackend, ScriptedReasoner, draw_image
from vchain.testing.toy import ToyGenerator
from vchain.tuning import LoRATuner

PROMPT = "An egg is dropped onto a pillow."


class Unpredictable(ScriptedReasoner):
    """A different caption on every call, like a real model: a stale image shows as a mismatch."""

    def next_keyframe(self, chain, composite):
        answer = super().next_keyframe(chain, composite)
        return answer.model_copy(update={"caption": f"{answer.caption} ({uuid.uuid4().hex[:8]})"})


class CountingTuner(LoRATuner):
    calls = 0

    def tune(self, generator, pairs):
        type(self).calls += 1
        return super().tune(generator, pairs)


def toy_pipeline():
    reasoner, backend = Unpredictable(["The egg touches the pillow.", "The egg rests."]), DrawingImageBackend()
    return VChainPipeline(reasoner, backend, ToyGenerator(), CountingTuner(steps=3))


def requests(pipe):
    return len(pipe.reasoner.calls) + len(pipe.image_backend.calls)


def assert_images_match_captions(folder, backend):
    chain = ThoughtChain.load(folder)
    expected = [draw_image(chain.context_frame, 4, 4)]
    expected += [draw_image(backend.instruction(caption), 4, 4) for caption in chain.key_frames]
    for i, (image, drawn) in enumerate(zip(chain.images, expected, strict=True)):
        assert image.tobytes() == fit_to_frame(drawn, 4, 4).tobytes(), f"keyframe {i} does not show its caption"


# ------------------------------------------------------------------------------------------- locking


def test_a_second_opening_of_a_folder_fails_at_once_naming_the_holder(tmp_path):
    with RunDirectory(tmp_path, PROMPT):
        start = time.monotonic()
        with pytest.raises(ConfigurationError, match=rf"in use by another vchain process \(pid {os.getpid()} on"):
            RunDirectory(tmp_path, PROMPT)
        assert time.monotonic() - start < 1
    RunDirectory(tmp_path, PROMPT).close()  # released


def test_hold_keeps_the_lock_for_runs_inside_it_and_removes_an_empty_folder(tmp_path):
    folder = tmp_path / "new"
    code = f"from vchain.run import RunDirectory; RunDirectory({str(folder)!r}, {PROMPT!r})"
    with hold(folder):
        with RunDirectory(folder, PROMPT):  # this process holds the folder: its runs use the lock
            pass
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and "is in use by another vchain process" in other.stderr
    assert not folder.exists()  # made for the block, and nothing but the lock was written


def test_two_processes_started_together_on_one_folder_run_exactly_once(server, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "vchain.cli",
        "think",
        PROMPT,
        "-o",
        str(tmp_path / "run"),
        "--base-url",
        server.base_url,
        "--image-base-url",
        server.base_url,
        "--max-keyframes",
        "3",
    ]
    started = time.monotonic()
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    ended = {}
    while len(ended) < 2:
        for i, process in enumerate(processes):
            if i not in ended and process.poll() is not None:
                ended[i] = time.monotonic() - started
        time.sleep(0.05)
    codes = sorted(p.returncode for p in processes)
    loser = next(i for i, p in enumerate(processes) if p.returncode != 0)
    assert codes == [0, 2], [p.communicate() for p in processes]
    assert "is in use by another vchain process (pid" in processes[loser].stderr.read()
    assert ended[loser] < ended[1 - loser]  # it failed at once, before the other had finished its run
    assert len(server.requests) == 6  # one run: the plan, the image, two perceptions and two edits
    chain = ThoughtChain.load(tmp_path / "run")
    assert len(chain.images) == 3 and json.loads((tmp_path / "run" / "manifest.json").read_text())["usage"][
        "requests"
    ] == len(server.requests)


# ------------------------------------------------------------------------------------------ crashes


class Killed(BaseException):
    """Stands for SIGKILL: from this point on, nothing else reaches the disk."""


class Freezer:
    """Kill the process (raise `Killed`) at the k-th change to the file system, and freeze it after."""

    TARGETS = (
        (os, "replace"),
        (os, "rename"),
        (os, "unlink"),
        (os, "remove"),
        (os, "rmdir"),
        (os, "chmod"),
        (shutil, "rmtree"),
        (tempfile, "mkstemp"),
        (tempfile, "mkdtemp"),
    )

    def __init__(self, monkeypatch, kill_at=None):
        self.count, self.kill_at, self.dead = 0, kill_at, False
        for module, name in self.TARGETS:
            monkeypatch.setattr(module, name, self._guard(getattr(module, name)))

    def _guard(self, real):
        def guarded(*args, **kwargs):
            if self.dead:
                raise Killed()
            self.count += 1
            if self.count == self.kill_at:
                self.dead = True
                raise Killed()
            return real(*args, **kwargs)

        return guarded


@pytest.fixture
def synchronous_saves(monkeypatch):
    """The adapter is saved in the background; for a repeatable order of writes, wait for it."""
    real = RunDirectory.save_adapter

    def save_and_wait(self, adapter):
        real(self, adapter)
        self._saver.join()

    monkeypatch.setattr(RunDirectory, "save_adapter", save_and_wait)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # a killed saver dies quietly


def test_a_kill_at_every_write_point_then_a_rerun_leaves_a_consistent_folder(tmp_path, monkeypatch, synchronous_saves):
    with pytest.MonkeyPatch.context() as patch:
        counter = Freezer(patch)
        clean = toy_pipeline()
        clean(PROMPT, tmp_path / "clean")
    points, baseline = counter.count, requests(clean)
    assert points > 20
    for k in range(1, points + 1):
        folder = tmp_path / f"kill_{k}"
        CountingTuner.calls = 0
        crashed = toy_pipeline()
        with pytest.MonkeyPatch.context() as patch:
            Freezer(patch, kill_at=k)
            with pytest.raises(Killed):
                crashed(PROMPT, folder)
        recorded = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else {}
        lora_recorded = bool(recorded.get("stages", {}).get("tuning", {}).get("outputs"))
        tunes_before = CountingTuner.calls
        rerun = toy_pipeline()
        out = rerun(PROMPT, folder)
        assert out.statuses == {"reasoning": "done", "tuning": "done", "sampling": "done"}, k
        assert_images_match_captions(folder, rerun.image_backend)
        assert requests(crashed) + requests(rerun) <= baseline + 1, (k, requests(crashed), requests(rerun))
        if lora_recorded:
            assert CountingTuner.calls == tunes_before, f"re-tuned at kill point {k} with lora/ complete"
        assert not [p for p in folder.rglob(".*") if p.name != ".lock"], k  # no leftovers
        m = json.loads((folder / "manifest.json").read_text())
        assert m["usage"]["requests"] == len(m["calls"])


def test_a_stale_image_beyond_the_committed_captions_is_never_used(tmp_path):
    pipe = toy_pipeline()
    pipe.think(PROMPT, tmp_path)
    chain = ThoughtChain.load(tmp_path)
    # A crash left keyframe 2's image on disk, but chain.json never got its caption.
    chain.key_frames, chain.images = chain.key_frames[:1], chain.images[:2]
    chain.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["stages"]["reasoning"].update(status="running", outputs={}, answers=[])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    draw_image("a stale image", 4, 4).save(tmp_path / f"{chain.name}_2.png")
    rerun = toy_pipeline()
    rerun.think(PROMPT, tmp_path)
    assert_images_match_captions(tmp_path, rerun.image_backend)


# --------------------------------------------------------------------------- what a folder may hold


def test_symlinks_inside_a_run_folder_are_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "lora").symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match=r"holds a symlink, .*lora.*remove it"):
        RunDirectory(run, PROMPT)
    assert list(elsewhere.iterdir()) == []


def test_leftovers_of_a_crash_are_removed_on_open(tmp_path):
    with RunDirectory(tmp_path, PROMPT) as run:
        run.save()
    (tmp_path / ".manifest.json.abc.tmp").write_text("{")
    (tmp_path / ".lora-xyz").mkdir()
    (tmp_path / ".lora-xyz" / "pytorch_lora_weights.safetensors").write_bytes(b"half")
    (tmp_path / "lora").mkdir()  # unrecorded: never trusted
    (tmp_path / "video.mp4").write_bytes(b"unrecorded")
    (tmp_path / "notes.txt").write_text("mine")
    RunDirectory(tmp_path, PROMPT).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "manifest.json", "notes.txt"]


def test_a_folder_that_holds_something_else_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigurationError, match="is not empty and holds no vchain run"):
        RunDirectory(tmp_path, PROMPT)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "thesis.tex"]


def test_a_finished_run_in_a_read_only_folder_is_read_not_rewritten(tmp_path, monkeypatch):
    pipe = toy_pipeline()
    pipe(PROMPT, tmp_path / "run")
    record = (tmp_path / "run" / "manifest.json").read_bytes()

    def read_only(self, folder):  # what opening .lock for writing gives in a read-only folder
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("vchain.run._FolderLock.__init__", read_only)
    out = toy_pipeline()(PROMPT, tmp_path / "run")
    assert len(out.frames) == 1 and (tmp_path / "run" / "manifest.json").read_bytes() == record
    with pytest.raises(ConfigurationError, match=r"is not writable \(Permission denied\).*this one has work left"):
        toy_pipeline()(PROMPT, tmp_path / "run", seed=5)
    assert (tmp_path / "run" / "manifest.json").read_bytes() == record


def test_a_folder_holding_only_the_papers_artifacts_can_be_tuned_and_sampled(tmp_path):
    chain = toy_pipeline().think(PROMPT)
    chain.save(tmp_path)
    pipe = VChainPipeline(generator=ToyGenerator(), tuner=LoRATuner(steps=3))  # no reasoner at all
    out = pipe(PROMPT, tmp_path)
    assert out.statuses == {"reasoning": "done", "tuning": "done", "sampling": "done"}
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["stages"]["reasoning"]["inputs"] == {"imported": True}
    assert set(m["stages"]["reasoning"]["outputs"]) == {"chain.json", *chain.file_names}  # metadata.csv is derived


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{broken", "is not readable JSON"),
        ("", "is not readable JSON"),
        ('{"variant": "vchain"}', r"is not a vchain manifest \(prompt Field required"),
        ('{"prompt": 3}', "is not a vchain manifest"),
        ('{"prompt": "p", "stages": {"reasoning": {"status": "finished"}}}', "is not a vchain manifest"),
        ('{"prompt": ' + "1" * 5000 + "}", "is not readable JSON"),
        ("[" * 100_000 + "]" * 100_000, "is not readable JSON"),
    ],
)
def test_a_corrupt_manifest_is_a_clear_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(VChainError, match=rf"manifest\.json' {message}.*move .* aside"):
        RunDirectory(tmp_path, PROMPT)


def test_a_finished_chain_with_a_missing_or_changed_keyframe_is_refused_not_retuned(tmp_path):
    pipe = toy_pipeline()
    pipe(PROMPT, tmp_path)
    name = ThoughtChain.load(tmp_path).name
    (tmp_path / f"{name}_1.png").unlink()
    with pytest.raises(VChainError, match=rf"reasoning in .* is finished but {name}_1\.png is missing.*--overwrite"):
        toy_pipeline()(PROMPT, tmp_path, seed=1)


def test_a_hand_edited_adapter_is_not_trusted(tmp_path, caplog):
    pipe = toy_pipeline()
    pipe(PROMPT, tmp_path)
    CountingTuner.calls = 0
    lora = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    lora.write_bytes(lora.read_bytes()[:-8] + b"\0" * 8)
    toy_pipeline()(PROMPT, tmp_path)
    assert CountingTuner.calls == 1 and "changed since it was written" in caplog.text


@pytest.mark.parametrize("output_dir", ["", "   ", 123, None.__class__])
def test_bad_output_dirs_are_named(output_dir):
    with pytest.raises(ConfigurationError, match="output_dir must be a folder path"):
        RunDirectory(output_dir, PROMPT)


def test_an_output_dir_that_is_a_file_or_cannot_be_made_is_named(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigurationError, match="is a file, not a folder"):
        RunDirectory(tmp_path / "afile", PROMPT)
    with pytest.raises(ConfigurationError, match="cannot be created"):
        RunDirectory(tmp_path / "afile" / "run", PROMPT)
    with pytest.raises(ConfigurationError, match="cannot be created"):
        RunDirectory(Path("/proc/vchain_run"), PROMPT)


def test_a_folder_of_another_prompt_or_variant_is_refused(tmp_path):
    toy_pipeline()(PROMPT, tmp_path)
    with pytest.raises(ConfigurationError, match="holds a run of prompt"):
        toy_pipeline()("Another prompt.", tmp_path)
    with pytest.raises(ConfigurationError, match=r"\(variant 'vchain'\).*\('t2v'\)"):
        toy_pipeline()(PROMPT, tmp_path, variant="t2v")


def test_no_key_reaches_a_manifest_even_when_a_server_echoes_it(tmp_path, monkeypatch):
    secret = "sk-live-SECRET-abcdefghijkl"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    class Echo(ScriptedReasoner):
        def next_keyframe(self, chain, composite):
            raise RuntimeError(f"401 Unauthorized: invalid key {secret}")

    pipe = VChainPipeline(Echo(), DrawingImageBackend(), reasoning=ReasoningConfig(width=8, height=8))
    with pytest.raises(VChainError) as error:
        pipe.think(PROMPT, tmp_path)
    text = (tmp_path / "manifest.json").read_text()
    assert "invalid key ***" in text and secret not in text and secret not in str(error.value)
