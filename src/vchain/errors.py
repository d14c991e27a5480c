"""vchain's exception hierarchy: catch `VChainError` to catch everything vchain raises on purpose."""

from __future__ import annotations

from vchain._redact import redact


class VChainError(Exception):
    """Base class of every error vchain raises on purpose. Messages never hold a registered secret."""

    def __init__(self, *args):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigurationError(VChainError, ValueError):
    """An argument, setting or environment variable is missing or invalid; nothing was run."""


class StageError(VChainError):
    """A pipeline stage failed. What it had produced before the failure is kept on disk.

    Attributes:
        stage: the stage that failed (`"reasoning"`, `"tuning"`, `"sampling"`, ...).
        step: where inside the stage (`"plan"`, `"perception"`, `"edit"`, ...), if known.
        index: the keyframe index the stage was working on, if any.
    """

    def __init__(self, message: str, *, stage: str, step: str | None = None, index: int | None = None):
        where = stage if step is None else f"{stage}/{step}"
        if index is not None:
            where += f" (keyframe {index})"
        super().__init__(f"[{where}] {message}")
        self.stage, self.step, self.index = stage, step, index


class MalformedResponseError(VChainError):
    """A model answered, but not in the requested structure. Worth asking again."""


class RefusalError(VChainError):
    """A model refused the request or a content filter stopped it. Asking again rarely helps."""


class BackendError(VChainError):
    """A backend call failed after its own retries (network, rate limit, server error)."""


class NumericalError(VChainError):
    """A model produced non-finite numbers (a diverged adapter, say); nothing built on them was kept."""
