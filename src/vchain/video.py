"""Writing frames as video."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vchain import _io
from vchain.errors import ConfigurationError, VChainError


def write_video(frames: Sequence[Image.Image], path: str | Path, *, fps: int = 16) -> Path:
    """Write `frames` as an H.264 mp4 (imageio's bundled ffmpeg), atomically."""
    if not frames:
        raise ConfigurationError("frames must hold at least one frame to write a video, got none")
    import imageio.v3 as iio

    path = Path(path)
    array = np.stack([np.asarray(frame.convert("RGB")) for frame in frames])
    # macro_block_size=1 keeps every frame size as is (ffmpeg would otherwise rescale to multiples of 16).
    data = iio.imwrite("<bytes>", array, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    return _io.atomic_write(path, lambda f: f.write(data))


def read_video(path: str | Path) -> list[Image.Image]:
    """The frames of a video file as PIL images; a `VChainError` naming the file if it does not decode."""
    import imageio.v3 as iio

    try:
        return [Image.fromarray(frame) for frame in iio.imread(path)]
    except Exception as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VChainError(f"cannot read the video {str(path)!r}: {message[:200]}") from e
