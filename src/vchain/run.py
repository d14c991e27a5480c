"""Run folders: one folder per prompt, resumable, reused only where the inputs are the same.

A run folder holds the chain (`chain.json`, `metadata.csv`, the keyframe PNGs), `lora/`, `video.mp4` and
`manifest.json`. Each stage is a step with a fingerprint of its inputs (its settings, the model ids, the
seed where it matters, and the artifacts it reads) and a record of its outputs with their sha256:

- a finished stage is reused only when its fingerprint matches and its outputs are intact;
- a changed input of tuning or sampling redoes that stage (and so every stage that reads it), with a log
  line naming what changed; the paid reasoning stage is never redone silently: a change there is refused,
  naming the fields, unless `overwrite=True` (`--overwrite`), which starts the folder over;
- one process at a time: an OS lock on `.lock` is held while the folder is open, and a second process
  fails at once naming the holder;
- an artifact is referenced by `chain.json` / `manifest.json` only once it is complete; what the committed
  state does not reference (a keyframe beyond the last caption, temporary files, a half-written `lora/`)
  is removed on open, never trusted; symlinks inside the folder are refused;
- `manifest.json` records every request attempt, the stages' wall times and what each stage produced.

`NullRun` stands in when there is no folder: every step simply runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vchain import _io
from vchain._lock import (  # noqa: F401 - the lock and folder checks are part of vchain.run's API
    _HELD,
    LOCK_FILE,
    _FolderLock,
    _now,
    check_output_dir,
    hold,
)
from vchain._redact import redact, scrub_exception
from vchain.accounting import CallRecord, UsageMeter, UsageSummary
from vchain.chain import CHAIN_FILE, METADATA_FILE, ThoughtChain, png_bytes
from vchain.color import ColorCorrection
from vchain.config import describe_errors
from vchain.errors import ConfigurationError, VChainError
from vchain.images import read_image
from vchain.reasoning import KeyframeAnswer, KeyframeCheck, ReasoningLog, StopReason
from vchain.variants import STAGES

logger = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST_FILE = "manifest.json"
VIDEO_FILE = "video.mp4"
LORA_DIR = "lora"
CANDIDATES_DIR = "candidates"
ROUNDS_DIR = "rounds"
IMPORTED = "imported"
Status = Literal["pending", "running", "done", "failed", "skipped"]
_PACKAGES = ("vchain", "torch", "diffusers", "peft", "transformers", "accelerate", "openai", "pydantic")


class StageRecord(BaseModel):
    """One stage of a run: its state, what it was made from and what it made."""

    model_config = ConfigDict(extra="forbid")

    status: Status = "pending"
    fingerprint: str | None = None
    inputs: dict[str, Any] = {}
    outputs: dict[str, str] = Field({}, description="artifact path (relative) -> sha256")
    seconds: dict[str, float] = {}
    total_seconds: float = 0.0
    error: str | None = None

    @field_validator("outputs")
    @classmethod
    def _inside_the_folder(cls, outputs: dict[str, str]) -> dict[str, str]:
        # A manifest is read from disk and may have been edited or copied from elsewhere: an output
        # name is joined to the folder to digest, replace or remove it, so it must stay inside.
        for name in outputs:
            problem = _io.safe_relative(name)
            if problem is not None:
                raise ValueError(f"output {name!r} {problem}; a run folder records paths inside itself only")
        return outputs


class ReasoningRecord(StageRecord):
    keyframes: int = 0
    stop_reason: StopReason | None = None
    times: list[float] = Field([], description="each keyframe's moment in the clip (chain.times)")
    times_from: Literal["reasoner", "even"] | None = Field(None, description="who chose the times")
    answers: list[KeyframeAnswer] = Field([], description="every paid perception answer, by keyframe")
    checks: list[KeyframeCheck] = Field([], description="every paid verdict on a keyframe draw, in order")
    corrections: dict[int, ColorCorrection] = Field({}, description="the colour correction of each keyframe")
    augmented_prompt: str | None = None


class TuningRecord(StageRecord):
    keyframes: int = 0
    trainable_parameters: int = 0
    losses: list[tuple[int, float]] = []


class CandidateRecord(BaseModel):
    """One candidate video of a test-time search: its seed, file and the judge's scores once judged."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    video: str = Field(description="the candidate's mp4, relative to the run folder")
    scores: dict[str, int] = Field({}, description="the judge's score per dimension (empty until judged)")
    reasons: dict[str, str] = Field({}, description="the judge's reason per dimension")
    objective: float | None = Field(None, description="the mean score over the search objective's dimensions")


