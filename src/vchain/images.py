"""Image helpers: reading images safely, fitting them to the video frame, stitching the chain."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from vchain.errors import ConfigurationError, VChainError

# The largest image vchain decodes: 64 megapixels, far above any image model's output (gpt-image-1
# returns at most 1536x1024) yet small enough that a hostile "decompression bomb" (a tiny file that
# expands to gigabytes) is refused from its header, before any pixel is decoded.
MAX_IMAGE_PIXELS = 64 * 2**20


class UnreadableImageError(VChainError):
    """An image file or payload that does not decode, or is larger than `MAX_IMAGE_PIXELS`."""


def read_image(source: str | Path | bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode a file path or encoded bytes into a fully loaded RGB image.

    The size is checked from the header before decoding, so an oversized image costs nothing.
    Raises `UnreadableImageError` saying what is wrong (not a file, not an image, truncated, too big).
    """
    name = f"{str(source)!r}" if isinstance(source, (str, Path)) else f"({len(source)} bytes)"
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        reason = "is a folder" if Path(source).is_dir() else "does not exist"
        raise UnreadableImageError(f"image {name} {reason}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise UnreadableImageError(
                        f"image {name} is {width}x{height} = {width * height} pixels, over the limit of "
                        f"{max_pixels} (vchain.images.MAX_IMAGE_PIXELS)"
                    )
                return image.convert("RGB")
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImageError(f"image {name} is over the limit of {max_pixels} pixels: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise UnreadableImageError(f"image {name} does not decode: {type(e).__name__}: {e}") from e


def fit_to_frame(image: Image.Image, width: int, height: int) -> Image.Image:
    """Bring an image to the video generator's frame: scale to cover, then crop the centre.

    This is the one place where keyframes take the generator's aspect ratio and size. Image models
    return a few fixed sizes (gpt-image-1: 1024x1024, 1536x1024, 1024x1536); cropping keeps the
    geometry undistorted, which matters more to the tuner than the few pixels lost at the borders.
    """
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


def stitch(images: list[Image.Image], max_pixels: int, *, label: bool = True) -> Image.Image:
    """Tile the chain so far into one image whose pixel count never exceeds `max_pixels`.

    A vision model bills an image by its size, so a fixed budget keeps every perception call at about
    the same cost however long the chain grows, where a plain row of full-size images would grow the
    bill with every keyframe. Tiles run left to right, top to bottom, in chain order, each numbered.
    """
    if not images:
        raise ConfigurationError("images must hold at least one image to stitch, got an empty list")
    if max_pixels < len(images):
        raise ConfigurationError(f"max_pixels must allow a pixel per image, got {max_pixels} for {len(images)}")
    width, height = images[0].size
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    scale = min(1.0, math.sqrt(max_pixels / (columns * rows * width * height)))
    tile_w, tile_h = max(1, int(width * scale)), max(1, int(height * scale))
    while columns * tile_w * rows * tile_h > max_pixels:  # int() rounding can only overshoot by a pixel
        tile_w, tile_h = max(1, tile_w - 1), max(1, tile_h - 1)
    canvas = Image.new("RGB", (columns * tile_w, rows * tile_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, image in enumerate(images):
        x, y = (i % columns) * tile_w, (i // columns) * tile_h
        canvas.paste(image.convert("RGB").resize((tile_w, tile_h), Image.Resampling.LANCZOS), (x, y))
        if label:
            size = max(8, tile_h // 10)
            draw.rectangle((x, y, x + 2 * size, y + size + 4), fill="black")
            draw.text((x + 3, y + 2), str(i), fill="white", font_size=size)
    return canvas
