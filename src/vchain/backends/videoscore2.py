"""A VideoScore2-style judge: a Qwen2.5-VL model that watches the video as a video and scores three dimensions.

TIGER-Lab's VideoScore2 (`TIGER-Lab/VideoScore2`, a Qwen2.5-VL-7B fine-tune) rates a generated video from 1
to 5 on visual quality, text-to-video alignment and physical/common-sense consistency, with a reason for
each. `VideoScore2Judge` asks any Qwen2.5-VL checkpoint for those three, decoded under a JSON grammar like
every local answer (`vchain.backends.transformers`), and files them under vchain's dimensions:

    visual quality                      -> frame_quality
    text-to-video alignment             -> text_alignment
    physical/common-sense consistency   -> physics

Temporal quality, commonsense and causality stay unscored (None): summaries show them blank, and a search
objective that names one of them is refused up front.

Unlike the frame-by-frame judges, the model sees the frames as one video: consecutive frames are paired
into Qwen2.5-VL's temporal patches, and the video's positions advance with time as the model was trained
to read them. transformers' Qwen-VL video processor needs torchvision, so the video input is assembled
here from the image processor's own resizing, normalisation and spatial patching (see `encode_video`).

Example::

    import torch
    from vchain.backends.videoscore2 import VideoScore2Judge

    judge = VideoScore2Judge.from_pretrained("TIGER-Lab/VideoScore2", dtype=torch.bfloat16, device="cuda")
    # vchain judge RUNS_DIR --judge videoscore2:TIGER-Lab/VideoScore2 --frames 10
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import ConfigDict, Field

from vchain._hub import resolve_pretrained
from vchain.backends.transformers import TransformersChatModel
from vchain.chain import _Answer
from vchain.errors import ConfigurationError
from vchain.interfaces import Judge
from vchain.judging import frame_indices
from vchain.prompts import text_part
from vchain.reasoning import ChatAsker, chat_description
from vchain.scores import VideoScores

# VideoScore2's three dimensions, as its answer names them, and the vchain dimension each is filed under.
DIMENSION_OF = {
    "visual_quality": "frame_quality",
    "text_to_video_alignment": "text_alignment",
    "physical_consistency": "physics",
}
# VideoScore2 reads videos sampled at 2 frames a second; the positions of the frames vchain samples are
# spaced as if they were (8 frames of a 5 s clip come at 1.6 a second: `--frames 10` matches).
DEFAULT_SAMPLED_FPS = 2.0
# More frames than this are thinned evenly before encoding: 32 frames of 832x480 are ~8,000 vision tokens.
DEFAULT_MAX_FRAMES = 32
# The per-frame pixel bound of Qwen2-VL's video processor (768 tokens of 28x28 pixels): an 832x480 frame
# fits as it is (840x476 after rounding to whole patches).
DEFAULT_MAX_FRAME_PIXELS = 768 * 28 * 28
_ARCHITECTURE = "qwen2_5_vl"

VIDEOSCORE2_USER = """\
The video above was generated from this text prompt: {prompt}

Rate the video on three dimensions, each an integer from 1 (very poor) to 5 (excellent), each on its own:
- visual quality: how clear and clean the frames look: sharpness, resolution, exposure and colour, free \
of noise, blur, distortions and malformed objects;
- text-to-video alignment: how completely and faithfully the video shows what the prompt describes: its \
objects, their attributes, the setting, the actions and the outcome;
- physical/common-sense consistency: whether things move and interact as physics and everyday experience \
say they should: gravity, momentum, collisions, fluids, materials, and objects that keep their shape and \
do not appear or vanish without a cause.

