"""Prompt sets: the cases a suite runs, read from a benchmark's own prompt file.

`load_cases(path)` reads

- `.txt`: a prompt a line (blank lines are skipped);
- `.json`: a list of strings, or of objects with a `caption`, `prompt` or `text` key (PhyGenBench's
  `prompts.json` as published);
- `.jsonl`: one string or object a line, as in JSON;
- `.csv`: a header with a `caption`, `prompt` or `text` column.

Every other key (column) of an object (row) is kept as the case's `meta`, e.g. PhyGenBench's
`physical_laws` and `main_category`, so that results can be grouped by it. A case's id is its `id` key
when it has one, else its index in the file, zero-padded. A malformed file fails before any work with an
error naming the file and the row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vchain.chain import check_prompt
from vchain.errors import ConfigurationError

PROMPT_KEYS = ("caption", "prompt", "text")
FORMATS = (".txt", ".json", ".jsonl", ".csv")


@dataclass(frozen=True)
class Case:
    """One prompt of a prompt set.

    Args:
        id: the case's name in results (its `id` in the file, else its zero-padded index).
        prompt: what the video should show.
        meta: the file's other fields for this prompt (categories, physical laws, ...).
    """

    id: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


def load_cases(path: str | Path) -> list[Case]:
    """The cases of a prompt file (.txt, .json, .jsonl or .csv), in file order.

    Raises:
        ConfigurationError: the file is missing, of another format, holds no prompt, or a row has no
            prompt (the message names the file and the row).
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in FORMATS:
        raise ConfigurationError(f"prompts file {str(path)!r} must end in one of {list(FORMATS)}, got {path.suffix!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigurationError(
            f"prompts file {str(path)!r} cannot be read: {getattr(e, 'strerror', None) or e}"
        ) from None
    suffix = path.suffix.lower()
    if suffix == ".txt":
        rows = [(f"line {n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigurationError(f"prompts file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise ConfigurationError(
                f"prompts file {str(path)!r} must hold a JSON list of prompts, got a {type(data).__name__}"
            )
        rows = [(f"entry {i}", item) for i, item in enumerate(data)]
    elif suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"line {n}", json.loads(line)))
                except ValueError as e:
                    raise ConfigurationError(f"prompts file {str(path)!r}, line {n}: not valid JSON ({e})") from None
    else:
        rows = _csv_rows(path, text)
    if not rows:
        raise ConfigurationError(f"prompts file {str(path)!r} holds no prompt")
    cases = [_case(path, where, item, index, len(rows)) for index, (where, item) in enumerate(rows)]
    seen: dict[str, str] = {}
    for case, (where, _) in zip(cases, rows, strict=True):
        if case.id in seen:
            raise ConfigurationError(
                f"prompts file {str(path)!r}, {where}: id {case.id!r} is already used by {seen[case.id]}"
            )
        seen[case.id] = where
    return cases


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    if not any(key in columns for key in PROMPT_KEYS):
        raise ConfigurationError(
            f"prompts file {str(path)!r} has no prompt column: its header must name one of {list(PROMPT_KEYS)}, "
            f"got {columns}"
        )
    rows = []
    for row in reader:
        if None in row:
            raise ConfigurationError(
                f"prompts file {str(path)!r}, line {reader.line_num}: more cells than the header's {len(columns)}"
            )
        rows.append((f"line {reader.line_num}", row))
    return rows


def _case(path: Path, where: str, item: object, index: int, count: int) -> Case:
    default_id = f"{index:0{max(2, len(str(count - 1)))}d}"
    if isinstance(item, str):
        prompt, meta, case_id = item, {}, default_id
    elif isinstance(item, dict):
        key = next((k for k in PROMPT_KEYS if k in item), None)
        if key is None:
            raise ConfigurationError(
                f"prompts file {str(path)!r}, {where}: no prompt (a {' / '.join(PROMPT_KEYS)} key), "
                f"got keys {list(item)}"
            )
        prompt = item[key]
        meta = {k: v for k, v in item.items() if k not in (key, "id")}
        case_id = item.get("id", default_id)
        if isinstance(case_id, bool) or not isinstance(case_id, (str, int)) or not str(case_id).strip():
            raise ConfigurationError(
                f"prompts file {str(path)!r}, {where}: id must be a string or an integer, got {case_id!r}"
            )
        case_id = str(case_id).strip()
    else:
        raise ConfigurationError(
            f"prompts file {str(path)!r}, {where}: a prompt must be a string or an object, got {item!r}"
        )
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigurationError(
            f"prompts file {str(path)!r}, {where}: the prompt must be non-empty text, got {prompt!r}"
        )
    return Case(case_id, prompt.strip(), meta)


def as_cases(prompts: Sequence[str | Case]) -> list[Case]:
    """Cases from a list of prompts (ids are their zero-padded indices) or of cases (kept as they are)."""
    if isinstance(prompts, str):
        raise ConfigurationError(f"prompts must be a list of prompts or cases, got the string {prompts!r}")
    width = max(2, len(str(len(prompts) - 1)))
    return [
        p if isinstance(p, Case) else Case(f"{i:0{width}d}", check_prompt(p, f"prompts[{i}]"))
        for i, p in enumerate(prompts)
    ]