class RoundRecord(BaseModel):
    """One round of a search: its chain (round 0: the run's own), its adapter and its candidates.

    A re-planned round keeps its paid answers here as the reasoning stage does, so a resume asks for nothing
    twice; its chain, `lora/` and candidates live in `folder`.
    """

    model_config = ConfigDict(extra="forbid")

    round: int = Field(ge=0)
    folder: str = Field("", description="where the round's artifacts live, relative to the run folder")
    critique: str | None = Field(None, description="what the reasoner was told to revise (rounds after the first)")
    reasoned: bool = False
    tuned: bool = False
    keyframes: int = 0
    stop_reason: StopReason | None = None
    times: list[float] = []
    times_from: Literal["reasoner", "even"] | None = None
    answers: list[KeyframeAnswer] = []
    checks: list[KeyframeCheck] = []
    corrections: dict[int, ColorCorrection] = {}
    candidates: list[CandidateRecord] = []


class SearchRecord(BaseModel):
    """A test-time search: every round and candidate, the winner, and where the time went."""

    model_config = ConfigDict(extra="forbid")

    judge: dict[str, Any] = Field({}, description="the judge's description and the frames it sees")
    rounds: list[RoundRecord] = []
    winner_round: int | None = None
    winner_seed: int | None = None
    seconds: dict[str, float] = Field({}, description="sampling, judging, replanning and tuning of the search")


class SamplingRecord(StageRecord):
    prompt: str | None = None
    seed: int | None = None
    frames: int = 0
    size: tuple[int, int] | None = None
    search: SearchRecord | None = None