For each dimension first give a short reason naming what in the video decides it, then the score. Answer \
in the requested JSON structure."""


def _reason(title: str) -> Any:
    return Field(description=f"One or two sentences on what in the video decides the {title} score.")


def _score(title: str) -> Any:
    # A range in the schema is enforced by the decoding grammar as well as checked here.
    return Field(ge=1, le=5, description=f"{title.capitalize()}: an integer from 1 (very poor) to 5 (excellent).")


class VideoScore2Answer(_Answer):
    """What the model writes: VideoScore2's three dimensions, each a reason and then its 1-5 score."""

    model_config = ConfigDict(strict=True)

    visual_quality_reason: str = _reason("visual quality")
    visual_quality: int = _score("visual quality")
    text_to_video_alignment_reason: str = _reason("text-to-video alignment")
    text_to_video_alignment: int = _score("text-to-video alignment")
    physical_consistency_reason: str = _reason("physical/common-sense consistency")
    physical_consistency: int = _score("physical/common-sense consistency")

    def video_scores(self) -> VideoScores:
        """The answer as vchain's `VideoScores`: three dimensions scored, the other three left out."""
        return VideoScores.partial(
            {dimension: getattr(self, name) for name, dimension in DIMENSION_OF.items()},
            {dimension: getattr(self, f"{name}_reason") for name, dimension in DIMENSION_OF.items()},
        )


def video_part(frames: Sequence[Image.Image]) -> dict:
    """A video in vchain's neutral message layout: its frames in playing order (`VideoScore2ChatModel` reads it)."""
    return {"type": "video", "frames": list(frames)}


