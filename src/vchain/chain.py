"""The data that flows between stages: the scene plan, the next-keyframe answer and the `ThoughtChain`.

On disk a chain is the pair of artifacts the VChain paper describes, plus the images:

- `chain.json`: `{"<name>": {"input_prompt", "thoughts", "consequences", "context_frame",
  "concise_prompt", "key_frames"}}`,
- `metadata.csv`: `"file_name","text"` rows pairing `<name>_<i>.png` with its caption (the Hugging Face
  ImageFolder convention, so the folder loads with `datasets.load_dataset("imagefolder", ...)`),
- `<name>_0.png`, `<name>_1.png`, ...
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, Field

from vchain import _io
from vchain.errors import ConfigurationError, VChainError

CHAIN_FILE = "chain.json"
METADATA_FILE = "metadata.csv"
MAX_NAME_LENGTH = 40


class ScenePlan(BaseModel):
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


class NextKeyframe(BaseModel):
    """The reasoner's answer for one step of the chain."""

    caption: str = Field(
        description="A description of the next keyframe as a still image, which doubles as the "
        "instruction for editing the previous keyframe into it."
    )
    is_last: bool = Field(
        description="True when this keyframe completes the consequences, or nothing significant follows it."
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


@dataclass
class ThoughtChain:
    """A chain of visual thoughts: the plan, the keyframe captions and the keyframe images.

    `images[0]` shows the context frame and pairs with `concise_prompt`; `images[i]` (i >= 1) pairs with
    `key_frames[i - 1]`. A chain under construction may hold the plan only (no images yet).
    """

    input_prompt: str
    thoughts: str
    consequences: str
    context_frame: str
    concise_prompt: str
    key_frames: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list, repr=False)
    name: str = ""

    def __post_init__(self):
        if not self.input_prompt or not self.input_prompt.strip():
            raise ConfigurationError(f"input_prompt must be a non-empty string, got {self.input_prompt!r}")
        self.name = self.name or chain_name(self.input_prompt)
        if not re.fullmatch(r"[a-z0-9_]{1,64}", self.name):
            raise ConfigurationError(f"name must match [a-z0-9_]{{1,64}}, got {self.name!r}")
        if len(self.images) not in (0, len(self.key_frames) + 1):
            raise ConfigurationError(
                f"a chain with {len(self.key_frames)} key_frames needs {len(self.key_frames) + 1} images "
                f"(or none yet), got {len(self.images)}"
            )

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

    def append(self, caption: str, image: Image.Image) -> None:
        if not self.images:
            raise VChainError("the first image (the context frame) must exist before a keyframe is appended")
        self.key_frames.append(caption)
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
            }
        }

    def save(self, directory: str | Path) -> Path:
        """Write `chain.json`, `metadata.csv` and the images into `directory` (created if needed).

        Images already on disk under their names are not rewritten. Every write is atomic.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for image, file_name in zip(self.images, self.file_names, strict=False):
            path = directory / file_name
            if not path.exists():
                _io.atomic_write(path, lambda f, im=image: im.save(f, format="PNG"))
        if self.images:
            rows = io.StringIO()
            writer = csv.writer(rows, quoting=csv.QUOTE_ALL, lineterminator="\n")
            writer.writerow(["file_name", "text"])
            writer.writerows(zip(self.file_names, self.captions, strict=True))
            _io.write_text(directory / METADATA_FILE, rows.getvalue())
        _io.write_json(directory / CHAIN_FILE, self.to_json())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ThoughtChain:
        """Read a chain written by `save` (or by the paper's code: same JSON, same file names)."""
        directory = Path(directory)
        path = directory / CHAIN_FILE
        if not path.is_file():
            raise VChainError(f"no {CHAIN_FILE} in {str(directory)!r}: not a saved ThoughtChain")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or len(data) != 1:
            raise VChainError(f"{str(path)!r} must hold one object keyed by the chain's name")
        ((name, fields),) = data.items()
        try:
            text = {key: fields[key] for key in ScenePlan.model_fields}
            chain = cls(
                name=name, input_prompt=fields["input_prompt"], key_frames=list(fields["key_frames"]), **text
            )
        except (KeyError, TypeError) as e:
            raise VChainError(f"{str(path)!r} lacks a field of the chain layout: {e}") from e
        images = []
        for file_name in chain.file_names:
            image_path = directory / file_name
            if not image_path.is_file():
                break
            images.append(_open_image(image_path))
        if images and len(images) < len(chain.captions):
            # A crash between writing a caption and its image: drop the captions with no image.
            chain.key_frames = chain.key_frames[: len(images) - 1]
        chain.images = images
        if not images:
            chain.key_frames = []
        return chain


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as e:
        raise VChainError(f"cannot read image {str(path)!r}: {e}") from e
