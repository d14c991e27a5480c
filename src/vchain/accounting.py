"""Accounting of model calls (every request attempt, its outcome, tokens, images) and stage timings.

The reasoning loop opens one logical call with `UsageMeter.call(...)` (plan, perception of keyframe 2,
...). A backend that sends requests reports each attempt with `report_request(...)`: retries, failures
and answers that were thrown away all count, so the record matches what a server saw and billed. A
backend that reports nothing still gets one record per call, timed. Both land on the call in progress
through a context variable, so custom backends need do nothing to be counted.

Generators report where sampling time went (`report_timing("denoise", s)`) the same way, into the
`collect_timings()` block the sampling stage opens.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from vchain._redact import redact
from vchain.errors import BackendError, MalformedResponseError, RefusalError

Outcome = Literal["ok", "malformed", "refused", "failed"]


class CallRecord(BaseModel):
    """One request attempt (or, for a backend that reports none, one call)."""

    step: str
    index: int | None = None
    attempt: int = 1
    model: str | None = None
    seconds: float = 0.0
    outcome: Outcome = "ok"
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    images_in: int = 0
    images_out: int = 0


class UsageSummary(BaseModel):
    """Totals over a run's records: `requests` counts attempts, `calls` the questions they served.

    A question asked again after a malformed answer is a new call; a request retried after a 429 or a
    timeout is a new request of the same call.
    """

    calls: int = 0
    requests: int = 0
    failed_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    images_in: int = 0
    images_out: int = 0
    seconds_by_step: dict[str, float] = {}


@dataclass
class _Call:
    step: str
    index: int | None
    records: list[CallRecord] = field(default_factory=list)


_current_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("vchain_call", default=None)
_current_timings: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "vchain_timings", default=None
)


def report_request(
    *,
    model: str | None = None,
    outcome: Outcome = "ok",
    error: str | None = None,
    seconds: float | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    images_in: int = 0,
    images_out: int = 0,
) -> None:
    """Record one request attempt on the call in progress (a no-op outside one).

    Call it once per request sent, failed ones included; `seconds` is the attempt's own time when
    the backend measured it.
    """
    call = _current_call.get()
    if call is None:
        return
    call.records.append(
        CallRecord(
            step=call.step,
            index=call.index,
            attempt=len(call.records) + 1,
            model=model,
            outcome=outcome,
            error=redact(error)[:500] if error else None,
            seconds=round(seconds or 0.0, 3),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            images_in=images_in,
            images_out=images_out,
        )
    )


def report_timing(name: str, seconds: float) -> None:
    """Add `seconds` under `name` to the stage timings being collected (a no-op outside one)."""
    timings = _current_timings.get()
    if timings is not None:
        timings[name] = round(timings.get(name, 0.0) + seconds, 3)


@contextmanager
def collect_timings() -> Iterator[dict[str, float]]:
    """Collect what `report_timing` reports inside the block into the yielded dict."""
    timings: dict[str, float] = {}
    token = _current_timings.set(timings)
    try:
        yield timings
    finally:
        _current_timings.reset(token)


def _outcome_of(error: BaseException) -> Outcome:
    if isinstance(error, MalformedResponseError):
        return "malformed"
    if isinstance(error, RefusalError):
        return "refused"
    return "failed"


class UsageMeter:
    """Collects `CallRecord`s; `on_record(meter)` runs after each call, e.g. to save the manifest."""

    def __init__(self, records: list[CallRecord] | None = None, *, on_record: Callable | None = None):
        self.records: list[CallRecord] = list(records or [])
        self.on_record = on_record

    @contextmanager
    def call(self, step: str, index: int | None = None) -> Iterator[None]:
        call = _Call(step, index)
        token = _current_call.set(call)
        start = time.perf_counter()
        try:
            yield
        except BaseException as e:
            self._close(call, start, e)
            raise
        else:
            self._close(call, start, None)
        finally:
            _current_call.reset(token)

    def _close(self, call: _Call, start: float, error: BaseException | None) -> None:
        elapsed = time.perf_counter() - start
        if not call.records:
            call.records.append(CallRecord(step=call.step, index=call.index))
        last = call.records[-1]
        unaccounted = elapsed - sum(r.seconds for r in call.records)
        last.seconds = round(last.seconds + max(0.0, unaccounted), 3)
        # The backend answered but the answer failed later checks (schema, image decoding): the attempt
        # the backend thought fine is the one that failed. Errors the backend already recorded stay.
        if error is not None and last.outcome == "ok" and not isinstance(error, BackendError):
            last.outcome = _outcome_of(error)
            last.error = redact(f"{type(error).__name__}: {error}")[:500]
        self.records.extend(call.records)
        if self.on_record is not None:
            self.on_record(self)

    def seconds_by_step(self) -> dict[str, float]:
        seconds: dict[str, float] = {}
        for record in self.records:
            seconds[record.step] = round(seconds.get(record.step, 0.0) + record.seconds, 3)
        return seconds

    def summary(self) -> UsageSummary:
        records = self.records
        return UsageSummary(
            calls=sum(r.attempt == 1 for r in records),
            requests=len(records),
            failed_requests=sum(r.outcome != "ok" for r in records),
            input_tokens=sum(r.input_tokens for r in records),
            output_tokens=sum(r.output_tokens for r in records),
            images_in=sum(r.images_in for r in records),
            images_out=sum(r.images_out for r in records),
            seconds_by_step=self.seconds_by_step(),
        )
