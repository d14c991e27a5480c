"""Per-call accounting of model calls (time, tokens, images) that works with any backend.

The reasoning loop opens one record per call with `UsageMeter.call(...)`; it times the call and counts
it. A backend that knows its token and image usage adds it with `report_usage(...)`, which lands on
the record of the call in progress (a no-op outside one). Custom backends need do nothing to be timed.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel

_current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar("vchain_call", default=None)


class CallRecord(BaseModel):
    """One logical model call; `attempts` counts re-asks after malformed answers."""

    step: str
    index: int | None = None
    model: str | None = None
    seconds: float = 0.0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    images_in: int = 0
    images_out: int = 0


def report_usage(
    *,
    model: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    images_in: int = 0,
    images_out: int = 0,
) -> None:
    """Add usage to the call in progress. Backends call this once per request they send."""
    record = _current.get()
    if record is None:
        return
    record.model = model or record.model
    record.attempts += 1
    record.input_tokens += input_tokens
    record.output_tokens += output_tokens
    record.images_in += images_in
    record.images_out += images_out


class UsageMeter:
    """Collects `CallRecord`s; `summary()` gives per-step wall time and totals for a manifest."""

    def __init__(self, records: list[CallRecord] | None = None):
        self.records: list[CallRecord] = list(records or [])

    @contextmanager
    def call(self, step: str, index: int | None = None) -> Iterator[CallRecord]:
        record = CallRecord(step=step, index=index)
        token = _current.set(record)
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - start
            record.attempts = max(record.attempts, 1)
            _current.reset(token)
            self.records.append(record)

    def seconds_by_step(self) -> dict[str, float]:
        seconds: dict[str, float] = {}
        for record in self.records:
            seconds[record.step] = seconds.get(record.step, 0.0) + record.seconds
        return {step: round(value, 3) for step, value in seconds.items()}

    def summary(self) -> dict:
        return {
            "calls": len(self.records),
            "requests": sum(r.attempts for r in self.records),
            "input_tokens": sum(r.input_tokens for r in self.records),
            "output_tokens": sum(r.output_tokens for r in self.records),
            "images_in": sum(r.images_in for r in self.records),
            "images_out": sum(r.images_out for r in self.records),
            "seconds_by_step": self.seconds_by_step(),
        }
