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


# The most decoded RGB a video may take (2 GiB): twenty times Wan's 81 frames at 480x832, yet a file
# that claims more (a long or huge video, a hostile one) is refused while it decodes, not after.
MAX_VIDEO_BYTES = 2 * 2**30


def read_video(path: str | Path) -> list[Image.Image]:
    """The frames of a video file as PIL images; a `VChainError` naming the file if it does not decode or
    is larger than `MAX_VIDEO_BYTES` decoded."""
    import imageio.v3 as iio

    frames, total = [], 0
    try:
        for frame in iio.imiter(path):
            total += frame.nbytes
            if total > MAX_VIDEO_BYTES:
                raise VChainError(
                    f"the video {str(path)!r} is over {MAX_VIDEO_BYTES} bytes decoded after {len(frames)} frames "
                    f"of {frame.shape[1]}x{frame.shape[0]} (vchain.video.MAX_VIDEO_BYTES)"
                )
            frames.append(Image.fromarray(frame))
    except VChainError:
        raise
    except Exception as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VChainError(f"cannot read the video {str(path)!r}: {message[:200]}") from e
    return frames
