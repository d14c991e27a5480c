"""The data that flows between stages: the scene plan, the next-keyframe answer and the `ThoughtChain`.

On disk a chain is the pair of artifacts the VChain paper describes, plus the images:

- `chain.json`: `{"<name>": {"input_prompt", "thoughts", "consequences", "context_frame",
  "concise_prompt", "key_frames"}}`, plus vchain's `times` (each image's moment in the clip) and
  `times_from` (`"reasoner"`, or `"even"` when the reasoner gave none); a file without them loads with
  evenly spaced times,
- `metadata.csv`: `"file_name","text"` rows pairing `<name>_<i>.png` with its caption (the Hugging Face
  ImageFolder convention, so the folder loads with `datasets.load_dataset("imagefolder", ...)`),
- `<name>_0.png`, `<name>_1.png`, ...

`chain.json` is the record: `metadata.csv` is written from it for other tools and never read back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vchain import _io
from vchain.errors import ConfigurationError, VChainError
from vchain.images import UnreadableImageError, read_image

CHAIN_FILE = "chain.json"
METADATA_FILE = "metadata.csv"
MAX_NAME_LENGTH = 40
# The longest text a model's answer may hold in one field: pages more than any plan or caption needs (the
# paper's are a few hundred characters), while a runaway answer is refused as malformed, not kept.
MAX_TEXT_LENGTH = 20_000


class _Answer(BaseModel):
    """A structured model answer: every string must say something, every value has its type (a `"yes"`
    is not a `True`), and an instance built without validation (`model_construct`) is validated again
    when a stage receives it."""

    model_config = ConfigDict(strict=True, revalidate_instances="always")

    @field_validator("*", mode="after")
    @classmethod
    def _not_blank(cls, value, info):
        if isinstance(value, str) and not value.strip() and info.field_name != "problem":
            raise ValueError(f"{info.field_name} must not be blank")
        if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
            raise ValueError(
                f"{info.field_name} is {len(value)} characters long, over the limit of {MAX_TEXT_LENGTH} "
                "(vchain.chain.MAX_TEXT_LENGTH)"
            )
        return value.strip() if isinstance(value, str) else value


class ScenePlan(_Answer):
    """What the reasoner infers from the prompt before any image exists."""

    thoughts: str = Field(
        description="The scene worked out in full: objects, materials, setting, camera view, layout, "
        "and the details the prompt leaves unstated."
    )
    consequences: str = Field(
        description="What happens, in causal order, from the initial state to the final outcome."
    )
    context_frame: str = Field(
        description="A detailed description of the very first frame: the initial state before anything "
        "happens, with no hint of what will follow."
    )
    concise_prompt: str = Field(description="The context frame in one short sentence.")


class NextKeyframe(_Answer):
    """The reasoner's answer for one step of the chain."""

    caption: str = Field(
        description="A description of the next keyframe as a still image, which doubles as the "
        "instruction for editing the previous keyframe into it."
    )
    is_last: bool = Field(
        description="True when this keyframe completes the consequences, or nothing significant follows it."
    )
    time: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="When in the clip this state is reached, as a fraction of the clip's length: 0 is the first "
        "frame, 1 the last; never earlier than the previous keyframe.",
    )


class KeyframeVerdict(_Answer):
    """A verifier's judgement of one candidate keyframe against its caption and the chain so far."""

    matches: bool = Field(description="True when the image shows what the caption describes.")
    problem: str = Field(
        description="When it does not match: what is wrong and what the image should show. Empty otherwise."
    )


def chain_name(prompt: str) -> str:
    """A file-system-safe, stable, bounded name for a prompt, e.g. `"an_egg_falling_onto_concrete"`.

    Only `[a-z0-9_]` survive, so the name can never hold a path separator or `..`. A name that had to
    be shortened (or that had no usable characters) gets a short hash of the prompt, so different
    long prompts keep different names.
    """
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    name = "_".join(words)
    if name and len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
    head = name[: MAX_NAME_LENGTH - 9].rstrip("_")
    return f"{head}_{digest}" if head else f"chain_{digest}"


