"""The run directory: one folder per prompt with the chain, `lora/`, `video.mp4` and `manifest.json`.

`manifest.json` records the config, versions, model ids, seed, each stage's status and wall times (the
breakdown of the paper's Table 2), and every API call's usage. It is rewritten atomically after each
step, so a crash leaves the last consistent state and a re-run resumes from it.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from vchain import _io
from vchain.accounting import CallRecord, UsageMeter
from vchain.errors import ConfigurationError

MANIFEST_FILE = "manifest.json"
VIDEO_FILE = "video.mp4"
LORA_DIR = "lora"
STAGES = ("reasoning", "tuning", "sampling")
Status = Literal["pending", "running", "done", "failed", "skipped"]
_PACKAGES = ("vchain", "torch", "diffusers", "peft", "transformers", "accelerate", "openai", "pydantic")


class StageRecord(BaseModel):
    status: Status = "pending"
    seconds: dict[str, float] = Field(default_factory=dict)
    total_seconds: float = 0.0
    detail: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class Manifest(BaseModel):
    prompt: str
    variant: str = "vchain"
    seed: int | None = None
    created: str = Field(default_factory=lambda: _now())
    updated: str = Field(default_factory=lambda: _now())
    config: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=lambda: package_versions())
    stages: dict[str, StageRecord] = Field(default_factory=lambda: {s: StageRecord() for s in STAGES})
    api: dict[str, Any] = Field(default_factory=dict)
    calls: list[CallRecord] = Field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


class RunDirectory:
    """A run folder and its manifest. Opening an existing folder resumes it (same prompt required)."""

    def __init__(self, path: str | Path, prompt: str, *, variant: str = "vchain"):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        manifest_path = self.path / MANIFEST_FILE
        if manifest_path.is_file():
            self.manifest = Manifest.model_validate(json.loads(manifest_path.read_text(encoding="utf-8")))
            if self.manifest.prompt != prompt or self.manifest.variant != variant:
                raise ConfigurationError(
                    f"output_dir {str(self.path)!r} holds a run of prompt {self.manifest.prompt!r} "
                    f"(variant {self.manifest.variant!r}), not {prompt!r} ({variant!r}); "
                    "choose another folder"
                )
        else:
            self.manifest = Manifest(prompt=prompt, variant=variant)
            self.save()

    @property
    def video_path(self) -> Path:
        return self.path / VIDEO_FILE

    @property
    def lora_path(self) -> Path:
        return self.path / LORA_DIR

    def status(self, stage: str) -> Status:
        return self.manifest.stages.setdefault(stage, StageRecord()).status

    def save(self) -> None:
        self.manifest.updated = _now()
        _io.write_json(self.path / MANIFEST_FILE, self.manifest.model_dump(mode="json"))

    def update(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self.manifest, key, value)
        self.save()

    def record_usage(self, meter: UsageMeter) -> None:
        self.manifest.calls = list(meter.records)
        self.manifest.api = meter.summary()
        self.save()

    @contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        """Mark `name` running; done on success, failed (with the error) on an exception, timed either way."""
        record = self.manifest.stages.setdefault(name, StageRecord())
        record.status, record.error = "running", None
        self.save()
        start = time.perf_counter()
        try:
            yield record
        except BaseException as e:
            record.status, record.error = "failed", f"{type(e).__name__}: {e}"
            raise
        else:
            record.status = "done"
        finally:
            record.total_seconds = round(record.total_seconds + time.perf_counter() - start, 3)
            self.save()

    def skip(self, name: str, reason: str) -> None:
        record = self.manifest.stages.setdefault(name, StageRecord())
        record.status, record.detail = "skipped", {"reason": reason}
        self.save()