class Stages(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reasoning: ReasoningRecord = ReasoningRecord()
    tuning: TuningRecord = TuningRecord()
    sampling: SamplingRecord = SamplingRecord()


class CaseRecord(BaseModel):
    """The suite case a run belongs to (`vchain.cases.Case`) and the seed it runs with."""

    model_config = ConfigDict(extra="forbid")

    id: str
    index: int = Field(description="the case's position in its prompt file")
    meta: dict[str, Any] = {}
    seed: int


class Manifest(BaseModel):
    """What `manifest.json` holds: exactly the run that is on disk, and what it cost."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    variant: str = "vchain"
    case: CaseRecord | None = None
    created: str = Field(default_factory=lambda: _now())
    updated: str = Field(default_factory=lambda: _now())
    versions: dict[str, str] = Field(default_factory=lambda: package_versions())
    stages: Stages = Stages()
    usage: UsageSummary = UsageSummary()
    calls: list[CallRecord] = Field([], description="every request attempt, in order")

    def status(self) -> str:
        """`done`, `failed` or `incomplete` over the stages the variant runs."""
        statuses = [getattr(self.stages, s).status for s in STAGES]
        if "failed" in statuses:
            return "failed"
        return "done" if all(s in ("done", "skipped") for s in statuses) else "incomplete"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of a run folder, or a `ConfigurationError` naming the file and what is wrong with it.

    Only a plain file of bounded size is read (`vchain._io.read_regular`), and every output it records
    must be a path inside the folder: a manifest from elsewhere can never make vchain touch other files.
    """
    path = Path(folder) / MANIFEST_FILE
    fix = f"move {str(path)!r} aside to import the chain as is, or choose another folder"
    try:
        data = json.loads(_io.read_regular(path).decode("utf-8"))
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ConfigurationError(f"{str(path)!r} is not a vchain manifest ({describe_errors(e)[:300]}); {fix}") from e
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigurationError(f"{str(path)!r} is not readable JSON ({type(e).__name__}: {e}); {fix}") from e


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_file(path: object, argument: str) -> Path:
    """A file path vchain may write; a `ConfigurationError` naming `argument` unless it is one.

    The path must be a new or regular file (not a folder, a link, a device or a FIFO: an atomic write
    would replace the node itself), and not inside a run folder, whose files are vchain's record.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip() or "\0" in str(path):
        raise ConfigurationError(f"{argument} must be a file path, got {path!r}")
    path = Path(path).expanduser()
    problem = _io.regular_file_error(path)
    if problem not in (None, "does not exist"):
        raise ConfigurationError(f"{argument} {str(path)!r} {problem}; pass the path of a new or regular file")
    for folder in path.absolute().parents:
        if (folder / MANIFEST_FILE).exists() or (folder / CHAIN_FILE).exists():
            raise ConfigurationError(
                f"{argument} {str(path)!r} is inside the run folder {str(folder)!r}, whose files are its record; "
                "write it outside the run folder"
            )
    return path


class RunDirectory:
    """An open run folder: locked, cleaned of what its committed state does not reference, manifest read.

    Args:
        path: the folder (created if needed).
        prompt: the run's prompt; a folder holding another prompt is refused.
        variant: the run's variant; None keeps the folder's (`vchain` for a new one).
        overwrite: start the folder over: every artifact and stage record goes (request records stay).

    Use as a context manager, or call `close()`: the lock is held until then.
    """

    def __init__(self, path: str | Path, prompt: str, *, variant: str | None = "vchain", overwrite: bool = False):
        self.path = check_output_dir(path)
        self._mutex = threading.RLock()
        self._saver: threading.Thread | None = None
        self._saved_lora: list[str] | None = None
        self.ran: list[str] = []  # the stages done in this opening (the others were reused or skipped)
        self.read_only: str | None = None
        self._lock: _FolderLock | None = None
        if self.path.resolve() not in _HELD:
            try:
                self._lock = _FolderLock(self.path)
            except PermissionError as e:
                self.read_only = e.strerror or "permission denied"
        elif not os.access(self.path, os.W_OK):
            self.read_only = "permission denied"
        try:
            self._refuse_symlinks()
            self._refuse_odd_artifacts()
            self._refuse_foreign()
            if not self.read_only:
                self._remove_leftovers()
            self.manifest = self._open_manifest(prompt, variant)
            self._refuse_linked_outputs()
            if overwrite:
                self._start_over()
            elif not self.read_only:
                self._remove_unreferenced()
                self._rewrite_metadata()
        except BaseException:
            self.close()
            raise

    # -- opening

    def _open_manifest(self, prompt: str, variant: str | None) -> Manifest:
        if (self.path / MANIFEST_FILE).is_file():
            manifest = read_manifest(self.path)
            if manifest.prompt != prompt or variant not in (None, manifest.variant):
                raise ConfigurationError(
                    f"output_dir {str(self.path)!r} holds a run of prompt {manifest.prompt!r} (variant "
                    f"{manifest.variant!r}), not {prompt!r} ({variant or manifest.variant!r}); choose another folder"
                )
            return manifest
        manifest = Manifest(prompt=prompt, variant=variant or "vchain")
        if (self.path / CHAIN_FILE).is_file():
            self._import_chain(manifest, prompt)
        return manifest

    def _import_chain(self, manifest: Manifest, prompt: str) -> None:
        """A folder with the paper's artifacts and no manifest: the chain is taken as finished reasoning."""
        chain = ThoughtChain.load(self.path, with_images=True)
        if chain.input_prompt != prompt:
            raise ConfigurationError(
                f"output_dir {str(self.path)!r} holds a chain for {chain.input_prompt!r}, not {prompt!r}"
            )
        record = manifest.stages.reasoning
        record.status, record.fingerprint, record.inputs = "done", IMPORTED, {"imported": True}
        record.keyframes = len(chain.images)
        record.times, record.times_from = chain.times, chain.times_from
        record.outputs = self._digests(chain_files(chain))
        logger.info("Imported the chain in %s (%d keyframes) as finished reasoning", self.path, len(chain.images))

    def _entries(self) -> Iterator[Path]:
        """What vchain may touch: the folder's own entries and what is inside `lora/` and the search's folders."""
        for item in self.path.iterdir():
            yield item
            if item.name in (LORA_DIR, CANDIDATES_DIR, ROUNDS_DIR) and item.is_dir() and not item.is_symlink():
                yield from _walk(item)

    def _refuse_odd_artifacts(self) -> None:
        for name in (MANIFEST_FILE, CHAIN_FILE, METADATA_FILE, VIDEO_FILE):
            path = self.path / name
            if path.exists() and not path.is_file():
                raise ConfigurationError(
                    f"output_dir {str(self.path)!r} holds {name} that is not a file; vchain writes a file of "
                    "that name: move it aside"
                )

    def _refuse_foreign(self) -> None:
        names = {p.name for p in self.path.iterdir() if not p.name.startswith(".")}  # hidden: the lock, leftovers
        if names and not names & {MANIFEST_FILE, CHAIN_FILE}:
            raise ConfigurationError(
                f"output_dir {str(self.path)!r} is not empty and holds no vchain run ({len(names)} other "
                "entries); choose a new or empty folder"
            )

    def _refuse_symlinks(self) -> None:
        for path in self._entries():
            if path.is_symlink():
                raise ConfigurationError(
                    f"output_dir {str(self.path)!r} holds a symlink, {str(path)!r}; vchain refuses links "
                    "inside run folders (they could make it write elsewhere): remove it"
                )

    def _refuse_linked_outputs(self) -> None:
        """Every recorded output is reached without a link, so replacing or removing it stays inside."""
        for stage in STAGES:
            for name in self.record(stage).outputs:
                parts = name.split("/")
                for depth in range(1, len(parts) + 1):
                    path = self.path.joinpath(*parts[:depth])
                    if path.is_symlink():
                        raise ConfigurationError(
                            f"output_dir {str(self.path)!r}: the manifest's output {name!r} goes through a "
                            f"symlink, {str(path)!r}; vchain refuses links inside run folders: remove it"
                        )

    def _remove_leftovers(self) -> None:
        for path in list(self._entries()):
            if path.name.startswith(".lora-") and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file():
                path.unlink(missing_ok=True)

    def _remove_unreferenced(self) -> None:
        """`lora/`, `video.mp4` and keyframes the manifest does not reference go: they are never trusted."""
        referenced = {name for stage in STAGES for name in self.record(stage).outputs}
        if self.lora_path.is_dir() and not any(name.startswith(f"{LORA_DIR}/") for name in referenced):
            shutil.rmtree(self.lora_path)
        if self.video_path.is_file() and VIDEO_FILE not in referenced:
            self.video_path.unlink()
        # A search's candidate videos and re-planned adapters count once recorded; a re-planned round's chain
        # is kept (its paid answers are in the manifest) and trimmed by `partial_chain` like the run's own.
        for path in [*self.path.glob(f"{CANDIDATES_DIR}/*"), *self.path.glob(f"{ROUNDS_DIR}/*/{CANDIDATES_DIR}/*")]:
            if path.is_file() and str(path.relative_to(self.path)) not in referenced:
                path.unlink()
        for path in self.path.glob(f"{ROUNDS_DIR}/*/{LORA_DIR}"):
            if not any(name.startswith(f"{path.relative_to(self.path)}/") for name in referenced):
                shutil.rmtree(path)
        for prefix in {name.rsplit("_", 1)[0] for name in referenced if name.endswith("_0.png")}:
            for path in self.path.glob(f"{prefix}_*.png"):
                if path.name not in referenced and path.stem.rsplit("_", 1)[-1].isdigit():
                    path.unlink()

    def _rewrite_metadata(self) -> None:
        """`metadata.csv` of a finished chain made to say what `chain.json` says again, if it was edited."""
        if (
            self.record("reasoning").status != "done"
            or self.damaged("reasoning")
            or CHAIN_FILE not in self.record("reasoning").outputs
        ):
            return
        chain = ThoughtChain.load(self.path, with_images=False)
        expected, path = chain.metadata_csv(), self.path / METADATA_FILE
        if not path.is_file() or path.read_text(encoding="utf-8", errors="replace") != expected:
            _io.write_text(path, expected)

    def _start_over(self) -> None:
        logger.info("Starting %s over (overwrite)", self.path)
        for stage in STAGES:
            self._clear(stage)
        for path in self.path.glob("*.png"):
            path.unlink()
        for name in (CHAIN_FILE, METADATA_FILE):
            (self.path / name).unlink(missing_ok=True)
        self.manifest.stages = Stages()

    # -- state

    @property
    def video_path(self) -> Path:
        return self.path / VIDEO_FILE

    @property
    def lora_path(self) -> Path:
        return self.path / LORA_DIR

    def record(self, stage: str) -> StageRecord:
        return getattr(self.manifest.stages, stage)

    def _check_writable(self) -> None:
        if self.read_only:
            raise ConfigurationError(
                f"output_dir {str(self.path)!r} is not writable ({self.read_only}); a finished run is read "
                "as is, but this one has work left: make the folder writable or choose another"
            )

    def save(self) -> None:
        """Write `manifest.json` atomically (thread-safe)."""
        self._check_writable()
        with self._mutex:
            if self._saver is not None and not self._saver.is_alive():
                self._saver.join()
                self._saver = None
                self._record_saved_lora()
            self.manifest.updated = _now()
            _io.write_json(self.path / MANIFEST_FILE, self.manifest.model_dump(mode="json"))

    def finished(self, stage: str, inputs: dict | None) -> bool:
        """Whether `stage` is done with these inputs (None: whatever they were) and its outputs are intact."""
        record = self.record(stage)
        if record.status != "done":
            return False
        if inputs is not None and record.fingerprint not in (fingerprint(inputs), IMPORTED):
            return False
        return self.damaged(stage) is None

    def damaged(self, stage: str) -> str | None:
        """The first output of `stage` that is missing or changed since it was recorded, if any."""
        record = self.record(stage)
        if stage in ("tuning", "sampling") and not record.outputs and record.status == "done":
            return f"{stage} left no recorded artifact"
        for name, digest in record.outputs.items():
            path = self.path / name
            problem = _io.regular_file_error(path)
            if problem is not None:
                return f"{name} is missing" if problem == "does not exist" else f"{name} {problem}"
            if file_digest(path) != digest:
                return f"{name} changed since it was written"
        return None

    # -- steps

    def step(
        self,
        stage: str,
        inputs: dict | None,
        *,
        compute: Callable[[StageRecord], T],
        load: Callable[[StageRecord], T],
        paid: bool = False,
        missing: str = "",
    ) -> T:
        """Reuse `stage` if it is finished with these inputs, else do it (resuming a partial paid stage).

        Args:
            inputs: what the stage reads, or None when the pipeline lacks the components to do it: it
                must then be finished (with whatever inputs), else a `ConfigurationError` naming `missing`.
            compute: does the stage, given its record (`running`); writes its artifacts.
            load: reads a finished stage's result back from the folder.
            paid: the stage costs money (reasoning): a change of inputs is refused, never redone silently.
        """
        record = self.record(stage)
        if inputs is None:
            problem = self.damaged(stage) if record.status == "done" else f"{stage} is not finished"
            if problem is None:
                return load(record)
            raise ConfigurationError(f"{problem} in {str(self.path)!r}, and the pipeline has no {missing} to redo it")
        new = fingerprint(inputs)
        if record.status == "done" and record.fingerprint in (new, IMPORTED):
            problem = self.damaged(stage)
            if problem is None:
                return load(record)
            if paid:
                raise VChainError(
                    f"{stage} in {str(self.path)!r} is finished but {problem}; restore it, or redo the run "
                    "with overwrite=True (--overwrite)"
                )
            logger.warning("%s: %s; redoing %s", self.path, problem, stage)
        elif record.fingerprint is not None and record.fingerprint != new:
            changes = differences(record.inputs, inputs)
            if paid and self._has_progress(stage):
                raise ConfigurationError(
                    f"{stage} in {str(self.path)!r} was done with other inputs ({changes}); it is paid work, so "
                    "it is not redone silently: pass overwrite=True (--overwrite) to redo the run, or choose "
                    "another folder"
                )
            logger.info(
                "%s: %s inputs changed (%s); redoing %s and what depends on it", self.path, stage, changes, stage
            )
        elif record.status in ("running", "failed"):
            logger.info("%s: resuming %s", self.path, stage)
        self._check_writable()
        if record.fingerprint != new:
            self._clear(stage)
            record = self.record(stage)
        return self._run(stage, record, new, inputs, compute)

    def _run(self, stage: str, record: StageRecord, new: str, inputs: dict, compute: Callable[[StageRecord], T]) -> T:
        record.status, record.error, record.fingerprint, record.inputs = "running", None, new, inputs
        self.ran.append(stage)
        self.manifest.versions = package_versions()
        self.save()
        start = time.perf_counter()
        try:
            result = compute(record)
        except BaseException as e:
            scrub_exception(e)
            record.status, record.error = "failed", redact(f"{type(e).__name__}: {e}")[:2000]
            raise
        else:
            record.status = "done"
            return result
        finally:
            record.total_seconds = round(record.total_seconds + time.perf_counter() - start, 3)
            self.save()

    def skip(self, stage: str, reason: str) -> None:
        record = self.record(stage)
        if record.status != "skipped":
            record.status, record.error, record.inputs = "skipped", None, {"reason": reason}
            self.save()

    def _has_progress(self, stage: str) -> bool:
        record = self.record(stage)
        return bool(record.outputs or getattr(record, "answers", None) or (self.path / CHAIN_FILE).exists())

    def _clear(self, stage: str) -> None:
        """Forget `stage` and remove its artifacts (the chain's are kept: only overwrite removes them)."""
        record = self.record(stage)
        for name in record.outputs:
            if stage != "reasoning":
                (self.path / name).unlink(missing_ok=True)
        if stage == "tuning":
            shutil.rmtree(self.lora_path, ignore_errors=True)
        if stage == "sampling":
            self.video_path.unlink(missing_ok=True)
            for name in (CANDIDATES_DIR, ROUNDS_DIR):
                shutil.rmtree(self.path / name, ignore_errors=True)
        setattr(self.manifest.stages, stage, type(record)())

    def set_outputs(self, stage: str, names: list[str]) -> None:
        with self._mutex:
            self.record(stage).outputs = self._digests(names)

    def add_outputs(self, stage: str, names: list[str]) -> None:
        """Record more artifacts of `stage` (a search records each candidate as it lands)."""
        with self._mutex:
            self.record(stage).outputs = {**self.record(stage).outputs, **self._digests(names)}

    def _digests(self, names: list[str]) -> dict[str, str]:
        return {name: file_digest(self.path / name) for name in names}

    # -- what stages use

    def meter(self) -> UsageMeter:
        """A meter that continues the folder's request records and saves each new one as it lands."""

        def persist(meter: UsageMeter) -> None:
            self.manifest.calls = list(meter.records)
            self.manifest.usage = meter.summary()
            self.save()

        return UsageMeter(self.manifest.calls, on_record=persist)

    def partial_chain(
        self, folder: str = "", record: ReasoningRecord | RoundRecord | None = None
    ) -> ThoughtChain | None:
        """The committed chain of unfinished reasoning in `folder` (relative; the run's own by default), whose
        paid answers are in `record` (the reasoning stage's by default); keyframes beyond its captions are
        removed, except the one drawn for the next paid answer, which is adopted."""
        where = self.path / folder
        record = record or self.manifest.stages.reasoning
        if not (where / CHAIN_FILE).is_file():
            return None
        chain = ThoughtChain.load(where, with_images=False)
        committed = set(chain.file_names)
        drawn = self._drawn_keyframe(chain, where, record)
        for path in where.glob(f"{chain.name}_*.png"):
            if path.name not in committed and path.name != drawn:
                path.unlink()
        if (where / chain.file_names[0]).is_file():
            chain = ThoughtChain.load(where, with_images=True)
        if drawn is not None and len(chain.images) == len(chain.captions):
            answer = next(a for a in record.answers if a.index == len(chain.captions))
            chain.append(answer.caption, read_image(where / drawn))
            chain.save(where)
            logger.info("%s: keyframe %d was drawn before a stop; adopted, not drawn again", where, answer.index)
        return chain

    def _drawn_keyframe(self, chain: ThoughtChain, where: Path, record) -> str | None:
        """The next keyframe's PNG when it is the very image the manifest recorded as paid for, else None."""
        index = len(chain.captions)
        answer = next((a for a in record.answers if a.index == index), None)
        name = f"{chain.name}_{index}.png"
        if answer is None or answer.image_sha256 is None or _io.regular_file_error(where / name) is not None:
            return None
        return name if file_digest(where / name) == answer.image_sha256 else None

    def reasoning_log(self, record: ReasoningRecord | RoundRecord | None = None, folder: str = "") -> ReasoningLog:
        """The log that keeps paid answers in `record` (the reasoning stage's by default) and the chain in `folder`."""
        return _FolderReasoningLog(self, record or self.manifest.stages.reasoning, folder)

    def write_video(self, frames, fps: int, name: str = VIDEO_FILE) -> float:
        """Write the video `name` (`video.mp4` by default) atomically and record it; returns the seconds it took."""
        from vchain.video import write_video

        start = time.perf_counter()
        write_video(frames, self.path / name, fps=fps)
        self.add_outputs("sampling", [name])
        return round(time.perf_counter() - start, 3)

    def copy_video(self, source: str) -> float:
        """Copy the recorded video `source` (relative) to `video.mp4` byte for byte, and record it."""
        start = time.perf_counter()
        data = (self.path / source).read_bytes()
        _io.atomic_write(self.video_path, lambda f: f.write(data))
        self.add_outputs("sampling", [VIDEO_FILE])
        return round(time.perf_counter() - start, 3)

    def write_adapter(self, adapter, folder: str) -> None:
        """Write the adapter into `folder/lora/` (relative) now, whole or not at all, and record it."""
        staging = self._stage_adapter(adapter)
        target = self.path / folder / LORA_DIR
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        self.add_outputs("sampling", sorted(str(p.relative_to(self.path)) for p in target.rglob("*") if p.is_file()))

    def _stage_adapter(self, adapter) -> Path:
        """The adapter saved into a fresh hidden folder of the run, with shareable modes."""
        staging = Path(tempfile.mkdtemp(dir=self.path, prefix=".lora-"))
        try:
            adapter.save(staging)
            for root, dirs, files in os.walk(staging):
                for name in dirs + files:
                    os.chmod(Path(root) / name, 0o755 if name in dirs else 0o644)
            os.chmod(staging, 0o755)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

    def save_adapter(self, adapter) -> None:
        """Write the adapter to `lora/` in the background (sampling goes on from memory meanwhile).

        It is staged in a fresh hidden folder and moved in complete, so `lora/` is whole or absent. The
        thread touches files only; the manifest (written by this thread alone) records `lora/` at its next
        save once the move is done, so an unrecorded `lora/` is never trusted.
        """
        self.wait_for_adapter()

        def save() -> None:
            try:
                staging = self._stage_adapter(adapter)
                shutil.rmtree(self.lora_path, ignore_errors=True)
                staging.rename(self.lora_path)
                self._saved_lora = sorted(
                    str(p.relative_to(self.path)) for p in self.lora_path.rglob("*") if p.is_file()
                )
            except Exception as e:
                logger.error("Saving the adapter to %s failed (%s); a resumed run will tune again", self.lora_path, e)

        self._saver = threading.Thread(target=save, name="vchain-save-lora")
        self._saver.start()

    def wait_for_adapter(self) -> None:
        """Wait for a background adapter save, and record `lora/` if it landed."""
        if self._saver is None:
            return
        self._saver.join()
        self._saver = None
        self._record_saved_lora()
        self.save()

    def _record_saved_lora(self) -> None:
        files, self._saved_lora = self._saved_lora, None
        if files is not None and self.record("tuning").status == "done":
            self.set_outputs("tuning", files)

    def close(self) -> None:
        self.wait_for_adapter()
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _FolderReasoningLog(ReasoningLog):
    """Paid answers go into the manifest before the edit that uses them; the chain is saved per step."""

    def __init__(self, run: RunDirectory, record: ReasoningRecord | RoundRecord, folder: str = ""):
        super().__init__({a.index: a for a in record.answers}, list(record.checks), dict(record.corrections))
        self.run, self.record, self.folder = run, record, folder

    def record_answer(self, answer: KeyframeAnswer) -> None:
        super().record_answer(answer)
        self.record.answers = [a for a in self.record.answers if a.index != answer.index] + [answer]
        self.run.save()

    def record_check(self, check: KeyframeCheck) -> None:
        super().record_check(check)
        self.record.checks = list(self.checks)
        self.run.save()

    def record_correction(self, index: int, correction: ColorCorrection) -> None:
        super().record_correction(index, correction)
        self.record.corrections = dict(self.corrections)

    def record_drawn(self, answer: KeyframeAnswer, image) -> None:
        # The paid image's digest goes into the manifest before its PNG is written: a crash between the
        # PNG and chain.json then leaves a file a resume can recognise and adopt, not pay for again.
        drawn = answer.model_copy(update={"image_sha256": hashlib.sha256(png_bytes(image)).hexdigest()})
        self.answers[answer.index] = drawn
        self.record.answers = [a for a in self.record.answers if a.index != answer.index] + [drawn]
        self.run.save()

    def commit(self, chain: ThoughtChain) -> None:
        chain.save(self.run.path / self.folder)
        self.record.keyframes = len(chain.images)
        self.record.times, self.record.times_from = chain.times, chain.times_from


class NullRun:
    """The run of a pipeline call without `output_dir`: every step runs, nothing is written."""

    path = None
    video_path = None
    manifest = None
    read_only = None

    def __init__(self):
        self.ran: list[str] = []

    def record(self, stage: str) -> StageRecord:
        return {"reasoning": ReasoningRecord, "tuning": TuningRecord, "sampling": SamplingRecord}[stage]()

    def finished(self, stage: str, inputs: dict | None) -> bool:
        return False

    def step(self, stage: str, inputs: dict | None, *, compute, load, paid=False, missing="") -> Any:
        if inputs is None:
            raise ConfigurationError(f"VChainPipeline has no {missing}, needed for {stage}")
        self.ran.append(stage)
        return compute(self.record(stage))

    def skip(self, stage: str, reason: str) -> None:
        pass

    def set_outputs(self, stage: str, names: list[str]) -> None:
        pass

    def meter(self) -> UsageMeter:
        return UsageMeter()

    def partial_chain(self) -> None:
        return None

    def reasoning_log(self) -> ReasoningLog:
        return ReasoningLog()

    def write_video(self, frames, fps: int) -> float:
        return 0.0

    def save_adapter(self, adapter) -> None:
        pass

    def wait_for_adapter(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _walk(folder: Path) -> Iterator[Path]:
    """Everything below `folder`, without following links (a linked folder is yielded, not entered)."""
    for item in folder.iterdir():
        yield item
        if item.is_dir() and not item.is_symlink():
            yield from _walk(item)


def chain_files(chain: ThoughtChain) -> list[str]:
    """The artifacts a chain is made of: `chain.json` and its PNGs. (`metadata.csv` is derived from
    `chain.json` for other tools; vchain never reads it, and rewrites it when it differs.)"""
    return [CHAIN_FILE, *chain.file_names] if chain.images else [CHAIN_FILE]


def differences(old: dict, new: dict, prefix: str = "") -> str:
    """The fields that differ between two input records, `a.b: old -> new`, for log lines and errors."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            inner = differences(a, b, f"{name}.")
            if inner:
                changes.append(inner)
        elif a != b:
            changes.append(f"{name}: {_short(a)} -> {_short(b)}")
    return "; ".join(changes)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def iter_runs(root: str | Path) -> Iterator[Path]:
    """Every run folder (a folder with `manifest.json`) at or below `root`, in sorted order."""
    root = Path(root)
    for path in sorted(root.rglob(MANIFEST_FILE)):
        if not any(part.startswith(".") for part in path.relative_to(root).parts):
            yield path.parent