def check_prompt(prompt: object, name: str = "prompt") -> str:
    """The prompt stripped; a `ConfigurationError` naming `name` unless it is a non-empty string."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigurationError(f"{name} must be a non-empty string, got {prompt!r}")
    return prompt.strip()


def even_times(count: int) -> list[float]:
    """`count` evenly spaced moments from 0 to 1 (`numpy.linspace(0, 1, count)`): the times of a chain whose
    reasoner gave none."""
    if count == 1:
        return [0.0]
    return [i / (count - 1) for i in range(count)]


def check_times(times: object, count: int, name: str = "times", *, starts_at_zero: bool = True) -> list[float]:
    """`times` as floats; a `ConfigurationError` naming `name` unless they are `count` finite fractions of the
    clip, non-decreasing, at most 1.0, and (`starts_at_zero`) 0.0 first."""
    values = list(times) if isinstance(times, list | tuple) else None
    if values is None or len(values) != count:
        raise ConfigurationError(f"{name} must be a list of {count} values (one per image), got {times!r}")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigurationError(f"{name}[{i}] must be a finite number, got {value!r}")
        if not 0 <= value <= 1:
            raise ConfigurationError(f"{name}[{i}] must be between 0 and 1 (a fraction of the clip), got {value!r}")
        if i and value < values[i - 1]:
            raise ConfigurationError(
                f"{name} must be non-decreasing, got {name}[{i}]={value!r} after {name}[{i - 1}]={values[i - 1]!r}"
            )
    if starts_at_zero and values and values[0] != 0:
        raise ConfigurationError(f"{name}[0] (the context frame) must be 0.0, got {values[0]!r}")
    return [float(value) for value in values]


class _ChainFields(BaseModel):
    """The fields of one `chain.json` entry, checked strictly when a chain is read back."""

    model_config = ConfigDict(strict=True, extra="ignore")

    input_prompt: str
    thoughts: str
    consequences: str
    context_frame: str
    concise_prompt: str
    key_frames: list[str]
    times: list[float] | None = Field(None, strict=False)
    times_from: Literal["reasoner", "even"] = "reasoner"

    @field_validator("input_prompt", "thoughts", "consequences", "context_frame", "concise_prompt", "key_frames")
    @classmethod
    def _not_blank(cls, value, info):
        texts = value if isinstance(value, list) else [value]
        if any(not text.strip() for text in texts):
            raise ValueError(f"{info.field_name} holds a blank text")
        return value


@dataclass
class ThoughtChain:
    """A chain of visual thoughts: the plan, the keyframe captions and the keyframe images.

    `images[0]` shows the context frame and pairs with `concise_prompt`; `images[i]` (i >= 1) pairs with
    `key_frames[i - 1]`. A chain under construction may hold the plan only (no images yet).

    `key_times[i - 1]` is the moment the reasoner gave keyframe i (None: it gave none); `times` reads them
    with the context frame's 0.0 in front, or evenly spaced times when any is missing.
    """

    input_prompt: str
    thoughts: str
    consequences: str
    context_frame: str
    concise_prompt: str
    key_frames: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list, repr=False)
    name: str = ""
    key_times: list[float | None] = field(default_factory=list)

    def __post_init__(self):
        self.input_prompt = check_prompt(self.input_prompt, "input_prompt")
        self.name = self.name or chain_name(self.input_prompt)
        if not re.fullmatch(r"[a-z0-9_]{1,64}", self.name):
            raise ConfigurationError(f"name must match [a-z0-9_]{{1,64}}, got {self.name!r}")
        if len(self.images) not in (0, len(self.key_frames) + 1):
            raise ConfigurationError(
                f"a chain with {len(self.key_frames)} key_frames needs {len(self.key_frames) + 1} images "
                f"(or none yet), got {len(self.images)}"
            )
        if not self.key_times:
            self.key_times = [None] * len(self.key_frames)
        if len(self.key_times) != len(self.key_frames):
            raise ConfigurationError(
                f"key_times must hold one value (or None) per key frame, {len(self.key_frames)}, "
                f"got {len(self.key_times)}"
            )
        if self.times_from == "reasoner":
            check_times([0.0, *self.key_times], len(self.key_frames) + 1, "times")

    @classmethod
    def from_plan(cls, prompt: str, plan: ScenePlan) -> ThoughtChain:
        return cls(input_prompt=prompt, **plan.model_dump())

    @property
    def captions(self) -> list[str]:
        """One caption per image: the concise prompt, then each keyframe caption."""
        return [self.concise_prompt, *self.key_frames]

    @property
    def composite_prompt(self) -> str:
        """All textual thoughts joined, in order: the prompt the tuned generator samples from."""
        return " ".join(caption.strip() for caption in self.captions)

    @property
    def times_from(self) -> Literal["reasoner", "even"]:
        """Where `times` come from: the reasoner (it gave every keyframe's), or even spacing."""
        return "reasoner" if self.key_frames and None not in self.key_times else "even"

    @property
    def times(self) -> list[float]:
        """Each image's moment in the clip, a fraction of its length: 0.0 first, non-decreasing, at most 1.0.

        The reasoner's times when it gave them all, else `linspace(0, 1, N)` over the N images.
        """
        if self.times_from == "reasoner":
            return [0.0, *self.key_times]
        return even_times(len(self.captions))

    @property
    def file_names(self) -> list[str]:
        return [f"{self.name}_{i}.png" for i in range(len(self.captions))]

    def training_pairs(self) -> list[tuple[Image.Image, str]]:
        """The (image, caption) pairs the tuner learns from, one per keyframe."""
        if len(self.images) != len(self.captions):
            raise VChainError(
                f"chain {self.name!r} has {len(self.images)} images for {len(self.captions)} captions; "
                "finish reasoning before tuning"
            )
        return list(zip(self.images, self.captions, strict=True))

    def append(self, caption: str, image: Image.Image, time: float | None = None) -> None:
        """Add a keyframe; `time` is its moment in the clip, if the reasoner gave one."""
        if not self.images:
            raise VChainError("the first image (the context frame) must exist before a keyframe is appended")
        if time is not None:
            given = [t for t in self.key_times if t is not None]
            check_times([0.0, *given, time], len(given) + 2, "times")
        self.key_frames.append(check_prompt(caption, "caption"))
        self.key_times.append(time)
        self.images.append(image)

    def to_json(self) -> dict:
        """The paper's JSON layout, keyed by the chain's name."""
        return {
            self.name: {
                "input_prompt": self.input_prompt,
                "thoughts": self.thoughts,
                "consequences": self.consequences,
                "context_frame": self.context_frame,
                "concise_prompt": self.concise_prompt,
                "key_frames": list(self.key_frames),
                "times": self.times,
                "times_from": self.times_from,
            }
        }

    def save(self, directory: str | Path) -> Path:
        """Write the images, then `metadata.csv`, then `chain.json` into `directory` (created if needed).

        Every write is atomic, and `chain.json` comes last: a caption is on disk only once its image is,
        so a crash never leaves a caption paired with an older image.
        """
        directory = _io.check_path(directory, "directory")
        directory.mkdir(parents=True, exist_ok=True)
        for image, file_name in zip(self.images, self.file_names, strict=False):
            _io.atomic_write(directory / file_name, lambda f, im=image: f.write(png_bytes(im)))
        if self.images:
            _io.write_text(directory / METADATA_FILE, self.metadata_csv())
        _io.write_json(directory / CHAIN_FILE, self.to_json())
        return directory

    def metadata_csv(self) -> str:
        """The `metadata.csv` of this chain: `"file_name","text"` rows, one per keyframe."""
        rows = io.StringIO()
        writer = csv.writer(rows, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(["file_name", "text"])
        writer.writerows(zip(self.file_names, self.captions, strict=True))
        return rows.getvalue()

    @classmethod
    def load(cls, directory: str | Path, *, with_images: bool | None = None) -> ThoughtChain:
        """Read a chain written by `save` (or by the paper's code: same JSON, same file names).

        Args:
            with_images: True requires every image `chain.json` implies; False reads the plan only;
                None (default) reads the images when the first one exists (a chain still being planned
                has none) and then requires all of them.

        Raises `VChainError` naming the file and what is wrong: a missing or malformed `chain.json`, a
        missing or unreadable image.
        """
        directory = _io.check_path(directory, "directory")
        path = directory / CHAIN_FILE
        if path.exists() and not path.is_file():
            raise VChainError(f"{str(path)!r} is a folder, not the chain's file; move it aside")
        if not path.is_file():
            raise VChainError(f"no {CHAIN_FILE} in {str(directory)!r}: not a saved ThoughtChain")
        redo = "restore it from a copy, or redo reasoning (overwrite=True / --overwrite)"
        try:
            data = json.loads(_io.read_regular(path).decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise VChainError(f"{str(path)!r} is not readable JSON ({type(e).__name__}: {e}); {redo}") from e
        if not isinstance(data, dict) or len(data) != 1:
            raise VChainError(f"{str(path)!r} must hold one object keyed by the chain's name; {redo}")
        ((name, entry),) = data.items()
        try:
            fields = _ChainFields.model_validate(entry)
            plan = fields.model_dump(exclude={"times", "times_from"})
            chain = cls(name=name, **plan)
            if fields.times is not None:
                times = check_times(fields.times, len(fields.key_frames) + 1, "times")
                if fields.times_from == "reasoner":
                    chain.key_times = times[1:]
        except (ValidationError, ConfigurationError) as e:
            raise VChainError(f"{str(path)!r} does not hold the chain layout: {_first_errors(e)}; {redo}") from e
        first = directory / chain.file_names[0]
        if with_images is None:
            with_images = first.exists() or bool(chain.key_frames)
        if with_images:
            images = []
            for file_name in chain.file_names:
                problem = _io.regular_file_error(directory / file_name)
                if problem not in (None, "does not exist"):  # a missing one is named by read_image
                    raise VChainError(f"chain {name!r} in {str(directory)!r}: {file_name} {problem}; {redo}")
                try:
                    images.append(read_image(directory / file_name))
                except UnreadableImageError as e:
                    raise VChainError(f"chain {name!r} in {str(directory)!r}: {e}; {redo}") from e
            chain.images = images
        return chain


def png_bytes(image: Image.Image) -> bytes:
    """The PNG a chain saves for `image` (one encoding, so its sha256 can be recorded before it is written)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _first_errors(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}, got {e.get('input')!r}"[:200]
            for e in error.errors()[:3]
        )
    return str(error)
