"""`Config`: the base of every vchain settings class (`ReasoningConfig`, `LoRAConfig`, `WanSamplingConfig`).

Settings are pydantic models, validated strictly when built: an int field takes an int (not `2.5`,
`"8"` or `True`), a float field a finite number (not NaN or inf), a choice one of its values. Every
problem is reported at once in one `ConfigurationError` that names the field and the value given.
Configs are frozen: `config.replace(steps=100)` returns a checked copy, and a config shared by two
pipelines can never be changed under one of them.

Each field's `description` is its documentation and the help text of its CLI flag; its default is the
one default there is.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticUndefined

from vchain.errors import ConfigurationError


class Config(BaseModel):
    """A frozen, strictly validated settings model; see the module docstring."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False, validate_default=True)

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigurationError(f"invalid {type(self).__name__}: {describe_errors(e, type(self))}") from None

    def replace(self, **changes: Any):
        """A validated copy with `changes` applied."""
        return type(self)(**{**dict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (what manifests record and fingerprints compare)."""
        return self.model_dump(mode="json")

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field `name` (for help texts)."""
        value = cls.model_fields[name].default
        return None if value is PydanticUndefined else value

    @classmethod
    def help(cls, name: str) -> str:
        """The documentation of field `name`, with its default."""
        field = cls.model_fields[name]
        return f"{field.description or name} (default: {cls.default(name)})"


def describe_errors(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """pydantic's errors as one line: `field must be ..., got value; ...`."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "value"
        message = item["msg"]
        if item["type"] == "extra_forbidden" and model is not None:
            parts.append(f"unknown setting {where!r}; known: {', '.join(sorted(model.model_fields))}")
            continue
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if message.startswith("Input should be"):
            message = "must be" + message.removeprefix("Input should be")
        if not item["loc"]:  # a check across fields: its message names them and their values
            parts.append(message)
            continue
        got = item.get("input")
        parts.append(f"{where} {message}, got {got!r}" if "input" in item else f"{where} {message}")
    return "; ".join(parts)


def check_device(device: object, argument: str = "device") -> str:
    """`device` as a torch device name that is usable here; a `ConfigurationError` naming `argument` otherwise.

    Checked before any weights load: torch itself only fails when the weights are moved (a CPU-only
    torch raises a bare `AssertionError` for "cuda").
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, (str, torch.device)):
        raise ConfigurationError(f"{argument} must be a torch device such as cpu or cuda:0, got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigurationError(f"{argument} must be a torch device such as cpu or cuda:0, got {device!r}") from None
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigurationError(f"{argument} must be cpu, cuda[:N] or mps, got {device!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            f"{argument} {device}: this torch has no usable CUDA device (torch.cuda.is_available() is False)"
        )
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigurationError(f"{argument} {device}: there are {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigurationError(f"{argument} {device}: MPS is not available here")
    return str(parsed)