class VideoScore2ChatModel(TransformersChatModel):
    """A Qwen2.5-VL `TransformersChatModel` that also takes a video part (`video_part(frames)`) in a message.

    Takes `TransformersChatModel`'s arguments, and:

    Args:
        sampled_fps: the frame rate the frames of a video part stand for; it spaces the video's positions
            in time (`second_per_grid_ts`), as the model's processor would from the video's metadata.
        max_frames: a video of more frames is thinned evenly to this many (first and last kept).
        max_frame_pixels: each frame is scaled down to at most this many pixels (never up), aspect kept,
            then to whole 28x28 blocks.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        sampled_fps: float = DEFAULT_SAMPLED_FPS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
        **options: Any,
    ):
        _check_video_settings(sampled_fps, max_frames, max_frame_pixels)
        super().__init__(model, processor, **options)
        model_type = getattr(model.config, "model_type", None)
        if model_type != _ARCHITECTURE:
            raise ConfigurationError(
                f"model must be a Qwen2.5-VL model (model_type {_ARCHITECTURE!r}), got model_type {model_type!r}"
            )
        vision, images = model.config.vision_config, getattr(processor, "image_processor", None)
        self.patch_size, self.merge_size = vision.patch_size, vision.spatial_merge_size
        self.temporal_patch_size = vision.temporal_patch_size
        if images is None or (images.patch_size, images.merge_size) != (self.patch_size, self.merge_size):
            raise ConfigurationError(
                "processor must hold the model's image processor (patch size "
                f"{self.patch_size}, merge size {self.merge_size}), got {type(images).__name__}"
            )
        self.sampled_fps, self.max_frames, self.max_frame_pixels = float(sampled_fps), max_frames, max_frame_pixels
        config = model.config
        self._image_token, self._video_token = config.image_token_id, config.video_token_id

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | Path,
        *,
        sampled_fps: float = DEFAULT_SAMPLED_FPS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
        revision: str | None = None,
        cache_dir: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        **kwargs: Any,
    ) -> VideoScore2ChatModel:
        """Load a Qwen2.5-VL checkpoint (a hub id or a folder) as `TransformersChatModel.from_pretrained` does.

        The checkpoint's `config.json` is read first: settings out of range, a missing checkpoint or one of
        another architecture fail before any weight loads.
        """
        _check_video_settings(sampled_fps, max_frames, max_frame_pixels)
        hub = dict(revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only)
        check_architecture(model_id, **hub)
        chat = super().from_pretrained(model_id, **hub, **kwargs)
        chat.sampled_fps, chat.max_frames, chat.max_frame_pixels = float(sampled_fps), max_frames, max_frame_pixels
        return chat

    def encode_video(self, frames: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """The model's video input for `frames`: `pixel_values_videos`, `video_grid_thw`, `second_per_grid_ts`.

        The layout is that of transformers' `Qwen2VLVideoProcessor`: frames are grouped in consecutive pairs
        (the temporal patch; an odd count repeats the last frame), and each row holds one patch of a pair,
        channels first, the pair's two frames next, then the patch's pixels; rows run over pairs, then 2x2
        merge blocks, then the patches inside a block. The image processor resizes (to whole merge blocks
        within `max_frame_pixels`), rescales, normalises and patches each frame with a temporal patch of
        one; the frames of a pair are then interleaved into one row.
        """
        if not frames:
            raise ConfigurationError("frames must hold at least one frame, got none")
        frames = [frame.convert("RGB") for frame in frames]
        if len(frames) > self.max_frames:
            frames = [frames[i] for i in frame_indices(len(frames), self.max_frames)]
        sizes = sorted({frame.size for frame in frames})
        if len(sizes) > 1:
            raise ConfigurationError(f"frames must all have one size, got sizes {sizes}")
        temporal, factor = self.temporal_patch_size, self.patch_size * self.merge_size
        frames += [frames[-1]] * (-len(frames) % temporal)
        processed = self.processor.image_processor(
            images=frames,
            temporal_patch_size=1,
            size={"shortest_edge": factor * factor, "longest_edge": self.max_frame_pixels},
            return_tensors="pt",  # the PIL processor's and the torchvision one's alike
        )
        _, grid_h, grid_w = (int(n) for n in processed["image_grid_thw"][0])
        grid_t, channels = len(frames) // temporal, 3
        pixels = torch.as_tensor(processed["pixel_values"], dtype=torch.float32).reshape(
            grid_t, temporal, grid_h * grid_w, channels, self.patch_size**2
        )
        return {
            "pixel_values_videos": pixels.permute(0, 2, 3, 1, 4).reshape(grid_t * grid_h * grid_w, -1).contiguous(),
            "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]]),
            "second_per_grid_ts": torch.tensor([temporal / self.sampled_fps]),
        }

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "sampled_fps": self.sampled_fps,
            "max_frames": self.max_frames,
            "max_frame_pixels": self.max_frame_pixels,
        }

    def _inputs(self, messages: list[dict]):
        """Messages with one video part: the chat template around it, its tokens expanded, its pixels.

        The template renders the video where an image part would go (every Qwen template renders one), and
        its single image placeholder becomes the video's tokens, one per 2x2 merged patch of each pair.
        """
        parts = [part for m in messages if isinstance(m["content"], list) for part in m["content"]]
        videos = [part for part in parts if part.get("type") == "video"]
        if not videos:
            return super()._inputs(messages)
        if len(videos) > 1 or any(part.get("type") == "image" for part in parts):
            raise ConfigurationError(
                f"{type(self).__name__} takes one video part and no image part in a request, "
                f"got {len(videos)} video(s) and {sum(part.get('type') == 'image' for part in parts)} image(s)"
            )
        video = self.encode_video(videos[0]["frames"])
        stand_in = [
            {
                **m,
                "content": [{"type": "image"} if p.get("type") == "video" else p for p in m["content"]]
                if isinstance(m["content"], list)
                else m["content"],
            }
            for m in messages
        ]
        encoded = self.processor.tokenizer.apply_chat_template(
            stand_in,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            sanitize_control_tokens=True,
        )
        ids = list(encoded["input_ids"])
        if ids.count(self._image_token) != 1:
            raise ConfigurationError(
                f"the chat template of {self.model_id} did not render the video's placeholder once "
                f"(found {ids.count(self._image_token)} image tokens)"
            )
        count = int(video["video_grid_thw"].prod()) // self.merge_size**2
        at = ids.index(self._image_token)
        ids = ids[:at] + [self._video_token] * count + ids[at + 1 :]
        input_ids = torch.tensor([ids])
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            # Without the modality of each token, Qwen2.5-VL silently gives the video text positions.
            "mm_token_type_ids": (input_ids == self._video_token).int() * 2,
            **video,
        }
        return {name: value.to(self.model.device) for name, value in inputs.items()}


class VideoScore2Judge(Judge):
    """The VideoScore2 judge (`vchain judge --judge videoscore2:ID_OR_DIR`): the video in, three dimensions scored.

    Scores `frame_quality` (VideoScore2's visual quality), `text_alignment` (text-to-video alignment) and
    `physics` (physical/common-sense consistency); the other dimensions of its `VideoScores` are None.

    Args:
        chat: the loaded model, as a `VideoScore2ChatModel`, whose decoding and video settings apply.
    """

    dimensions = tuple(DIMENSION_OF.values())

    def __init__(self, chat: VideoScore2ChatModel):
        if not isinstance(chat, VideoScore2ChatModel):
            raise ConfigurationError(
                f"chat must be a VideoScore2ChatModel, got {type(chat).__name__}; "
                "use VideoScore2Judge.from_pretrained(model_id)"
            )
        self.chat = chat
        self._asker, self._video = ChatAsker(), ""

    @classmethod
    def from_pretrained(
        cls, model_id: str | Path, *, dtype=None, device: str | torch.device | None = None, **kwargs: Any
    ) -> VideoScore2Judge:
        """Load `model_id` (e.g. `"TIGER-Lab/VideoScore2"`, or a folder laid out like it) as
        `VideoScore2ChatModel.from_pretrained(model_id, dtype=dtype, device=device, **kwargs)` does."""
        return cls(VideoScore2ChatModel.from_pretrained(model_id, dtype=dtype, device=device, **kwargs))

    def score(self, prompt: str, frames: Sequence[Image.Image]) -> VideoScores:
        if not frames:
            raise ConfigurationError("frames must hold at least one frame to judge, got none")
        # A correction after a malformed answer belongs to the video it was about: a new video starts afresh.
        video = hashlib.sha256(b"".join(frame.tobytes() for frame in frames)).hexdigest()
        if video != self._video:
            self._asker, self._video = ChatAsker(), video
        messages = [
            {"role": "user", "content": [video_part(frames), text_part(VIDEOSCORE2_USER.format(prompt=prompt))]}
        ]
        return self._asker(self.chat, messages, VideoScore2Answer).video_scores()

    def describe(self) -> dict[str, Any]:
        # The class and the scored dimensions keep its cache entries apart from any other judge on one model.
        return {**chat_description(self, self.chat), "dimensions": list(self.dimensions)}

    def release(self) -> None:
        self.chat.release()


def check_architecture(model_id: str | Path, **hub: Any) -> None:
    """A `ConfigurationError` unless `model_id` is a Qwen2.5-VL checkpoint; reads its `config.json` only."""
    from transformers import AutoConfig

    source = resolve_pretrained(model_id, what="Qwen2.5-VL", marker="config.json", argument="model_id", **hub)
    try:
        config = AutoConfig.from_pretrained(**source)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigurationError(f"model_id {str(model_id)!r} has no readable config.json: {e}") from e
    model_type = getattr(config, "model_type", None)
    if model_type != _ARCHITECTURE:
        raise ConfigurationError(
            f"model_id {str(model_id)!r} is a {model_type!r} checkpoint; the VideoScore2 judge needs a "
            f"Qwen2.5-VL one (model_type {_ARCHITECTURE!r}), such as 'TIGER-Lab/VideoScore2'"
        )


def _check_video_settings(sampled_fps: object, max_frames: object, max_frame_pixels: object) -> None:
    if not isinstance(sampled_fps, (int, float)) or isinstance(sampled_fps, bool) or not 0 < sampled_fps < math.inf:
        raise ConfigurationError(f"sampled_fps must be a positive number of frames a second, got {sampled_fps!r}")
    for name, value, least in (("max_frames", max_frames, 2), ("max_frame_pixels", max_frame_pixels, 28 * 28)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigurationError(f"{name} must be an integer of at least {least}, got {value!r}")
